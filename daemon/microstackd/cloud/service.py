"""``Cloud``: what the control asks of its OpenStack cloud, each operation
in-process on the one connection (``cloud.connection``) with a time limit,
and Nova's view for ``status`` cached for a few seconds."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from microstackd import errors
from microstackd.cloud import NO_CLOUD, CloudRef, Progress, accounts, hosts, launch, ops
from microstackd.cloud.connection import Connections
from microstackd.cloud.session import Session, sdk_error

log = logging.getLogger(__name__)

#: How long admit-to-cloud waits for each of Nova's states, seconds.
ADMIT_TIMEOUT = 300.0
#: How old Nova's view in ``status`` may be, seconds.
NOVA_VIEW_MAX_AGE = 5.0

Operation = Callable[[Session, Mapping[str, Any]], Awaitable[dict[str, Any]]]
OPERATIONS: dict[str, Operation] = {
    "admit": ops.admit,
    "instances": hosts.instances,
    "remove": hosts.remove,
    "drain": hosts.drain,
    "undrain": hosts.undrain,
    "launch": launch.launch,
    "view": ops.view,
    "node-user": accounts.node_user,
    "delete-node-user": accounts.delete_node_user,
    "user-password": accounts.user_password,
}


class Cloud:
    def __init__(self, locate: Callable[[], CloudRef | None]) -> None:
        #: Where the cloud is configured, asked afresh each time (control.yaml may change).
        self._locate = locate
        self._connections = Connections()
        self._view: tuple[float, dict[str, dict[str, Any]]] = (0.0, {})
        self._view_lock = asyncio.Lock()

    def configured(self) -> CloudRef | None:
        return self._locate()

    def forget(self) -> None:
        """Close every connection: the next call authenticates again from
        clouds.yaml (its admin password changed)."""
        self._connections.close()

    async def run(
        self,
        op: str,
        request: Mapping[str, Any],
        progress: Progress | None = None,
        timeout: float = 900,
    ) -> dict[str, Any]:
        """Run ``op`` on the configured cloud; its result, or ``errors.CloudError``."""
        ref = self._locate()
        if ref is None:
            raise errors.CloudError(NO_CLOUD)
        session = Session(self._connections, ref, progress)
        try:
            async with asyncio.timeout(timeout):
                result = await OPERATIONS[op](session, request)
        except TimeoutError:
            raise errors.CloudError(
                f"cloud operation {op} did not finish within {timeout:g} s"
            ) from None
        except errors.CloudError:
            raise
        except Exception as exc:
            if isinstance(exc, sdk_error()):
                raise errors.CloudError(f"{type(exc).__name__}: {exc}") from None
            raise
        finally:
            if op != "view":
                self._view = (0.0, {})  # Nova changed: the next status asks again
        return result

    async def nova_view(self) -> dict[str, dict[str, Any]]:
        """Nova's view per compute host, at most NOVA_VIEW_MAX_AGE old; {}
        without a cloud or when it cannot be asked (status must answer)."""
        try:
            if self._locate() is None:
                return {}
        except errors.MicrostackError:
            return {}
        async with self._view_lock:
            at, hosts = self._view
            if time.monotonic() - at <= NOVA_VIEW_MAX_AGE:
                return hosts
            try:
                result = await self.run("view", {}, timeout=10)
                hosts = dict(result.get("hosts") or {})
            except errors.CloudError as exc:
                log.warning("cannot read Nova's view: %s", exc.message)
                hosts = {}
            self._view = (time.monotonic(), hosts)
            return hosts

    def close(self) -> None:
        self._connections.close()
