"""The one identity validator: node names, host names, addresses, ports,
durations and the cluster password, wherever they come from (a flag, the
config file, control.yaml, a request, a joiner's hello, a certificate the
control issues). Each failure is an ``errors.InvalidArgument`` naming the
field and what is wrong. Pure.

Every value is matched whole (``fullmatch``, never ``match`` with ``$``,
which lets a trailing newline through), and numbers in ASCII digits only:
``int()`` and ``\\d`` also take Arabic-Indic and other digits, spaces and
underscores."""

from __future__ import annotations

import ipaddress
import re

from microstackd import errors

_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_HOSTNAME = re.compile(r"(?=.{1,253}\Z)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?)+")
_CLUSTER_ID = re.compile(r"[\x21-\x7e]{1,64}")
_DIGITS = re.compile(r"[0-9]{1,18}")
_DECIMAL = re.compile(r"[0-9]{1,18}(\.[0-9]{1,9})?")
MAX_PASSWORD = 1024
DEFAULT_PORT = 10002
#: The name in every control certificate, which members dial it by
#: (``grpc.ssl_target_name_override``); the CA puts it in no other certificate.
CONTROL_SERVER_NAME = "microstackd-control"
#: The name in every node's self-signed bootstrap certificate.
BOOTSTRAP_SERVER_NAME = "microstackd-bootstrap"
#: Names no node may have or put in its certificate.
RESERVED_NAMES = frozenset({CONTROL_SERVER_NAME, BOOTSTRAP_SERVER_NAME})


def dns_key(name: str) -> str:
    """How DNS compares a name: case-insensitive, without a trailing dot."""
    return name.lower().rstrip(".")


def _not_reserved(value: str, field: str) -> None:
    if dns_key(value) in RESERVED_NAMES:
        raise errors.InvalidArgument(
            f"{field} {value!r} is reserved for microstackd's own certificates: choose another"
        )


def node_name(value: str, field: str = "node name") -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise errors.InvalidArgument(
            f"{field} {value!r} is not valid: use 1-63 lowercase letters, digits and hyphens, "
            "not starting or ending with a hyphen"
        )
    if value == "compute":
        # Nova treats a host named "compute" specially; OPENSTACK.md.
        raise errors.InvalidArgument(f"{field} 'compute' is reserved: choose another name")
    _not_reserved(value, field)
    return value


def cluster_id(value: str) -> str:
    """A cluster id: 1-64 printable ASCII characters without spaces."""
    if not isinstance(value, str) or not _CLUSTER_ID.fullmatch(value):
        raise errors.InvalidArgument(f"cluster id {value!r} is malformed")
    return value


def hostname(value: str, field: str = "hostname") -> str:
    if not isinstance(value, str) or not _HOSTNAME.fullmatch(value):
        raise errors.InvalidArgument(f"{field} {value!r} is not a valid hostname")
    _not_reserved(value, field)
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
    ``allow_any_port``: PORT may be 0 (a daemon's own: any free port). A ':'
    with no port after it is an error, not the default port."""
    if not isinstance(value, str):
        raise errors.InvalidArgument(f"{field} {value!r} is not an address")
    host, port_text = value, None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise errors.InvalidArgument(f"{field} {value!r}: missing ']'")
        host, rest = value[1:end], value[end + 1 :]
        if rest and not rest.startswith(":"):
            raise errors.InvalidArgument(f"{field} {value!r}: expected ':PORT' after ']'")
        port_text = rest[1:] if rest else None
    elif value.count(":") == 1:
        host, port_text = value.split(":")
    port = default_port
    if port_text is not None:
        lowest = 0 if allow_any_port else 1
        if not _DIGITS.fullmatch(port_text) or not lowest <= int(port_text) < 65536:
            raise errors.InvalidArgument(
                f"{field} {value!r}: port must be {lowest}-65535, in ASCII digits after the ':'"
            )
        port = int(port_text)
    return ip_address(host, field), port


def integer(value: object, field: str, low: int, high: int) -> int:
    """A whole number from a flag, a file or a request: an int, or ASCII digits."""
    number: int | None = None
    if type(value) is int:
        number = value
    elif isinstance(value, str) and _DIGITS.fullmatch(value):
        number = int(value)
    if number is None or not low <= number <= high:
        raise errors.InvalidArgument(
            f"{field} {value!r}: expected a whole number {low}-{high} (ASCII digits)"
        )
    return number


def port(value: object, field: str, *, allow_zero: bool = False) -> int:
    """A TCP port (1-65535; 0 too with ``allow_zero``: any free port)."""
    return integer(value, field, 0 if allow_zero else 1, 65535)


def seconds(value: object, field: str, low: float, high: float) -> float:
    """A duration in seconds, ``low`` < value <= ``high``: a number, or ASCII
    digits with an optional fraction (no exponent, sign, nan or inf)."""
    number: float | None = None
    if type(value) in (int, float):
        number = float(value)  # type: ignore[arg-type]
    elif isinstance(value, str) and _DECIMAL.fullmatch(value):
        number = float(value)
    if number is None or not low < number <= high:  # also False for nan
        raise errors.InvalidArgument(
            f"{field} {value!r}: expected a number of seconds, more than {low:g} "
            f"and at most {high:g} (ASCII digits)"
        )
    return number


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(value: object, field: str, low: float, high: float) -> float:
    """A duration in seconds, ``low`` <= value <= ``high``: a number of seconds,
    or ASCII digits (with an optional fraction) followed by one unit of
    ``s``, ``m``, ``h`` or ``d`` (``30s``, ``12h``, ``365d``)."""
    number: float | None = None
    if type(value) in (int, float):
        number = float(value)  # type: ignore[arg-type]
    elif isinstance(value, str):
        text, unit = (value[:-1], _UNITS[value[-1]]) if value[-1:] in _UNITS else (value, 1)
        if _DECIMAL.fullmatch(text):
            number = float(text) * unit
    if number is None or not low <= number <= high:
        raise errors.InvalidArgument(
            f"{field} {value!r}: expected a duration of at least {say_duration(low)} and at "
            f"most {say_duration(high)}: a number of seconds, or a number followed by s, m, h "
            "or d (30s, 12h, 365d)"
        )
    return number


def say_duration(seconds: float) -> str:
    """``seconds`` in the largest unit that divides it (``30s``, ``12h``, ``365d``)."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


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
