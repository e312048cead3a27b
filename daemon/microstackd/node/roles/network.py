"""What every node of a cloud with Neutron runs for its network: Open
vSwitch (userspace datapath: no kernel module), the uplink that carries
vxlan between nodes over ``br-phy``, and the Neutron agents. The compute
role runs them, and so does the control: it is the network node too, as in
the original MicroStack."""

from __future__ import annotations

from typing import Any

from microstackd.node.roles.parts import (
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
#: Runs a command in a mount namespace of the service's own whose /run/netns
#: is the directory $1/netns: the network namespaces an agent makes
#: (qdhcp-, qrouter-) are this node's alone (two nodes' DHCP agents on one
#: machine would clash on qdhcp-NET), and they outlive a restart of the
#: agent, so that a restarted agent finds its routers and resyncs them
#: instead of building them again (a floating IP silent for seconds).
#:
#: The mount namespace is kept by a bind mount of it on $1/mnt, in the
#: node's own mount namespace (on $1, made a private mount first: a shared
#: one would carry that bind into the new namespace itself). The agent
#: always enters it (nsenter). When it is not there (first start, after
#: ``release-netns``, or a node whose mount namespace is new) a fresh one
#: is made, after the names of the dead one's network namespaces, left in
#: $1/netns as empty files, are removed: an agent that found "qrouter-X"
#: there could not enter it and would never rebuild the router. It is
#: made on each CPU in turn until the bind succeeds: Linux 6.18 (this
#: machine's) numbers mount namespaces in per-CPU batches and refuses
#: (EINVAL) to bind one that looks older than the caller's; on the CPU
#: that made the node's namespace the numbers grow. Entered, the agent's
#: /run/netns is bound to $1/netns unless it is already, dropping its
#: copy of the machine's /run/netns first (it would hold every other
#: namespace of the machine alive as long as it lives). The service's
#: ``teardown`` releases it (``cleanup release-netns $1``): its network
#: namespaces go with it.
IN_OWN_NETNS_DIR = (
    "/bin/sh",
    "-ec",
    literal(
        'base=$1; shift; mkdir -p "$base/netns" /run/netns\n'
        'if ! mountpoint -q "$base"; then\n'
        '  mount --bind "$base" "$base"; mount --make-private "$base"\n'
        "fi\n"
        'if ! mountpoint -q "$base/mnt"; then\n'
        '  rm -f "$base/netns"/*; : > "$base/mnt"\n'
        "  for cpu in $(seq 0 $(($(nproc --all) - 1))); do\n"
        '    ! taskset -c "$cpu" unshare --mount="$base/mnt" --propagation private true'
        ' 2> "$base/error" || break\n'
        "  done\n"
        '  mountpoint -q "$base/mnt" || { cat "$base/error" >&2; exit 1; }\n'
        "fi\n"
        'exec nsenter --mount="$base/mnt" -- /bin/sh -ec \''
        'if [ "$(stat -c %d:%i /run/netns)" != "$(stat -c %d:%i "$1")" ]; then'
        " if mountpoint -q /run/netns; then umount -l /run/netns; fi;"
        ' mount --bind "$1" /run/netns; fi; shift; exec "$@"\' netns-dir "$base/netns" "$@"'
    ),
    "netns-dir",
)


def release_netns(base: str) -> tuple[str, ...]:
    """The teardown of a service run ``IN_OWN_NETNS_DIR`` of ``base``."""
    return cleanup("release-netns", base)


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

#: What each of the network's steps needs done before it starts (a role's
#: NEEDS: ``control.NEEDS``, ``compute.NEEDS``), besides render-config,
#: which comes first: its database before ovsdb-server, ovs-vswitchd over
#: it, the bridges made through both, the uplink's address put on br-phy.
#: The Open vSwitch agent's needs are the role's (the control's agent also
#: needs its own neutron-rpc-server).
NEEDS: dict[str, tuple[str, ...]] = {
    service_step("ovsdb-server"): ("ovs-db",),
    service_step("ovs-vswitchd"): (service_step("ovsdb-server"),),
    "ovs-bridges": (service_step("ovs-vswitchd"),),
    service_step("ovs-uplink"): ("ovs-bridges",),
}

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
    # Once stopped for good: dnsmasq (it daemonises out of the agent's
    # process group; a restarted agent takes over the running ones), then
    # the namespaces. A restart keeps both.
    teardown=(
        cleanup("kill-pidfiles", "--name", "dnsmasq", "${state_path}/neutron/dhcp/*/pid"),
        release_netns("${run_dir}/netns-dhcp"),
    ),
)

L3_AGENT = neutron_agent(
    "neutron-l3-agent",
    L3_AGENT_INI,
    ready=r"L3 agent started",
    command_prefix=(*IN_OWN_NETNS_DIR, "${run_dir}/netns-l3"),
    real_only=True,
    teardown=(release_netns("${run_dir}/netns-l3"),),
)
