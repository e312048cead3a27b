"""The one identity validator: node names, host names, addresses, ports and
the cluster password, wherever they come from (a flag, a request, a joiner's
hello, a certificate the control issues). Each failure is an
``errors.InvalidArgument`` naming the field and what is wrong. Pure."""

from __future__ import annotations

import ipaddress
import re

from microstackd import errors

_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_HOSTNAME = re.compile(r"(?=.{1,253}\Z)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?)+")
_CLUSTER_ID = re.compile(r"[\x21-\x7e]{1,64}")
MAX_PASSWORD = 1024
DEFAULT_PORT = 10002


def node_name(value: str, field: str = "node name") -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise errors.InvalidArgument(
            f"{field} {value!r} is not valid: use 1-63 lowercase letters, digits and hyphens, "
            "not starting or ending with a hyphen"
        )
    if value == "compute":
        # Nova treats a host named "compute" specially; OPENSTACK.md.
        raise errors.InvalidArgument(f"{field} 'compute' is reserved: choose another name")
    return value


def cluster_id(value: str) -> str:
    """A cluster id: 1-64 printable ASCII characters without spaces."""
    if not isinstance(value, str) or not _CLUSTER_ID.fullmatch(value):
        raise errors.InvalidArgument(f"cluster id {value!r} is malformed")
    return value


def hostname(value: str, field: str = "hostname") -> str:
    if not isinstance(value, str) or not _HOSTNAME.fullmatch(value):
        raise errors.InvalidArgument(f"{field} {value!r} is not a valid hostname")
    return value


def ip_address(value: str, field: str = "address") -> str:
    try:
        address = ipaddress.ip_address(value)
    except (ValueError, TypeError):
        raise errors.InvalidArgument(
            f"{field} {value!r} is not an IP address (expected e.g. 10.0.0.5 or fd00::5)"
        ) from None
    if address.is_unspecified or address.is_multicast:
        raise errors.InvalidArgument(f"{field} {value!r} cannot be used to reach a node")
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        raise errors.InvalidArgument(f"{field} {value!r} has a zone; use a routable address")
    return str(address)


def host_port(
    value: str,
    field: str = "control address",
    default_port: int = DEFAULT_PORT,
    *,
    allow_any_port: bool = False,
) -> tuple[str, int]:
    """Parse HOST, HOST:PORT, [V6] or [V6]:PORT; HOST must be an IP address.
    ``allow_any_port``: PORT may be 0 (a daemon's own: any free port)."""
    host, port_text = value, ""
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise errors.InvalidArgument(f"{field} {value!r}: missing ']'")
        host, rest = value[1:end], value[end + 1 :]
        if rest and not rest.startswith(":"):
            raise errors.InvalidArgument(f"{field} {value!r}: expected ':PORT' after ']'")
        port_text = rest[1:]
    elif value.count(":") == 1:
        host, port_text = value.split(":")
    port = default_port
    if port_text:
        lowest = 0 if allow_any_port else 1
        if not port_text.isdigit() or not lowest <= int(port_text) < 65536:
            raise errors.InvalidArgument(f"{field} {value!r}: port must be {lowest}-65535")
        port = int(port_text)
    return ip_address(host, field), port


def password(value: str) -> str:
    if not value:
        raise errors.InvalidArgument("the cluster password is empty")
    if len(value) > MAX_PASSWORD:
        raise errors.InvalidArgument(
            f"the cluster password is longer than {MAX_PASSWORD} characters"
        )
    return value


def format_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
