"""Backup and restore of the control with real daemons (stand-in services):
the round trip the computes come back through, and every refusal (an
existing cluster, a damaged, cut-short or newer archive, another address
or name, a full disk), each leaving nothing changed."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import Node

EXIT_ERROR = 1


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.3)


def _node(status: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(n for n in status["nodes"] if n["name"] == name)
    return found


def _heard_since(control: Node, name: str, since: float) -> bool:
    node = _node(control.status(), name)
    seen = node["last_seen"]
    if node["state"] != "active" or not seen:
        return False
    from datetime import datetime

    return datetime.fromisoformat(seen).timestamp() >= since


def _lose(control: Node) -> Path:
    """The control machine is lost: its daemon stops, its state is moved away."""
    control.stop()
    lost = control.state_dir.with_name(control.state_dir.name + ".lost")
    control.state_dir.rename(lost)
    shutil.rmtree(control.root / "etc", ignore_errors=True)
    return lost


@pytest.fixture
def pair(make_node: Callable[..., Node], password_file: Path) -> tuple[Node, Node]:
    control = make_node("ctl")
    control.init_control(password_file)
    compute = make_node("node-1")
    compute.join(control, password_file)
    return control, compute


def test_a_restored_control_takes_its_computes_back(
    pair: tuple[Node, Node], tmp_path: Path
) -> None:
    control, compute = pair
    before = control.status()
    # A compute's own OpenStack passwords, as issue-config keeps them where
    # the control runs a cloud (none here: stand-in services).
    accounts = control.state_dir / "node-accounts"
    accounts.mkdir(mode=0o700)
    (accounts / "node-1.json").write_text('{"rabbitmq": "r", "keystone": "k"}')
    archive = tmp_path / "backup.tar"
    made = control.ctl("backup", str(archive), "--format", "json")
    result = json.loads(made.stdout)
    assert archive.stat().st_mode & 0o777 == 0o600
    assert result["bytes"] == archive.stat().st_size and len(result["sha256"]) == 64
    names = {f["name"] for f in result["manifest"]["files"]}
    assert {"state/microstackd.db", "state/tls/ca.key", "state/tls/node.key",
            "state/verifier.json", "state/control.yaml",
            "state/node-accounts/node-1.json"} <= names  # fmt: skip
    assert result["manifest"]["cluster"]["members"] == ["ctl", "node-1"]
    assert not result["manifest"]["openstack"]
    listed = control.ctl("backup", "--list", str(archive)).stdout
    assert "every checksum matches" in listed and "control ctl at " in listed, listed
    assert list(control.state_dir.glob(".backup-*")) == []  # nothing left behind

    lost = _lose(control)
    control.start()
    assert control.status()["cluster"] == {}
    restoring = time.time()
    restored = control.ctl("restore", str(archive))
    assert "✓ done" in restored.stdout and "restored from backup" in restored.stdout
    assert "restore-databases" in restored.stdout  # skipped: no control plane here
    _wait(lambda: _heard_since(control, "node-1", restoring), 30, "node-1 heard from again")
    after = control.status()
    assert after["cluster"] == before["cluster"]
    assert after["local"]["bootstrap_fingerprint"] == before["local"]["bootstrap_fingerprint"]
    assert _node(after, "node-1")["cert_serial"] == _node(before, "node-1")["cert_serial"]
    assert _node(after, "ctl")["state"] == "active"
    # The same keys as the lost machine's, none left in the archive's working dirs.
    assert (control.state_dir / "tls/ca.key").read_bytes() == (lost / "tls/ca.key").read_bytes()
    restored_accounts = control.state_dir / "node-accounts" / "node-1.json"
    assert restored_accounts.read_bytes() == (lost / "node-accounts" / "node-1.json").read_bytes()
    assert restored_accounts.stat().st_mode & 0o777 == 0o600
    assert list(control.state_dir.glob(".restore-*")) == []
    # The compute trusts it as before: its own view through the control.
    assert compute.status()["cluster"]["id"] == before["cluster"]["id"]


def test_restore_over_an_existing_cluster_is_refused_and_changes_nothing(
    pair: tuple[Node, Node], tmp_path: Path
) -> None:
    control, compute = pair
    archive = tmp_path / "backup.tar"
    control.ctl("backup", str(archive))
    before = control.status()
    refused = control.ctl("restore", str(archive), check=False)
    assert refused.returncode == EXIT_ERROR, refused.stdout + refused.stderr
    assert "already the control node of cluster" in refused.stderr, refused.stderr
    assert "nothing was changed" in refused.stderr
    assert "move " in refused.stderr and " away" in refused.stderr
    after = control.status()
    assert after["cluster"] == before["cluster"]
    assert [(n["name"], n["cert_serial"]) for n in after["nodes"]] == [
        (n["name"], n["cert_serial"]) for n in before["nodes"]
    ]
    exists = control.ctl("backup", str(archive), check=False)
    assert exists.returncode == EXIT_ERROR and "exists" in exists.stderr
    on_compute = compute.ctl("backup", str(archive.with_name("c.tar")), check=False)
    assert on_compute.returncode == EXIT_ERROR
    assert "backup runs on the control (ctl at " in on_compute.stderr, on_compute.stderr
    assert not archive.with_name("c.tar").exists()


def _repack(source: Path, target: Path, manifest: Callable[[dict[str, Any]], None]) -> None:
    """``source`` with its manifest edited by ``manifest`` (members unchanged)."""
    with tarfile.open(source) as tar, tarfile.open(target, "w") as out:
        for info in tar.getmembers():
            data = tar.extractfile(info).read()  # type: ignore[union-attr]
            if info.name == "manifest.json":
                edited = json.loads(data)
                manifest(edited)
                data = json.dumps(edited).encode()
                info.size = len(data)
            out.addfile(info, io.BytesIO(data))


def test_a_damaged_cut_short_or_newer_archive_is_refused_before_anything_is_written(
    pair: tuple[Node, Node], tmp_path: Path
) -> None:
    control, _compute = pair
    archive = tmp_path / "backup.tar"
    control.ctl("backup", str(archive))
    _lose(control)
    control.start()

    whole = archive.read_bytes()
    short = tmp_path / "short.tar"
    short.write_bytes(whole[: len(whole) // 2])
    damaged = tmp_path / "damaged.tar"
    with tarfile.open(archive) as tar, tarfile.open(damaged, "w") as out:
        for info in tar.getmembers():
            data = tar.extractfile(info).read()  # type: ignore[union-attr]
            if info.name == "state/verifier.json":
                data = data.replace(b"scrypt", b"sCrypt")
            out.addfile(info, io.BytesIO(data))
    newer = tmp_path / "newer.tar"
    _repack(archive, newer, lambda m: m.update(microstackd="99.0.0"))
    schema = tmp_path / "schema.tar"
    _repack(archive, schema, lambda m: m.update(schema=999))
    cases = [
        (short, "not a whole microstackd backup"),
        (damaged, "state/verifier.json in the archive does not match its checksum"),
        (newer, "made by microstackd 99.0.0, newer than this one"),
        (schema, "store schema (999) is newer than this microstackd's"),
    ]
    for path, message in cases:
        refused = control.ctl("restore", str(path), check=False)
        assert refused.returncode == EXIT_ERROR, refused.stdout + refused.stderr
        assert message in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
        assert control.status()["cluster"] == {}
        assert not (control.state_dir / "tls/ca.key").exists()
        assert list(control.state_dir.glob(".restore-*")) == []
    listed = control.ctl("backup", "--list", str(short), check=False)
    assert listed.returncode == EXIT_ERROR and "cut short" in listed.stderr, listed.stderr
    # The good archive still restores afterwards.
    control.ctl("restore", str(archive))


def test_a_restore_to_another_address_or_name_is_refused_naming_what_to_do(
    pair: tuple[Node, Node], make_node: Callable[..., Node], tmp_path: Path
) -> None:
    control, _compute = pair
    archive = tmp_path / "backup.tar"
    control.ctl("backup", str(archive))
    elsewhere = make_node("ctl")
    refused = elsewhere.ctl("restore", str(archive), check=False)
    assert refused.returncode == EXIT_ERROR
    assert f"control address {control.address} is not an address of this machine" in (
        refused.stderr
    ), refused.stderr
    assert f"ip addr add {control.address}/" in refused.stderr
    other = make_node("ctl2")
    refused = other.ctl("restore", str(archive), check=False)
    assert "start microstackd with --node-name ctl" in refused.stderr, refused.stderr
    assert elsewhere.status()["cluster"] == {} and other.status()["cluster"] == {}


@pytest.fixture
def small_disk(make_tmpfs: Callable[[str], Path]) -> Path:
    """A 1 MiB filesystem of its own: too small for an archive."""
    return make_tmpfs("1m")


def test_a_backup_to_a_full_disk_leaves_no_file(pair: tuple[Node, Node], small_disk: Path) -> None:
    control, _compute = pair
    filler = small_disk / "filler"
    with filler.open("wb") as f:
        f.write(b"\0" * (1024 * 1024 - 60 * 1024))  # 60 KiB left: less than the archive
    target = small_disk / "backup.tar"
    full = control.ctl("backup", str(target), check=False)
    assert full.returncode == EXIT_ERROR, full.stdout + full.stderr
    assert "the disk is full; no file was written" in full.stderr, full.stderr
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]
    os.unlink(filler)
    control.ctl("backup", str(target))
    assert target.stat().st_mode & 0o777 == 0o600


def test_a_certificate_renewed_after_the_backup_is_accepted_after_the_restore(
    make_node: Callable[..., Node], password_file: Path, tmp_path: Path
) -> None:
    lifetimes = ("--cert-lifetime", "40s", "--renew-before", "30s")
    control = make_node("ctl", *lifetimes)
    control.init_control(password_file)
    compute = make_node("node-1", *lifetimes)
    compute.join(control, password_file)
    archive = tmp_path / "backup.tar"
    control.ctl("backup", str(archive))
    backed_up = _node(control.status(), "node-1")["cert_serial"]
    # node-1 renews (10 s in) and uses its new certificate: the backup does not know it.
    _wait(lambda: _node(control.status(), "node-1")["cert_serial"] != backed_up, 40,
          "node-1 renewed after the backup")  # fmt: skip
    _lose(control)
    control.start()
    restoring = time.time()
    control.ctl("restore", str(archive))
    _wait(lambda: _heard_since(control, "node-1", restoring), 30, "node-1 heard from again")
    serial = _node(control.status(), "node-1")["cert_serial"]
    assert serial != backed_up  # the renewed one (or a later renewal) is node-1's now
    log = control.log.read_text()
    assert "certificate renewed after the restored backup taken as the member's" in log, log


def test_only_root_may_take_a_backup(pair: tuple[Node, Node]) -> None:
    """A caller of the socket who cannot read the root-only proof beside it
    (a member of the socket's group) is refused: the archive holds the CA key."""
    import grpc

    from microstack_api.v1 import cluster_pb2 as pb
    from microstack_api.v1 import cluster_pb2_grpc as pb_grpc

    control, _compute = pair
    proof = control.socket.with_suffix(".root-proof")
    assert proof.stat().st_mode & 0o777 == 0o600 and len(proof.read_bytes()) == 64
    with grpc.insecure_channel(f"unix:{control.socket}") as channel:
        stub = pb_grpc.AdminServiceStub(channel)
        for wrong in (b"", b"0" * 64, proof.read_bytes()[:-1]):
            with pytest.raises(grpc.RpcError) as refused:
                list(stub.Backup(pb.BackupRequest(proof=wrong), timeout=30))
            assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
            assert "only root may take a backup" in (refused.value.details() or "")
        first = next(iter(stub.Backup(pb.BackupRequest(proof=proof.read_bytes()), timeout=30)))
        assert first.message or first.chunk
    control.stop()
    assert not proof.exists()  # gone with the daemon; a new one at the next start
