"""What an idle daemon's memory is made of: the ``footprint`` part.

    python bench/idle_memory.py MODULES.txt      (the replay, run by the part)

A control (initialised) and a compute (joined through the CLI, its two
stand-in services running) are started with ``PYTHONPROFILEIMPORTTIME=1``,
so each daemon's log lists every module it imported, in the order each
finished loading. Each is read idle (RSS, anonymous / file-backed, PSS),
then restarted and read idle again: the steady state of a node that
rebooted, which has not run ``init`` or a join in that process.

The replay then imports each daemon's modules (the control's and the
compute's, after init / join), in that order, in a fresh interpreter and
reads ``/proc/self`` after each: what each top-level package costs on its
own (its dependencies were imported before it; microstackd is split by
subpackage, ``microstackd.control`` and so on). Every import lands in the
package whose module finished loading, so a package's figure is its own
code, data and shared libraries; RSS counts the shared libraries' pages this
process touched, PSS divides them among the processes mapping them (here:
every daemon and CLI on the machine).

``DEFERRED`` lists the packages the daemon imports at their first use only;
the part says which of them each idle daemon had loaded.
"""

from __future__ import annotations

import importlib
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent

#: Imported at their first use, not at start-up (docs/performance.md, "Idle
#: RSS"): the YAML parser (a config file, control.yaml), libsodium (the
#: first bootstrap), tarfile (the first backup or restore), cryptography
#: (the first key, signature or verification: an idle daemon reads its
#: certificates with trust.der).
DEFERRED = ("yaml", "nacl", "tarfile", "cryptography")


def imported_modules(log: str, run: int = 0) -> list[str]:
    """The modules ``-X importtime`` reports in a log, in the order they
    finished loading, of the daemon's ``run``-th start (0: the first)."""
    runs: list[dict[str, None]] = []
    for line in log.splitlines():
        if not line.startswith("import time:"):
            continue
        if "imported package" in line:  # the header: a new interpreter
            runs.append({})
            continue
        if not runs:
            runs.append({})
        runs[-1].setdefault(line.split("|")[2].strip(), None)
    return list(runs[run]) if -len(runs) <= run < len(runs) else []


def package_of(module: str) -> str:
    """Where a module's cost is counted: its top-level package, microstackd's
    by subpackage (microstackd.control, microstackd.node, ...)."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "microstackd" and len(parts) > 1 else parts[0]


def _memory() -> dict[str, int]:
    """kB of this process: RSS, its anonymous and file-backed parts, PSS."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0])
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            out["Pss"] = int(line.split()[1])
    return out


def replay(modules: list[str]) -> dict[str, Any]:
    """Import ``modules`` in order; memory per top-level package, in MB."""
    start = before = _memory()
    by_package: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    failed = []
    for name in modules:
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
        except Exception:  # platform modules importtime listed as tried (nt, winreg, ...)
            failed.append(name)
            continue
        after = _memory()
        top = by_package[package_of(name)]
        for key, value in after.items():
            top[key] += (value - before[key]) / 1024
        top["modules"] += 1
        before = after
    rows = [
        {
            "package": package,
            "modules": int(cost["modules"]),
            "rss_mb": round(cost["VmRSS"], 2),
            "anon_mb": round(cost["RssAnon"], 2),
            "file_mb": round(cost["RssFile"], 2),
            "pss_mb": round(cost["Pss"], 2),
        }
        for package, cost in sorted(by_package.items(), key=lambda kv: -kv[1]["VmRSS"])
    ]
    end = _memory()
    return {
        "interpreter_mb": {k: round(v / 1024, 1) for k, v in start.items()},
        "after_imports_mb": {k: round(v / 1024, 1) for k, v in end.items()},
        "packages": rows,
        "not_importable": failed,
    }


def idle(daemon: Any, seconds: float = 3.0) -> dict[str, float]:
    """RSS and its parts of a daemon after ``seconds`` idle."""
    time.sleep(seconds)
    return {"rss": round(daemon.rss_mb(), 1), **daemon.rss_split_mb()}


def measure(fleet: Any, password_file: Path, start_control: Any) -> dict[str, Any]:
    """The part: an idle control and compute, before and after a restart
    (each start's imports logged), and the replay of each daemon's imports."""
    import os

    os.environ["PYTHONPROFILEIMPORTTIME"] = "1"  # inherited by the daemons started here
    try:
        ctl, _ = start_control(fleet, "ctl-footprint", password_file)
        node = fleet.daemon("node-footprint", "127.0.4.1")
        return _measure(fleet, password_file, ctl, node)
    finally:
        del os.environ["PYTHONPROFILEIMPORTTIME"]


def _measure(fleet: Any, password_file: Path, ctl: Any, node: Any) -> dict[str, Any]:
    import json
    import subprocess

    joined = subprocess.run(
        node.ctl_argv(
            "join", f"127.0.0.1:{ctl.port}", "--password-file", str(password_file),
            "--address", "127.0.4.1",
        ),
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if joined.returncode != 0:
        raise RuntimeError(f"join exited {joined.returncode}: {joined.stderr}")
    result: dict[str, Any] = {
        "control_after_init": idle(ctl),
        "compute_after_join": idle(node, 0.0),
    }
    modules = {d.name: imported_modules(d.log.read_text()) for d in (ctl, node)}
    for d in (ctl, node):
        d.stop()
        d.start()
    result["control_restarted"] = idle(ctl)
    result["compute_restarted"] = idle(node, 0.0)
    restarted = {d.name: imported_modules(d.log.read_text(), -1) for d in (ctl, node)}
    result["modules_imported"] = {name: len(m) for name, m in modules.items()}
    result["modules_imported_restarted"] = {name: len(m) for name, m in restarted.items()}
    result["deferred_loaded"] = {
        key: [p for p in DEFERRED if any(m.split(".")[0] == p for m in mods)]
        for key, mods in (
            ("control_after_init", modules[ctl.name]),
            ("compute_after_join", modules[node.name]),
            ("control_restarted", restarted[ctl.name]),
            ("compute_restarted", restarted[node.name]),
        )
    }
    for key, d in (("control_imports", ctl), ("compute_imports", node)):
        lists = fleet.root / f"footprint-modules-{d.name}.txt"
        lists.write_text("\n".join(modules[d.name]) + "\n")
        out = subprocess.run(
            [sys.executable, str(BENCH / "idle_memory.py"), str(lists)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        result[key] = json.loads(out.stdout)
    only_control = sorted(
        {m.split(".")[0] for m in modules[ctl.name]} - {m.split(".")[0] for m in modules[node.name]}
    )
    result["packages_only_the_control_imported"] = only_control
    fleet.stop_daemons([ctl, node])
    return result


if __name__ == "__main__":
    import json

    names = [n for n in Path(sys.argv[1]).read_text().split() if n]
    print(json.dumps(replay(names)))
