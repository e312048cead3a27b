"""The backup archive's format: one tar file, its manifest first.

Rules:

1. The first member is ``manifest.json``: the format and its version, the
   microstackd version and store schema that made it, when, the cluster it
   holds (id, control name, address, ports, CA fingerprint), and every other
   member's name, size and SHA-256. Nothing else is in the archive.
2. Members are regular files under ``state/`` (the control's own state) and
   ``openstack/`` (the control plane's data), names of ``[A-Za-z0-9._-]``
   parts: no absolute path, no ``..``, no links, no devices.
3. An archive is read whole and checked (every member against the manifest,
   none missing, none extra) before anything in it is used: ``extract``
   writes only into a directory of its own, which the caller moves into
   place once the archive proved whole.

No gRPC, no store: files and hashes only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from microstackd import errors

if TYPE_CHECKING:  # tarfile is imported by the first backup or restore, not by every daemon
    import tarfile

MANIFEST = "manifest.json"
FORMAT = "microstackd-backup"
FORMAT_VERSION = 1
#: The manifest is small; a bigger one is not ours.
MANIFEST_MAX = 1 << 20
_PART = r"[A-Za-z0-9._-]+"
_NAME = re.compile(rf"(state|openstack)(/{_PART})+")
_CHUNK = 1 << 20

DATABASE = "state/microstackd.db"
CONTROL_YAML = "state/control.yaml"
MARIADB_DUMP = "openstack/databases.sql"
RABBITMQ_DEFINITIONS = "openstack/rabbitmq-definitions.json"
KEYSTONE_KEYS = "openstack/keystone"
GLANCE_IMAGES = "openstack/glance/images"


@dataclasses.dataclass(frozen=True)
class Member:
    name: str
    size: int
    sha256: str


@dataclasses.dataclass(frozen=True)
class Manifest:
    """What an archive says it holds (rule 1)."""

    data: Mapping[str, Any]

    @property
    def members(self) -> list[Member]:
        return [
            Member(str(f["name"]), int(f["size"]), str(f["sha256"])) for f in self.data["files"]
        ]

    @property
    def cluster(self) -> Mapping[str, Any]:
        found: Mapping[str, Any] = self.data["cluster"]
        return found

    def text(self) -> str:
        return json.dumps(self.data, indent=2, sort_keys=True)


def sha256_file(path: Path) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name) or any(part in (".", "..") for part in name.split("/")):
        raise errors.BadArchive(f"the archive holds a member with a name it may not have: {name!r}")
    return name


def write(
    target: IO[bytes], header: Mapping[str, Any], files: Iterable[tuple[str, Path]]
) -> Manifest:
    """Write the archive of ``files`` (member name, source path) to
    ``target``; the manifest is ``header`` plus each member's checksum.

    Each file is hashed first, then copied; a file that changed in between
    (it must not: each is a snapshot or immutable) fails here."""
    files = list(files)
    members: list[Member] = []
    for name, path in files:
        size, digest = sha256_file(path)
        members.append(Member(check_name(name), size, digest))
    listed = [dataclasses.asdict(m) for m in members]
    manifest = Manifest(
        {**header, "format": FORMAT, "format_version": FORMAT_VERSION, "files": listed}
    )
    blob = manifest.text().encode()
    import tarfile

    with tarfile.open(fileobj=target, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(MANIFEST)
        info.size, info.mode, info.mtime = len(blob), 0o600, 0
        tar.addfile(info, io.BytesIO(blob))
        for (name, path), member in zip(files, members, strict=True):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = member.size, 0o600, 0
            with path.open("rb") as f:
                hashing = _Hashing(f)
                tar.addfile(info, hashing)
            if hashing.digest.hexdigest() != member.sha256:
                raise errors.MicrostackError(f"{path} changed while it was being backed up")
    return manifest


class _Hashing(io.RawIOBase):
    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self.digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        block = self._f.read(size)
        self.digest.update(block)
        return block


def read(path: Path, extract_to: Path | None = None, shown: str = "the archive") -> Manifest:
    """Check the archive at ``path`` whole (rule 3): return its manifest;
    with ``extract_to``, its members are written there as they are checked.
    ``errors.BadArchive`` names what is wrong."""
    import tarfile

    try:
        with tarfile.open(path, mode="r|") as tar:
            return _read(tar, shown, extract_to)
    except (tarfile.TarError, EOFError) as exc:
        raise errors.BadArchive(
            f"{shown} is not a whole microstackd backup (cut short or damaged: {exc}); "
            "nothing was changed"
        ) from exc
    except OSError as exc:
        raise errors.BadArchive(f"cannot read the archive: {exc.strerror or exc}") from exc


def _read(tar: tarfile.TarFile, shown: str, extract_to: Path | None) -> Manifest:
    first = tar.next()
    if first is None or first.name != MANIFEST or not first.isfile() or first.size > MANIFEST_MAX:
        raise errors.BadArchive(
            f"{shown} is not a microstackd backup (its first member is not {MANIFEST})"
        )
    manifest = parse_manifest(_read_member(tar, first))
    expected = {m.name: m for m in manifest.members}
    seen: set[str] = set()
    while (info := tar.next()) is not None:
        name = check_name(info.name)
        member = expected.get(name)
        if member is None or name in seen or not info.isfile():
            raise errors.BadArchive(f"the archive holds {name!r}, which its manifest does not list")
        seen.add(name)
        source = tar.extractfile(info)
        assert source is not None
        digest, size = hashlib.sha256(), 0
        out = None
        if extract_to is not None:
            target = extract_to / name
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            out = target.open("xb")
            target.chmod(0o600)
        try:
            while block := source.read(_CHUNK):
                digest.update(block)
                size += len(block)
                if out is not None:
                    out.write(block)
        finally:
            if out is not None:
                out.close()
        if size != member.size or digest.hexdigest() != member.sha256:
            raise errors.BadArchive(
                f"{name} in {shown} does not match its checksum in the manifest: the archive "
                "is damaged; nothing was changed"
            )
    missing = sorted(set(expected) - seen)
    if missing:
        raise errors.BadArchive(
            f"{shown} is cut short: {len(missing)} member(s) of its manifest are missing "
            f"({', '.join(missing[:3])}{', …' if len(missing) > 3 else ''}); nothing was changed"
        )
    return manifest


def _read_member(tar: tarfile.TarFile, info: tarfile.TarInfo) -> bytes:
    f = tar.extractfile(info)
    assert f is not None
    return f.read()


def parse_manifest(blob: bytes) -> Manifest:
    try:
        data = json.loads(blob)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError("not a microstackd backup manifest")
        for f in data["files"]:
            check_name(str(f["name"]))
            int(f["size"]), str(f["sha256"])
        data["cluster"]["id"]  # noqa: B018 (must be there)
    except (ValueError, KeyError, TypeError) as exc:
        raise errors.BadArchive(f"the archive's manifest is not valid ({exc})") from exc
    return Manifest(data)
