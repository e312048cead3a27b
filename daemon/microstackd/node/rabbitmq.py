"""The control's RabbitMQ users, through ``rabbitmqctl`` against the
control role's own RabbitMQ node (its environment: node name, epmd port,
the Erlang cookie under its HOME).

Passwords go to ``rabbitmqctl`` on its standard input, never on its command
line (``ps`` shows that to every local user) and never into a log line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from microstackd import commands, errors
from microstackd.model import clip
from microstackd.node import steps
from microstackd.node.roles import CONTROL

RABBITMQCTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"
#: sysexits.h, as rabbitmqctl uses them.
EX_NOUSER = 67
EX_SOFTWARE = 70
EX_UNAVAILABLE = 69
EX_TEMPFAIL = 75
#: How long one rabbitmqctl may take (it starts an Erlang VM: ~1 s here).
TIMEOUT = 60.0
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Permissions:
    """One user's permissions on a vhost (regular expressions, as RabbitMQ
    takes them), and its topic permissions per topic exchange (routing keys
    it may publish with, binding keys it may bind with)."""

    configure: str
    write: str
    read: str
    topics: tuple[tuple[str, str, str], ...] = ()  # (exchange, write, read)
    vhost: str = "/"


class RabbitMQ:
    def __init__(self, env: Mapping[str, str], node: str) -> None:
        self._env = dict(env)
        self._node = node

    @classmethod
    def of_control_role(cls, values: Mapping[str, str]) -> RabbitMQ:
        """The control role's RabbitMQ, from the role's rendered values."""
        spec = steps.service_spec(CONTROL.service("rabbitmq"), values)
        env = {"PATH": SYSTEM_PATH, **spec.env}
        return cls(env, env.get("RABBITMQ_NODENAME", "rabbit@localhost"))

    async def _ctl(self, *args: str, secret: str | None = None) -> commands.Completed:
        argv = (RABBITMQCTL, "-n", self._node, *args)
        try:
            return await commands.run(
                argv,
                timeout=TIMEOUT,
                input=None if secret is None else secret.encode(),
                env=self._env,
            )
        except OSError as exc:
            raise errors.CloudError(f"cannot run {RABBITMQCTL}: {exc}") from exc
        except TimeoutError:
            raise errors.CloudError(
                f"RabbitMQ on the control did not answer rabbitmqctl {args[0]} within {TIMEOUT:g} s"
            ) from None

    def _failed(self, what: str, done: commands.Completed) -> errors.CloudError:
        words = clip((done.stderr.strip() or done.stdout.strip()).replace("\n", " "), 300)
        if done.returncode in (EX_UNAVAILABLE, EX_TEMPFAIL):
            return errors.CloudError(
                f"RabbitMQ on the control is not running or not answering ({what}: {words}); "
                "`microstackctl status` shows its service"
            )
        return errors.CloudError(f"RabbitMQ refused to {what} (status {done.returncode}): {words}")

    async def ensure_user(self, name: str, password: str, permissions: Permissions) -> str:
        """Create ``name`` with ``password``, or give an existing one that
        password (a resumed enrolment, a rejoin); then set its permissions
        exactly (what it had before is replaced). "created" or "updated"."""
        how = "updated"
        done = await self._ctl("change_password", "--", name, secret=password)
        if done.returncode == EX_NOUSER:
            how = "created"
            done = await self._ctl("add_user", "--", name, secret=password)
            if done.returncode == EX_SOFTWARE and "already exists" in done.stderr:
                how = "updated"  # made meanwhile: it gets this password all the same
                done = await self._ctl("change_password", "--", name, secret=password)
        if done.returncode != 0:
            raise self._failed(f"set the password of user {name}", done)
        p = permissions
        done = await self._ctl(
            "set_permissions", "-p", p.vhost, "--", name, p.configure, p.write, p.read
        )
        if done.returncode != 0:
            raise self._failed(f"set the permissions of user {name}", done)
        done = await self._ctl("clear_topic_permissions", "-p", p.vhost, "--", name)
        if done.returncode != 0:
            raise self._failed(f"clear the topic permissions of user {name}", done)
        for exchange, write, read in p.topics:
            done = await self._ctl(
                "set_topic_permissions", "-p", p.vhost, "--", name, exchange, write, read
            )
            if done.returncode != 0:
                raise self._failed(f"set the topic permissions of user {name}", done)
        return how

    async def delete_user(self, name: str) -> bool:
        """Delete ``name`` (RabbitMQ closes its open connections); False when
        there was no such user."""
        done = await self._ctl("delete_user", "--", name)
        if done.returncode == EX_NOUSER:
            return False
        if done.returncode != 0:
            raise self._failed(f"delete user {name}", done)
        return True
