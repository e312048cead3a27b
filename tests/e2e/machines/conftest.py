"""Fixtures of the machines suite (pytest -m machines): the cached image, the
wheels, and a cluster of three machines installed the README's way.

Teardown is by finalizers (machines first, then the network), so it runs
when a test fails; each machine's teardown checks that nothing of it is left.
A failed test's report carries each running machine's microstackd journal.
The measured times are printed at the end of the run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from sandbox.netns import Network
from tests.e2e.conftest import PASSWORD
from tests.e2e.machines import harness
from tests.e2e.machines.harness import Image, Machine

ROOT = Path(__file__).resolve().parents[3]
#: Where a machine sees this clone and the wheels (read-only binds).
SRC = "/mnt/microstackd-src"
WHEELS = "/mnt/microstackd-wheels"
INSTALL = [f"{SRC}/scripts/install-service.sh", "--wheels", WHEELS]
PASSWORD_FILE = "/root/cluster-password"

RUNNING = pytest.StashKey[list[Machine]]()
TIMINGS = pytest.StashKey[dict[str, Any]]()

T = TypeVar("T")


def timings(config: pytest.Config) -> dict[str, Any]:
    return config.stash.setdefault(TIMINGS, {})


def in_parallel(fn: Callable[[Machine], T], machines: list[Machine]) -> list[T]:
    with ThreadPoolExecutor(len(machines)) as pool:
        return list(pool.map(fn, machines))


@pytest.fixture(scope="session")
def machine_host(netns_session: None) -> None:
    reason = harness.unavailable_reason()
    if reason:
        pytest.skip(f"machines need: {reason}")


@pytest.fixture(scope="session")
def image(machine_host: None, pytestconfig: pytest.Config) -> Iterator[Image]:
    """The cached base rootfs (built on first use)."""
    image = harness.base_image()
    timings(pytestconfig)["image"] = {
        "path": str(image.path),
        "built_in_s": None if image.built_in is None else round(image.built_in, 1),
    }
    yield image
    image.release()


@pytest.fixture(scope="session")
def wheels(
    machine_host: None, tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Path:
    """microstackd's wheel and its dependencies', made here as the README says:
    the machines install offline from them."""
    path = tmp_path_factory.mktemp("wheels")
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
         "--wheel-dir", str(path), str(ROOT)],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise AssertionError(f"pip wheel failed:\n{result.stdout}{result.stderr}")
    timings(pytestconfig)["wheels_s"] = round(time.monotonic() - started, 1)
    return path


@pytest.fixture
def new_machines(
    request: pytest.FixtureRequest,
    image: Image,
    wheels: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[..., list[Machine]]:
    """Factory: ``new_machines("a", "b")`` boots machines on a network of their own."""
    return _machine_factory(request, image, wheels, tmp_path_factory)


def _machine_factory(
    request: pytest.FixtureRequest,
    image: Image,
    wheels: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[..., list[Machine]]:
    running = request.config.stash.setdefault(RUNNING, [])

    def make(*names: str) -> list[Machine]:
        workdir = tmp_path_factory.mktemp("machines")
        network = Network(workdir)
        request.addfinalizer(network.close)  # after the machines' finalizers (LIFO)
        machines = []
        for name in names:
            machine = Machine(
                network.add_host(name), image, workdir, binds=[(ROOT, SRC), (wheels, WHEELS)]
            )
            running.append(machine)

            def close(machine: Machine = machine) -> None:
                running.remove(machine)
                machine.close()

            request.addfinalizer(close)
            machines.append(machine)
        for machine in machines:
            machine.start()
        boots = in_parallel(lambda m: m.wait_booted(), machines)
        timings(request.config).setdefault("first_boot_s", {}).update(
            {m.name: round(s, 2) for m, s in zip(machines, boots, strict=True)}
        )
        return machines

    return make


@dataclass
class Cluster:
    control: Machine
    computes: list[Machine]
    #: Per machine: seconds `systemctl enable --now microstackd` took, and the
    #: `microstackctl status` run right after it returned (no retry).
    enabled: dict[str, tuple[float, subprocess.CompletedProcess[str]]] = field(default_factory=dict)

    @property
    def machines(self) -> list[Machine]:
        return [self.control, *self.computes]

    def status(self, machine: Machine | None = None) -> dict[str, Any]:
        out = (machine or self.control).run(
            ["microstackctl", "status", "--format", "json"], check=True
        )
        data: dict[str, Any] = json.loads(out.stdout)
        return data

    def node(self, name: str) -> dict[str, Any]:
        """NAME's entry in the control's status."""
        nodes: list[dict[str, Any]] = self.status()["nodes"]
        return next(n for n in nodes if n["name"] == name)


def install(machine: Machine) -> float:
    """The README's procedure, as root on the machine: the script, then the
    unit enabled and started. Returns the script's seconds."""
    started = time.monotonic()
    machine.run(INSTALL, check=True, timeout=900)
    return time.monotonic() - started


def enable_now(machine: Machine) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.monotonic()
    machine.run(["systemctl", "enable", "--now", "microstackd"], check=True, timeout=120)
    seconds = time.monotonic() - started
    return seconds, machine.run(["microstackctl", "status", "--format", "json"], timeout=30)


@pytest.fixture(scope="module")
def cluster(
    request: pytest.FixtureRequest,
    image: Image,
    wheels: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Cluster:
    """A control and two computes, each a machine with microstackd installed
    as a system service, the cluster formed through microstackctl."""
    started = time.monotonic()
    make = _machine_factory(request, image, wheels, tmp_path_factory)
    control, *computes = make("control", "compute1", "compute2")
    cluster = Cluster(control, computes)
    t = timings(request.config)
    t["install_s"] = dict(
        zip(
            (m.name for m in cluster.machines),
            (round(s, 1) for s in in_parallel(install, cluster.machines)),
            strict=True,
        )
    )
    for machine, result in zip(
        cluster.machines, in_parallel(enable_now, cluster.machines), strict=True
    ):
        cluster.enabled[machine.name] = result
    t["enable_now_s"] = {name: round(s, 2) for name, (s, _) in cluster.enabled.items()}
    for machine in cluster.machines:
        machine.run(
            ["sh", "-c", f"umask 077 && cat > {PASSWORD_FILE}"], input=PASSWORD + "\n", check=True
        )
    begun = time.monotonic()
    control.run(
        ["microstackctl", "init", "--role", "control", "--address", control.address,
         "--password-file", PASSWORD_FILE],
        check=True, timeout=120,
    )  # fmt: skip
    t["init_s"] = round(time.monotonic() - begun, 2)
    begun = time.monotonic()
    in_parallel(
        lambda m: m.run(
            [
                "microstackctl",
                "join",
                control.address,
                "--password-file",
                PASSWORD_FILE,
                "--address",
                m.address,
            ],
            check=True,
            timeout=300,
        ),  # fmt: skip
        computes,
    )
    t["joins_s"] = round(time.monotonic() - begun, 2)
    t["cluster_ready_s"] = round(time.monotonic() - started, 1)
    return cluster


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        for machine in item.config.stash.get(RUNNING, []):
            if machine.init_pid is None:
                continue
            journal = machine.run(
                ["journalctl", "--no-pager", "-n", "80", "-u", "microstackd", "-u", "microstackd-*"]
            )
            report.sections.append((f"journal of {machine.name}", journal.stdout + journal.stderr))
    return report


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    measured = config.stash.get(TIMINGS, {})
    if measured:
        terminalreporter.write_sep("-", "machines: measured")
        terminalreporter.write_line(json.dumps(measured, indent=1))
