"""The control role: the OpenStack control plane (MariaDB, RabbitMQ,
Keystone, Glance, Placement, Nova, Neutron) and the network node (Open
vSwitch, the Neutron OVS, DHCP and L3 agents), as data, run by
``microstackd.control.plane`` as steps of the control's init; its last step
uploads the test image as ``cirros``."""

from __future__ import annotations

import dataclasses
from typing import Any

from microstackd.node.roles.network import (
    DHCP_AGENT,
    DHCP_AGENT_INI,
    L3_AGENT,
    L3_AGENT_INI,
    NEUTRON_AGENT_CONF,
    OVS_AGENT,
    OVS_AGENT_INI,
    ovs_db_steps,
    ovs_services,
)
from microstackd.node.roles.network import NEEDS as NETWORK_NEEDS
from microstackd.node.roles.network import ORDER as NETWORK_ORDER
from microstackd.node.roles.parts import (
    SERVICE_PATH,
    ConfigFile,
    RoleDefinition,
    RoleService,
    SetupStep,
    service_step,
    together,
)
from microstackd.node.roles.parts import env as _env

RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"

MARIADB_CNF = "control/mariadb.cnf"
#: MariaDB's data directory (mariadb.cnf's datadir), and where it is made first.
MARIADB_DATADIR = "${state_path}/mysql"
MARIADB_INSTALLING = "${state_path}/mysql.installing"
KEYSTONE_CONF = "keystone/keystone.conf"
GLANCE_CONF = "glance/glance-api.conf"
PLACEMENT_CONF = "placement/placement.conf"
NOVA_CONF = "nova/nova.conf"
NEUTRON_SERVER_CONF = "neutron/neutron.conf"
ML2_CONF = "neutron/ml2_conf.ini"
RABBITMQ_CONF = "${state_path}/rabbitmq/rabbitmq.conf"
CLOUDS_YAML = "clouds.yaml"
#: The setup step that rewrites Nova's cell mappings' URLs (rotate-secrets).
CELL_URLS = "nova-cell-urls"
#: The test image, as the test-image step links it (the cache holds the file).
TEST_IMAGE = "${state_path}/images/cirros.qcow2"


def _manage(binary: str, conf: str, *args: str) -> tuple[str, ...]:
    return ("${openstack_prefix}/bin/" + binary, "--config-file", "${config_root}/" + conf, *args)


def _schema(*databases: str) -> dict[str, Any]:
    """A migration step's databases (``SetupStep.schema``) and MariaDB's
    client, as root over the socket (``databases``' own), to reset them."""
    return {
        "schema": databases,
        "schema_client": ("/usr/bin/mariadb", "--defaults-file=${config_root}/" + MARIADB_CNF),
    }


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


#: What each step of the control's init needs done before it starts: read
#: from its command and the configuration templates it reads
#: (``node/templates/control/``). The order must honour every line (a need
#: in an entry before the step's, or before it in its own lane: never only
#: in another lane, which would rest on timing); the unit tests check that,
#: and that every service's database and service users are here.
#:
#: * a schema step: the databases step (its database, empty, and the user);
#: * a service with a ``[database]``/``[api_database]``: the step that
#:   migrates it (``SetupStep.schema``);
#: * a service whose files hold a service user's password (its
#:   ``[keystone_authtoken]`` checks every request's token with it; Nova's
#:   ``[placement]``/``[neutron]``/``[service_user]``, Neutron's ``[nova]``
#:   for its port events to Nova): ``identity``, which makes those users and
#:   the catalog's endpoints. Most authenticate only on first use (not
#:   nova-conductor and nova-scheduler: below), but each may be used as soon
#:   as it answers, so none may answer before its user exists;
#: * a service with a ``transport_url``: RabbitMQ;
#: * what a service or step calls as it starts (nova-conductor and
#:   nova-scheduler: Placement's versions, they exit without it; the agents:
#:   neutron-rpc-server, over Open vSwitch's bridges; the test image: Glance;
#:   cloud-defaults: the Nova and Neutron APIs and the agents that serve the
#:   networks and router it makes).
NEEDS: dict[str, tuple[str, ...]] = {
    service_step("mariadb"): ("mariadb-install",),
    "databases": (service_step("mariadb"),),
    service_step("rabbitmq"): (service_step("epmd"),),
    "keystone-db-sync": ("databases",),
    "keystone-bootstrap": ("keystone-db-sync",),
    service_step("keystone"): ("keystone-bootstrap", "keystone-keys"),
    "identity": (service_step("keystone"),),
    "glance-db-sync": ("databases",),
    service_step("glance"): ("glance-db-sync", "identity"),
    "test-image": (service_step("glance"), "identity"),
    "placement-db-sync": ("databases",),
    service_step("placement"): ("placement-db-sync", "identity"),
    "nova-api-db-sync": ("databases",),
    # The cell mappings go into nova_api; cell1's names the queue's URL.
    "nova-cells": ("nova-api-db-sync",),
    # Migrates the databases of the cells nova-cells mapped.
    "nova-db-sync": ("nova-cells",),
    service_step("nova-api"): ("nova-db-sync", "identity", service_step("rabbitmq")),
    service_step("nova-conductor"): (
        "nova-db-sync",
        "identity",
        service_step("rabbitmq"),
        service_step("placement"),
    ),
    service_step("nova-scheduler"): (
        "nova-db-sync",
        "identity",
        service_step("rabbitmq"),
        service_step("placement"),
    ),
    "neutron-db-migrations": ("databases",),
    service_step("neutron-api"): (
        "neutron-db-migrations",
        "identity",
        service_step("rabbitmq"),
    ),
    service_step("neutron-rpc-server"): (
        "neutron-db-migrations",
        "identity",
        service_step("rabbitmq"),
    ),
    **NETWORK_NEEDS,
    service_step("neutron-openvswitch-agent"): (
        service_step("ovs-uplink"),
        service_step("neutron-rpc-server"),
        service_step("rabbitmq"),
    ),
    # Their ports on br-int are wired by the Open vSwitch agent.
    service_step("neutron-dhcp-agent"): (service_step("neutron-openvswitch-agent"),),
    service_step("neutron-l3-agent"): (service_step("neutron-openvswitch-agent"),),
    "cloud-defaults": (
        "identity",
        service_step("nova-api"),
        service_step("neutron-api"),
        service_step("neutron-dhcp-agent"),
        service_step("neutron-l3-agent"),
    ),
}


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
        *ovs_services("${control_address}", "br-ex=${external_gateway_cidr}"),
        dataclasses.replace(OVS_AGENT, real_only=True),
        DHCP_AGENT,
        L3_AGENT,
    ),
    setup=(
        # Made beside its place and renamed into it: ``creates`` (the data
        # directory's own ``mysql`` schema) appears only once the whole
        # directory is made. mariadb-install-db writes it over ~4 s; a daemon
        # killed meanwhile used to leave a half-made directory that a resumed
        # init took as done, and MariaDB then failed to start. A leftover of
        # an earlier attempt is removed first.
        SetupStep(
            name="mariadb-install",
            title="creating the MariaDB data directory",
            commands=(
                ("/usr/bin/rm", "-rf", "--", MARIADB_INSTALLING),
                (
                    "/usr/bin/mariadb-install-db",
                    "--defaults-file=${config_root}/" + MARIADB_CNF,
                    "--datadir=" + MARIADB_INSTALLING,
                    "--user=root",
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                ),
                # rename(2): onto nothing, or onto an empty directory.
                ("/usr/bin/mv", "-T", "--", MARIADB_INSTALLING, MARIADB_DATADIR),
            ),
            creates=MARIADB_DATADIR + "/mysql",
            dirs=("${state_path}", "${run_dir}"),
            timeout=120.0,
        ),
        SetupStep(
            name="databases",
            title="creating the databases and their user",
            commands=(("/usr/bin/mariadb", "--defaults-file=${config_root}/" + MARIADB_CNF),),
            stdin_template="control/databases.sql",
            timeout=60.0,
        ),
        # Not in init's order: rotate-secrets runs it after the databases step.
        SetupStep(
            name=CELL_URLS,
            title="pointing Nova's cell mappings at the database and queue's current passwords",
            commands=(("/usr/bin/mariadb", "--defaults-file=${config_root}/" + MARIADB_CNF),),
            stdin_template="control/cell_mappings.sql",
            timeout=60.0,
        ),
        SetupStep(
            name="keystone-db-sync",
            title="keystone-manage db_sync",
            commands=(_manage("keystone-manage", KEYSTONE_CONF, "db_sync"),),
            dirs=("${state_path}/keystone",),
            **_schema("keystone"),
        ),
        SetupStep(
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
        SetupStep(
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
        SetupStep(
            name="identity",
            title="creating the service project, users, services and endpoints",
            commands=(
                (
                    "${openstack_prefix}/bin/python",
                    "${helpers_dir}/setup_cloud.py",
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
        SetupStep(
            name="glance-db-sync",
            title="glance-manage db_sync",
            commands=(_manage("glance-manage", GLANCE_CONF, "db_sync"),),
            **_schema("glance"),
        ),
        SetupStep(
            name="placement-db-sync",
            title="placement-manage db sync",
            commands=(_manage("placement-manage", PLACEMENT_CONF, "db", "sync"),),
            **_schema("placement"),
        ),
        SetupStep(
            name="nova-api-db-sync",
            title="nova-manage api_db sync",
            commands=(_manage("nova-manage", NOVA_CONF, "api_db", "sync"),),
            **_schema("nova_api"),
        ),
        SetupStep(
            name="nova-cells",
            title="mapping Nova's cell0 and creating cell1",
            commands=(
                _manage("nova-manage", NOVA_CONF, "cell_v2", "map_cell0"),
                _manage("nova-manage", NOVA_CONF, "cell_v2", "create_cell", "--name", "cell1"),
            ),
            # create_cell exits 2 when cell1 already exists (a redone step).
            ok_codes=(0, 2),
        ),
        SetupStep(
            name="nova-db-sync",
            title="nova-manage db sync",
            commands=(_manage("nova-manage", NOVA_CONF, "db", "sync"),),
            # cell1's and cell0's (nova-cells mapped them; the mappings stay).
            **_schema("nova", "nova_cell0"),
        ),
        SetupStep(
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
            **_schema("neutron"),
        ),
        *ovs_db_steps(),
        SetupStep(
            name="cloud-defaults",
            title="creating flavor m1.tiny, networks public and private, a router, SG rules",
            commands=(
                (
                    "${openstack_prefix}/bin/python",
                    "${helpers_dir}/setup_cloud.py",
                    "resources",
                ),
            ),
            env=_env(
                OS_CLIENT_CONFIG_FILE="${state_dir}/" + CLOUDS_YAML,
                MSOS_EXTERNAL_CIDR="${external_cidr}",
            ),
        ),
        SetupStep(
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
                    "${helpers_dir}/setup_cloud.py",
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
    # The order honours NEEDS (above; tests/unit/test_control_role.py checks
    # it): each step's needs are in an entry before it, or before it in its
    # own lane, never only in another lane of its group (that would rest on
    # timing). Within that, three lanes at most on 2 cores, balanced by the
    # steps' measured times (docs/performance.md, the real cloud's clock).
    order=(
        together(
            ("mariadb-install", service_step("mariadb"), "databases"),
            (service_step("epmd"), service_step("rabbitmq")),
            # Files only: no database.
            "keystone-keys",
        ),
        # Keystone up and its service users and endpoints made, while the
        # other schemas migrate and Open vSwitch starts: none of them needs
        # Keystone. Glance's schema first in the third lane, so that
        # Neutron's long migration is still under way when identity begins
        # (the real-cloud suite kills the daemon there: a migration caught
        # half-way is what a resumed init must cope with, SetupStep.schema).
        together(
            (
                "keystone-db-sync",
                "keystone-bootstrap",
                service_step("keystone"),
                "identity",
            ),
            (
                "nova-api-db-sync",
                "nova-cells",
                "nova-db-sync",
            ),
            (
                "glance-db-sync",
                "neutron-db-migrations",
                "placement-db-sync",
                *NETWORK_ORDER[:-1],  # Open vSwitch, up to the uplink
            ),
        ),
        # Every service that authenticates with a service user (its
        # keystone_authtoken, or Nova's and Neutron's clients of each other
        # and of Placement) after identity: the whole group is.
        together(
            # Glance's test image, then the Neutron API (only cloud-defaults
            # needs it): a third lane as short as the others.
            (service_step("glance"), "test-image", service_step("neutron-api")),
            # nova-conductor and nova-scheduler ask Placement for its
            # versions as they start and exit when it does not answer.
            (
                service_step("placement"),
                service_step("nova-api"),
                service_step("nova-conductor"),
                service_step("nova-scheduler"),
            ),
            # The agents report to neutron-rpc-server.
            (
                service_step("neutron-rpc-server"),
                NETWORK_ORDER[-1],
                service_step("neutron-dhcp-agent"),
                service_step("neutron-l3-agent"),
            ),
        ),
        # Nova's flavor, Neutron's networks and router with the agents that
        # serve them.
        "cloud-defaults",
    ),
)
