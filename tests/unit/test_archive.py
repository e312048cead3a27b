"""The backup archive's format (control/archive.py): written with its
manifest first, read back only whole, every member against its checksum."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from microstackd import errors
from microstackd.control import archive

HEADER = {"id": "b1", "created": "2026-12-01T00:00:00+00:00", "created_unix": 0.0,
          "microstackd": "0.1.0", "schema": 8, "cluster": {"id": "c1"}}  # fmt: skip


def _sources(tmp_path: Path) -> list[tuple[str, Path]]:
    files = []
    for name, data in (("state/microstackd.db", b"db" * 1000), ("state/tls/ca.key", b"KEY"),
                       ("openstack/glance/images/0f1e", b"\0" * 70000)):  # fmt: skip
        path = tmp_path / "src" / name.replace("/", "_")
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        files.append((name, path))
    return files


def _archive(tmp_path: Path) -> Path:
    out = tmp_path / "backup.tar"
    with out.open("wb") as f:
        archive.write(f, HEADER, _sources(tmp_path))
    return out


def _rewrite(source: Path, target: Path, change: dict[str, bytes | None]) -> None:
    """A copy of ``source`` with members replaced (bytes) or dropped (None),
    the manifest left as it was."""
    with tarfile.open(source) as tar, tarfile.open(target, "w") as out:
        for info in tar.getmembers():
            data = tar.extractfile(info).read()  # type: ignore[union-attr]
            if info.name in change:
                if change[info.name] is None:
                    continue
                data = change[info.name]
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))


def test_an_archive_reads_back_whole_with_its_manifest_first(tmp_path: Path) -> None:
    path = _archive(tmp_path)
    with tarfile.open(path) as tar:
        assert tar.getnames()[0] == archive.MANIFEST
    manifest = archive.read(path, tmp_path / "out")
    assert manifest.data["format"] == archive.FORMAT
    assert manifest.data["format_version"] == archive.FORMAT_VERSION
    assert [m.name for m in manifest.members] == [n for n, _ in _sources(tmp_path)]
    assert (tmp_path / "out/state/tls/ca.key").read_bytes() == b"KEY"
    assert (tmp_path / "out/state/tls/ca.key").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("cut", [1, 512, 10_000, -1])
def test_an_archive_cut_short_is_refused(tmp_path: Path, cut: int) -> None:
    whole = _archive(tmp_path).read_bytes()
    short = tmp_path / "short.tar"
    short.write_bytes(whole[: cut if cut > 0 else len(whole) - 20_000])
    with pytest.raises(errors.BadArchive, match="not a whole microstackd backup|cut short|not a "):
        archive.read(short)


def test_a_member_that_does_not_match_its_checksum_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tar"
    _rewrite(_archive(tmp_path), bad, {"state/tls/ca.key": b"KEZ"})
    with pytest.raises(errors.BadArchive, match="state/tls/ca.key .*does not match its checksum"):
        archive.read(bad)


def test_a_missing_member_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tar"
    _rewrite(_archive(tmp_path), bad, {"openstack/glance/images/0f1e": None})
    with pytest.raises(errors.BadArchive, match="cut short: 1 member"):
        archive.read(bad)


def test_an_extra_or_unsafe_member_is_refused(tmp_path: Path) -> None:
    source = _archive(tmp_path)
    for i, name in enumerate(("state/extra", "../etc/passwd", "/etc/shadow", "state/../../x")):
        bad = tmp_path / "bad.tar"
        with tarfile.open(source) as tar, tarfile.open(bad, "w") as out:
            for info in tar.getmembers():
                out.addfile(info, tar.extractfile(info))
            extra = tarfile.TarInfo(name)
            extra.size = 1
            out.addfile(extra, io.BytesIO(b"x"))
        with pytest.raises(errors.BadArchive, match="may not have|does not list"):
            archive.read(bad, tmp_path / f"out{i}")
        assert not (tmp_path / "etc").exists()


def test_a_link_in_the_archive_is_refused(tmp_path: Path) -> None:
    source, bad = _archive(tmp_path), tmp_path / "bad.tar"
    with tarfile.open(source) as tar, tarfile.open(bad, "w") as out:
        infos = tar.getmembers()
        out.addfile(infos[0], tar.extractfile(infos[0]))
        link = tarfile.TarInfo("state/microstackd.db")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/shadow"
        out.addfile(link)
    with pytest.raises(errors.BadArchive, match="does not list"):
        archive.read(bad, tmp_path / "out")


def test_what_is_not_a_backup_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"hello" * 1000)
    with pytest.raises(errors.BadArchive, match="not a whole microstackd backup"):
        archive.read(junk)
    other = tmp_path / "other.tar"
    with tarfile.open(other, "w") as out:
        info = tarfile.TarInfo("README")
        info.size = 2
        out.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(errors.BadArchive, match="first member is not manifest.json"):
        archive.read(other)
    forged = tmp_path / "forged.tar"
    with tarfile.open(forged, "w") as out:
        blob = json.dumps({"format": "something-else", "files": []}).encode()
        info = tarfile.TarInfo(archive.MANIFEST)
        info.size = len(blob)
        out.addfile(info, io.BytesIO(blob))
    with pytest.raises(errors.BadArchive, match="manifest is not valid"):
        archive.read(forged)


def test_the_restore_plan_loads_the_data_after_its_service_and_makes_nothing_again() -> None:
    from microstackd.control import restore
    from microstackd.node.roles import CONTROL

    plan = restore.plan()
    assert plan[-1] == "done"
    assert plan.index("restore-databases") == plan.index("service mariadb") + 1
    assert plan.index("restore-databases") < plan.index("databases")
    assert plan.index("restore-rabbitmq") == plan.index("service rabbitmq") + 1
    for step in restore.NOT_AGAIN:
        assert step in CONTROL.order_names() and step not in plan
    assert [s for s in plan if s in CONTROL.order_names()] == [
        s for s in CONTROL.order_names() if s not in restore.NOT_AGAIN
    ]
