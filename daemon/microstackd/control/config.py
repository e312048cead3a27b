"""The control's cluster configuration (control.yaml) and the compute role
settings issued from it.

The file is YAML, documented in docs/control-config.md. Whatever is absent
is filled in at control init: addresses from the control's address, every
secret freshly generated. It is written atomically with mode 0600 and its
secrets never reach a log line or ``status``: only ``issue_compute_settings``
hands them out, to the node's agent over mTLS.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from microstackd import errors
from microstackd.model import NodeRecord
from microstackd.store.files import write_private_file
from microstackd.trust import names

#: Settings keys whose values are secret (never logged, never shown).
SECRET_KEYS = frozenset(
    {
        "transport_url",
        "rabbitmq_password",
        "nova_password",
        "neutron_password",
        "placement_password",
        "metadata_secret",
        "glance_password",
        "db_password",
        "db_base_url",
        "admin_password",
    }
)
#: Service users whose credentials computes receive.
SERVICE_USERS = ("nova", "neutron", "placement")
#: Every service user of the control plane.
CONTROL_SERVICE_USERS = (*SERVICE_USERS, "glance")
#: The control plane's ports besides Keystone's (keystone.url) and RabbitMQ's.
DEFAULT_PORTS = {
    "mariadb": 13306,
    "epmd": 14369,
    "rabbitmq_dist": 25672,
    "glance": 9292,
    "placement": 8778,
    "nova": 8774,
    "neutron": 9696,
}
#: The admin cloud's name in clouds.yaml.
CLOUD_NAME = "microstack"
#: The external network `public`, as the original MicroStack's: its gateway
#: (the first address) sits on the control's br-ex, floating IPs come from the rest.
DEFAULT_EXTERNAL_CIDR = "10.20.20.0/24"


@dataclass(frozen=True)
class ControlConfig:
    control_address: str
    region: str
    keystone_url: str
    rabbitmq_host: str
    rabbitmq_port: int
    rabbitmq_user: str
    rabbitmq_password: str
    service_passwords: dict[str, str]
    metadata_secret: str
    virt_type: str
    compute_driver: str
    tunnel_types: str
    ovn_sb_connection: str
    #: The control plane's own secrets and ports (never issued to computes).
    database_password: str = ""
    admin_password: str = ""
    ports: tuple[tuple[str, int], ...] = ()
    #: Seconds between nova-scheduler's scans for new compute hosts.
    discover_hosts_interval: int = 5
    #: control.yaml's ``cloud`` section as written ({name, clouds_yaml}, or {}).
    cloud: tuple[tuple[str, str], ...] = ()
    #: The external flat network ``public`` (network.external_cidr).
    external_cidr: str = DEFAULT_EXTERNAL_CIDR

    @property
    def external_gateway_cidr(self) -> str:
        """The external network's gateway on the control's br-ex, ``ADDRESS/PREFIX``."""
        network = ipaddress.ip_network(self.external_cidr)
        return f"{network.network_address + 1}/{network.prefixlen}"

    @property
    def transport_url(self) -> str:
        return self.transport_url_for(self.rabbitmq_user, self.rabbitmq_password)

    def transport_url_for(self, user: str, password: str) -> str:
        """The message queue's URL with ``user``'s credentials (URL-safe: node
        names and generated passwords need no quoting)."""
        host = f"[{self.rabbitmq_host}]" if ":" in self.rabbitmq_host else self.rabbitmq_host
        return f"rabbit://{user}:{password}@{host}:{self.rabbitmq_port}/"

    def public_summary(self, own: OwnCredentials | None = None) -> str:
        """What the issued configuration points at, without a secret."""
        host = f"[{self.rabbitmq_host}]" if ":" in self.rabbitmq_host else self.rabbitmq_host
        user = self.rabbitmq_user if own is None else own.rabbitmq_user
        return (
            f"message queue rabbit://{user}@{host}:{self.rabbitmq_port}/, "
            f"Keystone {self.keystone_url}, region {self.region}"
        )


def _secret() -> str:
    return secrets.token_urlsafe(24)


def _section(data: dict[str, Any], name: str) -> dict[str, Any]:
    value = data.setdefault(name, {})
    if not isinstance(value, dict):
        raise errors.InvalidArgument(f"control config: '{name}' must be a mapping")
    return value


def ensure(path: Path, control_address: str) -> ControlConfig:
    """Load ``path``, fill in what is absent (generating secrets), write it
    back if anything changed, and return it."""
    import yaml  # here, not at the top: a compute never reads control.yaml (~1 MB resident)

    try:
        text = path.read_text()
    except FileNotFoundError:
        text = ""
    except OSError as exc:
        raise errors.StorageError(f"cannot read the control config {path}: {exc}") from exc
    try:
        loaded = yaml.safe_load(text) if text else {}
    except yaml.YAMLError as exc:
        raise errors.InvalidArgument(f"control config {path} is not valid YAML: {exc}") from exc
    if not isinstance(loaded, dict):
        raise errors.InvalidArgument(f"control config {path} must be a YAML mapping")
    data: dict[str, Any] = loaded
    before = yaml.safe_dump(data, sort_keys=True)

    data.setdefault("control_address", control_address)
    data.setdefault("region", "microstack")
    keystone = _section(data, "keystone")
    keystone.setdefault("url", f"http://{_url_host(data['control_address'])}:5000/v3")
    rabbit = _section(data, "rabbitmq")
    rabbit.setdefault("host", data["control_address"])
    rabbit.setdefault("port", 5672)
    rabbit.setdefault("user", "openstack")
    rabbit.setdefault("password", _secret())
    services = _section(data, "service_users")
    for user in CONTROL_SERVICE_USERS:
        entry = services.setdefault(user, {})
        if not isinstance(entry, dict):
            raise errors.InvalidArgument(f"control config: service_users.{user} must be a mapping")
        entry.setdefault("password", _secret())
    data.setdefault("metadata_secret", _secret())
    compute = _section(data, "compute")
    # auto: each compute detects kvm or qemu (microstackd.node.virt).
    compute.setdefault("virt_type", "auto")
    compute.setdefault("compute_driver", "libvirt.LibvirtDriver")
    network = _section(data, "network")
    network.setdefault("tunnel_types", "vxlan")
    network.setdefault("ovn_sb_connection", "")
    network.setdefault("external_cidr", DEFAULT_EXTERNAL_CIDR)
    _section(data, "database").setdefault("password", _secret())
    _section(data, "admin").setdefault("password", _secret())
    ports = _section(data, "ports")
    for name, port in DEFAULT_PORTS.items():
        ports.setdefault(name, port)
    compute.setdefault("discover_hosts_interval", 5)

    if yaml.safe_dump(data, sort_keys=True) != before:
        header = (
            "# microstackd control configuration (docs/control-config.md).\n"
            "# Secrets below were generated at control init; keep this file private.\n"
        )
        write_private_file(path, (header + yaml.safe_dump(data, sort_keys=False)).encode())
    return _parse(data, path)


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def _parse(data: dict[str, Any], path: Path) -> ControlConfig:
    try:
        rabbit, keystone = data["rabbitmq"], data["keystone"]
        return ControlConfig(
            control_address=names.ip_address(str(data["control_address"]), "control_address"),
            region=str(data["region"]),
            keystone_url=str(keystone["url"]),
            rabbitmq_host=str(rabbit["host"]),
            rabbitmq_port=names.port(rabbit["port"], f"control config {path}: rabbitmq.port"),
            rabbitmq_user=str(rabbit["user"]),
            rabbitmq_password=str(rabbit["password"]),
            service_passwords={
                user: str(data["service_users"][user]["password"]) for user in CONTROL_SERVICE_USERS
            },
            metadata_secret=str(data["metadata_secret"]),
            virt_type=str(data["compute"]["virt_type"]),
            compute_driver=str(data["compute"]["compute_driver"]),
            tunnel_types=str(data["network"]["tunnel_types"]),
            ovn_sb_connection=str(data["network"]["ovn_sb_connection"] or ""),
            database_password=str(data["database"]["password"]),
            admin_password=str(data["admin"]["password"]),
            ports=tuple(
                (name, names.port(data["ports"][name], f"control config {path}: ports.{name}"))
                for name in DEFAULT_PORTS
            ),
            discover_hosts_interval=names.integer(
                data["compute"]["discover_hosts_interval"],
                f"control config {path}: compute.discover_hosts_interval",
                1,
                86400,
            ),
            cloud=_cloud_section(data.get("cloud")),
            external_cidr=_external_cidr(data["network"]["external_cidr"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise errors.InvalidArgument(
            f"control config {path} is incomplete or malformed: {exc}"
        ) from exc


def _external_cidr(value: object) -> str:
    try:
        network = ipaddress.IPv4Network(str(value))
    except ValueError as exc:
        raise ValueError(f"network.external_cidr {value!r}: {exc}") from None
    if network.num_addresses < 8:
        raise ValueError(f"network.external_cidr {value!r} is too small for floating IPs")
    return str(network)


def _cloud_section(value: object) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise TypeError("'cloud' must be a mapping of name and clouds_yaml")
    return tuple((str(k), str(v)) for k, v in value.items() if k in ("name", "clouds_yaml") and v)


@dataclass(frozen=True)
class OwnCredentials:
    """A compute's own message-queue and Keystone users (control/node_accounts.py)."""

    rabbitmq_user: str
    rabbitmq_password: str
    keystone_user: str
    keystone_password: str

    def __repr__(self) -> str:  # never a password in a traceback or a log line
        return f"OwnCredentials({self.rabbitmq_user!r}, {self.keystone_user!r})"


def issue_compute_settings(
    config: ControlConfig,
    node: NodeRecord,
    *,
    revocation_list: str,
    own: OwnCredentials | None = None,
) -> dict[str, str]:
    """The compute role's settings for ``node`` (secrets included), with the
    cluster's CRL (PEM) for its libvirtd and QEMU. With ``own``, the node's
    own users replace control.yaml's shared ones everywhere a compute holds
    a secret: the message queue (nova-compute, the Open vSwitch agent) and
    Keystone (nova-compute's Placement, Neutron and service-token users).
    The shared metadata secret is not issued: no compute service uses it."""
    if own is None:
        transport_url = config.transport_url
        users = {u: (u, config.service_passwords[u]) for u in SERVICE_USERS}
    else:
        transport_url = config.transport_url_for(own.rabbitmq_user, own.rabbitmq_password)
        users = {u: (own.keystone_user, own.keystone_password) for u in SERVICE_USERS}
    settings = {
        "host": node.name,
        "my_ip": node.address,
        "local_ip": node.address,
        "control_address": config.control_address,
        "region": config.region,
        "auth_url": config.keystone_url,
        "transport_url": transport_url,
        "virt_type": config.virt_type,
        "compute_driver": config.compute_driver,
        # Only a real hypervisor sends vif-plugged events (not nova's fake drivers).
        "vif_plugging_is_fatal": "false" if config.compute_driver.startswith("fake.") else "true",
        "vif_plugging_timeout": "0" if config.compute_driver.startswith("fake.") else "300",
        "tunnel_types": config.tunnel_types,
        "ovn_sb_connection": config.ovn_sb_connection,
        "migration_crl": revocation_list,
    }
    for user, (username, password) in users.items():
        settings[f"{user}_username"] = username
        settings[f"{user}_password"] = password
    return settings


def control_settings(config: ControlConfig) -> dict[str, str]:
    """The control role's settings (secrets included): what its templates and
    commands are rendered with. Never logged, never shown."""
    ports = dict(config.ports)
    keystone = urlsplit(config.keystone_url)
    settings = {
        "control_address": config.control_address,
        "region": config.region,
        "keystone_url": config.keystone_url,
        "keystone_port": str(keystone.port or 5000),
        "transport_url": config.transport_url,
        "rabbitmq_user": config.rabbitmq_user,
        "rabbitmq_password": config.rabbitmq_password,
        "rabbitmq_port": str(config.rabbitmq_port),
        "rabbitmq_dist_port": str(ports["rabbitmq_dist"]),
        "epmd_port": str(ports["epmd"]),
        "db_port": str(ports["mariadb"]),
        "db_password": config.database_password,
        "db_base_url": (
            f"mysql+pymysql://openstack:{config.database_password}@127.0.0.1:{ports['mariadb']}"
        ),
        "admin_password": config.admin_password,
        "discover_hosts_interval": str(config.discover_hosts_interval),
        # The control is the network node: its Open vSwitch agent's vxlan endpoint.
        "local_ip": config.control_address,
        "tunnel_types": config.tunnel_types,
        "external_cidr": config.external_cidr,
        "external_gateway_cidr": config.external_gateway_cidr,
    }
    for name in ("glance", "placement", "nova", "neutron"):
        settings[f"{name}_port"] = str(ports[name])
    for user in CONTROL_SERVICE_USERS:
        settings[f"{user}_password"] = config.service_passwords[user]
    return settings


def record_cloud(path: Path, clouds_yaml: Path) -> None:
    """Point control.yaml's ``cloud`` section at the admin clouds.yaml."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise errors.StorageError(f"cannot read the control config {path}: {exc}") from exc
    wanted = {"clouds_yaml": str(clouds_yaml), "name": CLOUD_NAME}
    if isinstance(data, dict) and data.get("cloud") != wanted:
        data["cloud"] = wanted
        header = (
            "# microstackd control configuration (docs/control-config.md).\n"
            "# Secrets below were generated at control init; keep this file private.\n"
        )
        write_private_file(path, (header + yaml.safe_dump(data, sort_keys=False)).encode())


#: Each generated secret of control.yaml (``rotate-secrets``' names) and where it is.
SECRET_PATHS: dict[str, tuple[str, ...]] = {
    "database": ("database", "password"),
    "rabbitmq": ("rabbitmq", "password"),
    **{user: ("service_users", user, "password") for user in CONTROL_SERVICE_USERS},
    "admin": ("admin", "password"),
    "metadata": ("metadata_secret",),
}


def generate_secret() -> str:
    """A new secret, as control init makes them (URL-safe: no quoting anywhere)."""
    return _secret()


def with_secrets(config: ControlConfig, values: Mapping[str, str]) -> ControlConfig:
    """``config`` with the secrets ``values`` names (``SECRET_PATHS``' keys) replaced."""
    unknown = set(values) - set(SECRET_PATHS)
    if unknown:
        raise ValueError(f"not a control.yaml secret: {', '.join(sorted(unknown))}")
    passwords = dict(config.service_passwords)
    passwords.update({u: values[u] for u in CONTROL_SERVICE_USERS if u in values})
    return dataclasses.replace(
        config,
        database_password=values.get("database", config.database_password),
        rabbitmq_password=values.get("rabbitmq", config.rabbitmq_password),
        admin_password=values.get("admin", config.admin_password),
        metadata_secret=values.get("metadata", config.metadata_secret),
        service_passwords=passwords,
    )


def write_secrets(path: Path, values: Mapping[str, str]) -> None:
    """Write the secrets ``values`` names into control.yaml (everything else
    in it kept), atomically, 0600."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise errors.StorageError(f"cannot read the control config {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise errors.InvalidArgument(f"control config {path} must be a YAML mapping")
    for name, value in values.items():
        *parents, leaf = SECRET_PATHS[name]
        section = data
        for key in parents:
            section = _section(section, key)
        section[leaf] = value
    header = (
        "# microstackd control configuration (docs/control-config.md).\n"
        "# Secrets below were generated at control init or by rotate-secrets; keep it private.\n"
    )
    write_private_file(path, (header + yaml.safe_dump(data, sort_keys=False)).encode())


def redact(settings: dict[str, str]) -> dict[str, str]:
    return {k: ("<secret>" if k in SECRET_KEYS else v) for k, v in settings.items()}
