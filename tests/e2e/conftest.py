"""Fixtures for the e2e suites: networks of namespaces, daemons, clusters.

Teardown is by finalizers, so it runs when a test fails; a session-level
safety net removes every namespace with this run's prefix at the end (and at
interpreter exit, and on SIGTERM).
"""

from __future__ import annotations

import atexit
import contextlib
import signal
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from types import FrameType

import pytest

from sandbox import netns, openstack_env
from sandbox.netns import Cluster, Host, Network, init_control, join

PASSWORD = "correct horse battery staple"
WRONG_PASSWORD = "incorrect horse"

NETWORKS = pytest.StashKey[list[Network]]()


def pytest_report_header(config: pytest.Config) -> str | None:
    with contextlib.suppress(Exception):
        stale = netns.stale_namespaces()
        if stale:
            return (
                f"e2e: {len(stale)} namespaces left by dead runs "
                f"(remove with `python -m sandbox.netns --reap-stale`): {' '.join(stale)}"
            )
    return None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test's report carries the logs of every daemon it started."""
    report = yield
    if report.failed:
        for network in item.stash.get(NETWORKS, []):
            for host in network.hosts.values():
                if host.log_path is not None:
                    report.sections.append(
                        (f"microstackd log {host.name} ({host.ns})", host.daemon_log(150))
                    )
    return report


def _reap_quietly() -> None:
    with contextlib.suppress(Exception):
        netns.reap(netns.PREFIX)


@pytest.fixture(scope="session")
def netns_session() -> Iterator[None]:
    """Skip where namespaces cannot be created; remove this run's leftovers at the end."""
    reason = netns.unavailable_reason()
    if reason is not None:
        pytest.skip(f"e2e needs network namespaces: {reason}")
    atexit.register(_reap_quietly)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")  # unwinds through the finalizers

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        left = netns.reap(netns.PREFIX)
        assert not left, f"namespaces survived their tests' teardown: {left}"


@pytest.fixture
def make_network(
    netns_session: None, request: pytest.FixtureRequest, tmp_path: Path
) -> Callable[[], Network]:
    """Factory of networks, each torn down at the end of the test, failed or not."""
    networks = request.node.stash.setdefault(NETWORKS, [])

    def make() -> Network:
        network = Network(tmp_path / f"net{len(networks)}")
        networks.append(network)
        request.addfinalizer(network.close)
        return network

    return make


@pytest.fixture
def network(make_network: Callable[[], Network]) -> Network:
    return make_network()


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "pw.txt"
    path.write_text(PASSWORD + "\n")
    return path


@pytest.fixture
def wrong_password_file(tmp_path: Path) -> Path:
    path = tmp_path / "wrong-pw.txt"
    path.write_text(WRONG_PASSWORD + "\n")
    return path


@pytest.fixture
def control(network: Network, password_file: Path) -> Host:
    """A host running microstackd that has created a cluster."""
    host = network.add_host("control")
    host.start_daemon("control")
    init_control(host, password_file)
    return host


@pytest.fixture
def cluster(network: Network, control: Host, password_file: Path) -> Cluster:
    """A control and two computes, joined through the CLI."""
    result = Cluster(network, control, [])
    for name in ("compute1", "compute2"):
        host = network.add_host(name)
        host.start_daemon(name)
        result.joins[name] = join(host, control, password_file)
        result.computes.append(host)
    return result


@pytest.fixture(scope="session")
def openstack_prefix() -> Path:
    """The OpenStack environment (and the Debian packages its roles and the
    test image need), created or brought up to date once per machine with
    openstack/install-env.sh."""
    started = time.monotonic()
    try:
        ran = openstack_env.ensure(openstack_env.PREFIX)
    except openstack_env.InstallFailed as exc:
        if exc.no_network:
            pytest.skip(f"no network to create the OpenStack environment: {exc.output[-800:]}")
        pytest.fail(f"openstack/install-env.sh failed:\n{exc.output[-3000:]}")
    if ran:
        openstack_env.measure(env_install_s=round(time.monotonic() - started, 1))
    return openstack_env.PREFIX
