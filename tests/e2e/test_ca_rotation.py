"""Rotating the cluster CA with real daemons: a control and two computes,
one compute stopped during the switch and started after. Nothing stops
working; the stopped compute moves when it is back, and only then is the
old CA retired."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509 as cx

from sandbox.netns import Cluster, Host, wait_for

pytestmark = pytest.mark.e2e


def _nodes(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n["name"]: n for n in status["nodes"]}


def _tls(host: Host, name: str) -> Path:
    assert host.state_dir is not None
    return host.state_dir / "tls" / name


def _issuer_is(host: Host, ca_pem: bytes) -> bool:
    """Whether ``host``'s node certificate was issued by the CA ``ca_pem``."""
    cert = cx.load_pem_x509_certificate(_tls(host, "node.crt").read_bytes())
    try:
        cert.verify_directly_issued_by(cx.load_pem_x509_certificate(ca_pem))
    except Exception:
        return False
    return True


def _fingerprints(pem: bytes) -> list[str]:
    from cryptography.hazmat.primitives import hashes

    return [c.fingerprint(hashes.SHA256()).hex() for c in cx.load_pem_x509_certificates(pem)]


def test_a_ca_rotation_with_one_compute_down_finishes_when_it_is_back(cluster: Cluster) -> None:
    control, (up, down) = cluster.control, cluster.computes
    old_ca = _tls(control, "ca.crt").read_bytes()
    old_fp = _fingerprints(old_ca)[0]
    assert control.status()["cluster"]["ca_fingerprint"] == old_fp
    down.stop_daemon()

    rotated = control.ctl("ca", "rotate", "--format", "json", timeout=120)
    events = [json.loads(line) for line in rotated.stdout.splitlines()]
    steps = {(e["step"], e["state"]) for e in events}
    assert ("move compute1", "done") in steps, rotated.stdout
    assert ("move compute2", "waiting") in steps, rotated.stdout
    assert events[-1]["final"] and events[-1]["state"] == "waiting", rotated.stdout
    assert "compute2" in events[-1]["message"], rotated.stdout

    new_fp = [f for f in _fingerprints(_tls(control, "ca.crt").read_bytes()) if f != old_fp][0]
    new_ca = _tls(control, "ca.crt").read_bytes().split(b"-----END CERTIFICATE-----")[0]
    new_ca += b"-----END CERTIFICATE-----\n"
    # During the switch: both CAs trusted and shown, on the control and relayed.
    status = control.status()
    cas = [(c["fingerprint"], c["state"]) for c in status["cluster"]["cas"]]
    assert cas == [(new_fp, "signing"), (old_fp, "retiring")], status["cluster"]
    assert up.status()["cluster"]["cas"] == status["cluster"]["cas"]
    table = control.ctl("status").stdout
    assert "signing" in table and "retiring" in table, table
    listed = control.ctl("ca").stdout
    assert new_fp in listed and old_fp in listed, listed
    # compute1 moved: its certificate is the new CA's, it trusts both.
    assert _issuer_is(up, new_ca)
    assert _fingerprints(_tls(up, "ca.crt").read_bytes()) == [new_fp, old_fp]
    # The control still presents a certificate of the old CA (compute2 trusts only it).
    assert _issuer_is(control, old_ca)
    assert _fingerprints(_tls(down, "ca.crt").read_bytes()) == [old_fp]
    assert _tls(control, "ca-retiring.key").exists()
    nodes = _nodes(control.status())
    assert nodes["compute1"]["state"] == "active", nodes

    # compute2 comes back: its first heartbeat (old CA) moves it, and the old CA retires.
    assert down.node_name is not None
    down.start_daemon(down.node_name)
    wait_for(
        lambda: len(control.status()["cluster"]["cas"]) == 1,
        60,
        "the old CA retired after compute2 came back",
        interval=0.5,
    )
    status = control.status()
    assert [(c["fingerprint"], c["state"]) for c in status["cluster"]["cas"]] == [
        (new_fp, "signing")
    ]
    assert status["cluster"]["ca_fingerprint"] == new_fp
    assert not _tls(control, "ca-retiring.key").exists()
    assert _fingerprints(_tls(control, "ca.crt").read_bytes()) == [new_fp]
    for host in (control, up, down):
        assert _issuer_is(host, new_ca), host.name
    for host in (up, down):
        assert _fingerprints(_tls(host, "ca.crt").read_bytes()) == [new_fp], host.name
    wait_for(
        lambda: all(n["state"] == "active" for n in control.status()["nodes"]),
        30,
        "every node active after the rotation",
        interval=0.5,
    )
    for host in (up, down):
        relayed = host.status()  # over mTLS under the new CA alone
        assert relayed["cluster"]["ca_fingerprint"] == new_fp, relayed["cluster"]
    assert "CA rotation done" in (control.log_path.read_text() if control.log_path else "")
