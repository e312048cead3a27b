"""Each compute's own OpenStack accounts: their names, what the compute's
rendered files hold (its own secrets, none of the shared ones), the
RabbitMQ permissions (its own host's queues only), and issuing/deleting
them through rabbitmqctl (the password on stdin, never on its command
line) and Keystone, idempotently."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from microstackd import errors
from microstackd.control import config as control_config
from microstackd.control import node_accounts
from microstackd.control.node_accounts import NodeAccounts, permissions, user_name
from microstackd.model import NodeRecord, NodeState, Role
from microstackd.node import rabbitmq, render
from microstackd.node.roles import COMPUTE
from microstackd.store import Store

CRL = "-----BEGIN X509 CRL-----\n-----END X509 CRL-----"
UUID = "0123456789abcdef0123456789abcdef"


def _node(name: str) -> NodeRecord:
    return NodeRecord(
        name=name,
        role=Role.COMPUTE,
        address="10.0.0.2",
        hostname=name,
        state=NodeState.ENROLLING,
        message="",
        cert_serial="aa",
        cert_not_after=0,
        joined=0,
    )


def _values(tmp_path: Path) -> dict[str, str]:
    return {
        "config_root": str(tmp_path / "etc"),
        "state_dir": str(tmp_path / "state"),
        "state_path": str(tmp_path / "state" / "services"),
        "run_dir": str(tmp_path / "run"),
        "log_dir": str(tmp_path / "state" / "logs"),
        "helpers_dir": str(tmp_path / "helpers"),
        "openstack_prefix": "/opt/os",
        "python": "/usr/bin/python3",
        "node_name": "node-1",
        "virt_type": "qemu",
        "virt_detail": "virt_type qemu",
        "libvirt_uri": "qemu+unix:///system?socket=/run/n1/libvirt/libvirt-sock",
        "instances_bind": "yes",
    }


def test_names_come_from_the_node_and_passwords_are_fresh_each_time() -> None:
    assert user_name("node-1") == "compute-node-1"
    first, second = node_accounts.generate("node-1"), node_accounts.generate("node-1")
    assert first.rabbitmq_user == first.keystone_user == "compute-node-1"
    passwords = {
        first.rabbitmq_password,
        first.keystone_password,
        second.rabbitmq_password,
        second.keystone_password,
    }
    assert len(passwords) == 4
    for password in passwords:
        assert re.fullmatch(r"[A-Za-z0-9_-]{32}", password)  # URL-safe: no quoting needed
    # Never a password in a repr (a traceback, a log line).
    for shown in (repr(first), repr(first.own()), str(first)):
        assert first.rabbitmq_password not in shown and first.keystone_password not in shown


def test_a_compute_renders_only_its_own_secrets_and_none_of_the_shared_ones(
    tmp_path: Path,
) -> None:
    config = control_config.ensure(tmp_path / "control.yaml", "10.0.0.1")
    accounts = node_accounts.generate("node-1")
    settings = control_config.issue_compute_settings(
        config, _node("node-1"), revocation_list=CRL, own=accounts.own()
    )
    paths = render.render_role(COMPUTE, settings | _values(tmp_path), tmp_path / "etc")
    rendered = "\n".join(p.read_text() for p in paths)
    shared = [
        config.rabbitmq_password,
        config.metadata_secret,
        config.database_password,
        config.admin_password,
        *config.service_passwords.values(),
    ]
    for secret in shared:
        assert secret not in rendered
        assert secret not in json.dumps(settings)
    assert "metadata_secret" not in settings  # no compute service uses it
    own = f"rabbit://compute-node-1:{accounts.rabbitmq_password}@10.0.0.1:5672/"
    assert rendered.count(own) == 2  # nova-compute and the Open vSwitch agent
    text = (tmp_path / "etc" / "nova/nova.conf.d/microstackd-compute.conf").read_text()
    for section in ("keystone_authtoken", "service_user", "placement", "neutron"):
        block = text.split(f"[{section}]", 1)[1].split("\n[", 1)[0]
        assert "username = compute-node-1" in block, section
        assert f"password = {accounts.keystone_password}" in block, section
    assert "rabbit://compute-node-1@10.0.0.1" in config.public_summary(accounts.own())


def test_without_own_accounts_the_shared_credentials_are_issued(tmp_path: Path) -> None:
    config = control_config.ensure(tmp_path / "control.yaml", "10.0.0.1")
    settings = control_config.issue_compute_settings(config, _node("node-1"), revocation_list=CRL)
    assert settings["transport_url"] == config.transport_url
    assert settings["placement_username"] == "placement"
    assert settings["placement_password"] == config.service_passwords["placement"]


def _allowed(pattern: str, name: str) -> bool:
    # RabbitMQ searches with PCRE; every pattern is anchored at both ends.
    assert pattern.startswith("^") and pattern.endswith("$")
    return re.search(pattern, name) is not None


@pytest.mark.parametrize(
    "name",
    [
        "compute.node-1",
        "compute-alt.node-1",
        "compute",
        f"compute_fanout_{UUID}",
        f"reply_{UUID}",
        "q-agent-notifier-port-update.node-1",
        f"q-agent-notifier-tunnel-update_fanout_{UUID}",
        "neutron-vo-Port-1.11.node-1",
        f"neutron-vo-SecurityGroupRule-1.3_fanout_{UUID}",
    ],
)
def test_a_compute_may_use_its_own_queues(name: str) -> None:
    p = permissions("node-1")
    assert _allowed(p.configure, name) and _allowed(p.write, name) and _allowed(p.read, name)


@pytest.mark.parametrize(
    "name",
    [
        "compute.node-2",
        "compute-alt.node-2",
        "compute.node-10",
        "q-agent-notifier-port-update.node-2",
        "neutron-vo-Port-1.11.node-2",
        "conductor",
        "scheduler",
        "q-plugin",
        "q-reports-plugin",
        "dhcp_agent.control",
        "l3_agent",
        "reply_not-a-uuid",
        "notifications.info",
        "amq.rabbitmq.trace",
    ],
)
def test_a_compute_cannot_take_another_hosts_or_the_controls_queues(name: str) -> None:
    p = permissions("node-1")
    for pattern in (p.configure, p.write, p.read):
        assert not _allowed(pattern, name)


def test_topic_permissions_bind_only_its_own_hosts_keys() -> None:
    topics = {exchange: (write, read) for exchange, write, read in permissions("node-1").topics}
    nova_write, nova_read = topics["nova"]
    for key in ("conductor", "compute.node-2", "compute-alt.node-2"):
        assert _allowed(nova_write, key), key  # the conductor; a live migration's destination
    for key in ("scheduler", "compute", "q-plugin"):
        assert not _allowed(nova_write, key), key
    assert _allowed(nova_read, "compute.node-1") and _allowed(nova_read, "compute")
    assert not _allowed(nova_read, "compute.node-2") and not _allowed(nova_read, "conductor")
    neutron_write, neutron_read = topics["neutron"]
    assert _allowed(neutron_write, "q-plugin") and _allowed(neutron_write, "q-reports-plugin")
    assert not _allowed(neutron_write, "q-agent-notifier-port-update.node-2")
    assert _allowed(neutron_read, "q-agent-notifier-port-update.node-1")
    assert _allowed(neutron_read, "neutron-vo-Port-1.11")
    assert not _allowed(neutron_read, "q-agent-notifier-port-update.node-2")
    assert not _allowed(neutron_read, "q-plugin")


def test_a_node_name_is_matched_literally() -> None:
    # "node-1" must not match "node11" or "nodex1": the hyphen is escaped, the name anchored.
    p = permissions("node-1")
    assert not _allowed(p.read, "compute.node11") and not _allowed(p.read, "compute.node-12")


# -------------------------------------------------------- rabbitmqctl --


FAKE_CTL = r"""#!/bin/sh
# A stand-in rabbitmqctl: records its arguments and stdin, answers like the real one.
log="$FAKE_LOG"
printf 'argv:%s\n' "$*" >> "$log"
if [ ! -t 0 ]; then printf 'stdin:%s\n' "$(cat)" >> "$log"; fi
if [ -n "$FAKE_DOWN" ]; then
  echo "Error: unable to perform an operation on node 'rabbit@localhost'" >&2; exit 69
fi
users="$FAKE_USERS"
case "$3" in
  change_password)
    grep -qx "$5" "$users" 2>/dev/null || { echo "User \"$5\" does not exist" >&2; exit 67; } ;;
  add_user) echo "$5" >> "$users" ;;
  delete_user)
    grep -qx "$5" "$users" 2>/dev/null || exit 67
    grep -vx "$5" "$users" > "$users.n"; mv "$users.n" "$users" ;;
esac
exit 0
"""


@pytest.fixture
def fake_ctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    ctl = tmp_path / "rabbitmqctl"
    ctl.write_text(FAKE_CTL)
    ctl.chmod(0o755)
    monkeypatch.setattr(rabbitmq, "RABBITMQCTL", str(ctl))
    log = tmp_path / "ctl.log"
    log.touch()
    return log


def _rabbit(tmp_path: Path, down: bool = False) -> rabbitmq.RabbitMQ:
    env = {
        "PATH": rabbitmq.SYSTEM_PATH,
        "FAKE_LOG": str(tmp_path / "ctl.log"),
        "FAKE_USERS": str(tmp_path / "users"),
    }
    if down:
        env["FAKE_DOWN"] = "1"
    return rabbitmq.RabbitMQ(env, "rabbit@localhost")


def test_rabbitmqctl_gets_only_the_passwords_hash_on_stdin(tmp_path: Path, fake_ctl: Path) -> None:
    rabbit = _rabbit(tmp_path)
    perms = permissions("node-1")
    assert asyncio.run(rabbit.ensure_user("compute-node-1", "s3cret-one", perms)).startswith("set")
    log = fake_ctl.read_text()
    assert "s3cret" not in log  # neither on its command line nor on its stdin
    assert "argv:-n rabbit@localhost import_definitions --format json" in log
    definitions = json.loads(log.split("stdin:", 1)[1])
    (user,) = definitions["users"]
    assert user["name"] == "compute-node-1"
    assert user["hashing_algorithm"] == "rabbit_password_hashing_sha256"
    raw = base64.b64decode(user["password_hash"])
    assert raw[4:] == hashlib.sha256(raw[:4] + b"s3cret-one").digest()
    assert definitions["permissions"] == [
        {"user": "compute-node-1", "vhost": "/", "configure": perms.configure,
         "write": perms.write, "read": perms.read}
    ]  # fmt: skip
    assert {t["exchange"] for t in definitions["topic_permissions"]} == {"nova", "neutron"}
    # Each hash has its own salt: the same password twice, two hashes.
    assert rabbitmq.password_hash("x") != rabbitmq.password_hash("x")
    assert rabbitmq.password_hash("x", b"abcd") == rabbitmq.password_hash("x", b"abcd")


def test_rabbitmqctl_deletes_a_user_once(tmp_path: Path, fake_ctl: Path) -> None:
    (tmp_path / "users").write_text("compute-node-1\n")
    rabbit = _rabbit(tmp_path)
    assert asyncio.run(rabbit.delete_user("compute-node-1")) is True
    assert asyncio.run(rabbit.delete_user("compute-node-1")) is False  # gone already: fine


def test_rabbitmq_down_is_said_plainly(tmp_path: Path, fake_ctl: Path) -> None:
    with pytest.raises(errors.CloudError, match="RabbitMQ on the control is not running"):
        asyncio.run(_rabbit(tmp_path, down=True).ensure_user("u", "p", permissions("n")))


# ------------------------------------------------------- NodeAccounts --


class FakeRabbit:
    def __init__(self, fail: bool = False) -> None:
        self.users: dict[str, str] = {}
        self.fail = fail

    async def ensure_user(self, name: str, password: str, perms: rabbitmq.Permissions) -> str:
        if self.fail:
            raise errors.CloudError("RabbitMQ on the control is not running or not answering")
        how = "updated" if name in self.users else "created"
        self.users[name] = password
        return how

    async def delete_user(self, name: str) -> bool:
        if self.fail:
            raise errors.CloudError("RabbitMQ on the control is not running or not answering")
        return self.users.pop(name, None) is not None


class FakeCloud:
    def __init__(self) -> None:
        self.users: dict[str, str] = {}
        self.fail = False

    def configured(self) -> object:
        return object()

    async def run(self, op: str, req: Mapping[str, Any], timeout: float = 0) -> dict[str, Any]:
        if self.fail:
            raise errors.CloudError("Keystone: 503 Service Unavailable")
        if op == "node-user":
            assert (req["roles"], req["project"]) == (["admin", "service"], "service")
            how = "updated" if req["name"] in self.users else "created"
            self.users[req["name"]] = req["password"]
            return {"message": f"Keystone user {req['name']} {how}"}
        assert op == "delete-node-user"
        deleted = self.users.pop(req["name"], None) is not None
        return {"message": f"Keystone user {req['name']} {'deleted' if deleted else 'gone'}"}


class FakePlane:
    enabled = True


#: The node accounts, the RabbitMQ and cloud they talk to, and the store.
AccountsWorld = tuple[NodeAccounts, FakeRabbit, FakeCloud, Store]


@pytest.fixture
def accounts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AccountsWorld:
    rabbit, cloud = FakeRabbit(), FakeCloud()
    monkeypatch.setattr(rabbitmq.RabbitMQ, "of_control_role", lambda values: rabbit)
    store = Store(tmp_path / "state")
    made = NodeAccounts(store, FakePlane(), cloud, dict)  # type: ignore[arg-type]
    return made, rabbit, cloud, store


def test_issue_persists_first_then_creates_and_a_resume_rotates(
    accounts: AccountsWorld,
) -> None:
    made, rabbit, cloud, store = accounts
    first, message = asyncio.run(made.issue("node-1"))
    assert "RabbitMQ user compute-node-1 created" in message and "created" in message
    path = store.state_dir / "node-accounts" / "node-1.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert made.current("node-1") == first
    assert rabbit.users == {"compute-node-1": first.rabbitmq_password}
    assert cloud.users == {"compute-node-1": first.keystone_password}
    # Issued again (a resumed enrolment, a rejoin): the same users, new passwords.
    second, message = asyncio.run(made.issue("node-1"))
    assert "updated" in message
    assert second.rabbitmq_password != first.rabbitmq_password
    assert rabbit.users["compute-node-1"] == second.rabbitmq_password
    assert cloud.users["compute-node-1"] == second.keystone_password
    assert made.current("node-1") == second


def test_a_failure_names_the_service_and_keeps_what_a_rerun_needs(
    accounts: AccountsWorld,
) -> None:
    made, rabbit, cloud, _store = accounts
    rabbit.fail = True
    with pytest.raises(errors.CloudError, match="own message-queue user compute-node-1: RabbitMQ"):
        asyncio.run(made.issue("node-1"))
    rabbit.fail, cloud.fail = False, True
    with pytest.raises(errors.CloudError, match="own Keystone user compute-node-1: Keystone: 503"):
        asyncio.run(made.issue("node-1"))
    cloud.fail = False
    issued, _ = asyncio.run(made.issue("node-1"))  # the re-run finishes the job
    assert cloud.users["compute-node-1"] == issued.keystone_password


def test_rabbitmq_and_keystone_are_told_at_once_and_both_failures_are_named(
    accounts: AccountsWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    made, rabbit, cloud, _store = accounts
    rabbit.fail = cloud.fail = True
    with pytest.raises(errors.CloudError) as failed:
        asyncio.run(made.issue("node-1"))
    assert "own message-queue user compute-node-1: RabbitMQ" in failed.value.message
    assert "own Keystone user compute-node-1: Keystone: 503" in failed.value.message
    rabbit.fail = cloud.fail = False
    told_keystone = asyncio.Event()
    ensure_user, run = rabbit.ensure_user, cloud.run

    async def rabbit_after_keystone(*args: Any) -> str:
        # Would never return if Keystone were told only after RabbitMQ.
        await asyncio.wait_for(told_keystone.wait(), 5)
        return str(await ensure_user(*args))

    async def keystone(op: str, req: Mapping[str, Any], timeout: float = 0) -> dict[str, Any]:
        told_keystone.set()
        return dict(await run(op, req, timeout))

    monkeypatch.setattr(rabbit, "ensure_user", rabbit_after_keystone)
    monkeypatch.setattr(cloud, "run", keystone)
    issued, message = asyncio.run(made.issue("node-1"))
    assert "RabbitMQ user compute-node-1 created; Keystone user compute-node-1 created" == message
    assert rabbit.users["compute-node-1"] == issued.rabbitmq_password


def test_revoke_deletes_both_users_and_keeps_the_record_until_it_succeeds(
    accounts: AccountsWorld,
) -> None:
    made, rabbit, cloud, _store = accounts
    asyncio.run(made.issue("node-1"))
    cloud.fail = True
    with pytest.raises(errors.CloudError) as failed:
        asyncio.run(made.revoke("node-1"))
    assert "Keystone user compute-node-1: Keystone: 503" in failed.value.message
    assert "deleted: RabbitMQ user compute-node-1 deleted" in failed.value.message
    assert made.current("node-1") is not None  # a second remove retries
    cloud.fail = False
    message = asyncio.run(made.revoke("node-1"))
    assert "RabbitMQ user compute-node-1 was gone already" in message
    assert "Keystone user compute-node-1 deleted" in message
    assert made.current("node-1") is None and rabbit.users == {} and cloud.users == {}


def test_a_control_without_the_plane_issues_the_shared_credentials(tmp_path: Path) -> None:
    class NoPlane:
        enabled = False

    made = NodeAccounts(Store(tmp_path / "s"), NoPlane(), FakeCloud(), dict)  # type: ignore[arg-type]
    assert "runs no OpenStack control plane" in (made.unavailable() or "")
    assert "no accounts of its own" in asyncio.run(made.revoke("node-1"))
