"""The control's RabbitMQ users, through ``rabbitmqctl`` against the
control role's own RabbitMQ node (its environment: node name, epmd port,
the Erlang cookie under its HOME).

A password reaches ``rabbitmqctl`` only as RabbitMQ's own salted hash, on its
standard input: never on its command line (``ps`` shows that to every local
user), never into a log line.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass

from microstackd import commands, errors
from microstackd.model import clip
from microstackd.node import steps
from microstackd.node.roles import CONTROL

RABBITMQCTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"
#: sysexits.h, as rabbitmqctl uses them.
EX_NOUSER = 67
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


def password_hash(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's ``rabbit_password_hashing_sha256``: base64(salt + SHA-256(salt + password)),
    a 4-byte random salt."""
    salt = os.urandom(4) if salt is None else salt
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


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

    async def ensure_user(
        self, name: str, password: str, permissions: Permissions, *, tags: str = ""
    ) -> str:
        """Create ``name`` with ``password``, or give an existing one that
        password (a resumed enrolment, a rejoin), with exactly these
        permissions: one ``import_definitions`` (an Erlang VM starts for each
        rabbitmqctl: ~1 s idle, 5-10 s on a loaded machine; five calls took
        48 s for two joins at once here); ``tags`` its tags (comma-separated;
        the shared user keeps ``administrator``). Its input carries the password's
        salted SHA-256 hash, as RabbitMQ stores it, not the password."""
        p = permissions
        definitions = {
            "users": [
                {
                    "name": name,
                    "password_hash": password_hash(password),
                    "hashing_algorithm": "rabbit_password_hashing_sha256",
                    "tags": tags,
                }
            ],
            "permissions": [
                {
                    "user": name,
                    "vhost": p.vhost,
                    "configure": p.configure,
                    "write": p.write,
                    "read": p.read,
                }
            ],
            "topic_permissions": [
                {"user": name, "vhost": p.vhost, "exchange": e, "write": w, "read": r}
                for e, w, r in p.topics
            ],
        }
        done = await self._ctl(
            "import_definitions", "--format", "json", secret=json.dumps(definitions)
        )
        if done.returncode != 0:
            raise self._failed(f"set user {name} (password, permissions)", done)
        return "set (password, permissions and topic permissions)"

    async def delete_user(self, name: str) -> bool:
        """Delete ``name`` (RabbitMQ closes its open connections); False when
        there was no such user."""
        done = await self._ctl("delete_user", "--", name)
        if done.returncode == EX_NOUSER:
            return False
        if done.returncode != 0:
            raise self._failed(f"delete user {name}", done)
        return True
