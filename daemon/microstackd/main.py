"""microstackd: flags, logging, signals, start-up."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

from microstackd import __version__, errors, validate
from microstackd.config import (
    DEFAULT_LISTEN,
    DEFAULT_SOCKET,
    DEFAULT_STATE_DIR,
    DaemonConfig,
    default_node_name,
)

log = logging.getLogger("microstackd")


class KeyValueFormatter(logging.Formatter):
    """One event per line, key=value; no timestamp under systemd (journald adds it)."""

    def __init__(self, timestamps: bool) -> None:
        super().__init__()
        self._timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        parts = []
        if self._timestamps:
            parts.append(f"time={self.formatTime(record, '%Y-%m-%dT%H:%M:%S')}")
        parts.append(f"level={record.levelname.lower()}")
        parts.append(f"logger={record.name}")
        text, fields = split_fields(record.getMessage().replace("\n", "\\n"))
        if text:
            parts.append(f"msg={text!r}" if " " in text or "=" in text else f"msg={text}")
        parts.extend(fields)
        if record.exc_info:
            parts.append("exc=" + repr(self.formatException(record.exc_info)))
        return " ".join(parts)


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
        type=int,
        default=0,
        help="the mTLS cluster port (default: the --listen port + 1)",
    )
    parser.add_argument("--node-name", default="", help="this node's name (default: the hostname)")
    parser.add_argument("--hostname", default="", help="hostname put in this node's certificate")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument("--version", action="version", version=f"microstackd {__version__}")
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace) -> DaemonConfig:
    listen = args.listen
    if listen.startswith(("0.0.0.0:", "[::]:")):
        host, _, port_text = listen.rpartition(":")
        host = host.strip("[]")
        if not port_text.isdigit():
            raise errors.InvalidArgument(f"--listen {listen!r}: port must be a number")
        port = int(port_text)
    else:
        host, port = validate.host_port(listen, "--listen")
    cluster_port = args.cluster_port or port + 1
    if not 0 < cluster_port < 65536 or cluster_port == port:
        raise errors.InvalidArgument(f"--cluster-port {cluster_port} is not usable")
    name = validate.node_name(args.node_name or default_node_name(), "--node-name")
    hostname = validate.hostname(args.hostname or name, "--hostname")
    return DaemonConfig(
        state_dir=args.state_dir,
        socket=args.socket,
        listen_host=host,
        listen_port=port,
        cluster_port=cluster_port,
        node_name=name,
        hostname=hostname,
    )


async def serve(config: DaemonConfig) -> None:
    from microstackd.daemon import Daemon  # grpc import after flag errors are shown

    daemon = Daemon(config)
    await daemon.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    waiter = asyncio.ensure_future(daemon.wait())
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    log.info("stopping")
    await daemon.stop()
    for task in (waiter, stopper):
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter(timestamps="JOURNAL_STREAM" not in os.environ))
    logging.basicConfig(level=args.log_level.upper(), handlers=[handler])
    try:
        config = build_config(args)
        asyncio.run(serve(config))
    except errors.MicrostackError as exc:
        print(f"microstackd: error: {exc.message}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
