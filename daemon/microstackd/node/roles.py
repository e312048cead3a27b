"""Roles as data: the configuration files a role renders, the services it
runs and the one-time bootstrap steps it needs, in order. Adding a service
to a role is one ``RoleService`` entry and one template; no code path
changes.

Commands, environments and paths may use ``${config_root}``,
``${state_path}``, ``${run_dir}``, ``${log_dir}``, ``${helpers_dir}`` and
``${openstack_prefix}``; templates may use those and every key of the
role's ``settings``. The control role's settings are built by
``control_config.control_settings`` (``microstackd.plane`` runs it); a
compute's are issued by the control (``control_config.issue_compute_settings``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

#: Where Debian's packages put what the roles run besides OpenStack itself.
OVS_SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"
RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
#: PATH for OpenStack services: their own bin first (privsep-helper, ...).
SERVICE_PATH = (
    "${openstack_prefix}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)


@dataclass(frozen=True)
class ConfigFile:
    #: Template name under microstackd/node/templates/.
    template: str
    #: Where it is rendered, relative to the directory named by ``root``.
    path: str
    #: The value naming the base directory (``config_root`` or ``state_dir``).
    root: str = "config_root"
    mode: int = 0o640


@dataclass(frozen=True)
class RoleService:
    name: str
    #: The real service's command line (process manager), with ${...} placeholders.
    command: tuple[str, ...]
    #: Keys the service cannot run without, "FILE:SECTION.KEY" (FILE relative to the
    #: config root): checked by the stand-in when no OpenStack prefix is configured.
    requires: tuple[str, ...] = ()
    #: systemd unit and snap service names (defaults derive from ``name``).
    unit: str = ""
    snap_service: str = ""
    #: A line the service logs once it is up (regex); empty: alive is enough.
    ready_pattern: str = ""
    #: ``tcp://HOST:PORT``, ``unix:///PATH`` or ``http://HOST:PORT/PATH`` that
    #: must answer before the service counts as running (placeholders allowed).
    ready_check: str = ""
    ready_after: float = 2.0
    start_timeout: float = 120.0
    #: Extra environment (placeholders allowed).
    env: tuple[tuple[str, str], ...] = ()
    #: Directories created (mode 0750) before it starts.
    dirs: tuple[str, ...] = ()
    #: Runs only with an OpenStack environment (no stand-in where none is configured).
    real_only: bool = False
    #: Commands run before it is stopped and once it is gone (``ServiceSpec``).
    pre_stop: tuple[tuple[str, ...], ...] = ()
    post_stop: tuple[tuple[str, ...], ...] = ()
    #: What it runs with, for a person (shown in ``status``; placeholders
    #: allowed, never a secret's).
    detail: str = ""


@dataclass(frozen=True)
class BootstrapStep:
    """A one-time step of a role: commands run in order, each must succeed.

    Every step must be idempotent (it is redone when it was interrupted), and
    it is recorded done once it succeeded. Commands get no secret on their
    command line: secrets go through ``env`` or ``stdin_template``."""

    name: str
    #: What the operator sees while it runs.
    title: str
    commands: tuple[tuple[str, ...], ...]
    env: tuple[tuple[str, str], ...] = ()
    #: A template rendered and fed to every command's stdin.
    stdin_template: str = ""
    #: The step is already done when this path exists (placeholders allowed).
    creates: str = ""
    #: Exit statuses that count as success (e.g. "already exists").
    ok_codes: tuple[int, ...] = (0,)
    timeout: float = 300.0
    dirs: tuple[str, ...] = ()


@dataclass(frozen=True)
class RoleDefinition:
    name: str
    #: Keys the role's settings must hold.
    settings: tuple[str, ...]
    files: tuple[ConfigFile, ...]
    services: tuple[RoleService, ...]
    bootstrap: tuple[BootstrapStep, ...] = ()
    #: With an OpenStack environment: the order of the steps after
    #: ``render-config``, each ``service NAME`` or a bootstrap step's name.
    #: Empty: the services in order.
    order: tuple[str, ...] = ()
    #: Settings (never secrets) the services' commands use: kept by the node,
    #: so that it can restart them at start-up without the control.
    resume_settings: tuple[str, ...] = ()

    def step_names(self) -> tuple[str, ...]:
        """The role's steps, in order: ``render-config``, then ``order``."""
        return (RENDER_CONFIG, *(self.order or tuple(service_step(s.name) for s in self.services)))

    def service(self, name: str) -> RoleService:
        return next(s for s in self.services if s.name == name)

    def bootstrap_step(self, name: str) -> BootstrapStep:
        return next(b for b in self.bootstrap if b.name == name)

    def titles(self) -> dict[str, str]:
        titles = {RENDER_CONFIG: f"rendering the {self.name} role's configuration"}
        titles.update({service_step(s.name): f"starting {s.name}" for s in self.services})
        titles.update({b.name: b.title for b in self.bootstrap})
        return titles


RENDER_CONFIG = "render-config"
SERVICE_PREFIX = "service "


def service_step(name: str) -> str:
    return SERVICE_PREFIX + name


def _env(**values: str) -> tuple[tuple[str, str], ...]:
    return tuple(values.items())


def _literal(script: str) -> str:
    """A shell script as a command argument: its ``$`` are the shell's, not placeholders."""
    return script.replace("$", "$$")


# ---------------------------------------------------------------- network --
# Open vSwitch and the Neutron agents, on every node (the control is the
# network node too). Userspace datapath: no kernel module.

NEUTRON_AGENT_CONF = "neutron/neutron.conf.d/microstackd-agent.conf"
OVS_AGENT_INI = "neutron/plugins/ml2/openvswitch_agent.ini"
OVS_DB = "${state_path}/ovs/conf.db"
OVS_SOCK = "${run_dir}/ovs/db.sock"
OVS_ENV = _env(OVS_RUNDIR="${run_dir}/ovs", OVS_DBDIR="${state_path}/ovs", OVS_LOGDIR="${log_dir}")
#: Runs a command in a mount namespace of its own whose /run/netns is the
#: directory $1: the namespaces an agent makes (qdhcp-, qrouter-) are this
#: node's alone (two nodes' DHCP agents would clash on qdhcp-NET) and go
#: when the agent and what it started are gone.
IN_OWN_NETNS_DIR = (
    "/usr/bin/unshare",
    "--mount",
    "--propagation",
    "private",
    "--",
    "/bin/sh",
    "-ec",
    _literal('mkdir -p "$1" /run/netns; mount --bind "$1" /run/netns; shift; exec "$@"'),
    "netns-dir",
)


def _ovs_services(address: str, external: str = "") -> tuple[RoleService, ...]:
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


def _ovs_db_steps() -> tuple[BootstrapStep, BootstrapStep]:
    return (
        BootstrapStep(
            name="ovs-db",
            title="creating this node's Open vSwitch database",
            commands=(("/usr/bin/ovsdb-tool", "create", OVS_DB, OVS_SCHEMA),),
            creates=OVS_DB,
            dirs=("${state_path}/ovs", "${run_dir}/ovs"),
            timeout=30.0,
        ),
        BootstrapStep(
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


def _neutron_agent(
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


OVS_AGENT = _neutron_agent(
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

# ---------------------------------------------------------------- compute --

NOVA_COMPUTE_CONF = "nova/nova.conf.d/microstackd-compute.conf"
LIBVIRT_URI = "${libvirt_uri}"
#: libvirtd for this node alone, on a machine that may run several nodes: in
#: a mount and UTS namespace of its own, the node's directories over
#: libvirt's, a passwd/group with the user the QEMU driver looks up before
#: it reads qemu.conf (libvirt-qemu: only libvirt-daemon-system makes it),
#: and the node's name as hostname (libvirt's hostname is Nova's
#: hypervisor_hostname and the Placement provider's name).
#: $1 node name, $2 a directory for passwd/group, then SRC:DST pairs, --, argv.
LIBVIRTD_IN_NODE_NAMESPACES = r"""
node=$1 users=$2; shift 2
while [ "$1" != -- ]; do
    mkdir -p "${1%%:*}" "${1#*:}"; mount --bind "${1%%:*}" "${1#*:}"; shift
done
shift
mkdir -p "$users"
qemu_user='libvirt-qemu:x:64055:64055:Libvirt Qemu:/var/lib/libvirt:/usr/sbin/nologin'
if ! grep -q '^libvirt-qemu:' /etc/passwd; then
    { cat /etc/passwd; echo "$qemu_user"; } > "$users/passwd"
    mount --bind "$users/passwd" /etc/passwd
fi
if ! grep -q '^libvirt-qemu:' /etc/group; then
    { cat /etc/group; grep -q '^kvm:' /etc/group || echo 'kvm:x:64054:'
      echo 'libvirt-qemu:x:64055:'; } > "$users/group"
    mount --bind "$users/group" /etc/group
fi
hostname "$node"
exec "$@"
"""

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
        ConfigFile("compute/neutron.conf", NEUTRON_AGENT_CONF),
        ConfigFile("compute/openvswitch_agent.ini", OVS_AGENT_INI),
        ConfigFile("compute/libvirtd.conf", "libvirt/libvirtd.conf"),
        ConfigFile("compute/qemu.conf", "libvirt/qemu.conf"),
    ),
    services=(
        *_ovs_services("${my_ip}"),
        OVS_AGENT,
        RoleService(
            name="libvirtd",
            command=(
                "/usr/bin/unshare",
                "--mount",
                "--uts",
                "--propagation",
                "private",
                "--",
                "/bin/sh",
                "-ec",
                _literal(LIBVIRTD_IN_NODE_NAMESPACES),
                "libvirtd-ns",
                "${node_name}",
                "${state_path}/libvirt/users",
                "${config_root}/libvirt:/etc/libvirt",
                "${run_dir}/libvirt:/run/libvirt",
                "${state_path}/libvirt/lib:/var/lib/libvirt",
                "${log_dir}/libvirt:/var/log/libvirt",
                "${state_path}/libvirt/cache:/var/cache/libvirt",
                "--",
                "/usr/sbin/libvirtd",
                "--pid-file",
                "/run/libvirt/libvirtd.pid",
            ),
            # Under systemd and snapd: the host's libvirt (qemu:///system).
            unit="libvirtd.service",
            snap_service="microstack.libvirtd",
            ready_check="unix://${run_dir}/libvirt/libvirt-sock",
            ready_after=0.2,
            start_timeout=60.0,
            real_only=True,
            # Nova's domains first: QEMU leaves libvirtd's process group.
            pre_stop=(
                (
                    "${python}",
                    "-m",
                    "microstackd.node.cleanup",
                    "destroy-domains",
                    "--uri",
                    LIBVIRT_URI,
                ),
            ),
            post_stop=(
                (
                    "${python}",
                    "-m",
                    "microstackd.node.cleanup",
                    "kill-pidfiles",
                    "--name",
                    "qemu-system",
                    "${run_dir}/libvirt/qemu/*.pid",
                ),
            ),
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
            dirs=("${state_path}/nova/lock", "${state_path}/nova/instances"),
            # Logged once its driver is up and its RPC server listens (nova.service
            # logs at DEBUG: nova-compute.conf raises that one logger).
            ready_pattern=r"Join ServiceGroup membership for this service compute",
            ready_after=0.5,
            start_timeout=300.0,
            detail="${compute_driver}, ${virt_detail}",
        ),
    ),
    bootstrap=_ovs_db_steps(),
    order=(
        "ovs-db",
        service_step("ovsdb-server"),
        service_step("ovs-vswitchd"),
        "ovs-bridges",
        service_step("ovs-uplink"),
        service_step("neutron-openvswitch-agent"),
        service_step("libvirtd"),
        service_step("nova-compute"),
    ),
    resume_settings=("my_ip",),
)

# ---------------------------------------------------------------- control --

MARIADB_CNF = "control/mariadb.cnf"
KEYSTONE_CONF = "keystone/keystone.conf"
GLANCE_CONF = "glance/glance-api.conf"
PLACEMENT_CONF = "placement/placement.conf"
NOVA_CONF = "nova/nova.conf"
NEUTRON_SERVER_CONF = "neutron/neutron.conf"
ML2_CONF = "neutron/ml2_conf.ini"
RABBITMQ_CONF = "${state_path}/rabbitmq/rabbitmq.conf"
CLOUDS_YAML = "clouds.yaml"
DHCP_AGENT_INI = "neutron/dhcp_agent.ini"
L3_AGENT_INI = "neutron/l3_agent.ini"
#: The test image, as the test-image step links it (the cache holds the file).
TEST_IMAGE = "${state_path}/images/cirros.qcow2"


def _manage(binary: str, conf: str, *args: str) -> tuple[str, ...]:
    return ("${openstack_prefix}/bin/" + binary, "--config-file", "${config_root}/" + conf, *args)


def _api(name: str, app: str, port: str, workers: int, **env: str) -> RoleService:
    """An OpenStack API under gunicorn, on loopback and the control address."""
    return RoleService(
        name=name,
        command=(
            "${openstack_prefix}/bin/gunicorn",
            "--pythonpath",
            "${helpers_dir}",
            "-b",
            f"127.0.0.1:${{{port}}}",
            "-b",
            f"${{control_address}}:${{{port}}}",
            "--workers",
            str(workers),
            # Threads leak Keystone role assignments between requests (OPENSTACK.md).
            "--threads",
            "1",
            "--timeout",
            "300",
            "--graceful-timeout",
            "5",
            # gunicorn 27 binds one shared control socket per user otherwise.
            "--no-control-socket",
            "--name",
            name,
            "wsgi_app:application",
        ),
        env=(
            ("PATH", SERVICE_PATH),
            ("MSOS_WSGI_APP", app),
            ("MSOS_WSGI_PROG", name),
            *env.items(),
        ),
        ready_check=f"http://${{control_address}}:${{{port}}}/",
        ready_after=0.5,
        start_timeout=180.0,
        real_only=True,
    )


def _daemon(name: str, *command: str) -> RoleService:
    return RoleService(
        name=name,
        command=command,
        env=(("PATH", SERVICE_PATH),),
        ready_after=3.0,
        start_timeout=120.0,
        real_only=True,
    )


CONTROL = RoleDefinition(
    name="control",
    settings=(
        "control_address",
        "region",
        "keystone_url",
        "transport_url",
        "db_base_url",
        "db_password",
        "admin_password",
        "rabbitmq_user",
        "rabbitmq_password",
        "glance_password",
        "nova_password",
        "neutron_password",
        "placement_password",
        "keystone_port",
        "glance_port",
        "placement_port",
        "nova_port",
        "neutron_port",
        "db_port",
        "rabbitmq_port",
        "rabbitmq_dist_port",
        "epmd_port",
        "discover_hosts_interval",
        "host",
        "local_ip",
        "tunnel_types",
        "external_cidr",
        "external_gateway_cidr",
    ),
    files=(
        ConfigFile("control/mariadb.cnf", MARIADB_CNF),
        ConfigFile("control/keystone.conf", KEYSTONE_CONF),
        ConfigFile("control/glance-api.conf", GLANCE_CONF),
        ConfigFile("control/placement.conf", PLACEMENT_CONF),
        ConfigFile("control/nova.conf", NOVA_CONF),
        # nova-api reads its paste file from OS_NOVA_CONFIG_DIR (nova 34's, unchanged).
        ConfigFile("control/nova-api-paste.ini", "nova/api-paste.ini"),
        ConfigFile("control/neutron.conf", NEUTRON_SERVER_CONF),
        ConfigFile("control/ml2_conf.ini", ML2_CONF),
        # RabbitMQ reads its config from its own directory; it holds a secret.
        ConfigFile("control/rabbitmq.conf", "services/rabbitmq/rabbitmq.conf", "state_dir", 0o600),
        ConfigFile("control/enabled_plugins", "services/rabbitmq/enabled_plugins", "state_dir"),
        # The admin cloud: `openstack --os-cloud microstack`, openstacksdk.
        ConfigFile("control/clouds.yaml", CLOUDS_YAML, "state_dir", 0o600),
        # The network node: the same agent files as a compute's, and its own two.
        ConfigFile("compute/neutron.conf", NEUTRON_AGENT_CONF),
        ConfigFile("compute/openvswitch_agent.ini", OVS_AGENT_INI),
        ConfigFile("control/dhcp_agent.ini", DHCP_AGENT_INI),
        ConfigFile("control/dnsmasq.conf", "neutron/dnsmasq.conf"),
        ConfigFile("control/l3_agent.ini", L3_AGENT_INI),
    ),
    services=(
        RoleService(
            name="mariadb",
            command=("/usr/sbin/mariadbd", "--defaults-file=${config_root}/" + MARIADB_CNF),
            dirs=("${run_dir}",),
            ready_check="tcp://127.0.0.1:${db_port}",
            ready_after=0.2,
            start_timeout=60.0,
            real_only=True,
        ),
        # epmd in the foreground, as a service of its own: RabbitMQ finds it on
        # ERL_EPMD_PORT instead of forking one that outlives it.
        RoleService(
            name="epmd",
            command=("/usr/bin/epmd", "-port", "${epmd_port}", "-address", "127.0.0.1"),
            ready_check="tcp://127.0.0.1:${epmd_port}",
            ready_after=0.1,
            start_timeout=30.0,
            real_only=True,
        ),
        RoleService(
            name="rabbitmq",
            command=(RABBITMQ_SERVER,),
            env=_env(
                HOME="${state_path}/rabbitmq",
                RABBITMQ_NODENAME="rabbit@localhost",
                RABBITMQ_CONF_ENV_FILE="/dev/null",
                RABBITMQ_CONFIG_FILE=RABBITMQ_CONF,
                RABBITMQ_ENABLED_PLUGINS_FILE="${state_path}/rabbitmq/enabled_plugins",
                RABBITMQ_MNESIA_BASE="${state_path}/rabbitmq/mnesia",
                RABBITMQ_LOG_BASE="${log_dir}/rabbitmq",
                RABBITMQ_PID_FILE="${run_dir}/rabbitmq.pid",
                RABBITMQ_DIST_PORT="${rabbitmq_dist_port}",
                RABBITMQ_NODE_PORT="${rabbitmq_port}",
                ERL_EPMD_PORT="${epmd_port}",
                ERL_EPMD_ADDRESS="127.0.0.1",
                RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
            ),
            dirs=("${state_path}/rabbitmq/mnesia", "${log_dir}/rabbitmq", "${run_dir}"),
            ready_check="tcp://127.0.0.1:${rabbitmq_port}",
            ready_after=0.5,
            start_timeout=120.0,
            real_only=True,
        ),
        _api(
            "keystone",
            "keystone.wsgi.api:application",
            "keystone_port",
            2,
            OS_KEYSTONE_CONFIG_DIR="${config_root}/keystone",
        ),
        _api(
            "glance",
            "glance.wsgi.api:application",
            "glance_port",
            1,
            OS_GLANCE_CONFIG_DIR="${config_root}/glance",
        ),
        _api(
            "placement",
            "placement.wsgi.api:application",
            "placement_port",
            1,
            OS_PLACEMENT_CONFIG_DIR="${config_root}/placement",
        ),
        # Only OS_NOVA_CONFIG_DIR: the first of OS_NOVA_CONFIG_FILES is taken as paste config.
        _api(
            "nova-api",
            "nova.wsgi.osapi_compute:application",
            "nova_port",
            1,
            OS_NOVA_CONFIG_DIR="${config_root}/nova",
        ),
        _api(
            "neutron-api",
            "neutron.wsgi.api:application",
            "neutron_port",
            1,
            OS_NEUTRON_CONFIG_DIR="${config_root}/neutron",
            OS_NEUTRON_CONFIG_FILES="neutron.conf;ml2_conf.ini",
        ),
        _daemon(
            "neutron-rpc-server",
            *_manage("neutron-rpc-server", NEUTRON_SERVER_CONF),
            "--config-file",
            "${config_root}/" + ML2_CONF,
        ),
        _daemon("nova-conductor", *_manage("nova-conductor", NOVA_CONF)),
        _daemon("nova-scheduler", *_manage("nova-scheduler", NOVA_CONF)),
        # The network node, as in the original MicroStack.
        *_ovs_services("${control_address}", "br-ex=${external_gateway_cidr}"),
        dataclasses.replace(OVS_AGENT, real_only=True),
        _neutron_agent(
            "neutron-dhcp-agent",
            DHCP_AGENT_INI,
            ready=r"DHCP agent started",
            command_prefix=(*IN_OWN_NETNS_DIR, "${run_dir}/netns-dhcp"),
            real_only=True,
            # dnsmasq daemonises out of the agent's process group.
            post_stop=(
                (
                    "${python}",
                    "-m",
                    "microstackd.node.cleanup",
                    "kill-pidfiles",
                    "--name",
                    "dnsmasq",
                    "${state_path}/neutron/dhcp/*/pid",
                ),
            ),
        ),
        _neutron_agent(
            "neutron-l3-agent",
            L3_AGENT_INI,
            ready=r"L3 agent started",
            command_prefix=(*IN_OWN_NETNS_DIR, "${run_dir}/netns-l3"),
            real_only=True,
        ),
    ),
    bootstrap=(
        BootstrapStep(
            name="mariadb-install",
            title="creating the MariaDB data directory",
            commands=(
                (
                    "/usr/bin/mariadb-install-db",
                    "--defaults-file=${config_root}/" + MARIADB_CNF,
                    "--user=root",
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                ),
            ),
            creates="${state_path}/mysql/mysql",
            dirs=("${state_path}/mysql", "${run_dir}"),
            timeout=120.0,
        ),
        BootstrapStep(
            name="databases",
            title="creating the databases and their user",
            commands=(("/usr/bin/mariadb", "--defaults-file=${config_root}/" + MARIADB_CNF),),
            stdin_template="control/databases.sql",
            timeout=60.0,
        ),
        BootstrapStep(
            name="keystone-db-sync",
            title="keystone-manage db_sync",
            commands=(_manage("keystone-manage", KEYSTONE_CONF, "db_sync"),),
            dirs=("${state_path}/keystone",),
        ),
        BootstrapStep(
            name="keystone-keys",
            title="creating Keystone's fernet and credential keys",
            commands=(
                _manage(
                    "keystone-manage",
                    KEYSTONE_CONF,
                    "fernet_setup",
                    "--keystone-user",
                    "root",
                    "--keystone-group",
                    "root",
                ),
                _manage(
                    "keystone-manage",
                    KEYSTONE_CONF,
                    "credential_setup",
                    "--keystone-user",
                    "root",
                    "--keystone-group",
                    "root",
                ),
            ),
            creates="${state_path}/keystone/credential-keys/0",
        ),
        BootstrapStep(
            name="keystone-bootstrap",
            title="keystone-manage bootstrap (admin, region, identity endpoints)",
            commands=(
                _manage(
                    "keystone-manage",
                    KEYSTONE_CONF,
                    "bootstrap",
                    "--bootstrap-admin-url",
                    "${keystone_url}",
                    "--bootstrap-internal-url",
                    "${keystone_url}",
                    "--bootstrap-public-url",
                    "${keystone_url}",
                    "--bootstrap-region-id",
                    "${region}",
                ),
            ),
            # The password through the environment: never on a command line.
            env=_env(OS_BOOTSTRAP_PASSWORD="${admin_password}"),
        ),
        BootstrapStep(
            name="identity",
            title="creating the service project, users, services and endpoints",
            commands=(
                (
                    "${openstack_prefix}/bin/python",
                    "${helpers_dir}/bootstrap_cloud.py",
                    "identity",
                ),
            ),
            env=_env(
                OS_CLIENT_CONFIG_FILE="${state_dir}/" + CLOUDS_YAML,
                MSOS_API_HOST="${control_address}",
                MSOS_REGION="${region}",
                MSOS_GLANCE_PORT="${glance_port}",
                MSOS_PLACEMENT_PORT="${placement_port}",
                MSOS_NOVA_PORT="${nova_port}",
                MSOS_NEUTRON_PORT="${neutron_port}",
                MSOS_GLANCE_PASSWORD="${glance_password}",
                MSOS_PLACEMENT_PASSWORD="${placement_password}",
                MSOS_NOVA_PASSWORD="${nova_password}",
                MSOS_NEUTRON_PASSWORD="${neutron_password}",
            ),
        ),
        BootstrapStep(
            name="glance-db-sync",
            title="glance-manage db_sync",
            commands=(_manage("glance-manage", GLANCE_CONF, "db_sync"),),
        ),
        BootstrapStep(
            name="placement-db-sync",
            title="placement-manage db sync",
            commands=(_manage("placement-manage", PLACEMENT_CONF, "db", "sync"),),
        ),
        BootstrapStep(
            name="nova-api-db-sync",
            title="nova-manage api_db sync",
            commands=(_manage("nova-manage", NOVA_CONF, "api_db", "sync"),),
        ),
        BootstrapStep(
            name="nova-cells",
            title="mapping Nova's cell0 and creating cell1",
            commands=(
                _manage("nova-manage", NOVA_CONF, "cell_v2", "map_cell0"),
                _manage("nova-manage", NOVA_CONF, "cell_v2", "create_cell", "--name", "cell1"),
            ),
            # create_cell exits 2 when cell1 already exists (a redone step).
            ok_codes=(0, 2),
        ),
        BootstrapStep(
            name="nova-db-sync",
            title="nova-manage db sync",
            commands=(_manage("nova-manage", NOVA_CONF, "db", "sync"),),
        ),
        BootstrapStep(
            name="neutron-db-migrations",
            title="neutron-db-manage upgrade heads",
            commands=(
                (
                    "${openstack_prefix}/bin/neutron-db-manage",
                    "--config-file",
                    "${config_root}/" + NEUTRON_SERVER_CONF,
                    "--config-file",
                    "${config_root}/" + ML2_CONF,
                    "upgrade",
                    "heads",
                ),
            ),
        ),
        *_ovs_db_steps(),
        BootstrapStep(
            name="cloud-defaults",
            title="creating flavor m1.tiny, networks public and private, a router, SG rules",
            commands=(
                (
                    "${openstack_prefix}/bin/python",
                    "${helpers_dir}/bootstrap_cloud.py",
                    "resources",
                ),
            ),
            env=_env(
                OS_CLIENT_CONFIG_FILE="${state_dir}/" + CLOUDS_YAML,
                MSOS_EXTERNAL_CIDR="${external_cidr}",
            ),
        ),
        BootstrapStep(
            name="test-image",
            title="building the test image (Debian packages, cached) and uploading it as cirros",
            commands=(
                (
                    "${python}",
                    "-m",
                    "microstackd.node.testimage",
                    "build",
                    "--link",
                    TEST_IMAGE,
                ),
                (
                    "${openstack_prefix}/bin/python",
                    "${helpers_dir}/bootstrap_cloud.py",
                    "image",
                ),
            ),
            env=_env(
                OS_CLIENT_CONFIG_FILE="${state_dir}/" + CLOUDS_YAML,
                MSOS_IMAGE_FILE=TEST_IMAGE,
            ),
            # The first build downloads ~31 MB of Debian packages.
            timeout=900.0,
        ),
    ),
    order=(
        "mariadb-install",
        service_step("mariadb"),
        service_step("epmd"),
        service_step("rabbitmq"),
        "databases",
        "keystone-db-sync",
        "keystone-keys",
        "keystone-bootstrap",
        service_step("keystone"),
        "identity",
        "glance-db-sync",
        "placement-db-sync",
        "nova-api-db-sync",
        "nova-cells",
        "nova-db-sync",
        "neutron-db-migrations",
        service_step("glance"),
        service_step("placement"),
        service_step("nova-api"),
        service_step("neutron-api"),
        service_step("neutron-rpc-server"),
        service_step("nova-conductor"),
        service_step("nova-scheduler"),
        "ovs-db",
        service_step("ovsdb-server"),
        service_step("ovs-vswitchd"),
        "ovs-bridges",
        service_step("ovs-uplink"),
        service_step("neutron-openvswitch-agent"),
        service_step("neutron-dhcp-agent"),
        service_step("neutron-l3-agent"),
        "cloud-defaults",
        "test-image",
    ),
)

#: Roles a node's agent applies when the control asks (the control role is
#: the control's own, run by ``microstackd.plane``).
ROLES: dict[str, RoleDefinition] = {COMPUTE.name: COMPUTE}
ALL_ROLES: dict[str, RoleDefinition] = {COMPUTE.name: COMPUTE, CONTROL.name: CONTROL}
