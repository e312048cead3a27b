"""Stand-in for a role's OpenStack service where no OpenStack environment is
configured (``--openstack-prefix`` unset): it checks the configuration the
real service would read, exits 1 naming every missing key, and otherwise
says so and stays up until stopped, like a service.

    python -m microstackd.node.standin --service nova-compute \\
        --config-root DIR --require FILE:SECTION.KEY ...
"""

from __future__ import annotations

import argparse
import configparser
import signal
import sys
import time
from pathlib import Path


def check(root: Path, requires: list[str]) -> list[str]:
    """The ``FILE:SECTION.KEY`` requirements that are not met."""
    missing: list[str] = []
    parsed: dict[str, configparser.ConfigParser | None] = {}
    for requirement in requires:
        name, _, key = requirement.partition(":")
        section, _, option = key.partition(".")
        if name not in parsed:
            parser = configparser.ConfigParser(interpolation=None)
            try:
                parsed[name] = parser if parser.read(root / name) else None
            except configparser.Error as exc:
                print(f"{root / name}: not valid INI: {exc}", flush=True)
                parsed[name] = None
        found = parsed[name]
        if found is None:
            missing.append(f"{root / name} (file missing or unreadable)")
        elif not found.has_option(section, option) or not found.get(section, option).strip():
            missing.append(f"{root / name}: [{section}] {option}")
    return missing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--service", required=True)
    parser.add_argument("--config-root", type=Path, required=True)
    parser.add_argument("--require", action="append", default=[])
    args = parser.parse_args()
    missing = check(args.config_root, args.require)
    if missing:
        for item in missing:
            print(f"{args.service}: missing required setting {item}", flush=True)
        sys.exit(1)
    print(
        f"{args.service} stand-in: configuration complete ({len(args.require)} settings checked); "
        "no OpenStack environment is configured (--openstack-prefix), so the real service "
        "is not running",
        flush=True,
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
