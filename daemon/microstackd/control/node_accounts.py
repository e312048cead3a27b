"""Each compute's own OpenStack accounts: a RabbitMQ user and a Keystone user
for that node alone, made by the control at issue-config and deleted when
the node is removed, so that a removed (or stolen) compute's secrets stop
working on the cloud at once.

* **Names** come from the node's name: ``compute-NODE`` for both (node
  names are ``[a-z0-9-]``, so the name needs no quoting in a URL).
* **Passwords** are random (``secrets.token_urlsafe``), new at every issue:
  a resumed enrolment, a rejoin and a reconfigure each rotate them (an
  existing user gets the new password, never a "user exists" failure).
  They are written (0600, ``STATE_DIR/node-accounts/NODE.json``) *before*
  RabbitMQ and Keystone are told, so that a crash between the two is
  resumed by issuing again; they go only into the node's rendered files.
* **RabbitMQ**: the vhost ``/``, and in it only the exchanges and queues
  nova-compute and the Open vSwitch agent use (``permissions``): its own
  host's queues, never another compute's; topic permissions bind it to
  the routing keys of its own host on ``nova`` and ``neutron``.
* **Keystone**: one user in the default domain with the single role
  ``service`` on the project ``service`` (not ``admin``): what nova-compute
  needs for Placement, Neutron and the service token it sends with them.

Only where this control runs the OpenStack control plane itself (its
RabbitMQ, its Keystone): elsewhere a compute gets control.yaml's shared
credentials, and the step says so.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass

from microstackd import errors
from microstackd.cloud.service import Cloud
from microstackd.control.config import OwnCredentials
from microstackd.control.plane import ControlPlane
from microstackd.node.rabbitmq import Permissions, RabbitMQ
from microstackd.store import Store

log = logging.getLogger(__name__)

#: A compute's users are named ``compute-NODE``.
USER_PREFIX = "compute-"
#: The roles the shared service users have: nova-compute reads, through its
#: [neutron] user, the floating IPs of every project's instances (Neutron's
#: get_floatingip is admin or the project's own; `service` alone left Nova's
#: listing of a server without its floating IP).
KEYSTONE_ROLES = ("admin", "service")
KEYSTONE_PROJECT = "service"
#: Where the control keeps each compute's current passwords (under the state dir).
ACCOUNTS_DIR = "node-accounts"
#: oslo.messaging's reply and fanout queues end in a uuid4's hex.
_UUID = "[0-9a-f]{32}"
#: Neutron's versioned-object push topics (``neutron-vo-Port-1.11``).
_NEUTRON_VO = r"neutron-vo-[A-Za-z]+-[0-9]+\.[0-9]+"
_AGENT_NOTIFIER = "q-agent-notifier-[a-z_-]+"
#: nova-compute's RPC topics (``compute-alt``: nova 34's second compute topic).
_NOVA_TOPICS = "compute|compute-alt"


@dataclass(frozen=True)
class Accounts:
    """One compute's own users and their current passwords (secret)."""

    node: str
    rabbitmq_user: str
    rabbitmq_password: str
    keystone_user: str
    keystone_password: str

    def __repr__(self) -> str:  # never a password in a traceback or a log line
        return f"Accounts(node={self.node!r}, users={self.rabbitmq_user!r})"

    def own(self) -> OwnCredentials:
        """What the node's configuration is rendered with."""
        return OwnCredentials(
            self.rabbitmq_user, self.rabbitmq_password, self.keystone_user, self.keystone_password
        )


def user_name(node: str) -> str:
    """The RabbitMQ and the Keystone user of compute ``node``."""
    return USER_PREFIX + node


def generate(node: str) -> Accounts:
    name = user_name(node)
    return Accounts(node, name, secrets.token_urlsafe(24), name, secrets.token_urlsafe(24))


def permissions(node: str) -> Permissions:
    """What nova-compute and the Open vSwitch agent of ``node`` may do on
    the vhost ``/``, found by watching them (docs/security.md):

    * **configure** (declare): the topic exchanges ``nova`` and ``neutron``;
      its RPC servers' queues (the shared topic queue, its host's, its
      fanout queues and their exchanges); its reply queues and their direct
      exchanges; the fanout exchanges it casts to (``scheduler_fanout``);
    * **write** (publish; bind a queue): those exchanges, its own queues,
      and the default exchange (``amq.default``: its RPC replies);
    * **read** (consume; bind from an exchange): its queues, and the
      exchanges it binds them to;
    * **topics**: on ``nova`` it publishes to the conductor and to any
      compute (a live migration's source calls the destination) and binds
      only its own host's keys; on ``neutron`` it publishes to the plugin's
      topics and binds only the agents' topics, shared or of its own host.
    """
    host = re.escape(node)
    own_queues = (
        f"(({_NOVA_TOPICS}|{_AGENT_NOTIFIER}|{_NEUTRON_VO})(\\.{host}|_fanout_{_UUID})?"
        f"|reply_{_UUID})"
    )
    fanouts = f"({_NOVA_TOPICS}|{_AGENT_NOTIFIER}|{_NEUTRON_VO})_fanout"
    exchanges = f"(nova|neutron|{fanouts}|scheduler_fanout|q-server-resource-versions_fanout)"
    declare = f"^({own_queues}|{exchanges})$"
    return Permissions(
        configure=declare,
        # amq.default: oslo.messaging sends RPC replies through the default
        # exchange (routing key: the caller's reply queue).
        write=f"^({own_queues}|{exchanges}|amq\\.default)$",
        read=f"^({own_queues}|nova|neutron|{fanouts})$",
        topics=(
            (
                "nova",
                r"^(conductor|(compute|compute-alt)\.[a-z0-9-]+)$",
                f"^({_NOVA_TOPICS})(\\.{host})?$",
            ),
            (
                "neutron",
                r"^(q-plugin|q-reports-plugin|q-server-resource-versions)$",
                f"^({_AGENT_NOTIFIER}|{_NEUTRON_VO})(\\.{host})?$",
            ),
        ),
    )


async def _timed(took: dict[str, float], key: str, call: Awaitable[str]) -> str:
    """``call``'s result; its seconds in ``took[key]``, whether or not it failed."""
    started = time.monotonic()
    try:
        return await call
    finally:
        took[key] = time.monotonic() - started


def _path(node: str) -> str:
    return f"{ACCOUNTS_DIR}/{node}.json"


class NodeAccounts:
    def __init__(
        self,
        store: Store,
        plane: ControlPlane,
        cloud: Cloud,
        values: Callable[[], dict[str, str]],
    ) -> None:
        self._store = store
        self._plane = plane
        self._cloud = cloud
        #: The control role's rendered values (where its RabbitMQ is).
        self._values = values

    def unavailable(self) -> str | None:
        """Why computes get control.yaml's shared credentials (None: they get their own)."""
        if not self._plane.enabled:
            return "this control runs no OpenStack control plane (--openstack-prefix)"
        if self._cloud.configured() is None:
            return "the control's cloud is not configured yet"
        return None

    def current(self, node: str) -> Accounts | None:
        """The accounts last issued to ``node`` (None: it has shared credentials)."""
        data = self._store.read_file(_path(node))
        if data is None:
            return None
        try:
            return Accounts(**json.loads(data))
        except (ValueError, TypeError) as exc:
            raise errors.StorageError(
                f"{self._store.state_dir / _path(node)} is damaged ({type(exc).__name__}): "
                f"delete it and issue {node}'s configuration again (`microstackctl reconfigure "
                f"{node}`)"
            ) from None

    async def issue(self, node: str) -> tuple[Accounts, str]:
        """Give ``node`` its own users with fresh passwords (made, or their
        passwords rotated); the accounts and what was done. RabbitMQ and
        Keystone are told at once (neither needs the other; rabbitmqctl's
        Erlang VM alone takes seconds on a loaded machine); a failure of
        either raises once both are over, naming each that failed."""
        accounts = generate(node)
        self._store.write_secret(_path(node), json.dumps(asdict(accounts)).encode())
        took: dict[str, float] = {}
        rabbit, keystone = await asyncio.gather(
            _timed(took, "rabbitmq_s", self._rabbitmq_user(node, accounts)),
            _timed(took, "keystone_s", self._keystone_user(node, accounts)),
            return_exceptions=True,
        )
        failed: list[errors.CloudError] = []
        for outcome in (rabbit, keystone):
            if isinstance(outcome, errors.CloudError):
                failed.append(outcome)
            elif isinstance(outcome, BaseException):
                raise outcome
        if failed:
            raise errors.CloudError("; ".join(e.message for e in failed))
        log.info(
            "node accounts issued node=%s user=%s rabbitmq_s=%.2f keystone_s=%.2f",
            node,
            accounts.rabbitmq_user,
            took["rabbitmq_s"],
            took["keystone_s"],
        )
        return accounts, f"RabbitMQ user {accounts.rabbitmq_user} {rabbit}; {keystone}"

    async def _rabbitmq_user(self, node: str, accounts: Accounts) -> str:
        rabbit = RabbitMQ.of_control_role(self._values())
        try:
            return await rabbit.ensure_user(
                accounts.rabbitmq_user, accounts.rabbitmq_password, permissions(node)
            )
        except errors.CloudError as exc:
            raise errors.CloudError(
                f"cannot give {node} its own message-queue user {accounts.rabbitmq_user}: "
                f"{exc.message}"
            ) from None

    async def _keystone_user(self, node: str, accounts: Accounts) -> str:
        request = {
            "name": accounts.keystone_user,
            "password": accounts.keystone_password,
            "roles": list(KEYSTONE_ROLES),
            "project": KEYSTONE_PROJECT,
            "description": f"microstackd: the services of compute {node}",
        }
        try:
            result = await self._cloud.run("node-user", request, timeout=120)
        except errors.CloudError as exc:
            raise errors.CloudError(
                f"cannot give {node} its own Keystone user {accounts.keystone_user}: {exc.message}"
            ) from None
        return str(result["message"])

    async def revoke(self, node: str) -> str:
        """Delete ``node``'s users: its secrets stop working at once
        (RabbitMQ closes its connections, Keystone its tokens). Raises
        ``errors.CloudError`` naming what could not be deleted; running it
        again retries (the record is kept until both are gone)."""
        reason = self.unavailable()
        if reason is not None:
            if self.current(node) is None:
                return f"no accounts of its own to delete ({reason})"
            raise errors.CloudError(f"its own accounts cannot be deleted now: {reason}")
        name = user_name(node)
        done, failed = [], []
        try:
            deleted = await RabbitMQ.of_control_role(self._values()).delete_user(name)
            done.append(f"RabbitMQ user {name} {'deleted' if deleted else 'was gone already'}")
        except errors.CloudError as exc:
            failed.append(f"RabbitMQ user {name}: {exc.message}")
        try:
            result = await self._cloud.run("delete-node-user", {"name": name}, timeout=120)
            done.append(str(result["message"]))
        except errors.CloudError as exc:
            failed.append(f"Keystone user {name}: {exc.message}")
        if failed:
            raise errors.CloudError(
                "not deleted: "
                + "; ".join(failed)
                + (f" (deleted: {'; '.join(done)})" if done else "")
            )
        self._store.delete_file(_path(node))
        log.info("node accounts deleted node=%s user=%s", node, name)
        return "; ".join(done)
