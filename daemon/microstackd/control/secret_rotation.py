"""``rotate-secrets``: new passwords for every secret control.yaml generated
(the MariaDB user, the shared RabbitMQ user, the Keystone service users
glance, nova, neutron and placement, the admin, and the metadata secret),
set where each is checked, rendered into the control plane's files, and
the services that read a changed file restarted.

* **Recorded first**: the new secrets are written (0600,
  ``STATE_DIR/rotate-secrets.json``) before anything is told of them,
  with the steps done so far; a rotation that stops (a crash, a failed
  step) is carried on by running ``rotate-secrets`` again, which uses the
  recorded secrets and redoes the first unfinished step. Every step is
  idempotent: setting a password to the value it already has is no change.
* **Order** (``STEPS``): Keystone's service users, then RabbitMQ's user,
  then MariaDB's, each while the running services still hold their open
  connections and tokens; then control.yaml and every file are written
  and the services that read a changed file restarted at once (the window
  in which a service holds a refused password is this restart); then the
  admin (``keystone-manage bootstrap``, local, needs no old password:
  a crash after it is redone) with clouds.yaml rewritten and the daemon's
  own cloud connection made again.
* **Computes** hold only their own users (``node_accounts``): nothing of
  the shared set reaches them, so none is touched; one still on the shared
  credentials (enrolled before they existed) is reconfigured, which moves
  it to its own (``reconfigure``'s migration), with the same rolling apply.
* **Interrupted** (the control's daemon killed, the machine lost power):
  the steps done are in force where each secret is checked, while the
  services started again at start-up read files that may still hold the
  old ones, so the cloud stays broken until the rotation is finished. The
  daemon says so at start-up (its log, ``status``: ``unfinished()``) and
  finishes it itself, once (``start``): every step is idempotent and runs
  with the recorded secrets, exactly what ``rotate-secrets`` run again
  does, and there is no way back (the old secrets are refused already). If
  that automatic run is itself interrupted (a crash it may cause), it is
  not tried again: ``status`` names the command, and the operator's
  ``rotate-secrets`` (which meanwhile follows an automatic run under way)
  carries on as before.
* **RabbitMQ is not restarted**: ``default_pass`` in rabbitmq.conf is read
  only when its database is empty; the password is set in RabbitMQ itself.
  A restart would cut every compute's connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from microstackd import errors
from microstackd.cloud import Note, Progress
from microstackd.cloud.service import Cloud
from microstackd.control import config as control_config
from microstackd.control.cluster import Cluster
from microstackd.control.node_accounts import NodeAccounts
from microstackd.control.plane import ControlPlane
from microstackd.control.reconfigure import APPLIED, Reconfigure
from microstackd.model import NodeState, Role, StepState, Unfinished
from microstackd.node import render, restarts
from microstackd.node.rabbitmq import Permissions, RabbitMQ
from microstackd.node.roles import CONTROL
from microstackd.node.roles.control import CELL_URLS
from microstackd.node.roles.parts import RoleDefinition, RoleService
from microstackd.store import Store

log = logging.getLogger(__name__)

#: Where the rotation under way is recorded (under the state dir, 0600).
RECORD = "rotate-secrets.json"
#: The secrets rotated (control/config.py's SECRET_PATHS), in control.yaml's order.
SECRETS = tuple(control_config.SECRET_PATHS)
#: Those written into the control plane's files at ``control-files``; the
#: admin's only at ``admin`` (the steps before it authenticate as the admin).
SERVICE_SECRETS = tuple(s for s in SECRETS if s != "admin")
#: The shared RabbitMQ user's tags and permissions (what ``default_user`` gets).
SHARED_TAGS = "administrator"
SHARED_PERMISSIONS = Permissions(configure=".*", write=".*", read=".*")
#: Services never restarted for a changed file, and why.
NOT_RESTARTED = {
    "rabbitmq": "reads default_pass only when its database is empty; the password is set in it",
}

SERVICE_USERS_STEP = "service-users"
RABBITMQ_STEP = "rabbitmq"
DATABASE_STEP = "database"
FILES_STEP = "control-files"
ADMIN_STEP = "admin"
COMPUTES_STEP = "computes"
#: The steps, in order, and what each does.
STEPS = (
    (SERVICE_USERS_STEP, "Keystone: new passwords for the users nova, neutron, placement, glance"),
    (RABBITMQ_STEP, "RabbitMQ: a new password for the shared user"),
    (DATABASE_STEP, "MariaDB: a new password for the user openstack"),
    (FILES_STEP, "control.yaml and the control plane's files rewritten; their readers restarted"),
    (ADMIN_STEP, "Keystone: a new admin password; clouds.yaml rewritten"),
    (COMPUTES_STEP, "computes still on the shared credentials reconfigured"),
)  # fmt: skip
STEP_NAMES = tuple(name for name, _ in STEPS)
DONE, FAILED, NOT_RUN = "done", "failed", "not run"
#: How many times the daemon carries on, by itself at start-up, a rotation
#: it was stopped in the middle of, before leaving it to the operator.
MAX_AUTOMATIC = 1
#: The command that carries on (or follows) the rotation recorded.
COMMAND = "microstackctl rotate-secrets"
#: ``--step-delay`` keys of the rotation's steps (fault injection for tests).
DELAY_PREFIX = "rotate-secrets."


@dataclass
class Record:
    """The rotation under way: its new secrets and what is done (secret)."""

    secrets: dict[str, str]
    started: float
    done: list[str] = field(default_factory=list)
    #: The services ``control-files`` has restarted so far.
    restarted: list[str] = field(default_factory=list)
    #: Automatic resumes begun at start-up since the operator last ran it.
    automatic: int = 0

    def __repr__(self) -> str:  # never a password in a traceback or a log line
        return f"Record(done={self.done!r}, restarted={self.restarted!r})"

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "secrets": self.secrets,
                "started": self.started,
                "done": self.done,
                "restarted": self.restarted,
                "automatic": self.automatic,
            }
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Record:
        loaded = json.loads(data)
        record = cls(
            secrets={str(k): str(v) for k, v in loaded["secrets"].items()},
            started=float(loaded["started"]),
            done=[str(s) for s in loaded.get("done", [])],
            restarted=[str(s) for s in loaded.get("restarted", [])],
            automatic=int(loaded.get("automatic", 0)),
        )
        missing = set(SECRETS) - set(record.secrets)
        if missing or set(record.done) - set(STEP_NAMES):
            raise ValueError(f"secrets missing: {sorted(missing)}")
        return record


def _begun(record: Record) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(record.started))


def _summary(record: Record) -> str:
    """What an unfinished rotation has done and has left (no secret)."""
    left = next_steps(record)
    return (
        f"the secret rotation begun at {_begun(record)} is unfinished: done "
        f"{', '.join(s for s in STEP_NAMES if s not in left) or 'nothing yet'}; "
        f"left {', '.join(left) or 'nothing'}"
    )


def new_record(now: float) -> Record:
    """Fresh secrets for every generated one of control.yaml."""
    return Record({name: control_config.generate_secret() for name in SECRETS}, now)


def next_steps(record: Record) -> list[str]:
    """The steps still to run, in order: from the first one not done (every
    step after it runs again even if recorded, none is ever skipped over)."""
    for index, name in enumerate(STEP_NAMES):
        if name not in record.done:
            return list(STEP_NAMES[index:])
    return []


def dependent_files(
    role: RoleDefinition,
    config: control_config.ControlConfig,
    values_of: Any,
    rotated: tuple[str, ...],
) -> set[str]:
    """The role's files whose content depends on the ``rotated`` secrets:
    rendered with two different sets of them, they differ. Independent of
    what is on disk, so a resumed rotation restarts the same services."""
    first = values_of(control_config.with_secrets(config, {s: "rotation-a" for s in rotated}))
    second = values_of(control_config.with_secrets(config, {s: "rotation-b" for s in rotated}))
    return {
        f.path
        for f in role.files
        if render.render_text(f.template, first) != render.render_text(f.template, second)
    }


def restart_plan(
    role: RoleDefinition, files: set[str], values: Mapping[str, str], root: Any
) -> list[RoleService]:
    """The services that read one of ``files``, in the role's order (MariaDB
    and Keystone before their users), less ``NOT_RESTARTED``."""
    return [
        s
        for s in role.services
        if s.name not in NOT_RESTARTED and restarts.files_read(s, role, values, root) & files
    ]


@dataclass(frozen=True)
class StepOutcome:
    step: str
    result: str  # DONE, FAILED or NOT_RUN
    message: str


class SecretRotation:
    def __init__(
        self,
        cluster: Cluster,
        plane: ControlPlane,
        cloud: Cloud,
        accounts: NodeAccounts,
        reconfigure: Reconfigure,
        step_delays: Mapping[str, float] | None = None,
    ) -> None:
        self._cluster = cluster
        self._store: Store = cluster.store
        self._plane = plane
        self._cloud = cloud
        self._accounts = accounts
        self._reconfigure = reconfigure
        self._lock = asyncio.Lock()
        #: Fault injection (``--step-delay rotate-secrets.STEP=SECONDS``): a
        #: pause before a step, for the tests that stop the daemon there.
        self._delays = {
            k[len(DELAY_PREFIX) :]: v
            for k, v in (step_delays or {}).items()
            if k.startswith(DELAY_PREFIX)
        }
        #: The automatic resume begun at start-up, while it runs.
        self._resuming: asyncio.Task[list[StepOutcome]] | None = None
        #: The step under way (for ``status``).
        self._step = ""

    # ------------------------------------------------- start and stop --

    def start(self) -> None:
        """At start-up: say that a rotation is unfinished, and carry it on in
        the background unless an automatic run of it was interrupted already."""
        try:
            record = self.pending()
        except errors.StorageError as exc:
            log.error("rotate-secrets unfinished and its record unreadable: %s", exc.message)
            return
        if record is None:
            return
        what = _summary(record)
        if record.automatic >= MAX_AUTOMATIC:
            log.warning(
                "rotate-secrets unfinished: %s; an automatic run of it was interrupted already, "
                "so it is not tried again: finish it with `%s` on this control",
                what,
                COMMAND,
            )
            return
        try:
            self._refuse()
        except errors.MicrostackError as exc:
            log.warning(
                "rotate-secrets unfinished: %s; not carried on now (%s): finish it with `%s`",
                what,
                exc.message,
                COMMAND,
            )
            return
        record.automatic += 1
        self._save(record)
        self._step = next(iter(next_steps(record)), "")
        log.warning(
            "rotate-secrets unfinished: %s; carrying it on now (`%s` follows it; "
            "`microstackctl status` shows it until it is done)",
            what,
            COMMAND,
        )
        self._resuming = asyncio.get_running_loop().create_task(self._resume())

    async def _resume(self) -> list[StepOutcome]:
        async def quiet(note: Note) -> None:
            log.info("rotate-secrets phase=%s msg=%s", note.phase, note.message)

        try:
            async with self._lock:
                record = self.pending()
                if record is None:
                    return []
                outcomes = await self._steps(record, quiet)
        except asyncio.CancelledError:
            # A clean stop is not a crash: the next start may carry it on again.
            with contextlib.suppress(errors.MicrostackError):
                left = self.pending()
                if left is not None and left.automatic > 0:
                    left.automatic -= 1
                    self._save(left)
            raise
        failed = [o for o in outcomes if o.result == FAILED]
        if failed:
            log.warning(
                "rotate-secrets carried on at start-up stopped at step=%s: %s",
                failed[0].step,
                failed[0].message,
            )
        else:
            log.info("rotate-secrets carried on at start-up: finished")
        return outcomes

    async def close(self) -> None:
        task, self._resuming = self._resuming, None
        if task is not None and not task.done():
            task.cancel()
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError, errors.MicrostackError):
                await task

    def unfinished(self) -> Unfinished | None:
        """The rotation under way or left unfinished, for ``status``."""
        try:
            record = self.pending()
        except errors.StorageError as exc:
            return Unfinished("rotate-secrets", exc.message, COMMAND)
        if record is None:
            return None
        what = _summary(record)
        if self._resuming is not None and not self._resuming.done():
            message = (
                f"{what}; being finished by this daemon since it started (now: {self._step}); "
                "the command follows it"
            )
        elif self._lock.locked():
            message = f"{what}; under way (now: {self._step})"
        else:
            message = (
                f"{what}; until it is finished, control-plane services may hold passwords "
                "that are refused"
            )
        return Unfinished("rotate-secrets", message, COMMAND)

    # ------------------------------------------------------ the record --

    def pending(self) -> Record | None:
        """The rotation under way (None: none)."""
        data = self._store.read_file(RECORD)
        if data is None:
            return None
        try:
            return Record.from_json(data)
        except (ValueError, TypeError, KeyError) as exc:
            raise errors.StorageError(
                f"{self._store.state_dir / RECORD} is damaged ({type(exc).__name__}); the "
                "rotation it recorded cannot be carried on: restore it from a backup, or delete "
                "it and set the passwords in control.yaml by hand (docs/security.md)"
            ) from None

    def _save(self, record: Record) -> None:
        self._store.write_secret(RECORD, record.to_json())

    # ------------------------------------------------------- the run --

    def _refuse(self) -> None:
        self._cluster.require()  # the control of a cluster, or NotControl
        reason = self._accounts.unavailable()
        if reason is not None:
            raise errors.CloudError(f"no OpenStack secrets to rotate: {reason}")
        missing = [s.name for s in CONTROL.services if not self._plane.started(s.name)]
        if missing:
            raise errors.CloudError(
                "the control plane's init has not finished (not started: "
                f"{', '.join(missing)}): finish it first (`microstackctl init` resumes it)"
            )

    async def run(self, progress: Progress) -> list[StepOutcome]:
        """Rotate every secret, or carry on with the rotation recorded (or
        follow the one the daemon carries on since start-up)."""
        resuming = self._resuming
        if resuming is not None and not resuming.done():
            await progress(
                Note(
                    "the rotation left unfinished is being finished by this daemon since it "
                    f"started (now: {self._step}): following it",
                    phase="record",
                )
            )
            return await asyncio.shield(resuming)
        if self._lock.locked():
            raise errors.AlreadyInitialised(
                "a secret rotation is already under way on this control"
            )
        async with self._lock:
            self._refuse()
            record = self.pending()
            if record is None:
                record = new_record(time.time())
                self._save(record)  # before anything is told of them
                await progress(
                    Note(f"new secrets for {', '.join(SECRETS)} recorded", phase="record")
                )
            else:
                begun = _begun(record)
                record.automatic = 0  # the operator's own run: one more automatic try later
                self._save(record)
                await progress(
                    Note(
                        f"carrying on with the rotation begun at {begun} (its secrets as "
                        f"recorded; done: {', '.join(record.done) or 'nothing yet'})",
                        phase="record",
                    )
                )
            return await self._steps(record, progress)

    async def _steps(self, record: Record, progress: Progress) -> list[StepOutcome]:
        todo = next_steps(record)
        outcomes = [StepOutcome(n, DONE, "done before") for n in STEP_NAMES if n not in todo]
        actions = {
            SERVICE_USERS_STEP: self._service_users,
            RABBITMQ_STEP: self._rabbitmq,
            DATABASE_STEP: self._database,
            FILES_STEP: self._files,
            ADMIN_STEP: self._admin,
            COMPUTES_STEP: self._computes,
        }
        titles = dict(STEPS)
        for index, name in enumerate(todo):
            self._step = name
            await progress(Note(titles[name], phase=name))
            if name in self._delays:
                log.warning("fault injection: pausing before step=%s%s", DELAY_PREFIX, name)
                await asyncio.sleep(self._delays[name])
            try:
                message = await actions[name](record, progress)
            except errors.MicrostackError as exc:
                message = (
                    f"{exc.message}. The rotation stopped here, its new secrets recorded: fix "
                    "the cause, then `microstackctl rotate-secrets` again carries on from this step"
                )
                outcomes.append(StepOutcome(name, FAILED, message))
                outcomes += [StepOutcome(n, NOT_RUN, "not run") for n in todo[index + 1 :]]
                await progress(Note(message, StepState.FAILED, phase=name))
                log.warning("rotate-secrets step=%s failed: %s", name, exc.message)
                return outcomes
            if name not in record.done:
                record.done.append(name)
            self._save(record)
            log.info("rotate-secrets step=%s done", name)
            outcomes.append(StepOutcome(name, DONE, message))
            await progress(Note(message, StepState.DONE, phase=name))
        self._store.delete_file(RECORD)
        return outcomes

    # ------------------------------------------------------ the steps --

    def _config(self, record: Record, names: tuple[str, ...]) -> control_config.ControlConfig:
        """control.yaml with the recorded secrets ``names`` in place."""
        config = self._cluster.load_control_config()
        return control_config.with_secrets(config, {n: record.secrets[n] for n in names})

    async def _service_users(self, record: Record, progress: Progress) -> str:
        done = []
        for user in control_config.CONTROL_SERVICE_USERS:
            request = {"name": user, "password": record.secrets[user]}
            try:
                await self._cloud.run("user-password", request, timeout=120)
            except errors.CloudError as exc:
                raise errors.CloudError(
                    f"cannot give Keystone user {user} its new password: {exc.message}"
                ) from None
            done.append(user)
            await progress(
                Note(f"Keystone user {user}: new password set", phase=SERVICE_USERS_STEP)
            )
        return f"Keystone users {', '.join(done)}: new passwords set"

    async def _rabbitmq(self, record: Record, progress: Progress) -> str:
        config = self._config(record, ())
        values = self._plane.values(config)
        user = config.rabbitmq_user
        await RabbitMQ.of_control_role(values).ensure_user(
            user, record.secrets["rabbitmq"], SHARED_PERMISSIONS, tags=SHARED_TAGS
        )
        return f"RabbitMQ user {user}: new password set (its open connections kept)"

    async def _database(self, record: Record, progress: Progress) -> str:
        values = self._plane.values(self._config(record, ("database", "rabbitmq")))

        async def say(message: str) -> None:
            await progress(Note(message, phase=DATABASE_STEP))

        # The databases step: ALTER USER for both of openstack's hosts, as root over the socket.
        await self._plane.run_setup("databases", values, say)
        # Nova's cell mappings hold both URLs, passwords included: read by
        # nova-api, conductor and scheduler when they start (step control-files).
        await self._plane.run_setup(CELL_URLS, values, say)
        return (
            "MariaDB user openstack: new password set (its open connections kept); Nova's "
            "cell mappings point at the new database and message-queue passwords"
        )

    async def _files(self, record: Record, progress: Progress) -> str:
        path = self._cluster.config.control_config_path
        await asyncio.to_thread(
            control_config.write_secrets, path, {n: record.secrets[n] for n in SERVICE_SECRETS}
        )
        config = self._cluster.load_control_config()
        values = self._plane.values(config)
        files = dependent_files(CONTROL, config, self._plane.values, SERVICE_SECRETS)
        plan = restart_plan(CONTROL, files, values, self._cluster.config.config_root)
        wrote = await self._plane.render_with(config)
        await progress(
            Note(f"{wrote}; changed: {', '.join(sorted(files))}", phase=FILES_STEP)  # fmt: skip
        )
        with self._plane.applying():
            for service in plan:
                if service.name in record.restarted:
                    continue
                await progress(Note(f"restarting {service.name}", phase=FILES_STEP))
                status = await self._plane.restart(service.name, values)
                record.restarted.append(service.name)
                self._save(record)
                await progress(Note(f"{service.name} is {status.state}", phase=FILES_STEP))
        kept = [s.name for s in CONTROL.services if s not in plan]
        return (
            f"restarted {len(plan)} service(s) ({', '.join(s.name for s in plan)}); "
            f"not restarted (no file of theirs changed; rabbitmq "
            f"{NOT_RESTARTED['rabbitmq'].split(';')[0]}): {', '.join(kept)}"
        )

    async def _admin(self, record: Record, progress: Progress) -> str:
        config = self._config(record, SECRETS)  # the files' secrets are in control.yaml already
        values = self._plane.values(config)

        async def say(message: str) -> None:
            await progress(Note(message, phase=ADMIN_STEP))

        # Local, through the database: needs no old password, so a redo works.
        await self._plane.run_setup("keystone-bootstrap", values, say)
        path = self._cluster.config.control_config_path
        await asyncio.to_thread(
            control_config.write_secrets, path, {"admin": record.secrets["admin"]}
        )
        wrote = await self._plane.render_with(self._cluster.load_control_config())
        self._cloud.forget()
        try:
            await self._cloud.run("view", {}, timeout=120)
        except errors.CloudError as exc:
            raise errors.CloudError(
                f"the admin's new password is set, but the admin cloud does not authenticate "
                f"with it: {exc.message}"
            ) from None
        return f"admin: new password set; {wrote.split('; ')[-1]} rewritten and authenticates"

    async def _computes(self, record: Record, progress: Progress) -> str:
        shared = [
            n.name
            for n in sorted(self._store.nodes(), key=lambda n: n.name)
            if n.role is Role.COMPUTE
            and n.state is NodeState.ACTIVE
            and n.agent_port
            and self._accounts.current(n.name) is None
        ]
        if not shared:
            return (
                "every compute holds only its own users: none holds a rotated secret, none touched"
            )
        outcomes = await self._reconfigure.run(shared, progress)
        left = [o for o in outcomes if o.result != APPLIED]
        if left:
            raise errors.ServiceFailed(
                "computes still on the old shared credentials: "
                + "; ".join(f"{o.node} ({o.result}: {o.message})" for o in left)
            )
        return f"{', '.join(shared)} moved from the shared credentials to their own"
