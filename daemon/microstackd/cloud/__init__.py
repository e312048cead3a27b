"""The control's OpenStack cloud, through openstacksdk in this process.

    which cloud   control.yaml's ``cloud`` section, or ``OS_CLOUD`` (``resolve``)
    connection    one authenticated openstacksdk Connection per cloud, reused;
                  every call runs in a thread, off the event loop
    ops           admit a host to Nova, delete its compute service, launch a
                  server, Nova's view for ``status``
    service       ``Cloud``: what the control asks of its cloud (Nova's view cached)

openstacksdk is imported only when a cloud is first used, so a compute (which
never uses one) never loads it. ``nova-manage`` stays a command of the
OpenStack environment (Nova's own tool), run through ``microstackd.commands``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from microstackd.model import StepState

NO_CLOUD = "no cloud configured"


@dataclass(frozen=True)
class Note:
    """One progress message of a cloud operation: what happens, its state
    (``RUNNING``, ``WAITING``; ``DONE`` or ``SKIPPED`` when a phase ends), and
    the phase it belongs to (``""``: the operation's own step)."""

    message: str
    state: StepState = StepState.RUNNING
    phase: str = ""


#: Where a cloud operation's progress goes.
Progress = Callable[[Note], Awaitable[None]]


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
