"""What the daemon leaves out until its first use (docs/performance.md, "Idle
RSS"): the YAML parser, libsodium, tarfile and cryptography are not imported
with the daemon's modules, and each path that needs one imports it then and
works; an idle daemon's certificate reads (trust.der) never import
cryptography.

Each case runs in a fresh interpreter that has imported everything the
daemon imports at start-up (``microstackd.main`` and ``microstackd.daemon``),
so the deferred import is really the first."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

from microstackd.model import Role
from microstackd.trust import x509

#: Imported at their first use only (bench/idle_memory.py's DEFERRED).
DEFERRED = ("yaml", "nacl", "tarfile", "cryptography")

_PRELUDE = """
import sys
import microstackd.daemon, microstackd.main
loaded = sorted({m.split(".")[0] for m in sys.modules} & set(DEFERRED))
assert not loaded, f"imported at start-up: {loaded}"
"""


def run_fresh(body: str, tmp_path: Path) -> str:
    """Run ``body`` after the daemon's start-up imports; return its stdout."""
    code = f"DEFERRED = {DEFERRED!r}\n" + _PRELUDE + textwrap.dedent(body)
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_start_up_imports_none_of_them(tmp_path: Path) -> None:
    out = run_fresh("print('ok')", tmp_path)
    assert out.strip() == "ok"


def test_a_config_file_loads_yaml_then(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text("log_level: debug\nlisten: 127.0.0.1:9000\n")
    (tmp_path / "bad.yaml").write_text("listen: [unclosed\n")
    out = run_fresh(
        """
        from pathlib import Path
        from microstackd import errors, main
        print(main.load_config_file(Path("good.yaml")))
        try:
            main.load_config_file(Path("bad.yaml"))
        except errors.InvalidArgument as exc:
            print("refused:", exc.message)
        """,
        tmp_path,
    )
    assert "'log_level': 'debug'" in out
    assert "refused: config file bad.yaml is not valid YAML" in out


def test_no_config_file_needs_no_yaml(tmp_path: Path) -> None:
    out = run_fresh(
        """
        from microstackd import main
        main.DEFAULT_CONFIG_FILE = __import__("pathlib").Path("no-such.yaml")
        print(main.load_config_file(None), "yaml" in sys.modules)
        """,
        tmp_path,
    )
    assert out.split() == ["{}", "False"]


@pytest.mark.parametrize("first", ["ensure", "record_cloud", "write_secrets"])
def test_control_yaml_paths_load_yaml_then(tmp_path: Path, first: str) -> None:
    (tmp_path / "control.yaml").write_text("control_address: 10.0.0.1\n")
    out = run_fresh(
        f"""
        from pathlib import Path
        from microstackd.control import config
        path = Path("control.yaml")
        if {first!r} == "record_cloud":
            config.record_cloud(path, Path("/etc/clouds.yaml"))
        elif {first!r} == "write_secrets":
            config.write_secrets(path, {{"admin": "s3cret"}})
        loaded = config.ensure(path, "10.0.0.1")
        print(loaded.control_address, loaded.admin_password == "s3cret", loaded.cloud)
        """,
        tmp_path,
    )
    address, admin_set, cloud = out.split(maxsplit=2)
    assert address == "10.0.0.1"
    assert admin_set == str(first == "write_secrets")
    assert ("/etc/clouds.yaml" in cloud) is (first == "record_cloud")


def test_the_first_spake2_exchange_loads_libsodium(tmp_path: Path) -> None:
    out = run_fresh(
        """
        from microstackd.trust import pake
        a, b = pake.Spake2A(b"pw", b"a", b"b"), pake.Spake2B(b"pw", b"a", b"b")
        ma, mb = a.start(), b.start()
        assert len(ma) == pake.MESSAGE_BYTES
        from nacl import bindings
        assert pake.MESSAGE_BYTES == 1 + bindings.crypto_core_ed25519_BYTES
        print(a.finish(mb) == b.finish(ma))
        c = pake.Spake2B(b"pw", b"a", b"b")
        c.start()
        try:
            c.finish(b"A" + bytes(32))
        except pake.PakeError as exc:
            print("refused:", exc)
        """,
        tmp_path,
    )
    lines = out.splitlines()
    assert lines[0] == "True"
    assert lines[1].startswith("refused: the peer's SPAKE2 message is not a point")


def test_the_first_backup_or_restore_loads_tarfile(tmp_path: Path) -> None:
    (tmp_path / "db").write_bytes(b"database")
    (tmp_path / "damaged.tar").write_bytes(b"not a tar archive" * 64)
    out = run_fresh(
        """
        from pathlib import Path
        from microstackd import errors
        from microstackd.control import archive
        try:
            archive.read(Path("damaged.tar"))
        except errors.BadArchive as exc:
            print("refused:", exc.message)
        with open("backup.tar", "wb") as f:
            archive.write(f, {"cluster": {"id": "c1"}}, [("state/microstackd.db", Path("db"))])
        print(archive.read(Path("backup.tar")).data["files"][0]["name"])
        """,
        tmp_path,
    )
    lines = out.splitlines()
    assert lines[0].startswith("refused: the archive is not a whole microstackd backup")
    assert lines[1] == "state/microstackd.db"


def _pair_files(tmp_path: Path) -> None:
    """A cluster CA, a node's key and certificate as the store keeps them, and
    a key of no certificate, made here (cryptography) for the fresh interpreter."""
    now = datetime.now(UTC)
    ca = x509.create_ca("c0ffee00c0ffee00", now)
    key = x509.generate_key()
    cert = x509.issue_certificate(
        ca,
        key.public_key(),
        node_name="node-1",
        role=Role.COMPUTE,
        address="10.0.0.2",
        hostname="node-1",
        now=now,
    )
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem())
    (tmp_path / "node.key").write_bytes(x509.key_to_pem(key))
    (tmp_path / "node.pem").write_bytes(x509.cert_to_pem(cert))
    (tmp_path / "other.key").write_bytes(x509.key_to_pem(x509.generate_key()))


def test_an_idle_daemons_certificate_reads_need_no_cryptography(tmp_path: Path) -> None:
    """Start-up's pair and bundle checks, every mTLS caller's identity, the
    renewal check and the fingerprints: all read without cryptography."""
    _pair_files(tmp_path)
    out = run_fresh(
        """
        from datetime import UTC, datetime, timedelta
        from pathlib import Path
        from microstackd.trust import x509
        key, cert, ca = (Path(n).read_bytes() for n in ("node.key", "node.pem", "ca.pem"))
        x509.check_pair(key, cert)
        try:
            x509.check_pair(Path("other.key").read_bytes(), cert)
        except ValueError as exc:
            print("refused:", exc)
        cas = x509.read_bundle(ca)
        identity = x509.identity_of(x509.read_cert(cert))
        now = datetime.now(UTC)
        print(identity.name, identity.role.value, x509.ca_cluster_id(cas[0]))
        print(x509.renewal_due(x509.read_cert(cert), now, timedelta(days=30)),
              x509.expired(x509.read_cert(cert), now), len(x509.fingerprint(cert)))
        print(sorted(m for m in sys.modules if m.split(".")[0] == "cryptography"))
        """,
        tmp_path,
    )
    lines = out.splitlines()
    assert lines[0] == "refused: the key does not belong to the certificate"
    assert lines[1] == "node-1 compute c0ffee00c0ffee00"
    assert lines[2] == "False False 64"
    assert lines[3] == "[]"


def test_the_first_key_or_signature_loads_cryptography_from_any_thread(
    tmp_path: Path,
) -> None:
    """Eight threads make their first keys at once (the executor's threads
    sign and verify): each gets the whole module, none a half-made one."""
    out = run_fresh(
        """
        from concurrent.futures import ThreadPoolExecutor
        from datetime import UTC, datetime
        from microstackd.trust import x509
        def make(i):
            key = x509.generate_key()
            cert = x509.self_signed_bootstrap_certificate(key, datetime.now(UTC))
            x509.check_pair(x509.key_to_pem(key), x509.cert_to_pem(cert))
            return x509.fingerprint(cert) == x509.fingerprint(x509.cert_to_pem(cert))
        with ThreadPoolExecutor(8) as pool:
            print(all(pool.map(make, range(8))), "cryptography.x509" in sys.modules)
        """,
        tmp_path,
    )
    assert out.split() == ["True", "True"]
