"""The test image that ships with the cloud: a small CirrOS-compatible guest
built from Debian packages (nothing can be downloaded but Debian's archive).

What it is: an unpartitioned FAT disk that syslinux boots, holding Debian's
cloud kernel and an initramfs made of ``busybox-static`` (init, DHCP, the
shell), ``dropbear-bin`` (sshd) with its libraries, the kernel modules a
Nova guest needs (virtio, the IDE cdrom of the config drive) and the boot
script in ``guest/``: user ``cirros``, DHCP on eth0, the SSH key from the
config drive (or the metadata service), ``virtio_net`` with its offloads off.

How it is made reproducible: the packages' versions are resolved once from
apt (``apt-cache show``), downloaded with ``apt-get download`` and checked
against the archive's SHA-256; every file of the image gets the same owner,
mode rules and timestamp (``EPOCH``), the initramfs is written here in
``newc`` order by path, and the FAT's volume id and dates are fixed. Same
inputs, same bytes. ``manifest.json`` beside the image records the packages
(name, version, SHA-256), the build tools' versions and the image's digest.

How it is cached: in ``cache_dir()`` (``MICROSTACK_IMAGE_CACHE``, default
``/var/cache/microstackd/test-image``), keyed by a digest of the resolved
packages, the build tools and this builder's own files: built once per
machine, reused until one of them changes.

    python -m microstackd.node.testimage build [--cache DIR] [--link PATH]
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path, PurePosixPath

from microstackd import errors

#: The kernel: Debian's cloud flavour (no AHCI: the config drive must be an IDE cdrom).
KERNEL_PACKAGE = "linux-image-cloud-amd64"
#: Everything else the guest is made of.
GUEST_PACKAGES = (
    "busybox-static",
    "dropbear-bin",
    "libc6",
    "libcrypt1",
    "libtomcrypt1",
    "libtommath1",
    "libgmp10",
    "zlib1g",
)
#: Debian packages whose programs build the image (their versions are recorded).
BUILD_TOOLS = ("dosfstools", "mtools", "syslinux", "syslinux-common", "qemu-utils", "kmod")
#: Kernel modules loaded at boot, with their dependencies (in that order).
MODULES = ("virtio_pci", "virtio_net", "virtio_blk", "ata_piix", "sr_mod", "isofs")
MODULE_PARAMS = {"virtio_net": "csum=0 gso=0"}
#: Programs taken from dropbear-bin (with the libraries they need).
DROPBEAR_PROGRAMS = ("usr/sbin/dropbear", "usr/bin/dropbearkey")
#: The one timestamp of every file in the image (2020-01-01T00:00:00Z).
EPOCH = 1577836800
#: The FAT's volume id ("MST1").
VOLUME_ID = "4d535431"
IMAGE_NAME = "cirros.qcow2"
MANIFEST_NAME = "manifest.json"
CACHE_ENV = "MICROSTACK_IMAGE_CACHE"
DEFAULT_CACHE = Path("/var/cache/microstackd/test-image")
CIRROS_UID = 1000


@dataclass(frozen=True)
class Package:
    """One Debian package of the image, as the archive describes it."""

    name: str
    version: str
    architecture: str
    sha256: str
    #: The .deb's path in the archive's pool.
    filename: str

    @property
    def deb(self) -> str:
        """The file name ``apt-get download`` gives it (an epoch's colon escaped)."""
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.architecture}.deb"


@dataclass(frozen=True)
class Built:
    image: Path
    manifest: Path
    #: Reused from the cache (not built now).
    cached: bool


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


# ------------------------------------------------------------- commands --


def _run(argv: Sequence[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run a build command; its failure is an ``errors.ConfigError`` naming it."""
    try:
        result = subprocess.run(
            list(argv),
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    except FileNotFoundError as exc:
        raise errors.ConfigError(
            f"the test image needs {argv[0]}, which is not installed "
            "(openstack/install-env.sh installs it)"
        ) from exc
    if result.returncode != 0:
        why = (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()[-5:]
        raise errors.ConfigError(
            f"{' '.join(argv[:3])} exited with status {result.returncode}: " + " / ".join(why)
        )
    return result.stdout


def _build_env() -> dict[str, str]:
    """FAT timestamps are local time: build in UTC, at ``EPOCH``."""
    return {**os.environ, "TZ": "UTC", "SOURCE_DATE_EPOCH": str(EPOCH), "LC_ALL": "C"}


# ------------------------------------------------------------- packages --


def parse_apt_show(text: str) -> list[dict[str, str]]:
    """The stanzas of ``apt-cache show`` output, each a dict of its fields."""
    stanzas: list[dict[str, str]] = []
    fields: dict[str, str] = {}
    key = ""
    for line in [*text.splitlines(), ""]:
        if not line.strip():
            if fields:
                stanzas.append(fields)
            fields, key = {}, ""
        elif line[0].isspace() and key:
            fields[key] += "\n" + line.strip()
        else:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return stanzas


def _show(names: Sequence[str]) -> dict[str, dict[str, str]]:
    """Each package's candidate stanza, by name; one apt-cache call."""
    try:
        text = _run(["apt-cache", "show", "--no-all-versions", *names])
    except errors.ConfigError as exc:
        raise errors.ConfigError(
            f"{exc.message} (the test image is built from Debian's archive: run `apt-get update`)"
        ) from exc
    found = {stanza.get("Package", ""): stanza for stanza in parse_apt_show(text)}
    missing = [name for name in names if not found.get(name, {}).get("Version")]
    if missing:
        raise errors.ConfigError(
            f"apt knows no package {', '.join(missing)}: run `apt-get update` (the test "
            "image is built from Debian's archive)"
        )
    return found


def _package(fields: dict[str, str]) -> Package:
    name = fields["Package"]
    for key in ("Version", "Architecture", "SHA256", "Filename"):
        if not fields.get(key):
            raise errors.ConfigError(f"apt-cache show {name} has no {key} field")
    return Package(
        name, fields["Version"], fields["Architecture"], fields["SHA256"], fields["Filename"]
    )


def kernel_package(metapackage: dict[str, str]) -> str:
    """The versioned kernel package the cloud kernel metapackage depends on."""
    depends = metapackage.get("Depends", "")
    match = re.search(r"\b(linux-image-[0-9][^\s,(|]*-cloud-amd64)\b", depends)
    if match is None:
        raise errors.ConfigError(f"{KERNEL_PACKAGE} depends on no cloud kernel: {depends!r}")
    return match.group(1)


def resolve_packages() -> list[Package]:
    """Every package of the image at the version apt would install now."""
    shown = _show([KERNEL_PACKAGE, *GUEST_PACKAGES])
    kernel = kernel_package(shown[KERNEL_PACKAGE])
    shown.update(_show([kernel]))
    return [_package(shown[name]) for name in (kernel, *GUEST_PACKAGES)]


def tool_versions() -> dict[str, str]:
    """The installed versions of the build tools (recorded; part of the cache key)."""
    out = _run(["dpkg-query", "-W", "-f", "${Package}\t${Version}\n", *BUILD_TOOLS])
    versions = dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)
    missing = [tool for tool in BUILD_TOOLS if not versions.get(tool)]
    if missing:
        raise errors.ConfigError(
            f"the test image needs the Debian packages {', '.join(missing)} "
            "(openstack/install-env.sh installs them)"
        )
    return versions


def builder_digest() -> str:
    """A digest of this builder and the guest's files: a change rebuilds."""
    digest = hashlib.sha256()
    here = resources.files(__name__)
    for name in sorted(_guest_files()):
        digest.update(name.encode() + b"\0" + (here / "guest" / name).read_bytes())
    digest.update((here / "__init__.py").read_bytes())
    return digest.hexdigest()


def build_key(packages: Iterable[Package], tools: dict[str, str]) -> str:
    text = json.dumps(
        {
            "packages": [asdict(p) for p in packages],
            "tools": tools,
            "builder": builder_digest(),
        },
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(packages: Iterable[Package], debs: Path) -> list[Path]:
    """The packages' .debs in ``debs``, downloaded when missing, checked against
    the archive's SHA-256."""
    debs.mkdir(parents=True, exist_ok=True)
    paths = []
    for package in packages:
        path = debs / package.deb
        if not path.exists() or _sha256(path) != package.sha256:
            path.unlink(missing_ok=True)
            argv = ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root"]
            try:
                _run([*argv, f"{package.name}={package.version}"], cwd=debs)
            except errors.ConfigError as exc:
                raise errors.ConfigError(
                    f"cannot download {package.name} {package.version} from Debian's archive "
                    f"({exc.message}). Where this node cannot reach it, build the image where "
                    f"it can, into the same cache: python -m microstackd.node.testimage build "
                    f"--cache {debs.parent}"
                ) from exc
        if not path.exists():
            raise errors.ConfigError(f"apt-get download {package.name} did not write {path.name}")
        if _sha256(path) != package.sha256:
            raise errors.ConfigError(
                f"{path.name}: its SHA-256 is not the archive's ({package.sha256[:16]}…)"
            )
        paths.append(path)
    return paths


# ------------------------------------------------------------ initramfs --


@dataclass(frozen=True)
class Entry:
    """One file of the initramfs: a directory, a regular file or a symlink."""

    path: str  # relative, no leading slash
    mode: int  # including the type bits
    data: bytes = b""
    uid: int = 0
    gid: int = 0


DIR, FILE, LINK = 0o040000, 0o100000, 0o120000


def newc(entries: Iterable[Entry]) -> bytes:
    """A cpio archive in the kernel's ``newc`` format, entries sorted by path,
    every timestamp ``EPOCH``, inode numbers in that order."""
    out = io.BytesIO()

    def record(ino: int, entry: Entry, nlink: int) -> None:
        name = entry.path.encode() + b"\0"
        # ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
        fields = (ino, entry.mode, entry.uid, entry.gid, nlink, EPOCH, len(entry.data),
                  0, 0, 0, 0, len(name), 0)  # fmt: skip
        out.write(b"070701" + b"".join(b"%08x" % f for f in fields))
        out.write(name)
        out.write(b"\0" * (-(110 + len(name)) % 4))
        out.write(entry.data)
        out.write(b"\0" * (-len(entry.data) % 4))

    ordered = sorted(entries, key=lambda e: e.path)
    for ino, entry in enumerate(ordered, start=1):
        record(ino, entry, 2 if entry.mode & DIR == DIR else 1)
    record(0, Entry("TRAILER!!!", 0), 1)
    return out.getvalue()


def _with_parents(entries: dict[str, Entry]) -> dict[str, Entry]:
    """Add a directory entry (0755, root) for every parent that has none."""
    for path in list(entries):
        parent = PurePosixPath(path).parent
        while str(parent) != ".":
            entries.setdefault(str(parent), Entry(str(parent), DIR | 0o755))
            parent = parent.parent
    return entries


def _guest_files() -> list[str]:
    return sorted(
        p.name
        for p in resources.files(__name__).joinpath("guest").iterdir()
        if p.is_file() and not p.name.startswith(".")
    )


def _guest(name: str) -> bytes:
    return resources.files(__name__).joinpath("guest", name).read_bytes()


def _busybox(root: Path) -> dict[str, Entry]:
    """busybox and a link for each of its applets."""
    busybox = root / "bin" / "busybox"
    # Set-uid root, as busybox is built to be: applets that need no privilege
    # (sh, cat, ...) drop it at once, ping keeps it (for user cirros, as in CirrOS).
    entries = {"bin/busybox": Entry("bin/busybox", FILE | 0o4755, busybox.read_bytes())}
    for applet in _run([str(busybox), "--list-full"]).split():
        if applet != "bin/busybox":
            target = os.path.relpath("bin/busybox", str(PurePosixPath(applet).parent))
            entries[applet] = Entry(applet, LINK | 0o777, target.encode())
    return entries


def _libraries(root: Path, programs: Iterable[str]) -> dict[str, Entry]:
    """The programs and the shared libraries they load, resolved by the
    packages' own dynamic loader inside ``root`` (never the host's libraries)."""
    loader = root / "lib64" / "ld-linux-x86-64.so.2"
    libdirs = ":".join(str(root / d / "x86_64-linux-gnu") for d in ("lib", "usr/lib"))
    entries: dict[str, Entry] = {}
    for program in programs:
        binary = root / program
        entries[program] = Entry(program, FILE | 0o755, binary.read_bytes())
        listing = _run([str(loader), "--library-path", libdirs, "--list", str(binary)])
        for line in listing.splitlines():
            if "not found" in line:
                raise errors.ConfigError(f"{program} needs a library no package provides: {line}")
            match = re.search(r"=> (\S+)", line)
            if match is None or "ld-linux" in line.split()[0]:
                continue  # the loader itself is added below
            # Under the name the loader looks for (the soname link), the file's bytes.
            path = Path(match.group(1))
            try:
                relative = path.relative_to(root)
                path.resolve().relative_to(root.resolve())
            except ValueError:
                raise errors.ConfigError(
                    f"{program}'s {line.split()[0]} resolved outside the packages: {path}"
                ) from None
            entries[str(relative)] = Entry(str(relative), FILE | 0o755, path.read_bytes())
    loader_path = "lib64/ld-linux-x86-64.so.2"
    entries[loader_path] = Entry(loader_path, FILE | 0o755, loader.resolve().read_bytes())
    return entries


def module_order(root: Path, kernel_version: str) -> list[str]:
    """The module files to load, dependencies first, each once (kmod's own
    resolution, after ``depmod`` over the packaged modules)."""
    _run(["depmod", "-b", str(root), kernel_version])
    order: list[str] = []
    for module in MODULES:
        listing = _run(
            ["modprobe", "-d", str(root), "-S", kernel_version, "--show-depends", module]
        )
        for line in listing.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "insmod":
                path = str(Path(parts[1]).relative_to(root / "lib" / "modules" / kernel_version))
                if path not in order:
                    order.append(path)
    return order


def _modules(root: Path, kernel_version: str) -> dict[str, Entry]:
    entries: dict[str, Entry] = {}
    lines = []
    for path in module_order(root, kernel_version):
        data = (root / "lib" / "modules" / kernel_version / path).read_bytes()
        entries[f"lib/modules/{path}"] = Entry(f"lib/modules/{path}", FILE | 0o644, data)
        name = PurePosixPath(path).name.removesuffix(".ko")
        lines.append(f"{path} {MODULE_PARAMS.get(name, '')}".rstrip())
    entries["etc/modules"] = Entry("etc/modules", FILE | 0o644, ("\n".join(lines) + "\n").encode())
    return entries


def _system_files() -> dict[str, Entry]:
    """Users, groups, init's files and the cirros home."""
    text = {
        "etc/passwd": "root:x:0:0:root:/root:/bin/sh\n"
        f"cirros:x:{CIRROS_UID}:{CIRROS_UID}:cirros:/home/cirros:/bin/sh\n",
        "etc/group": f"root:x:0:\ntty:x:5:\ncirros:x:{CIRROS_UID}:\n",
        # No password anywhere: key logins only (dropbear -s).
        "etc/shadow": "root:*:18262:0:99999:7:::\ncirros:*:18262:0:99999:7:::\n",
        "etc/shells": "/bin/sh\n",
        "etc/hostname": "cirros\n",
        "etc/hosts": "127.0.0.1 localhost\n",
        "etc/nsswitch.conf": "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n",
        "etc/os-release": 'NAME="microstack test image"\nID=cirros\nPRETTY_NAME="CirrOS-compatible'
        ' microstack test image (Debian packages)"\n',
    }
    entries = {path: Entry(path, FILE | 0o644, data.encode()) for path, data in text.items()}
    entries["etc/shadow"] = Entry("etc/shadow", FILE | 0o600, text["etc/shadow"].encode())
    entries["etc/inittab"] = Entry("etc/inittab", FILE | 0o644, _guest("inittab"))
    entries["etc/init.d/rcS"] = Entry("etc/init.d/rcS", FILE | 0o755, _guest("rcS"))
    entries["etc/udhcpc.script"] = Entry("etc/udhcpc.script", FILE | 0o755, _guest("udhcpc.script"))
    entries["init"] = Entry("init", LINK | 0o777, b"bin/busybox")
    for path, mode in (("root", 0o700), ("proc", 0o555), ("sys", 0o555), ("dev", 0o755)):
        entries[path] = Entry(path, DIR | mode)
    for path in ("run", "tmp", "mnt/config", "var/log", "etc/dropbear"):
        entries[path] = Entry(path, DIR | 0o755)
    uid = gid = CIRROS_UID
    entries["home/cirros"] = Entry("home/cirros", DIR | 0o755, uid=uid, gid=gid)
    entries["home/cirros/.ssh"] = Entry("home/cirros/.ssh", DIR | 0o700, uid=uid, gid=gid)
    return entries


def initramfs(root: Path, kernel_version: str) -> bytes:
    """The guest's whole userland, gzipped, from the packages extracted in ``root``."""
    entries: dict[str, Entry] = {}
    entries.update(_busybox(root))
    entries.update(_libraries(root, DROPBEAR_PROGRAMS))
    entries.update(_modules(root, kernel_version))
    entries.update(_system_files())
    archive = newc(_with_parents(entries).values())
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9, mtime=EPOCH) as gz:
        gz.write(archive)
    return out.getvalue()


# ---------------------------------------------------------------- disk --


def fix_fat_times(image: Path) -> None:
    """Give every root-directory entry of a FAT12/16 image the same creation,
    access and modification time (mtools stamps creation with the clock)."""
    with open(image, "r+b") as f:
        boot = f.read(512)
        sector, reserved, fats, root_entries = struct.unpack_from("<HxHBH", boot, 11)
        fat_sectors = struct.unpack_from("<H", boot, 22)[0]
        if not fat_sectors or not root_entries:
            raise errors.ConfigError(f"{image} is not a FAT12/16 image")
        start = (reserved + fats * fat_sectors) * sector
        f.seek(start)
        table = bytearray(f.read(root_entries * 32))
        date = ((2020 - 1980) << 9) | (1 << 5) | 1  # 2020-01-01
        for offset in range(0, len(table), 32):
            first, attributes = table[offset], table[offset + 11]
            if first == 0:
                break
            if first == 0xE5 or attributes == 0x0F:  # deleted, long-name part
                continue
            struct.pack_into("<BHHH", table, offset + 13, 0, 0, date, date)
            struct.pack_into("<HH", table, offset + 22, 0, date)
        f.seek(start)
        f.write(table)


def disk(kernel: bytes, initrd: bytes, out: Path) -> None:
    """The bootable FAT disk (raw): syslinux, the kernel, the initramfs."""
    env = _build_env()
    with tempfile.TemporaryDirectory(prefix="testimage-") as tmp:
        work = Path(tmp)
        files = {"vmlinuz": kernel, "initrd.gz": initrd, "syslinux.cfg": _guest("syslinux.cfg")}
        for name, data in files.items():
            (work / name).write_bytes(data)
            os.utime(work / name, (EPOCH, EPOCH))
        size_kib = (sum(len(d) for d in files.values()) >> 10) + 4096
        size_kib += -size_kib % 1024
        out.unlink(missing_ok=True)
        _run(["mkfs.vfat", "-C", "--invariant", "-i", VOLUME_ID, "-n", "CIRROS", str(out),
              str(size_kib)], env=env)  # fmt: skip
        for name in files:
            _run(["mcopy", "-m", "-i", str(out), str(work / name), f"::{name}"], env=env)
        _run(["syslinux", "--install", str(out)], env=env)
    fix_fat_times(out)


def _extract(debs: Iterable[Path], root: Path) -> None:
    for deb in debs:
        _run(["dpkg-deb", "-x", str(deb), str(root)])


def _kernel_version(root: Path) -> str:
    versions = sorted(p.name for p in (root / "lib" / "modules").iterdir())
    if len(versions) != 1:
        raise errors.ConfigError(f"expected one kernel in the packages, found {versions}")
    return versions[0]


def build_image(debs: Iterable[Path], out: Path) -> None:
    """The qcow2 image ``out`` from the packages ``debs``: deterministic."""
    with tempfile.TemporaryDirectory(prefix="testimage-root-") as tmp:
        root = Path(tmp)
        _extract(debs, root)
        version = _kernel_version(root)
        kernel = (root / "boot" / f"vmlinuz-{version}").read_bytes()
        raw = out.with_suffix(".raw")
        disk(kernel, initramfs(root, version), raw)
        _run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(out)])
        raw.unlink()


# --------------------------------------------------------------- cache --


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """One build at a time per cache (other daemons, tests, on this machine)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def manifest(packages: Iterable[Package], tools: dict[str, str], image: Path) -> dict[str, object]:
    return {
        "image": image.name,
        "sha256": _sha256(image),
        "size": image.stat().st_size,
        "packages": [asdict(p) for p in packages],
        "build_tools": tools,
        "builder": builder_digest(),
        "modules": list(MODULES),
        "module_params": MODULE_PARAMS,
        "epoch": EPOCH,
    }


def build(cache: Path | None = None) -> Built:
    """The image for the packages apt offers now: from the cache, or built into it."""
    cache = cache or cache_dir()
    packages = resolve_packages()
    tools = tool_versions()
    target = cache / build_key(packages, tools)
    image, manifest_path = target / IMAGE_NAME, target / MANIFEST_NAME
    with _locked(cache):
        if image.exists() and manifest_path.exists():
            return Built(image, manifest_path, cached=True)
        debs = fetch(packages, cache / "debs")
        work = Path(tempfile.mkdtemp(prefix=".build-", dir=cache))
        work.chmod(0o755)
        try:
            build_image(debs, work / IMAGE_NAME)
            (work / MANIFEST_NAME).write_text(
                json.dumps(manifest(packages, tools, work / IMAGE_NAME), indent=1) + "\n"
            )
            if target.exists():
                shutil.rmtree(target)
            work.rename(target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return Built(image, manifest_path, cached=False)


def link(built: Built, path: Path) -> None:
    """Point ``path`` at the built image (a symlink, replaced atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(built.image)
    tmp.replace(path)
