"""``rotate-secrets`` (control/secret_rotation.py): the secrets recorded
before anything is told of them, the order (where each is checked, then
the files and their readers, then the admin), only the readers of a
changed file restarted, a stopped rotation carried on with the same
secrets from the step it stopped at, computes touched only when one still
holds the shared credentials, and no secret in any message. The control
plane's real values and templates are rendered into a temporary folder;
Keystone, RabbitMQ, the setup commands and the service manager are
recording fakes (the OpenStack suite runs it on the real cloud)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import types
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from microstackd import errors
from microstackd.cloud import Note
from microstackd.config import DaemonConfig
from microstackd.control import config as control_config
from microstackd.control.node_accounts import Accounts
from microstackd.control.plane import ControlPlane
from microstackd.control.reconfigure import APPLIED, SKIPPED, Outcome
from microstackd.control.secret_rotation import (
    RECORD,
    SECRETS,
    STEP_NAMES,
    Record,
    SecretRotation,
    dependent_files,
    next_steps,
    restart_plan,
)
from microstackd.model import ClusterRecord, NodeState, Role, ServiceRecord
from microstackd.node.rabbitmq import RabbitMQ
from microstackd.node.roles import CONTROL
from microstackd.store import Store
from tests.unit.test_node_accounts import _node

#: Every call the fakes saw, in order: (what, detail).
CALLS: list[tuple[str, str]] = []


def _daemon_config(tmp_path: Path) -> DaemonConfig:
    return DaemonConfig(
        state_dir=tmp_path / "state",
        socket=tmp_path / "run" / "microstackd.sock",
        listen_host="10.0.0.1",
        listen_port=10002,
        cluster_port=10003,
        node_name="ctl",
        hostname="ctl",
        config_root=tmp_path / "etc",
        openstack_prefix=Path("/opt/os"),
    )


class FakeCluster:
    def __init__(self, store: Store, config: DaemonConfig) -> None:
        self.store = store
        self.config = config

    def require(self) -> ClusterRecord:
        cluster = self.store.cluster()
        assert cluster is not None
        return cluster

    def load_control_config(self) -> control_config.ControlConfig:
        return control_config.ensure(self.config.control_config_path, "10.0.0.1")


class FakePlane(ControlPlane):
    """The real values and rendering; setup steps and restarts recorded."""

    fail_restart: str = ""

    def started(self, service: str) -> bool:
        return True

    async def run_setup(
        self, name: str, values: Mapping[str, str], progress: Callable[[str], Awaitable[None]]
    ) -> str:
        if name == "nova-cell-urls":  # Nova's cell mappings: both URLs
            CALLS.append((f"setup {name}", f"{values['db_base_url']} {values['transport_url']}"))
            return f"{name}: done"
        password = values["db_password"] if name == "databases" else values["admin_password"]
        CALLS.append((f"setup {name}", password))
        return f"{name}: done"

    async def restart(self, name: str, values: Mapping[str, str]) -> ServiceRecord:
        if name == self.fail_restart:
            raise errors.ServiceFailed(f"{name} exited 1")
        CALLS.append(("restart", name))
        return ServiceRecord(name, "running", "")


class FakeCloud:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.fail: set[str] = set()

    def configured(self) -> object:
        return object()

    def forget(self) -> None:
        CALLS.append(("forget", ""))

    async def run(self, op: str, request: Mapping[str, Any], timeout: float = 900) -> Any:
        # The secret Keystone is given was recorded before.
        if "password" in request:
            recorded = Record.from_json(self.store.read_file(RECORD) or b"")
            assert recorded.secrets[request["name"]] == request["password"]
        if op in self.fail:
            raise errors.CloudError("Keystone answered 503")
        CALLS.append((op, f"{request.get('name', '')}={request.get('password', '')}"))
        return {"message": "ok"}


class FakeRabbit:
    fail = False

    async def ensure_user(self, name: str, password: str, permissions: Any, *, tags: str) -> str:
        if FakeRabbit.fail:
            raise errors.CloudError("RabbitMQ on the control is not running")
        CALLS.append(("rabbitmq", f"{name}={password} tags={tags} {permissions.configure}"))
        return "set"


class FakeAccounts:
    def __init__(self) -> None:
        self.own: dict[str, Accounts] = {}
        self.reason: str | None = None

    def unavailable(self) -> str | None:
        return self.reason

    def current(self, node: str) -> Accounts | None:
        return self.own.get(node)


class FakeReconfigure:
    def __init__(self) -> None:
        self.result = APPLIED

    async def run(self, nodes: list[str], progress: Any) -> list[Outcome]:
        CALLS.append(("reconfigure", ",".join(nodes)))
        return [Outcome(n, self.result, f"{n}: {self.result}") for n in nodes]


@dataclasses.dataclass
class World:
    made: SecretRotation
    store: Store
    config: DaemonConfig
    plane: FakePlane
    cloud: FakeCloud
    accounts: FakeAccounts
    reconfigure: FakeReconfigure
    before: control_config.ControlConfig


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> World:
    CALLS.clear()
    FakeRabbit.fail = False
    monkeypatch.setattr(RabbitMQ, "of_control_role", lambda values: FakeRabbit())
    config = _daemon_config(tmp_path)
    store = Store(config.state_dir, "ctl")
    store.set_cluster(ClusterRecord("c1", Role.CONTROL, "ctl", "10.0.0.1", 10002, 10003, "ff", 0.0))
    for name in ("node-1", "node-2"):
        store.put_node(dataclasses.replace(_node(name), state=NodeState.ACTIVE, agent_port=10003))
    cluster = FakeCluster(store, config)
    before = cluster.load_control_config()
    plane = FakePlane(config, store, manager=types.SimpleNamespace(kind="process"))
    asyncio.run(plane.render_with(before))  # as control init rendered them
    before = cluster.load_control_config()
    cloud, accounts, reconfigure = FakeCloud(store), FakeAccounts(), FakeReconfigure()
    for name in ("node-1", "node-2"):
        accounts.own[name] = Accounts(name, f"compute-{name}", "r", f"compute-{name}", "k")
    made = SecretRotation(cluster, plane, cloud, accounts, reconfigure)  # type: ignore[arg-type]
    return World(made, store, config, plane, cloud, accounts, reconfigure, before)


def _run(world: World) -> tuple[list[Any], list[Note]]:
    notes: list[Note] = []

    async def progress(note: Note) -> None:
        notes.append(note)

    return asyncio.run(world.made.run(progress)), notes


def _yaml(world: World) -> dict[str, Any]:
    return dict(yaml.safe_load(world.config.control_config_path.read_text()))


#: The control's services that read a file holding a rotated secret (not the admin's).
READERS = [
    "keystone", "glance", "placement", "nova-api", "neutron-api", "neutron-rpc-server",
    "nova-conductor", "nova-scheduler", "neutron-openvswitch-agent", "neutron-dhcp-agent",
    "neutron-l3-agent",
]  # fmt: skip


def test_every_secret_rotated_in_order_and_its_readers_restarted(world: World) -> None:
    outcomes, notes = _run(world)
    assert [(o.step, o.result) for o in outcomes] == [(s, "done") for s in STEP_NAMES]
    after = world.made._cluster.load_control_config()
    old, new = world.before, after
    assert new.database_password != old.database_password
    assert new.rabbitmq_password != old.rabbitmq_password
    assert new.admin_password != old.admin_password
    assert new.metadata_secret != old.metadata_secret
    for user in ("glance", "nova", "neutron", "placement"):
        assert new.service_passwords[user] != old.service_passwords[user]
    # What is not a generated secret stays as it was.
    assert (
        dataclasses.replace(
            new,
            database_password=old.database_password,
            rabbitmq_password=old.rabbitmq_password,
            admin_password=old.admin_password,
            metadata_secret=old.metadata_secret,
            service_passwords=old.service_passwords,
        )
        == old
    )
    # Where each is checked, each with the new value, in this order.
    kinds = [what for what, _ in CALLS]
    assert kinds[:4] == ["user-password"] * 4
    assert CALLS[:4] == [
        ("user-password", f"{u}={new.service_passwords[u]}")
        for u in ("nova", "neutron", "placement", "glance")
    ]
    assert CALLS[4] == (
        "rabbitmq",
        f"openstack={new.rabbitmq_password} tags=administrator .*",
    )
    assert CALLS[5] == ("setup databases", new.database_password)
    cells = CALLS[6][1]
    assert CALLS[6][0] == "setup nova-cell-urls", CALLS[6]
    assert f"openstack:{new.database_password}@" in cells and new.rabbitmq_password in cells
    assert [d for w, d in CALLS if w == "restart"] == READERS
    after_restarts = kinds.index("setup keystone-bootstrap")
    assert kinds.index("restart") < after_restarts  # the admin after the services
    assert CALLS[after_restarts] == ("setup keystone-bootstrap", new.admin_password)
    assert kinds[after_restarts + 1 :] == ["forget", "view"]  # clouds.yaml read again
    # Rendered: every file holds the new secrets, clouds.yaml the admin's.
    etc = world.config.config_root
    nova = (etc / "nova/nova.conf").read_text()
    assert new.database_password in nova and old.database_password not in nova
    assert new.rabbitmq_password in nova and new.service_passwords["placement"] in nova
    clouds = (world.config.state_dir / "clouds.yaml").read_text()
    assert new.admin_password in clouds and old.admin_password not in clouds
    rabbit_conf = (world.config.state_dir / "services/rabbitmq/rabbitmq.conf").read_text()
    assert new.rabbitmq_password in rabbit_conf  # its first boot after a wipe
    # Done: nothing left recorded; every compute has its own users: none touched.
    assert world.store.read_file(RECORD) is None
    assert "reconfigure" not in kinds
    assert "none touched" in outcomes[-1].message
    # No secret in any message.
    said = " ".join([n.message for n in notes] + [o.message for o in outcomes])
    for secret in (*new.service_passwords.values(), new.admin_password, new.database_password):
        assert secret not in said


def test_the_new_secrets_are_recorded_before_anything_is_told(world: World) -> None:
    world.cloud.fail = {"user-password"}
    outcomes, _ = _run(world)
    assert outcomes[0].result == "failed" and "Keystone answered 503" in outcomes[0].message
    assert "rotate-secrets` again carries on" in outcomes[0].message
    assert [o.result for o in outcomes[1:]] == ["not run"] * (len(STEP_NAMES) - 1)
    record = Record.from_json(world.store.read_file(RECORD) or b"")
    assert set(record.secrets) == set(SECRETS) and record.done == []
    mode = (world.config.state_dir / RECORD).stat().st_mode & 0o777
    assert mode == 0o600
    # control.yaml still holds the old secrets: the services' files are untouched.
    assert world.made._cluster.load_control_config() == world.before


def test_a_stopped_rotation_carries_on_with_the_same_secrets(world: World) -> None:
    FakeRabbit.fail = True
    outcomes, _ = _run(world)
    assert [o.result for o in outcomes[:2]] == ["done", "failed"]
    recorded = Record.from_json(world.store.read_file(RECORD) or b"")
    assert recorded.done == ["service-users"]
    CALLS.clear()
    FakeRabbit.fail = False
    outcomes, notes = _run(world)
    assert [o.result for o in outcomes] == ["done"] * len(STEP_NAMES)
    assert outcomes[0].message == "done before"
    assert "carrying on with the rotation begun at" in notes[0].message
    assert "user-password" not in [w for w, _ in CALLS]  # Keystone's users were done
    new = world.made._cluster.load_control_config()
    assert new.rabbitmq_password == recorded.secrets["rabbitmq"]
    assert new.admin_password == recorded.secrets["admin"]
    assert new.service_passwords["nova"] == recorded.secrets["nova"]


def test_a_rotation_stopped_among_the_restarts_restarts_only_the_rest(world: World) -> None:
    world.plane.fail_restart = "nova-api"
    outcomes, _ = _run(world)
    failed = next(o for o in outcomes if o.result == "failed")
    assert failed.step == "control-files" and "nova-api exited 1" in failed.message
    assert [d for w, d in CALLS if w == "restart"] == READERS[: READERS.index("nova-api")]
    # The files are written already: a re-run still restarts what is left
    # (what changes is found from the templates, not from the disk).
    CALLS.clear()
    world.plane.fail_restart = ""
    outcomes, _ = _run(world)
    assert [o.result for o in outcomes] == ["done"] * len(STEP_NAMES)
    assert [d for w, d in CALLS if w == "restart"] == READERS[READERS.index("nova-api") :]


def test_a_rotation_stopped_after_the_admin_is_redone_without_the_old_password(
    world: World,
) -> None:
    world.cloud.fail = {"view"}
    outcomes, _ = _run(world)
    failed = next(o for o in outcomes if o.result == "failed")
    assert failed.step == "admin" and "does not authenticate" in failed.message
    CALLS.clear()
    world.cloud.fail = set()
    outcomes, _ = _run(world)
    assert [o.result for o in outcomes] == ["done"] * len(STEP_NAMES)
    # The admin again through keystone-manage bootstrap (local: no old password needed).
    assert [w for w, _ in CALLS] == ["setup keystone-bootstrap", "forget", "view"]


def test_computes_on_the_shared_credentials_are_reconfigured(world: World) -> None:
    del world.accounts.own["node-2"]
    outcomes, _ = _run(world)
    assert ("reconfigure", "node-2") in CALLS
    assert outcomes[-1].result == "done" and "node-2 moved" in outcomes[-1].message
    # One that could not be reached: the step fails and a re-run retries it.
    CALLS.clear()
    world.reconfigure.result = SKIPPED
    outcomes, _ = _run(world)
    assert outcomes[-1].result == "failed" and "node-2 (skipped" in outcomes[-1].message
    world.reconfigure.result = APPLIED
    CALLS.clear()
    outcomes, _ = _run(world)
    assert [w for w, _ in CALLS] == ["reconfigure"]
    assert outcomes[-1].result == "done"


def test_refused_without_a_control_plane_or_before_its_init_ends(world: World) -> None:
    world.accounts.reason = "this control runs no OpenStack control plane (--openstack-prefix)"
    with pytest.raises(errors.CloudError, match="no OpenStack secrets to rotate: this control"):
        _run(world)
    world.accounts.reason = None
    world.plane.started = lambda service: service != "nova-scheduler"  # type: ignore[method-assign]
    with pytest.raises(errors.CloudError, match="init has not finished .*nova-scheduler"):
        _run(world)
    assert world.store.read_file(RECORD) is None and CALLS == []


def test_a_damaged_record_is_named_not_guessed(world: World) -> None:
    world.store.write_secret(RECORD, json.dumps({"secrets": {"admin": "x"}}).encode())
    with pytest.raises(errors.StorageError, match="rotate-secrets.json is damaged"):
        _run(world)
    assert CALLS == []


def test_one_rotation_at_a_time(world: World) -> None:
    async def both() -> None:
        async def progress(note: Note) -> None:
            await asyncio.sleep(0)

        first = asyncio.ensure_future(world.made.run(progress))
        await asyncio.sleep(0)
        with pytest.raises(errors.AlreadyInitialised, match="already under way"):
            await world.made.run(progress)
        await first

    asyncio.run(both())


def test_next_steps_start_at_the_first_not_done() -> None:
    record = Record(dict.fromkeys(SECRETS, "S3CRET"), 0.0)
    assert next_steps(record) == list(STEP_NAMES)
    record.done = ["service-users", "rabbitmq"]
    assert next_steps(record) == list(STEP_NAMES[2:])
    record.done = ["service-users", "database"]  # never skipped over: rabbitmq is redone
    assert next_steps(record) == list(STEP_NAMES[1:])
    record.done = list(STEP_NAMES)
    assert next_steps(record) == []
    assert "S3CRET" not in repr(record)


def test_only_the_readers_of_a_changed_file_restart(world: World) -> None:
    config = world.before
    values = world.plane.values(config)
    root = world.config.config_root
    files = dependent_files(CONTROL, config, world.plane.values, ("admin",))
    assert files == {"clouds.yaml"}
    assert restart_plan(CONTROL, files, values, root) == []  # no service reads clouds.yaml
    files = dependent_files(CONTROL, config, world.plane.values, ("database",))
    assert "control/mariadb.cnf" not in files and "nova/nova.conf" in files
    names = [s.name for s in restart_plan(CONTROL, files, values, root)]
    assert "mariadb" not in names and "neutron-dhcp-agent" not in names
    assert names[0] == "keystone"
    files = dependent_files(CONTROL, config, world.plane.values, ("rabbitmq",))
    names = [s.name for s in restart_plan(CONTROL, files, values, root)]
    assert "rabbitmq" not in names and "keystone" not in names
    assert "neutron-l3-agent" in names
    # The metadata secret is in no file: rotating it restarts nothing.
    assert dependent_files(CONTROL, config, world.plane.values, ("metadata",)) == set()


def test_write_secrets_keeps_the_rest_of_control_yaml(tmp_path: Path) -> None:
    path = tmp_path / "control.yaml"
    before = control_config.ensure(path, "10.0.0.1")
    text = path.read_text().replace("region: microstack", "region: east")
    path.write_text(text)
    control_config.write_secrets(path, {"nova": "n3w", "database": "d3w"})
    after = control_config.ensure(path, "10.0.0.1")
    assert after.region == "east"
    assert after.service_passwords["nova"] == "n3w" and after.database_password == "d3w"
    assert after.service_passwords["glance"] == before.service_passwords["glance"]
    assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(ValueError, match="not a control.yaml secret: ports"):
        control_config.with_secrets(after, {"ports": "x"})


# ------------------------------------------ interrupted: at start-up --


def _interrupted(world: World) -> Record:
    """A rotation stopped after its first step (RabbitMQ refused), as a
    control killed there leaves it: the record, service-users done."""
    FakeRabbit.fail = True
    _run(world)
    FakeRabbit.fail = False
    CALLS.clear()
    record = Record.from_json(world.store.read_file(RECORD) or b"")
    assert record.done == ["service-users"]
    return record


def test_an_unfinished_rotation_is_named_with_the_command_that_finishes_it(
    world: World,
) -> None:
    assert world.made.unfinished() is None
    record = _interrupted(world)
    unfinished = world.made.unfinished()
    assert unfinished is not None and unfinished.command == "microstackctl rotate-secrets"
    assert "is unfinished: done service-users; left rabbitmq, database," in unfinished.message
    assert "services may hold passwords that are refused" in unfinished.message
    for secret in record.secrets.values():
        assert secret not in unfinished.message
    # A damaged record is named too (the error says what to do).
    world.store.write_secret(RECORD, b"{}")
    damaged = world.made.unfinished()
    assert damaged is not None and "rotate-secrets.json is damaged" in damaged.message


def test_the_daemon_finishes_an_interrupted_rotation_at_start_up_once(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    recorded = _interrupted(world)

    async def start_and_wait() -> None:
        world.made.start()
        assert world.made._resuming is not None
        # While it runs, status says so.
        unfinished = world.made.unfinished()
        assert unfinished is not None and "being finished by this daemon" in unfinished.message
        outcomes = await world.made._resuming
        assert [o.result for o in outcomes] == ["done"] * len(STEP_NAMES)

    with caplog.at_level("INFO"):
        asyncio.run(start_and_wait())
    assert "rotate-secrets unfinished: the secret rotation begun at" in caplog.text
    assert "carrying it on now (`microstackctl rotate-secrets` follows it" in caplog.text
    assert "rotate-secrets carried on at start-up: finished" in caplog.text
    assert world.store.read_file(RECORD) is None and world.made.unfinished() is None
    assert "user-password" not in [w for w, _ in CALLS]  # Keystone's were done before
    new = world.made._cluster.load_control_config()
    assert new.rabbitmq_password == recorded.secrets["rabbitmq"]


def test_an_automatic_run_interrupted_in_turn_is_left_to_the_operator(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    _interrupted(world)
    record = Record.from_json(world.store.read_file(RECORD) or b"")
    record.automatic = 1  # an automatic run began, and its daemon died in it
    world.store.write_secret(RECORD, record.to_json())

    async def start() -> None:
        world.made.start()

    asyncio.run(start())
    assert world.made._resuming is None and CALLS == []
    assert "an automatic run of it was interrupted already" in caplog.text
    assert "finish it with `microstackctl rotate-secrets` on this control" in caplog.text
    unfinished = world.made.unfinished()
    assert unfinished is not None and "left rabbitmq" in unfinished.message
    # The operator's run carries it on, and counts the automatic try again.
    outcomes, notes = _run(world)
    assert [o.result for o in outcomes] == ["done"] * len(STEP_NAMES)
    assert "carrying on with the rotation begun at" in notes[0].message


def test_the_operators_run_follows_the_automatic_one(world: World) -> None:
    _interrupted(world)
    world.made._delays = {"rabbitmq": 0.2}  # --step-delay rotate-secrets.rabbitmq=0.2
    notes: list[Note] = []

    async def progress(note: Note) -> None:
        notes.append(note)

    async def both() -> list[Any]:
        world.made.start()
        await asyncio.sleep(0.05)
        return await world.made.run(progress)

    outcomes = asyncio.run(both())
    assert [o.result for o in outcomes] == ["done"] * len(STEP_NAMES)
    assert "being finished by this daemon since it started (now: rabbitmq)" in notes[0].message
    assert [w for w, _ in CALLS].count("rabbitmq") == 1  # once: followed, not run twice
    assert world.store.read_file(RECORD) is None


def test_a_clean_stop_during_the_automatic_run_lets_the_next_start_try_again(
    world: World,
) -> None:
    _interrupted(world)
    world.made._delays = {"rabbitmq": 30}

    async def start_and_stop() -> None:
        world.made.start()
        await asyncio.sleep(0.05)
        await world.made.close()

    asyncio.run(start_and_stop())
    record = Record.from_json(world.store.read_file(RECORD) or b"")
    assert record.automatic == 0 and record.done == ["service-users"]


def test_step_delays_apply_to_the_rotations_steps_only(world: World) -> None:
    made = SecretRotation(
        world.made._cluster,
        world.plane,
        world.cloud,  # type: ignore[arg-type]
        world.accounts,  # type: ignore[arg-type]
        world.reconfigure,  # type: ignore[arg-type]
        step_delays={"rotate-secrets.database": 5.0, "configure-node": 3.0},
    )
    assert made._delays == {"database": 5.0}
