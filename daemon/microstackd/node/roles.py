"""Roles as data: the configuration files a role renders and the services it
runs. Adding a service to a role is one ``RoleService`` entry and one
template; no code path changes.

Commands and paths may use ``${config_root}``, ``${state_path}`` and
``${openstack_prefix}``; templates may use those and every key of the
role's ``settings``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConfigFile:
    #: Template name under microstackd/node/templates/.
    template: str
    #: Where it is rendered, relative to the config root.
    path: str


@dataclass(frozen=True)
class RoleService:
    name: str
    #: The real service's command line (process manager), with ${...} placeholders.
    command: tuple[str, ...]
    #: Keys the service cannot run without, "FILE:SECTION.KEY" (FILE relative to the
    #: config root): checked by the stand-in when no OpenStack prefix is configured.
    requires: tuple[str, ...]
    #: systemd unit and snap service names (defaults derive from ``name``).
    unit: str = ""
    snap_service: str = ""
    #: A line the service logs once it is up (regex); empty: alive is enough.
    ready_pattern: str = ""
    ready_after: float = 2.0
    start_timeout: float = 120.0


@dataclass(frozen=True)
class RoleDefinition:
    name: str
    #: Keys the control must issue.
    settings: tuple[str, ...]
    files: tuple[ConfigFile, ...]
    services: tuple[RoleService, ...]


NOVA_COMPUTE_CONF = "nova/nova.conf.d/microstackd-compute.conf"
NEUTRON_CONF = "neutron/neutron.conf.d/microstackd-compute.conf"
OVS_AGENT_INI = "neutron/plugins/ml2/openvswitch_agent.ini"

COMPUTE = RoleDefinition(
    name="compute",
    settings=(
        "host",
        "my_ip",
        "local_ip",
        "control_address",
        "region",
        "auth_url",
        "transport_url",
        "virt_type",
        "compute_driver",
        "tunnel_types",
        "nova_username",
        "nova_password",
        "neutron_username",
        "neutron_password",
        "placement_username",
        "placement_password",
    ),
    files=(
        ConfigFile("compute/nova-compute.conf", NOVA_COMPUTE_CONF),
        ConfigFile("compute/neutron.conf", NEUTRON_CONF),
        ConfigFile("compute/openvswitch_agent.ini", OVS_AGENT_INI),
    ),
    services=(
        RoleService(
            name="nova-compute",
            command=(
                "${openstack_prefix}/bin/nova-compute",
                "--config-file",
                "${config_root}/" + NOVA_COMPUTE_CONF,
            ),
            requires=(
                f"{NOVA_COMPUTE_CONF}:DEFAULT.host",
                f"{NOVA_COMPUTE_CONF}:DEFAULT.my_ip",
                f"{NOVA_COMPUTE_CONF}:DEFAULT.transport_url",
                f"{NOVA_COMPUTE_CONF}:keystone_authtoken.password",
                f"{NOVA_COMPUTE_CONF}:placement.password",
                f"{NOVA_COMPUTE_CONF}:neutron.password",
                f"{NOVA_COMPUTE_CONF}:libvirt.virt_type",
            ),
            snap_service="microstack.nova-compute",
        ),
        RoleService(
            name="neutron-openvswitch-agent",
            command=(
                "${openstack_prefix}/bin/neutron-openvswitch-agent",
                "--config-file",
                "${config_root}/" + NEUTRON_CONF,
                "--config-file",
                "${config_root}/" + OVS_AGENT_INI,
            ),
            requires=(
                f"{NEUTRON_CONF}:DEFAULT.transport_url",
                f"{NEUTRON_CONF}:DEFAULT.host",
                f"{OVS_AGENT_INI}:ovs.local_ip",
                f"{OVS_AGENT_INI}:agent.tunnel_types",
            ),
            snap_service="microstack.neutron-openvswitch-agent",
        ),
    ),
)

ROLES: dict[str, RoleDefinition] = {COMPUTE.name: COMPUTE}
