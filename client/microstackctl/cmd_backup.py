"""`microstackctl backup FILE` (on the control) and `backup --list FILE`.

The daemon makes the archive and streams it; this command writes it as the
user who runs it: a temporary file beside FILE (mode 0600), fsynced, its
SHA-256 checked against the daemon's, then renamed to FILE. A full disk or
a broken stream leaves no file at all. ``--list`` reads an archive here,
without a daemon, and checks every member against its manifest.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import click

from microstackctl import render
from microstackctl.api import connect
from microstackctl.errors import CommandError

MANIFEST = "manifest.json"


def backup(socket: str | None, file: str, no_images: bool, list_: bool, fmt: str) -> None:
    if list_:
        list_archive(file, fmt)
    else:
        write(socket, file, no_images, fmt)


def write(socket: str | None, file: str, no_images: bool, fmt: str) -> None:
    target = Path(file)
    if target.exists() or target.is_symlink():
        raise CommandError(f"{target} exists: give the backup a new name, or remove it first")
    directory = target.parent if str(target.parent) else Path(".")
    try:
        fd = os.open(
            directory / f".{target.name}.part", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600
        )
    except OSError as exc:
        raise CommandError(f"cannot write {target}: {exc.strerror or exc}") from None
    part = directory / f".{target.name}.part"
    digest = hashlib.sha256()
    size = 0
    final: Any = None
    try:
        with os.fdopen(fd, "wb") as out:
            for response in connect(socket).backup(no_images):
                if response.message and fmt != "json":
                    click.echo(f"… {response.message}", err=True)
                if response.chunk:
                    out.write(response.chunk)
                    digest.update(response.chunk)
                    size += len(response.chunk)
                if response.done:
                    final = response
            if final is None:
                raise CommandError(
                    "the backup's stream ended before the archive was complete; no file was written"
                )
            if final.sha256 != digest.hexdigest():
                raise CommandError(
                    "the archive arrived damaged (its SHA-256 differs from the daemon's); "
                    "no file was written"
                )
            out.flush()
            os.fsync(out.fileno())
        os.replace(part, target)
        _sync_dir(directory)
    except OSError as exc:
        with contextlib.suppress(OSError):
            part.unlink()
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise CommandError(
                f"cannot write {target}: the disk is full; no file was written"
            ) from None
        raise CommandError(f"cannot write {target}: {exc.strerror or exc}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            part.unlink()
        raise
    manifest = json.loads(final.manifest)
    if fmt == "json":
        render.print_json(
            {"file": str(target), "bytes": size, "sha256": final.sha256, "manifest": manifest}
        )
        return
    click.echo(
        f"backup {manifest['id']} of cluster {manifest['cluster']['id']} written to {target} "
        f"({_size(size)}, {len(manifest['files'])} files, mode 0600); it holds the cluster CA's "
        "private key: keep it where only root can read it"
    )


def _sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def read_checked(path: Path) -> dict[str, Any]:
    """The manifest of the archive at ``path``, every member checked against it."""
    try:
        with tarfile.open(path, mode="r|") as tar:
            first = tar.next()
            if first is None or first.name != MANIFEST or not first.isfile():
                raise CommandError(f"{path} is not a microstackd backup (no {MANIFEST} first)")
            f = tar.extractfile(first)
            assert f is not None
            manifest: dict[str, Any] = json.loads(f.read())
            expected = {m["name"]: m for m in manifest["files"]}
            seen = set()
            while (info := tar.next()) is not None:
                member = expected.get(info.name)
                if member is None or info.name in seen or not info.isfile():
                    raise CommandError(
                        f"{path} holds {info.name!r}, which its manifest does not list"
                    )
                seen.add(info.name)
                data = tar.extractfile(info)
                assert data is not None
                digest = hashlib.sha256()
                while block := data.read(1 << 20):
                    digest.update(block)
                if digest.hexdigest() != member["sha256"]:
                    raise CommandError(
                        f"{info.name} in {path} does not match its checksum: the archive is damaged"
                    )
    except (tarfile.TarError, EOFError) as exc:
        raise CommandError(
            f"{path} is not a whole microstackd backup (cut short or damaged: {exc})"
        ) from None
    except (ValueError, KeyError, TypeError) as exc:
        raise CommandError(f"{path}: its manifest is not valid ({exc})") from None
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror or exc}") from None
    missing = sorted(set(expected) - seen)
    if missing:
        raise CommandError(
            f"{path} is cut short: {len(missing)} member(s) of its manifest are missing "
            f"({', '.join(missing[:3])})"
        )
    return manifest


def list_archive(file: str, fmt: str) -> None:
    manifest = read_checked(Path(file))
    if fmt == "json":
        render.print_json({**manifest, "checked": True})
        return
    cluster, made = manifest["cluster"], manifest["microstackd"]
    held = "databases, RabbitMQ definitions, Keystone keys" if manifest["openstack"] else "none"
    rows = (
        ("backup", f"{manifest['id']}, made {manifest['created']} by microstackd {made} "
                   f"(store schema {manifest['schema']})"),
        ("cluster", f"{cluster['id']}, control {cluster['control_name']} at "
                    f"{cluster['control_address']} (ports {cluster['bootstrap_port']}, "
                    f"{cluster['cluster_port']})"),
        ("members", ", ".join(cluster.get("members", []))),
        ("openstack", f"{held}; images {manifest['images']}"),
    )  # fmt: skip
    for key, value in rows:
        click.echo(f"{key:<9} {value}")
    for m in manifest["files"]:
        click.echo(f"{m['size']:>12}  {m['sha256'][:16]}  {m['name']}")
    click.echo(f"{len(manifest['files'])} files, every checksum matches")
