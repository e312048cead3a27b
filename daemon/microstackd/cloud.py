"""The control's OpenStack cloud: which one (control.yaml's ``cloud`` section,
``OS_CLOUD``), and its operations (admit a host to Nova, delete its compute
service, launch a server, Nova's view for ``status``).

The operations run inside the OpenStack environment: its own Python runs
``node/openstack_env/cloud_ops.py`` (package data, never imported here)
with a JSON request on stdin and JSON lines on stdout (progress, then a
result or an error). microstackd never imports an OpenStack package.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from microstackd import errors

NO_CLOUD = "no cloud configured"

Progress = Callable[[str, bool], Awaitable[None]]


@dataclass(frozen=True)
class CloudRef:
    """Where the cloud is configured: a cloud name, and the clouds.yaml
    holding it ("" = openstacksdk's usual search path)."""

    name: str
    clouds_yaml: str = ""


def resolve(section: object, environ: Mapping[str, str]) -> CloudRef | None:
    """The configured cloud: control.yaml's ``cloud: {name, clouds_yaml}``;
    ``OS_CLOUD`` names it when the section names none (the OpenStack way),
    ``OS_CLIENT_CONFIG_FILE`` locates it when the section does not. None when
    neither names a cloud."""
    data = section if isinstance(section, dict) else {}
    name = str(data.get("name") or environ.get("OS_CLOUD") or "").strip()
    if not name:
        return None
    clouds_yaml = str(data.get("clouds_yaml") or environ.get("OS_CLIENT_CONFIG_FILE") or "")
    return CloudRef(name=name, clouds_yaml=clouds_yaml)


@dataclass(frozen=True)
class Line:
    """One line of the script's output."""

    progress: str = ""
    waiting: bool = False
    result: dict[str, Any] | None = None
    error: str = ""
    kind: str = ""


def parse_line(raw: bytes | str) -> Line | None:
    """A JSON line of cloud_ops.py, or None for anything else (a library's
    stray print, a blank line)."""
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    text = text.strip()
    if not text.startswith("{"):
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    if "result" in data and isinstance(data["result"], dict):
        return Line(result=data["result"])
    if "error" in data:
        return Line(error=str(data["error"]), kind=str(data.get("kind") or "error"))
    if "progress" in data:
        return Line(progress=str(data["progress"]), waiting=bool(data.get("waiting")))
    return None


def nova_manage_argv(prefix: Path | None, config_root: Path) -> list[str] | None:
    """``nova-manage --config-file NOVA_CONF`` where this control runs Nova
    itself (its environment has nova-manage and its nova.conf is rendered),
    else None: host discovery is then left to nova-scheduler's periodic task."""
    if prefix is None:
        return None
    manage, conf = prefix / "bin" / "nova-manage", config_root / "nova" / "nova.conf"
    if manage.exists() and conf.exists():
        return [str(manage), "--config-file", str(conf)]
    return None


@dataclass(frozen=True)
class Runner:
    """Runs cloud_ops.py with the OpenStack environment's Python."""

    ref: CloudRef
    python: Path
    script: Path

    def env(self) -> dict[str, str]:
        env = dict(os.environ)  # OS_* as openstacksdk reads them, but the cloud is ours
        env["OS_CLOUD"] = self.ref.name
        if self.ref.clouds_yaml:
            env["OS_CLIENT_CONFIG_FILE"] = self.ref.clouds_yaml
        return env

    async def run(
        self,
        op: str,
        request: Mapping[str, Any],
        progress: Progress | None = None,
        timeout: float = 900,
    ) -> dict[str, Any]:
        """Run ``op``; stream its progress; return its result or raise
        ``errors.CloudError`` with its message."""
        try:
            proc = await asyncio.create_subprocess_exec(
                str(self.python),
                str(self.script),
                op,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self.env(),
                start_new_session=True,
            )
        except OSError as exc:
            raise errors.CloudError(
                f"cannot run {self.python} (the OpenStack environment): {exc.strerror or exc}"
            ) from exc
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        proc.stdin.write(json.dumps(dict(request)).encode())
        proc.stdin.close()
        result: dict[str, Any] | None = None
        failure: Line | None = None
        stderr_task = asyncio.ensure_future(proc.stderr.read())
        try:
            async with asyncio.timeout(timeout):
                async for raw in proc.stdout:
                    line = parse_line(raw)
                    if line is None:
                        continue
                    if line.result is not None:
                        result = line.result
                    elif line.error:
                        failure = line
                    elif progress is not None:
                        await progress(line.progress, line.waiting)
                await proc.wait()
        except BaseException as exc:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
            stderr_task.cancel()
            if isinstance(exc, TimeoutError):
                raise errors.CloudError(
                    f"cloud operation {op} did not finish within {timeout:g} s"
                ) from None
            raise
        stderr = (await stderr_task).decode(errors="replace").strip()
        if failure is not None:
            raise errors.CloudError(failure.error)
        if result is None or proc.returncode != 0:
            tail = "\n".join(stderr.splitlines()[-8:])
            raise errors.CloudError(
                f"cloud operation {op} exited with status {proc.returncode} "
                f"without a result: {tail or 'no output'}"
            )
        return result
