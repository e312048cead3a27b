"""microstackd: flags, logging, signals, start-up."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import resource
import signal
import sys
from pathlib import Path

from microstackd import __version__, errors, logcontext, notify, versions
from microstackd.config import (
    DEFAULT_CONFIG_FILE,
    DEFAULT_CONFIG_ROOT,
    DEFAULT_LISTEN,
    DEFAULT_SOCKET,
    DEFAULT_STATE_DIR,
    SERVICE_MANAGERS,
    DaemonConfig,
    default_node_name,
)
from microstackd.trust import names

log = logging.getLogger("microstackd")


#: Syslog priorities of the log levels: journald takes a line's from its
#: "<N>" prefix (SyslogLevelPrefix=, on by default) into PRIORITY=.
SYSLOG_PRIORITY = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}


class KeyValueFormatter(logging.Formatter):
    """One event per line, key=value. Under journald no timestamp (journald
    adds its own) and the level's syslog priority as a "<N>" prefix."""

    def __init__(self, timestamps: bool, journal: bool = False) -> None:
        super().__init__()
        self._timestamps = timestamps
        self._journal = journal

    def format(self, record: logging.LogRecord) -> str:
        line = self._format(record)
        if self._journal:
            return f"<{SYSLOG_PRIORITY.get(record.levelname, 6)}>{line}"
        return line

    def _format(self, record: logging.LogRecord) -> str:
        parts = []
        if self._timestamps:
            parts.append(f"time={self.formatTime(record, '%Y-%m-%dT%H:%M:%S')}")
        parts.append(f"level={record.levelname.lower()}")
        parts.append(f"logger={record.name}")
        text, fields = split_fields(record.getMessage().replace("\n", "\\n"))
        if text:
            parts.append(f"msg={text!r}" if " " in text or "=" in text else f"msg={text}")
        parts.extend(fields)
        request_id = logcontext.REQUEST_ID.get()
        if request_id:
            parts.append(f"request={request_id}")
        if record.exc_info:
            parts.append("exc=" + repr(self.formatException(record.exc_info)))
        return " ".join(parts)


def stderr_is_journal() -> bool:
    """Whether standard error is journald's stream (systemd.exec(5),
    $JOURNAL_STREAM): not merely a child of a unit with its stderr elsewhere."""
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        stat = os.fstat(sys.stderr.fileno())
        return (stat.st_dev, stat.st_ino) == (int(device), int(inode))
    except (OSError, ValueError):
        return False


def split_fields(message: str) -> tuple[str, list[str]]:
    """'bootstrap failed source=1.2.3.4 node=n' -> ('bootstrap failed', ['source=…', 'node=n'])."""
    words = message.split(" ")
    for i, word in enumerate(words):
        key, eq, _ = word.partition("=")
        if eq and key.isidentifier():
            return " ".join(words[:i]), words[i:]
    return message, []


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="microstackd", description="The MicroStack clustering daemon."
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help=f"where keys and the database live (default {DEFAULT_STATE_DIR})",
    )
    parser.add_argument(
        "--socket",
        type=Path,
        default=DEFAULT_SOCKET,
        help=f"the local admin socket (default {DEFAULT_SOCKET})",
    )
    parser.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        help=f"ADDRESS:PORT joiners dial (default {DEFAULT_LISTEN}); the mTLS "
        "cluster port is the next port up unless --cluster-port says otherwise",
    )
    parser.add_argument(
        "--cluster-port",
        default=0,
        help="the mTLS cluster port (default: the --listen port + 1)",
    )
    parser.add_argument("--node-name", default="", help="this node's name (default: the hostname)")
    parser.add_argument("--hostname", default="", help="hostname put in this node's certificate")
    parser.add_argument(
        "--service-manager",
        choices=SERVICE_MANAGERS,
        default=None,
        help="how role services run: systemd, snap, process, or auto "
        "(systemd if it is PID 1, snap inside the snap, else process)",
    )
    parser.add_argument(
        "--config-root",
        type=Path,
        default=None,
        help=f"where role configuration is rendered (default {DEFAULT_CONFIG_ROOT})",
    )
    parser.add_argument(
        "--openstack-prefix",
        type=Path,
        default=None,
        help="environment holding the OpenStack executables (bin/nova-compute, ...); "
        "without it role services run as configuration-checking stand-ins",
    )
    parser.add_argument(
        "--control-config",
        type=Path,
        default=None,
        help="the control's cluster configuration (default STATE_DIR/control.yaml)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help=f"daemon config file (YAML; default {DEFAULT_CONFIG_FILE} if present); "
        "flags override it",
    )
    parser.add_argument(
        "--unreachable-after",
        default=None,
        help="(control) show an active member unreachable after this many seconds without a "
        "heartbeat (default 30; members beat every third of it)",
    )
    parser.add_argument(
        "--heartbeat-datagrams",
        default=None,
        help="(control) on: members beat by authenticated UDP datagram on the cluster port's "
        "number, the cheapest for the control; off: on their mTLS streams (default on)",
    )
    parser.add_argument(
        "--bootstrap-backoff",
        default=None,
        help="(control) lock-out after a source's third failed bootstrap, doubling per failure "
        "(default 1 s)",
    )
    parser.add_argument(
        "--bootstrap-backoff-max",
        default=None,
        help="(control) longest lock-out of a source (default 60 s)",
    )
    parser.add_argument(
        "--bootstrap-per-source",
        default=None,
        help="bootstrap connections, and open exchanges, one source (an IPv4 address or an "
        "IPv6 /64) may hold at once (default 8)",
    )
    parser.add_argument(
        "--bootstrap-connections",
        default=None,
        help="bootstrap connections in all (default 1024; fewer when the descriptor limit "
        "leaves less room)",
    )
    parser.add_argument(
        "--cert-lifetime",
        default=None,
        help="(control) how long the node certificates it issues are valid (default 365d; "
        "a number of seconds or with a unit: 30s, 12h, 365d)",
    )
    parser.add_argument(
        "--bootstrap-cert-lifetime",
        default=None,
        help="how long this node's bootstrap-port certificate is valid (default 3650d)",
    )
    parser.add_argument(
        "--renew-before",
        default=None,
        help="renew a certificate once less than this is left of it (default 30d; less than "
        "either lifetime)",
    )
    parser.add_argument(
        "--step-delay",
        action="append",
        default=[],
        metavar="STEP=SECONDS",
        help="fault-injection aid for tests: pause before running STEP (repeatable)",
    )
    # For tests only (docs/api.md, "Versions"): declare another microstackd
    # version than this build's, to see the control's skew window at work.
    parser.add_argument("--report-version", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--log-level", default=None, choices=["debug", "info", "warning", "error"])
    parser.add_argument("--version", action="version", version=f"microstackd {__version__}")
    return parser.parse_args(argv)


#: Keys of the daemon config file, each the name of a flag without "--".
FILE_KEYS = (
    "state_dir",
    "socket",
    "listen",
    "cluster_port",
    "node_name",
    "hostname",
    "service_manager",
    "config_root",
    "openstack_prefix",
    "control_config",
    "log_level",
    "unreachable_after",
    "heartbeat_datagrams",
    "bootstrap_backoff",
    "bootstrap_backoff_max",
    "bootstrap_per_source",
    "bootstrap_connections",
    "cert_lifetime",
    "bootstrap_cert_lifetime",
    "renew_before",
)
_PATH_KEYS = {"state_dir", "socket", "config_root", "openstack_prefix", "control_config"}


def load_config_file(path: Path | None) -> dict[str, object]:
    """The daemon config file's settings (empty when the default file is absent)."""
    explicit = path is not None
    path = path or DEFAULT_CONFIG_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        if explicit:
            raise errors.InvalidArgument(f"--config {path}: no such file") from None
        return {}
    except OSError as exc:
        raise errors.InvalidArgument(f"cannot read the config file {path}: {exc}") from exc
    # Only a daemon with a config file pays for the YAML parser (~1 MB resident).
    import yaml

    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise errors.InvalidArgument(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise errors.InvalidArgument(f"config file {path} must be a YAML mapping")
    unknown = sorted(set(data) - set(FILE_KEYS))
    if unknown:
        raise errors.InvalidArgument(
            f"config file {path}: unknown keys {', '.join(unknown)} (known: {', '.join(FILE_KEYS)})"
        )
    return {k: Path(v) if k in _PATH_KEYS and v is not None else v for k, v in data.items()}


def merge(args: argparse.Namespace, settings: dict[str, object]) -> argparse.Namespace:
    """Flags given on the command line win over the config file, which wins over defaults."""
    defaults = parse_args([])
    merged = vars(args).copy()
    for key, value in settings.items():
        if merged.get(key) == getattr(defaults, key):
            merged[key] = value
    return argparse.Namespace(**merged)


def build_config(args: argparse.Namespace) -> DaemonConfig:
    listen = args.listen
    if not isinstance(listen, str):
        raise errors.InvalidArgument(f"--listen {listen!r}: expected ADDRESS:PORT")
    if listen.startswith(("0.0.0.0:", "[::]:")):
        host, _, port_text = listen.rpartition(":")
        host = host.strip("[]")
        port = names.port(port_text, f"--listen {listen!r}: the port", allow_zero=True)
    else:
        host, port = names.host_port(listen, "--listen", allow_any_port=True)
    # Port 0 is any free port (read back from the ``ready`` log line); the
    # cluster port then defaults to any too.
    cluster_port = names.port(args.cluster_port, "--cluster-port", allow_zero=True)
    cluster_port = cluster_port or (port + 1 if port else 0)
    if cluster_port > 65535 or (cluster_port and cluster_port == port):
        raise errors.InvalidArgument(f"--cluster-port {cluster_port} is not usable")
    prefix = args.openstack_prefix
    if prefix is not None and not (prefix / "bin").is_dir():
        raise errors.InvalidArgument(
            f"--openstack-prefix {prefix}: no bin/ directory there (create the environment with "
            "openstack/install-env.sh, or leave the flag out to run stand-ins)"
        )
    lifetime = _duration(args.cert_lifetime, 365 * _DAY, "--cert-lifetime")
    bootstrap_lifetime = _duration(
        args.bootstrap_cert_lifetime, 3650 * _DAY, "--bootstrap-cert-lifetime"
    )
    renew_before = _duration(args.renew_before, 30 * _DAY, "--renew-before")
    if renew_before >= min(lifetime, bootstrap_lifetime):
        raise errors.InvalidArgument(
            f"--renew-before {names.say_duration(renew_before)} must be shorter than "
            f"--cert-lifetime ({names.say_duration(lifetime)}) and --bootstrap-cert-lifetime "
            f"({names.say_duration(bootstrap_lifetime)}): a certificate would be renewed as "
            "soon as it is issued"
        )
    name = names.node_name(args.node_name or default_node_name(), "--node-name")
    hostname = names.hostname(args.hostname or name, "--hostname")
    return DaemonConfig(
        state_dir=args.state_dir.absolute(),
        socket=args.socket.absolute(),
        listen_host=host,
        listen_port=port,
        cluster_port=cluster_port,
        node_name=name,
        hostname=hostname,
        service_manager=args.service_manager or "auto",
        config_root=(args.config_root or DEFAULT_CONFIG_ROOT).absolute(),
        openstack_prefix=prefix.absolute() if prefix else None,
        control_config=args.control_config.absolute() if args.control_config else None,
        unreachable_after=_positive(args.unreachable_after, 30.0, "--unreachable-after"),
        heartbeat_datagrams=_switch(args.heartbeat_datagrams, True, "--heartbeat-datagrams"),
        bootstrap_backoff=_positive(args.bootstrap_backoff, 1.0, "--bootstrap-backoff"),
        bootstrap_backoff_max=_positive(
            args.bootstrap_backoff_max, 60.0, "--bootstrap-backoff-max"
        ),
        bootstrap_per_source=_count(args.bootstrap_per_source, 8, "--bootstrap-per-source"),
        bootstrap_connections=_count(args.bootstrap_connections, 1024, "--bootstrap-connections"),
        step_delays=_step_delays(args.step_delay),
        cert_lifetime=lifetime,
        bootstrap_cert_lifetime=bootstrap_lifetime,
        renew_before=renew_before,
        version=versions.check_version(args.report_version, "--report-version")
        if args.report_version
        else __version__,
    )


def _switch(value: object, default: bool, flag: str) -> bool:
    """on/off (or a YAML boolean from the config file)."""
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("on", "true", "yes", "1"):
        return True
    if text in ("off", "false", "no", "0"):
        return False
    raise errors.InvalidArgument(f"{flag} {value!r}: expected on or off")


def _positive(value: object, default: float, flag: str) -> float:
    if value is None:
        return default
    return names.seconds(value, flag, 0, 86400)


_DAY = 86400.0


def _duration(value: object, default: float, flag: str) -> float:
    """A certificate duration: at least 2 s (x509.MIN_LIFETIME), at most 100 years."""
    if value is None:
        return default
    return names.duration(value, flag, 2, 36500 * _DAY)


def _count(value: object, default: int, flag: str) -> int:
    if value is None:
        return default
    return names.integer(value, flag, 1, 1_000_000)


def raise_fd_limit() -> None:
    """Raise the soft descriptor limit to the hard one: the bootstrap port's
    caps are set well below it (api/gate.py), so that a flood of it never
    takes the descriptors the local socket and the mTLS port need."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (OSError, ValueError) as exc:
            log.warning("cannot raise the descriptor limit from %d: %s", soft, exc)


def _step_delays(items: list[str]) -> dict[str, float]:
    delays: dict[str, float] = {}
    for item in items:
        step, eq, seconds = item.partition("=")
        if not step or not eq:
            raise errors.InvalidArgument(f"--step-delay {item!r}: expected STEP=SECONDS")
        delays[step] = names.seconds(seconds, f"--step-delay {item!r}", 0, 86400)
    return delays


def reload(args: argparse.Namespace, current: DaemonConfig) -> None:
    """SIGHUP: re-read the config file. The log level applies at once; any
    other change is named as needing a restart (sockets, ports, identity and
    state cannot change under running calls)."""
    notify.reloading()
    try:
        merged = merge(args, load_config_file(args.config))
        fresh = build_config(merged)
    except errors.MicrostackError as exc:
        log.error("reload failed; keeping the running configuration error=%r", exc.message)
        notify.ready("reload failed; running configuration kept")
        return
    level = str(merged.log_level or "info").upper()
    logging.getLogger().setLevel(level)
    changed = [
        f.name
        for f in dataclasses.fields(current)
        if getattr(current, f.name) != getattr(fresh, f.name)
    ]
    log.info(
        "configuration reloaded log_level=%s needs_restart=%s",
        level.lower(),
        ",".join(changed) or "none",
    )
    notify.ready("configuration reloaded")


async def serve(config: DaemonConfig, args: argparse.Namespace | None = None) -> None:
    from microstackd.daemon import Daemon  # grpc import after flag errors are shown

    # Handlers first: a SIGTERM right after READY=1 must still stop cleanly.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args is not None:
        loop.add_signal_handler(signal.SIGHUP, reload, args, config)
    daemon = Daemon(config)
    await daemon.start()
    notify.ready(f"node {config.node_name} listening")
    waiter = asyncio.ensure_future(daemon.wait())
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    log.info("stopping")
    notify.stopping()
    await daemon.stop()
    for task in (waiter, stopper):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def main(argv: list[str] | None = None) -> None:
    notify.take_socket()  # no child of the daemon may notify systemd
    flags = parse_args(argv)
    try:
        args = merge(flags, load_config_file(flags.config))
    except errors.MicrostackError as exc:
        print(f"microstackd: error: {exc.message}", file=sys.stderr)
        sys.exit(2)
    handler = logging.StreamHandler(sys.stderr)
    journal = stderr_is_journal()
    handler.setFormatter(KeyValueFormatter(timestamps=not journal, journal=journal))
    logging.basicConfig(level=str(args.log_level or "info").upper(), handlers=[handler])
    try:
        config = build_config(args)
        raise_fd_limit()
        asyncio.run(serve(config, flags))
    except errors.MicrostackError as exc:
        print(f"microstackd: error: {exc.message}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
