"""What every node of a cloud with Neutron runs for its network: Open
vSwitch (userspace datapath: no kernel module), the uplink that carries
vxlan between nodes over ``br-phy``, and the Neutron agents. The compute
role runs them, and so does the control: it is the network node too, as in
the original MicroStack."""

from __future__ import annotations

from typing import Any

from microstackd.node.roles.parts import (
    IN_PRIVATE_MOUNTS,
    SERVICE_PATH,
    RoleService,
    SetupStep,
    cleanup,
    literal,
    service_step,
)
from microstackd.node.roles.parts import env as _env

#: Where Debian's packages put what the roles run besides OpenStack itself.
OVS_SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"

NEUTRON_AGENT_CONF = "neutron/neutron.conf.d/microstackd-agent.conf"
OVS_AGENT_INI = "neutron/plugins/ml2/openvswitch_agent.ini"
DHCP_AGENT_INI = "neutron/dhcp_agent.ini"
L3_AGENT_INI = "neutron/l3_agent.ini"
OVS_DB = "${state_path}/ovs/conf.db"
OVS_SOCK = "${run_dir}/ovs/db.sock"
OVS_ENV = _env(OVS_RUNDIR="${run_dir}/ovs", OVS_DBDIR="${state_path}/ovs", OVS_LOGDIR="${log_dir}")
#: Runs a command in a mount namespace of its own whose /run/netns is the
#: directory $1: the namespaces an agent makes (qdhcp-, qrouter-) are this
#: node's alone (two nodes' DHCP agents would clash on qdhcp-NET) and go
#: when the agent and what it started are gone.
IN_OWN_NETNS_DIR = (
    *IN_PRIVATE_MOUNTS,
    literal('mkdir -p "$1" /run/netns; mount --bind "$1" /run/netns; shift; exec "$@"'),
    "netns-dir",
)


def ovs_services(address: str, external: str = "") -> tuple[RoleService, ...]:
    """ovsdb-server, ovs-vswitchd and the uplink that puts ``address`` on br-phy
    (and ``external``, BRIDGE=CIDR, on its bridge)."""
    uplink = [
        "${python}",
        "-m",
        "microstackd.node.uplink",
        "--db",
        "unix:" + OVS_SOCK,
        "--address",
        address,
        "--state",
        "${state_path}/ovs/uplink.json",
    ]
    if external:
        uplink += ["--external", external]
    return (
        RoleService(
            name="ovsdb-server",
            command=(
                "/usr/sbin/ovsdb-server",
                OVS_DB,
                "--remote=punix:" + OVS_SOCK,
                "--remote=db:Open_vSwitch,Open_vSwitch,manager_options",
                "--pidfile=${run_dir}/ovs/ovsdb-server.pid",
            ),
            env=OVS_ENV,
            dirs=("${run_dir}/ovs",),
            ready_check="unix://" + OVS_SOCK,
            ready_after=0.1,
            start_timeout=30.0,
            real_only=True,
        ),
        RoleService(
            name="ovs-vswitchd",
            command=(
                "/usr/sbin/ovs-vswitchd",
                "unix:" + OVS_SOCK,
                "--pidfile=${run_dir}/ovs/ovs-vswitchd.pid",
            ),
            env=OVS_ENV,
            ready_after=0.3,
            start_timeout=30.0,
            real_only=True,
        ),
        RoleService(
            name="ovs-uplink",
            command=tuple(uplink),
            env=OVS_ENV,
            ready_pattern=r"uplink ready",
            ready_after=0.1,
            start_timeout=60.0,
            real_only=True,
        ),
    )


def ovs_db_steps() -> tuple[SetupStep, SetupStep]:
    return (
        SetupStep(
            name="ovs-db",
            title="creating this node's Open vSwitch database",
            commands=(("/usr/bin/ovsdb-tool", "create", OVS_DB, OVS_SCHEMA),),
            creates=OVS_DB,
            dirs=("${state_path}/ovs", "${run_dir}/ovs"),
            timeout=30.0,
        ),
        SetupStep(
            name="ovs-bridges",
            title="creating the Open vSwitch bridges br-ex and br-phy (userspace datapath)",
            commands=tuple(
                (
                    "/usr/bin/ovs-vsctl",
                    "--db=unix:" + OVS_SOCK,
                    "--timeout=60",
                    "--",
                    "--may-exist",
                    "add-br",
                    bridge,
                    "--",
                    "set",
                    "bridge",
                    bridge,
                    "datapath_type=netdev",
                )
                for bridge in ("br-ex", "br-phy")
            ),
            env=OVS_ENV,
            timeout=90.0,
        ),
    )


def neutron_agent(
    name: str,
    *config: str,
    ready: str,
    command_prefix: tuple[str, ...] = (),
    **kw: Any,
) -> RoleService:
    """A Neutron agent run as root (privsep through ``root_helper = env``)."""
    command: tuple[str, ...] = (*command_prefix, "${openstack_prefix}/bin/" + name)
    for path in (NEUTRON_AGENT_CONF, *config):
        command += ("--config-file", "${config_root}/" + path)
    return RoleService(
        name=name,
        command=command,
        snap_service=f"microstack.{name}",
        env=(("PATH", SERVICE_PATH), *OVS_ENV),
        dirs=("${state_path}/neutron/lock",),
        ready_pattern=ready,
        ready_after=1.0,
        start_timeout=180.0,
        **kw,
    )


OVS_AGENT = neutron_agent(
    "neutron-openvswitch-agent",
    OVS_AGENT_INI,
    # The first RPC loop done: it reported to the control and wired br-int/br-tun.
    ready=r"rpc_loop - iteration:0 completed",
    requires=(
        f"{NEUTRON_AGENT_CONF}:DEFAULT.transport_url",
        f"{NEUTRON_AGENT_CONF}:DEFAULT.host",
        f"{OVS_AGENT_INI}:ovs.local_ip",
        f"{OVS_AGENT_INI}:agent.tunnel_types",
    ),
)

#: The order of the network's steps, after the role's own services that
#: come first (the control plane) and before those that need the network.
ORDER = (
    "ovs-db",
    service_step("ovsdb-server"),
    service_step("ovs-vswitchd"),
    "ovs-bridges",
    service_step("ovs-uplink"),
    service_step("neutron-openvswitch-agent"),
)

# The network node's own agents (the control's), each with private /run/netns.
DHCP_AGENT = neutron_agent(
    "neutron-dhcp-agent",
    DHCP_AGENT_INI,
    ready=r"DHCP agent started",
    command_prefix=(*IN_OWN_NETNS_DIR, "${run_dir}/netns-dhcp"),
    real_only=True,
    # dnsmasq daemonises out of the agent's process group.
    post_stop=(cleanup("kill-pidfiles", "--name", "dnsmasq", "${state_path}/neutron/dhcp/*/pid"),),
)

L3_AGENT = neutron_agent(
    "neutron-l3-agent",
    L3_AGENT_INI,
    ready=r"L3 agent started",
    command_prefix=(*IN_OWN_NETNS_DIR, "${run_dir}/netns-l3"),
    real_only=True,
)
