"""The control's init order as data: every need of every step (NEEDS) is
met by the order itself, never by another lane's timing; every service's
database migration and service users are among its needs, as its templates
say; and a migration step redone after an unfinished attempt starts from
empty databases, at init only."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from pathlib import Path

import pytest

from microstackd.control import config as control_config
from microstackd.control.plane import ControlPlane
from microstackd.node import render, restarts, steps
from microstackd.node.roles import CONTROL
from microstackd.node.roles.control import NEEDS
from microstackd.node.roles.parts import RoleDefinition, SetupStep, Together, service_step
from microstackd.node.services import ProcessManager
from microstackd.store import Store

from .test_control_role import _daemon_config, _values

VALUES = {"openstack_prefix": "/x"}


@pytest.fixture
def config(tmp_path: Path) -> control_config.ControlConfig:
    return control_config.ensure(tmp_path / "control.yaml", "10.0.0.1")


_DATABASE = re.compile(r"\$\{db_base_url\}/(\w+)")
_SERVICE_USER = re.compile(r"^password = \$\{(glance|nova|neutron|placement)_password\}", re.M)


def _position(role: RoleDefinition = CONTROL) -> dict[str, tuple[int, int, int]]:
    """Each step's (entry of the order, lane, place in its lane)."""
    found: dict[str, tuple[int, int, int]] = {}
    for entry, item in enumerate(role.order):
        lanes = item.lanes if isinstance(item, Together) else ((item,),)
        for lane, steps_ in enumerate(lanes):
            for place, step in enumerate(steps_):
                found[step] = (entry, lane, place)
    return found


def _done_before(need: str, step: str, at: dict[str, tuple[int, int, int]]) -> bool:
    """``need`` is certainly done when ``step`` starts: an earlier entry,
    or earlier in the same lane."""
    (e1, l1, p1), (e2, l2, p2) = at[need], at[step]
    return e1 < e2 or (e1 == e2 and l1 == l2 and p1 < p2)


def _closure(step: str, needs: dict[str, tuple[str, ...]] = NEEDS) -> set[str]:
    seen: set[str] = set()
    todo = list(needs.get(step, ()))
    while todo:
        need = todo.pop()
        if need not in seen:
            seen.add(need)
            todo += needs.get(need, ())
    return seen


def _unmet(role: RoleDefinition, needs: dict[str, tuple[str, ...]]) -> list[str]:
    """Every need of ``needs`` that ``role``'s order leaves to another lane's timing."""
    at = _position(role)
    return [
        f"{step} needs {need}"
        for step, wanted in needs.items()
        for need in wanted
        if not _done_before(need, step, at)
    ]


def test_the_order_meets_every_need_without_relying_on_another_lane() -> None:
    at = _position()
    assert set(NEEDS) <= set(at) and all(set(n) <= set(at) for n in NEEDS.values())
    broken = _unmet(CONTROL, NEEDS)
    assert not broken, broken


def test_a_need_only_in_another_lane_is_found() -> None:
    """The check above can fail: two lanes of one group do not order each other."""
    at = {"a": (1, 0, 0), "b": (1, 1, 1), "c": (2, 0, 0)}
    assert not _done_before("a", "b", at)
    assert _done_before("a", "c", at) and not _done_before("c", "a", at)


def _raw_templates() -> dict[str, str]:
    return {f.path: render.template_text(f.template) for f in CONTROL.files}


def test_every_service_needs_its_schema_and_its_service_users(
    tmp_path: Path, config: control_config.ControlConfig
) -> None:
    values = _values(tmp_path, config, CONTROL)
    raw = _raw_templates()
    migrates = {db: s.name for s in CONTROL.setup for db in s.schema}
    checked = set()
    for service in CONTROL.services:
        step = service_step(service.name)
        needs = _closure(step)
        for path in restarts.files_read(service, CONTROL, values, tmp_path / "etc"):
            text = raw[path]
            for db in _DATABASE.findall(text):
                assert migrates[db] in needs, f"{step} reads {db} ({path})"
                checked.add(step)
            if _SERVICE_USER.search(text):
                assert "identity" in needs, f"{step} uses a service user ({path})"
                checked.add(step)
    # The services that take either from their files (a failing read finds none).
    assert {
        service_step(s)
        for s in (
            "keystone",
            "glance",
            "placement",
            "nova-api",
            "nova-conductor",
            "nova-scheduler",
            "neutron-api",
            "neutron-rpc-server",
        )
    } <= checked


def test_each_migration_step_migrates_the_databases_of_the_files_it_reads(
    tmp_path: Path, config: control_config.ControlConfig
) -> None:
    values = _values(tmp_path, config, CONTROL)
    raw = _raw_templates()
    schemas = {s.name: s for s in CONTROL.setup if s.schema}
    assert set(schemas) == {
        "keystone-db-sync",
        "glance-db-sync",
        "placement-db-sync",
        "nova-api-db-sync",
        "nova-db-sync",
        "neutron-db-migrations",
    }
    paths = restarts.file_paths(CONTROL, values, tmp_path / "etc")
    named = {db for s in schemas.values() for db in s.schema}
    for step in schemas.values():
        argv = " ".join(render.expand(step.commands[0], values))
        read = {p for p, full in paths.items() if str(full) in argv}
        in_files = {db for p in read for db in _DATABASE.findall(raw[p])}
        assert set(step.schema) & in_files, step.name
        assert step.schema_client, step.name
    # nova_cell0 is nova-manage's (cell_v2 map_cell0 names it after nova's).
    assert named == {
        db for t in raw.values() for db in _DATABASE.findall(t) if db != "nova_api"
    } | {"nova_api", "nova_cell0"}


def test_a_migrations_databases_are_written_by_nothing_before_it_is_done() -> None:
    """No step, and no service, that may write a migration step's databases
    can run before that step is done: which is what makes dropping them safe
    while it is not (``SetupStep.schema``)."""
    at = _position()
    for step in CONTROL.setup:
        if not step.schema:
            continue
        for other, _ in at.items():
            if other == step.name:
                continue
            if step.name in _closure(other):
                assert _done_before(step.name, other, at)
        # Everything that reads these databases needs this step (above), so
        # nothing that reads them runs beside it or before it.
        readers = [o for o in at if step.name in _closure(o)]
        assert readers, step.name


def test_reset_sql_drops_and_creates_named_databases_only() -> None:
    sql = steps.reset_sql(("nova", "nova_cell0")).decode()
    assert sql == (
        "DROP DATABASE IF EXISTS `nova`;\n"
        "CREATE DATABASE `nova` CHARACTER SET utf8mb4;\n"
        "DROP DATABASE IF EXISTS `nova_cell0`;\n"
        "CREATE DATABASE `nova_cell0` CHARACTER SET utf8mb4;\n"
    )
    for bad in ("nova`; DROP DATABASE mysql; --", "", "Nova", "a b"):
        with pytest.raises(ValueError, match="not a database name"):
            steps.reset_sql((bad,))


def _schema_step(tmp_path: Path) -> SetupStep:
    """A migration step whose 'client' records its stdin, whose 'migration'
    records that it ran after it."""
    trace = tmp_path / "trace"
    return SetupStep(
        "db-sync",
        "migrating",
        (("/bin/sh", "-c", f"echo migrated >> {trace}"),),
        schema=("nova", "nova_cell0"),
        schema_client=("/bin/sh", "-c", f"cat >> {trace}"),
    )


def test_a_fresh_schema_is_made_before_the_migration_only_when_asked(tmp_path: Path) -> None:
    step, trace = _schema_step(tmp_path), tmp_path / "trace"
    said: list[str] = []

    async def progress(message: str) -> None:
        said.append(message)

    asyncio.run(steps.run_setup(step, VALUES, tmp_path / "logs", progress))
    assert trace.read_text() == "migrated\n"
    trace.unlink()
    asyncio.run(steps.run_setup(step, VALUES, tmp_path / "logs", progress, fresh_schema=True))
    assert trace.read_text() == steps.reset_sql(step.schema).decode() + "migrated\n"
    assert any("dropping nova, nova_cell0" in m for m in said)
    log = (tmp_path / "logs" / "setup-db-sync.log").read_text()
    assert "dropping and creating nova, nova_cell0" in log


def test_a_failed_reset_fails_the_step_before_the_migration(tmp_path: Path) -> None:
    trace = tmp_path / "trace"
    step = SetupStep(
        "db-sync",
        "migrating",
        (("/bin/sh", "-c", f"echo migrated >> {trace}"),),
        schema=("nova",),
        schema_client=("/bin/sh", "-c", "echo 'ERROR 2002: cannot connect'; exit 1"),
    )
    with pytest.raises(Exception, match=r"(?s)exited with status 1.*cannot connect"):
        asyncio.run(
            steps.run_setup(step, VALUES, tmp_path / "logs", _noop_progress, fresh_schema=True)
        )
    assert not trace.exists()


async def _noop_progress(message: str) -> None:
    return None


class _Ctx:
    """What the plane's action reads of its StepContext."""

    def __init__(self, step: str, redone: bool) -> None:
        self.step, self.redone = step, redone

    async def progress(self, message: str, percent: int = 0, *, waiting: bool = False) -> None:
        return None


@pytest.mark.parametrize(
    ("init", "redone", "fresh"),
    [(True, True, True), (True, False, False), (False, True, False), (False, False, False)],
)
def test_only_inits_redone_migration_starts_from_empty_databases(
    tmp_path: Path,
    config: control_config.ControlConfig,
    monkeypatch: pytest.MonkeyPatch,
    init: bool,
    redone: bool,
    fresh: bool,
) -> None:
    asked: list[bool] = []

    async def run_setup(
        step: SetupStep,
        values: Mapping[str, str],
        log_dir: Path,
        progress: steps.Progress,
        *,
        fresh_schema: bool = False,
    ) -> str:
        asked.append(fresh_schema)
        return "ran"

    monkeypatch.setattr(steps, "run_setup", run_setup)
    store = Store(tmp_path / "state")
    try:
        plane = ControlPlane(_daemon_config(tmp_path), store, ProcessManager(tmp_path / "logs"))
        plane._rendered = True  # the configuration is not what this test is about
        plane._resume_done.set()  # no services restarted with the daemon
        actions = plane.actions(lambda: config, init=init)
        ctx = _Ctx("nova-db-sync", redone)
        assert asyncio.run(actions["nova-db-sync"](ctx)) == "ran"  # type: ignore[arg-type]
    finally:
        store.close()
    assert asked == [fresh]
