"""The compute role: Open vSwitch, its Neutron agent and nova-compute."""

from __future__ import annotations

from microstackd.node.roles.parts import (
    SERVICE_PATH,
    ConfigFile,
    RoleDefinition,
    RoleService,
    SetupStep,
    service_step,
)
from microstackd.node.roles.parts import env as _env

#: Where Debian's packages put what the roles run besides OpenStack itself.
OVS_SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"

NOVA_COMPUTE_CONF = "nova/nova.conf.d/microstackd-compute.conf"
NEUTRON_CONF = "neutron/neutron.conf.d/microstackd-compute.conf"
OVS_AGENT_INI = "neutron/plugins/ml2/openvswitch_agent.ini"
OVS_DB = "${state_path}/ovs/conf.db"
OVS_SOCK = "${run_dir}/ovs/db.sock"
OVS_ENV = _env(OVS_RUNDIR="${run_dir}/ovs", OVS_DBDIR="${state_path}/ovs", OVS_LOGDIR="${log_dir}")

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
        "vif_plugging_is_fatal",
        "vif_plugging_timeout",
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
            env=(("PATH", SERVICE_PATH), *OVS_ENV),
            dirs=("${state_path}/neutron/lock",),
            # The first RPC loop done: it reported to the control and wired br-int/br-tun.
            ready_pattern=r"rpc_loop - iteration:0 completed",
            ready_after=1.0,
            start_timeout=180.0,
        ),
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
            env=(("PATH", SERVICE_PATH),),
            dirs=("${state_path}/nova/lock",),
            ready_after=3.0,
        ),
    ),
    setup=(
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
            title="creating the Open vSwitch bridges (br-ex, userspace datapath)",
            commands=(
                (
                    "/usr/bin/ovs-vsctl",
                    "--db=unix:" + OVS_SOCK,
                    "--timeout=60",
                    "--",
                    "--may-exist",
                    "add-br",
                    "br-ex",
                    "--",
                    "set",
                    "bridge",
                    "br-ex",
                    "datapath_type=netdev",
                ),
            ),
            env=OVS_ENV,
            timeout=90.0,
        ),
    ),
    order=(
        "ovs-db",
        service_step("ovsdb-server"),
        service_step("ovs-vswitchd"),
        "ovs-bridges",
        service_step("neutron-openvswitch-agent"),
        service_step("nova-compute"),
    ),
)
