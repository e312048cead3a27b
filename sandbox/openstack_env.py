"""The OpenStack environment the real suites and the demo use: created, or
brought up to date, with ``openstack/install-env.sh`` (idempotent).

An environment is current when its stamp (``PREFIX/.microstack-env``, written
by install-env.sh) is the SHA-256 of install-env.sh, requirements.txt and
constraints.txt as they are now: a change to any of them (a new package, a
new Debian dependency) re-runs the script once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PREFIX = Path(os.environ.get("MICROSTACK_OPENSTACK_PREFIX", "/opt/microstack-openstack/venv"))
STAMP = ".microstack-env"
#: Where the OpenStack suites write what they measured, for docs/performance.md.
MEASUREMENTS = Path(
    os.environ.get("MICROSTACK_OPENSTACK_MEASUREMENTS", "/tmp/microstack-openstack-e2e.json")
)
#: Lines of a failed install that mean "no network", not a broken install.
NO_NETWORK = re.compile(
    r"Temporary failure in name resolution|Could not resolve|Network is unreachable|"
    r"Failed to establish a new connection|Failed to fetch|No route to host",
    re.IGNORECASE,
)


class InstallFailed(Exception):
    def __init__(self, output: str, no_network: bool) -> None:
        super().__init__(output)
        self.output = output
        self.no_network = no_network


def expected_stamp() -> str:
    digest = hashlib.sha256()
    for name in ("install-env.sh", "requirements.txt", "constraints.txt"):
        digest.update((REPO / "openstack" / name).read_bytes())
    return digest.hexdigest()


def is_current(prefix: Path = PREFIX) -> bool:
    try:
        stamp = (prefix / STAMP).read_text().strip()
    except OSError:
        return False
    return (prefix / "bin" / "nova-compute").exists() and stamp == expected_stamp()


def ensure(prefix: Path = PREFIX, capture: bool = True) -> bool:
    """Run install-env.sh unless the environment is current; whether it ran.
    Raises ``InstallFailed`` with its output when it fails."""
    if is_current(prefix):
        return False
    result = subprocess.run(
        [str(REPO / "openstack" / "install-env.sh"), str(prefix)],
        capture_output=capture,
        text=True,
        timeout=1800,
        check=False,
    )
    if result.returncode != 0:
        output = (result.stdout or "") + (result.stderr or "")
        raise InstallFailed(output, bool(NO_NETWORK.search(output)))
    return True


def measure(**values: Any) -> None:
    """Add figures to MEASUREMENTS (a JSON object)."""
    data = json.loads(MEASUREMENTS.read_text()) if MEASUREMENTS.exists() else {}
    data.update(values)
    MEASUREMENTS.write_text(json.dumps(data, indent=1) + "\n")
