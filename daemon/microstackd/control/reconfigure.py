"""``reconfigure``: issue the compute configuration again from control.yaml
and apply it through each node's agent, one node at a time (a rolling
change), restarting on each only the services whose files changed
(``node/restarts.py``).

* **Which nodes**: those named, else every active compute; a node that
  is not active (enrolling, failed, removed) is refused before anything
  starts: its enrolment, or a join, applies the configuration.
* **Credentials**: a compute with its own accounts keeps them (no
  rotation, so nothing restarts for them); one still on control.yaml's
  shared credentials gets its own here (the migration path).
* **Offline nodes are skipped** (named, with the command that finishes the
  job once they are back); **a failed apply stops** the rolling change
  there (the nodes after it are not touched), as an operator expects of
  a change that may be wrong.
* **Resumable**: the nodes still to do are recorded (the store's meta)
  before the first is touched and each is struck off once done; a control
  that restarts mid-way carries on with the rest at start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass

from microstackd import errors
from microstackd.cloud import Note, Progress
from microstackd.control import config as control_config
from microstackd.control.cluster import Cluster
from microstackd.control.members import check_services
from microstackd.control.node_accounts import NodeAccounts
from microstackd.model import NodeRecord, NodeState, Role, StepState, clip
from microstackd.peers.cluster import AgentClient
from microstackd.trust import names

log = logging.getLogger(__name__)

#: meta key: the nodes a reconfigure has still to do (JSON list), in order.
PENDING = "reconfigure_pending"
APPLIED, SKIPPED, FAILED, NOT_REACHED = "applied", "skipped", "failed", "not reached"


@dataclass(frozen=True)
class Outcome:
    node: str
    result: str  # APPLIED, SKIPPED, FAILED or NOT_REACHED
    message: str


async def _quiet(note: Note) -> None:
    log.info("reconfigure phase=%s msg=%s", note.phase, note.message)


class Reconfigure:
    def __init__(self, cluster: Cluster, accounts: NodeAccounts) -> None:
        self._cluster = cluster
        self._store = cluster.store
        self._accounts = accounts
        self._lock = asyncio.Lock()
        self._resuming: asyncio.Task[list[Outcome]] | None = None

    def start(self) -> None:
        """At start-up: carry on, in the background, with what a reconfigure left."""
        if self.pending():
            self._resuming = asyncio.get_running_loop().create_task(self.resume())

    async def close(self) -> None:
        task, self._resuming = self._resuming, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, errors.MicrostackError):
                await task

    def _targets(self, requested: list[str]) -> list[NodeRecord]:
        cluster = self._cluster.require()
        nodes = {n.name: n for n in self._store.nodes()}
        if not requested:
            found = [
                n
                for n in nodes.values()
                if n.role is Role.COMPUTE and n.state is NodeState.ACTIVE and n.agent_port
            ]
            if not found:
                raise errors.NotFound("there is no active compute to reconfigure")
            return sorted(found, key=lambda n: n.name)
        targets = []
        for name in dict.fromkeys(requested):
            names.node_name(name, "node name")
            node = nodes.get(name)
            if node is None:
                raise errors.NotFound(f"no node named {name!r} in the cluster")
            if node.role is Role.CONTROL or name == cluster.control_name:
                raise errors.InvalidArgument(
                    f"{name} is the control node: reconfigure applies the compute configuration"
                )
            if node.state is not NodeState.ACTIVE:
                instead = (
                    "join it again"
                    if node.state is NodeState.REMOVED
                    else f"its enrolment applies the configuration (microstackctl watch {name})"
                )
                raise errors.InvalidArgument(f"{name} is {node.state.value}, not active: {instead}")
            if not node.agent_port:
                raise errors.InvalidArgument(f"{name} runs no agent: nothing to reconfigure")
            targets.append(node)
        return targets

    def pending(self) -> list[str]:
        return list(json.loads(self._store.get_meta(PENDING) or "[]"))

    async def run(self, requested: list[str], progress: Progress) -> list[Outcome]:
        """Reconfigure ``requested`` (every active compute when empty), one at a time."""
        if self._lock.locked():
            raise errors.AlreadyInitialised("a reconfigure is already under way on this control")
        async with self._lock:
            targets = self._targets(requested)
            self._store.set_meta({PENDING: json.dumps([n.name for n in targets])})
            return await self._roll(targets, progress)

    async def resume(self) -> list[Outcome]:
        """At start-up: carry on with the nodes a reconfigure had still to do."""
        left = self.pending()
        if not left or self._store.cluster() is None:
            return []
        nodes = {n.name: n for n in self._store.nodes()}
        targets = [nodes[n] for n in left if n in nodes and nodes[n].state is NodeState.ACTIVE]
        log.info("resuming reconfigure nodes=%s", ",".join(n.name for n in targets))
        async with self._lock:
            return await self._roll(targets, _quiet)

    async def _roll(self, targets: list[NodeRecord], progress: Progress) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for index, node in enumerate(targets):
            await progress(
                Note(
                    f"{node.name} ({index + 1}/{len(targets)}): issuing its configuration",
                    phase=node.name,
                )  # fmt: skip
            )
            try:
                message = await self._one(node, progress)
            except errors.NodeUnreachable as exc:
                message = (
                    f"{node.name} could not be reached ({exc.message}): skipped; once it is "
                    f"back, `microstackctl reconfigure {node.name}` finishes the job"
                )
                outcomes.append(Outcome(node.name, SKIPPED, message))
                await progress(Note(message, StepState.SKIPPED, phase=node.name))
            except errors.MicrostackError as exc:
                message = (
                    f"{node.name} failed: {exc.message}. Stopped here: the nodes after it "
                    f"were not touched; fix the cause, then `microstackctl reconfigure` again"
                )
                outcomes.append(Outcome(node.name, FAILED, message))
                await progress(Note(message, StepState.FAILED, phase=node.name))
                outcomes += [
                    Outcome(n.name, NOT_REACHED, "not reconfigured: stopped before it")
                    for n in targets[index + 1 :]
                ]
                self._store.set_meta({PENDING: "[]"})
                return outcomes
            else:
                outcomes.append(Outcome(node.name, APPLIED, message))
                await progress(Note(message, StepState.DONE, phase=node.name))
            left = [n.name for n in targets[index + 1 :]]
            self._store.set_meta({PENDING: json.dumps(left)})
        return outcomes

    async def _one(self, node: NodeRecord, progress: Progress) -> str:
        config = self._cluster.load_control_config()
        accounts = self._accounts.current(node.name)
        migrated = ""
        if accounts is None and self._accounts.unavailable() is None:
            await progress(
                Note(
                    f"{node.name} has the shared credentials: giving it its own", phase=node.name
                )  # fmt: skip
            )
            accounts, made = await self._accounts.issue(node.name)
            migrated = f"; moved to its own credentials ({made})"
        settings = control_config.issue_compute_settings(
            config,
            node,
            revocation_list=self._cluster.revocation_list().decode(),
            own=None if accounts is None else accounts.own(),
        )
        client = AgentClient(node, self._store.credentials())
        try:
            async for step in client.apply_role(Role.COMPUTE.value, settings):
                if step.final:
                    services = check_services(list(step.services), node.name)
                    self._store.set_services(node.name, services)
                    return f"{node.name}: {clip(step.message)}{migrated}"
                await progress(
                    Note(f"{clip(step.step, 100)}: {clip(step.message)}", phase=node.name)
                )
        finally:
            await client.close()
        raise errors.NodeUnreachable(f"the agent of {node.name} ended its stream without a result")
