"""``AdminService`` on the Unix socket: what ``microstackctl`` asks its own daemon."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from microstack_api.v1 import cluster_pb2 as pb
from microstack_api.v1 import cluster_pb2_grpc as pb_grpc
from microstackd import errors
from microstackd.api.servicers import Context
from microstackd.control.backup import Backups
from microstackd.control.cluster import Cluster
from microstackd.control.members import Members, Note
from microstackd.control.reconfigure import APPLIED, Reconfigure
from microstackd.control.restore import Restores
from microstackd.control.rotation import Rotation
from microstackd.control.secret_rotation import DONE, SecretRotation
from microstackd.control.tokens import Tokens
from microstackd.enrolment.events import EventBus
from microstackd.member.join import Member
from microstackd.model import BootstrapCertificate, EventRecord, Role
from microstackd.store import Store
from microstackd.trust import names
from microstackd.wire import convert

#: The size of each piece of an archive on the wire (gRPC's limit is 4 MiB).
CHUNK = 1 << 20
#: Where a long operation says how it goes (``cloud.Progress``): one note at a time.
Progress = Callable[[Note], Awaitable[None]]


class AdminServicer(pb_grpc.AdminServiceServicer):
    def __init__(
        self,
        node_name: str,
        store: Store,
        bus: EventBus,
        cluster: Cluster,
        members: Members,
        tokens: Tokens,
        member: Member,
        bootstrap: BootstrapCertificate,
        rotation: Rotation,
        backups: Backups | None = None,
        restores: Restores | None = None,
        *,
        reconfigure: Reconfigure | None = None,
        secrets: SecretRotation | None = None,
    ) -> None:
        self._secrets = secrets
        self._backups = backups
        self._restores = restores
        self._reconfigure = reconfigure
        self._node = node_name
        self._bootstrap = bootstrap
        self._rotation = rotation
        self._store = store
        self._bus = bus
        self._cluster = cluster
        self._members = members
        self._nodes = convert.NodesEncoder(pb.StatusResponse.NODES_FIELD_NUMBER)
        self._tokens = tokens
        self._member = member

    async def Init(
        self, request: pb.InitRequest, context: Context
    ) -> AsyncIterator[pb.InitResponse]:
        if request.role != pb.ROLE_CONTROL:
            raise errors.InvalidArgument(
                "init creates a cluster with this node as its control node (role control); "
                "a compute node joins with `microstackctl join`"
            )
        after = self._cluster.init(request.password, request.address)
        async for event in self._bus.follow(self._node, after):
            yield pb.InitResponse(event=convert.event_to_pb(event))

    async def Join(
        self, request: pb.JoinRequest, context: Context
    ) -> AsyncIterator[pb.JoinResponse]:
        events = self._member.join(
            request.control,
            request.password,
            request.address,
            request.token,
            float(request.timeout_seconds),
        )
        async for event in events:
            yield pb.JoinResponse(event=convert.event_to_pb(event))

    async def Watch(
        self, request: pb.WatchRequest, context: Context
    ) -> AsyncIterator[pb.WatchResponse]:
        cluster = self._store.cluster()
        if cluster is None:
            raise errors.NotInitialised()
        node = request.node or self._node
        names.node_name(node, "node")
        events: AsyncIterator[EventRecord]
        if cluster.role is Role.CONTROL:
            if self._store.node(node) is None:
                raise errors.NotFound(f"no node named {node!r} in the cluster")
            events = self._bus.follow(node, request.after_seq)
        elif node != self._node:
            raise errors.InvalidArgument(
                f"a compute node can only watch itself; watch {node} on the control node"
            )
        else:
            events = self._member.follow(request.after_seq)
        async for event in events:
            yield pb.WatchResponse(event=convert.event_to_pb(event))

    async def RemoveNode(
        self, request: pb.RemoveNodeRequest, context: Context
    ) -> pb.RemoveNodeResponse:
        node, message = await self._members.remove(request.name, request.force)
        return pb.RemoveNodeResponse(node=convert.node_to_pb(node), message=message)

    async def CreateToken(
        self, request: pb.CreateTokenRequest, context: Context
    ) -> pb.CreateTokenResponse:
        text, record = self._tokens.create(request.name, request.ttl_seconds or 3600)
        return pb.CreateTokenResponse(
            token=text, expires=convert.timestamp(record.expires), id=record.id
        )

    async def ListTokens(
        self, request: pb.ListTokensRequest, context: Context
    ) -> pb.ListTokensResponse:
        return pb.ListTokensResponse(tokens=[convert.token_to_pb(t) for t in self._tokens.list()])

    async def RevokeToken(
        self, request: pb.RevokeTokenRequest, context: Context
    ) -> pb.RevokeTokenResponse:
        token = self._tokens.revoke(request.id_or_name)
        return pb.RevokeTokenResponse(token=convert.token_to_pb(token))

    async def Status(
        self, request: pb.StatusRequest, context: Context
    ) -> pb.StatusResponse | convert.Encoded:
        cluster = self._store.cluster()
        response = pb.StatusResponse(
            local_node=self._node,
            local_role=convert.ROLE_TO_PB[cluster.role if cluster else Role.NONE],
            bootstrap_fingerprint=self._bootstrap.fingerprint,
            bootstrap_expires=convert.timestamp(self._bootstrap.not_after),
        )
        if cluster is None:
            return response
        nova: dict[str, dict[str, Any]] = {}
        if cluster.role is Role.CONTROL:
            record, nodes = self._members.status()
            nova = await self._members.nova_view()
            unfinished = self._secrets.unfinished() if self._secrets is not None else None
            if unfinished is not None:
                response.unfinished.append(convert.unfinished_to_pb(unfinished))
        else:
            record, nodes = await self._member.status()
        response.cluster.CopyFrom(convert.cluster_to_pb(record))
        return convert.Encoded(response, self._nodes.encode(nodes, nova))

    async def _progress_stream(
        self,
        step: str,
        work: Callable[[Progress], Awaitable[dict[str, Any]]],
        results: list[dict[str, Any]],
    ) -> AsyncIterator[pb.Event]:
        """``work``'s progress as events of ``step`` (or of the phase a note
        names) while it runs; its result appended to ``results`` once done."""
        queue: asyncio.Queue[pb.Event | None] = asyncio.Queue()

        async def progress(note: Note) -> None:
            state = convert.STATE_TO_PB[note.state]
            await queue.put(
                pb.Event(
                    node=self._node, step=note.phase or step, state=state, message=note.message
                )
            )

        async def run() -> dict[str, Any]:
            try:
                return await work(progress)
            finally:
                await queue.put(None)

        task = asyncio.ensure_future(run())
        try:
            while (item := await queue.get()) is not None:
                yield item
            results.append(await task)
        finally:
            if not task.done():
                task.cancel()

    def _final(self, step: str, message: str) -> pb.Event:
        return pb.Event(
            node=self._node, step=step, state=pb.STEP_STATE_DONE, message=message, final=True
        )

    async def Launch(
        self, request: pb.LaunchRequest, context: Context
    ) -> AsyncIterator[pb.LaunchResponse]:
        fields = {
            "image": request.image,
            "name": request.name,
            "flavor": request.flavor,
            "availability_zone": request.availability_zone,
            "network": request.network,
            "key_name": request.key_name,
            "public_key": request.public_key,
            "wait_ssh": not request.no_wait,
            "ssh_timeout": request.ssh_timeout_seconds,
        }
        results: list[dict[str, Any]] = []

        async def work(progress: Progress) -> dict[str, Any]:
            return await self._members.launch(fields, progress)

        async for event in self._progress_stream("launch", work, results):
            yield pb.LaunchResponse(event=event)
        result = results[0]
        done = self._final("launch", str(result.get("message", "")))
        yield pb.LaunchResponse(event=done, result=convert.launch_result_to_pb(result))

    async def Drain(
        self, request: pb.DrainRequest, context: Context
    ) -> AsyncIterator[pb.DrainResponse]:
        timeout = float(request.instance_timeout_seconds or 600)
        results: list[dict[str, Any]] = []

        async def work(progress: Progress) -> dict[str, Any]:
            return {"moved": await self._members.drain(request.name, timeout, progress)}

        async for event in self._progress_stream("drain", work, results):
            yield pb.DrainResponse(event=event)
        moved = results[0]["moved"]
        done = self._final(
            "drain", f"{request.name} is drained: {len(moved)} instance(s) moved, none left"
        )
        yield pb.DrainResponse(
            event=done, moved=[pb.MovedInstance(**{k: str(v) for k, v in m.items()}) for m in moved]
        )

    def _on_the_control(self, command: str, served: object | None, nothing: str) -> None:
        """Refuse ``command`` unless this node is the control of a cluster
        (``served``: what does the work, None where this daemon has none)."""
        cluster = self._store.cluster()
        if served is None or cluster is None:
            raise errors.NotInitialised(f"this node is in no cluster: {nothing}")
        if cluster.role is not Role.CONTROL:
            raise errors.NotControl(
                f"{command} runs on the control node: run it on {cluster.control_name} "
                f"({cluster.control_address})"
            )

    async def Reconfigure(
        self, request: pb.ReconfigureRequest, context: Context
    ) -> AsyncIterator[pb.ReconfigureResponse]:
        self._on_the_control("reconfigure", self._reconfigure, "nothing to reconfigure")
        reconfigure = self._reconfigure
        assert reconfigure is not None
        results: list[dict[str, Any]] = []

        async def work(progress: Progress) -> dict[str, Any]:
            return {"outcomes": await reconfigure.run(list(request.nodes), progress)}

        async for event in self._progress_stream("reconfigure", work, results):
            yield pb.ReconfigureResponse(event=event)
        outcomes = results[0]["outcomes"]
        done = sum(1 for o in outcomes if o.result == APPLIED)
        final = self._final("reconfigure", f"{done}/{len(outcomes)} compute(s) reconfigured")
        if done != len(outcomes):
            final.state = pb.STEP_STATE_FAILED
        yield pb.ReconfigureResponse(
            event=final,
            outcomes=[
                pb.NodeOutcome(node=o.node, result=o.result, message=o.message) for o in outcomes
            ],
        )

    async def RotateSecrets(
        self, request: pb.RotateSecretsRequest, context: Context
    ) -> AsyncIterator[pb.RotateSecretsResponse]:
        self._on_the_control("rotate-secrets", self._secrets, "no secrets to rotate")
        rotation = self._secrets
        assert rotation is not None
        results: list[dict[str, Any]] = []

        async def work(progress: Progress) -> dict[str, Any]:
            return {"steps": await rotation.run(progress)}

        async for event in self._progress_stream("rotate-secrets", work, results):
            yield pb.RotateSecretsResponse(event=event)
        steps = results[0]["steps"]
        done = sum(1 for s in steps if s.result == DONE)
        final = self._final("rotate-secrets", f"{done}/{len(steps)} step(s) done")
        if done != len(steps):
            final.state = pb.STEP_STATE_FAILED
        else:
            final.message = "every generated secret rotated; the old ones are refused"
        yield pb.RotateSecretsResponse(
            event=final,
            steps=[pb.RotationStep(step=s.step, result=s.result, message=s.message) for s in steps],
        )

    async def Undrain(self, request: pb.UndrainRequest, context: Context) -> pb.UndrainResponse:
        return pb.UndrainResponse(message=await self._members.undrain(request.name))

    async def RotateCA(
        self, request: pb.RotateCARequest, context: Context
    ) -> AsyncIterator[pb.RotateCAResponse]:
        async for event in self._rotation.rotate(request.cluster_id):
            yield pb.RotateCAResponse(event=convert.event_to_pb(event))

    async def Backup(
        self, request: pb.BackupRequest, context: Context
    ) -> AsyncIterator[pb.BackupResponse]:
        if self._backups is None:
            raise errors.NotControl("this daemon makes no backups")
        self._backups.check_proof(request.proof)
        notes: asyncio.Queue[str | None] = asyncio.Queue()

        async def progress(message: str) -> None:
            await notes.put(message)

        async def make() -> tuple[Any, Any]:
            assert self._backups is not None
            try:
                return await self._backups.create(request.no_images, progress, request.proof)
            finally:
                await notes.put(None)

        task = asyncio.ensure_future(make())
        try:
            while (note := await notes.get()) is not None:
                yield pb.BackupResponse(message=note)
            path, manifest = await task
        finally:
            if not task.done():
                task.cancel()
        digest = hashlib.sha256()
        try:
            with path.open("rb") as f:
                while chunk := await asyncio.to_thread(f.read, CHUNK):
                    digest.update(chunk)
                    yield pb.BackupResponse(chunk=chunk)
            yield pb.BackupResponse(done=True, sha256=digest.hexdigest(), manifest=manifest.text())
        finally:
            self._backups.discard(path)

    async def Restore(
        self, request_iterator: AsyncIterator[pb.RestoreRequest], context: Context
    ) -> AsyncIterator[pb.RestoreResponse]:
        if self._restores is None:
            raise errors.NotControl("this daemon restores no backups")
        self._restores.refuse_over_a_cluster()  # before the archive is sent
        work = self._restores.workdir()
        try:
            path = work / "archive.tar"
            complete = False
            with path.open("xb") as f:
                path.chmod(0o600)
                async for request in request_iterator:
                    if request.chunk:
                        await asyncio.to_thread(f.write, request.chunk)
                    if request.done:
                        complete = True
                        break
            if not complete:
                raise errors.BadArchive(
                    "the archive's upload ended before its end; nothing was changed"
                )
            after = await self._restores.start(path, work)
        except OSError as exc:
            raise errors.StorageError(f"cannot receive the archive: {exc.strerror or exc}") from exc
        finally:
            self._restores.discard(work)
        async for event in self._bus.follow(self._node, after):
            yield pb.RestoreResponse(event=convert.event_to_pb(event))
