"""Boot a server the way microstack.launch did: image, flavor (m1.tiny by
default), keypair, network (``test``, made on the router to ``public`` when
missing), an availability zone and host when asked, a floating IP, and then
a wait until the guest's sshd answers on that floating IP, so that the
``ssh`` line the CLI prints works when it is printed.

Progress comes in phases, each a step of its own in the stream:
``scheduling`` (Nova picks the host), ``spawning`` (the host builds the
guest, until ACTIVE), ``floating-ip``, and ``booting`` (until the floating
IP's port 22 sends an SSH banner). The banner is awaited from this process,
on the control: the network node, whose ``br-ex`` holds the external
network's gateway, so the path it tests is the path the printed ``ssh``
line takes from the control node.

Each failure names its cause: an image not in Glance, a host Nova has no
nova-compute on (with the hosts it has), a host whose nova-compute is down
or disabled, a server in ERROR (Nova's fault), no banner within the time
(with the last lines of the guest's console log)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from microstackd.cloud import Note
from microstackd.cloud.session import REPEAT, Failure, Session, sdk_error
from microstackd.model import StepState

T = TypeVar("T")

DEFAULT_KEY = "microstack"
DEFAULT_NETWORK = "test"
TEST_CIDR = "192.168.222.0/24"
#: How long a server may take to be ACTIVE, seconds.
ACTIVE_TIMEOUT = 600.0
#: How long to wait for its SSH banner once ACTIVE, by default, seconds.
SSH_TIMEOUT = 300
#: How long one try at the banner may take (connect and first line), seconds.
BANNER_TRY = 5.0
#: How often the state of a server being built is asked for, seconds.
POLL = 1.0
#: How many of the console log's last lines a failure shows.
CONSOLE_LINES = 15
SSH_PORT = 22


def _keypair(conn: Any, name: str, public_key: str) -> str:
    key = conn.compute.find_keypair(name)
    if key is None:
        if not public_key:
            raise Failure(f"keypair {name!r} does not exist and no public key was sent", "keypair")
        conn.compute.create_keypair(name=name, public_key=public_key)
        return f"keypair {name} created"
    if public_key and key.public_key.split()[:2] != public_key.split()[:2]:
        raise Failure(
            f"keypair {name!r} exists with another public key; pass --key-name to use another name",
            "keypair",
        )
    return f"keypair {name} exists"


def _flavor(conn: Any, name: str, notes: list[str]) -> Any:
    if name:
        flavor = conn.compute.find_flavor(name)
        if flavor is None:
            names = sorted(f.name for f in conn.compute.flavors())
            raise Failure(f"unknown flavor {name!r} (flavors: {', '.join(names) or 'none'})")
        return flavor
    flavor = conn.compute.find_flavor("m1.tiny")
    if flavor is None:
        small = sorted(conn.compute.flavors(), key=lambda f: (f.ram, f.vcpus, f.disk))
        flavor = small[0] if small else None
    if flavor is None:
        # As the control's cloud-defaults step makes it: 128 MB guests boot here, 64 MB do not.
        flavor = conn.compute.create_flavor(name="m1.tiny", ram=128, vcpus=1, disk=1)
        notes.append("flavor m1.tiny created")
    return flavor


def _image(conn: Any, name: str) -> Any:
    image = conn.image.find_image(name)
    if image is None:
        names = ", ".join(sorted(i.name or i.id for i in conn.image.images())) or "none"
        if name == "cirros":
            raise Failure(
                f"no image 'cirros' in Glance (images: {names}); control init uploads the "
                "test image as 'cirros' in its test-image step: was it deleted?",
                "no-image",
            )
        raise Failure(f"unknown image {name!r} (images: {names})", "no-image")
    return image


def _network(conn: Any, name: str, notes: list[str]) -> Any:
    """The named network (``test``, else ``private``, by default), created with
    a subnet on the router to ``public`` when missing."""
    net = conn.network
    if not name:
        found = net.find_network(DEFAULT_NETWORK) or net.find_network("private")
        if found is not None:
            return found
        name = DEFAULT_NETWORK
    found = net.find_network(name)
    if found is not None:
        return found
    network = net.create_network(name=name)
    subnet = net.create_subnet(
        name=f"{name}-subnet", network_id=network.id, ip_version=4, cidr=TEST_CIDR
    )
    router = net.find_router("router")
    if router is None:
        public = net.find_network("public")
        if public is None:
            raise Failure("no external network 'public' for the new network's router")
        router = net.create_router(name="router", external_gateway_info={"network_id": public.id})
    net.add_interface_to_router(router, subnet_id=subnet.id)
    notes.append(f"network {name} created ({TEST_CIDR}, on router {router.name})")
    return network


def _zone(conn: Any, az: str) -> tuple[str, str]:
    """Check ``zone[:host[:node]]``: the zone exists; the host runs a
    nova-compute Nova knows, up and enabled, in that zone. (zone, host)."""
    zone, _, rest = az.partition(":")
    host = rest.partition(":")[0]
    zones = {z.name for z in conn.compute.availability_zones(details=True)}
    if zone not in zones:
        raise Failure(
            f"unknown availability zone {zone!r} (zones: {', '.join(sorted(zones)) or 'none'})",
            "no-zone",
        )
    if not host:
        return zone, ""
    # Nova's services, not the zone's hosts: a zone leaves out disabled
    # services, and lists no host at all once its last compute is down.
    computes = {s.host: s for s in conn.compute.services(binary="nova-compute")}
    service = computes.get(host)
    if service is None:
        raise Failure(
            f"unknown host {host!r}: Nova has no nova-compute there "
            f"(compute hosts: {', '.join(sorted(computes)) or 'none'})",
            "no-host",
        )
    if service.state != "up":
        raise Failure(f"host {host!r} is down: {_down(service)}", "host-down")
    if service.status != "enabled":
        reason = f": {service.disabled_reason}" if service.disabled_reason else ""
        raise Failure(f"host {host!r} is disabled in Nova{reason}", "host-down")
    if service.availability_zone and service.availability_zone != zone:
        raise Failure(
            f"host {host!r} is in availability zone {service.availability_zone!r}, not {zone!r}",
            "no-host",
        )
    return zone, host


def _down(service: Any) -> str:
    forced = " (forced down)" if getattr(service, "is_forced_down", False) else ""
    return (
        f"its nova-compute service is {service.state}{forced}, "
        f"last report {service.updated_at or 'never'} (see `microstackctl status`)"
    )


def _host_down(conn: Any, host: str) -> str:
    """Why ``host``'s nova-compute is down in Nova's service list, or ""."""
    for service in conn.compute.services(binary="nova-compute", host=host):
        if service.host == host and service.state != "up":
            return _down(service)
    return ""


def _boot_error(exc: Exception) -> Failure:
    text = str(exc)
    if "quota" in text.lower():
        return Failure(f"quota exceeded: {text}", "quota")
    return Failure(f"the server could not be created: {text}")


async def _noted(s: Session, fn: Callable[[Any, list[str]], T]) -> T:
    """``fn(conn, notes)`` in a worker thread, then each note it made as progress."""
    notes: list[str] = []
    value = await s(lambda conn: fn(conn, notes))
    for note in notes:
        await s.progress(note)
    return value


async def _phase(s: Session, phase: str, message: str, state: StepState) -> None:
    await s.note(Note(message, state, phase))


async def launch(s: Session, req: Mapping[str, Any]) -> dict[str, Any]:
    started = time.monotonic()
    ssh_timeout = float(req.get("ssh_timeout") or SSH_TIMEOUT)
    image = await s(lambda conn: _image(conn, req["image"]))
    await s.progress(f"image {image.name} ({image.id})")
    flavor = await _noted(s, lambda conn, notes: _flavor(conn, req.get("flavor", ""), notes))
    await s.progress(
        f"flavor {flavor.name} ({flavor.vcpus} vCPU, {flavor.ram} MiB, {flavor.disk} GB)"
    )
    az = req.get("availability_zone")
    zone, host = (await s(lambda conn: _zone(conn, az))) if az else ("", "")
    key_name = req.get("key_name") or DEFAULT_KEY
    await s.progress(await s(lambda conn: _keypair(conn, key_name, req.get("public_key", ""))))
    network = await _noted(s, lambda conn, notes: _network(conn, req.get("network", ""), notes))
    await s.progress(f"network {network.name}")
    name = req.get("name") or f"microstack-{time.strftime('%Y%m%d%H%M%S')}"
    attrs: dict[str, Any] = {
        "name": name,
        "image_id": image.id,
        "flavor_id": flavor.id,
        "networks": [{"uuid": network.id}],
        "key_name": key_name,
    }
    if az:
        attrs["availability_zone"] = az
    try:
        server = await s(lambda conn: conn.compute.create_server(**attrs))
    except sdk_error() as exc:
        raise _boot_error(exc) from None
    where = f" on {host}" if host else ""
    await _phase(
        s,
        "scheduling",
        f"server {name} ({server.id}) created; placing it{where}",
        StepState.RUNNING,
    )
    server = await _until_active(s, server.id, name, host, ACTIVE_TIMEOUT, started)
    active_after = time.monotonic() - started
    fip = await s(lambda conn: _floating_ip(conn, name, server.id))
    await _phase(
        s,
        "floating-ip",
        f"{fip.floating_ip_address} (public) associated with {name}",
        StepState.DONE,
    )
    banner, ssh_after = "", 0.0
    if req.get("wait_ssh", True):
        address = fip.floating_ip_address
        banner = await _until_sshd(s, server.id, name, address, ssh_timeout, started)
        ssh_after = time.monotonic() - started
    else:
        await _phase(s, "booting", "not waited for sshd (--no-wait)", StepState.SKIPPED)
    server_id = server.id
    server = await s(lambda conn: conn.compute.get_server(server_id))
    addresses = {
        net_name: [a["addr"] for a in entries] for net_name, entries in server.addresses.items()
    }
    for addrs in addresses.values():
        if fip.fixed_ip_address in addrs and fip.floating_ip_address not in addrs:
            addrs.append(fip.floating_ip_address)
    return {
        "name": server.name,
        "id": server.id,
        "host": server.compute_host or "",
        "status": server.status,
        "addresses": addresses,
        "floating_ip": fip.floating_ip_address,
        "zone": zone,
        "ssh_ready": bool(banner),
        "ssh_banner": banner,
        "active_after_seconds": round(active_after, 1),
        "ssh_after_seconds": round(ssh_after, 1),
        "message": _summary(server, fip.floating_ip_address, bool(banner)),
    }


def _summary(server: Any, address: str, ssh_ready: bool) -> str:
    """The final event's message: the server, and whether its sshd answers."""
    text = f"server {server.name} is {server.status} on {server.compute_host}"
    if ssh_ready:
        return f"{text}; sshd answers on {address}"
    return f"{text}; its sshd was not waited for"


async def _until_active(
    s: Session, server_id: str, name: str, host: str, timeout: float, started: float
) -> Any:
    """Poll the server until ACTIVE, streaming ``scheduling`` then
    ``spawning``; ERROR fails with Nova's fault, a host other than the one
    asked for fails at once, and so does a host whose nova-compute goes
    down meanwhile (Nova would leave the server in BUILD)."""
    phase, shown, waited_from = "scheduling", "", time.monotonic()
    checked = waited_from
    while True:
        server = await s(lambda conn: conn.compute.get_server(server_id))
        on_host = server.compute_host or host
        if on_host and server.status == "BUILD" and time.monotonic() - checked >= REPEAT:
            checked = time.monotonic()
            down = await s(functools.partial(_host_down, host=on_host))
            if down:
                raise Failure(
                    f"host {on_host!r} went down while server {name} was being built: {down}; "
                    "the server is left in BUILD",
                    "host-down",
                )
        task = server.task_state or ""
        state = server.status + (f", {task}" if task else "")
        elapsed = time.monotonic() - started
        if server.status == "ERROR":
            fault = (server.fault or {}).get("message") or "Nova recorded no fault"
            if "No valid host" in fault:
                raise Failure(f"no capacity for server {name}: {fault}", "no-capacity")
            on = f" on {server.compute_host}" if server.compute_host else ""
            raise Failure(f"server {name} failed to boot{on} (ERROR): {fault}", "boot-failed")
        if phase == "scheduling" and (
            server.status == "ACTIVE" or (server.compute_host and task != "scheduling")
        ):
            if host and server.compute_host != host:
                raise Failure(f"server {name} landed on {server.compute_host}, not on {host}")
            await _phase(
                s,
                "scheduling",
                f"{name} placed on {server.compute_host} ({elapsed:.0f} s)",
                StepState.DONE,
            )
            phase, shown = "spawning", ""
        if server.status == "ACTIVE":
            await _phase(
                s,
                "spawning",
                f"{name} ACTIVE on {server.compute_host} after {elapsed:.0f} s",
                StepState.DONE,
            )
            return server
        if time.monotonic() - waited_from > timeout:
            raise Failure(
                f"server {name} not ACTIVE after {timeout:g} s; last state seen: {state}",
                "timeout",
            )
        if state != shown:
            on = f" on {server.compute_host}" if server.compute_host else ""
            await _phase(s, phase, f"{name}{on}: {state} ({elapsed:.0f} s)", StepState.WAITING)
            shown = state
        await asyncio.sleep(POLL)


async def _until_sshd(
    s: Session, server_id: str, name: str, address: str, timeout: float, started: float
) -> str:
    """Try the floating IP's port 22 until it sends an SSH banner (the
    banner), streaming ``booting`` with the guest's latest console line; on
    time-out fail with the console log's last lines."""
    waited_from, shown_at = time.monotonic(), 0.0
    await _phase(
        s, "booting", f"{name} booting; waiting for sshd on {address}:{SSH_PORT}", StepState.RUNNING
    )
    while True:
        tried = time.monotonic()
        left = timeout - (tried - waited_from)
        banner, why = await ssh_banner(address, SSH_PORT, max(0.2, min(BANNER_TRY, left)))
        now = time.monotonic()
        if banner:
            await _phase(
                s,
                "booting",
                f"sshd up on {address}:{SSH_PORT} ({banner}), {now - started:.0f} s after launch",
                StepState.DONE,
            )
            return banner
        if now - waited_from > timeout:
            lines = await _console_tail(s, server_id, CONSOLE_LINES)
            shown = "\n".join(f"  {line}" for line in lines) or "  (empty)"
            raise Failure(
                f"server {name} is ACTIVE but its sshd did not answer on {address}:{SSH_PORT} "
                f"within {timeout:g} s (last try: {why}); the server is left running.\n"
                f"The last lines of its console log:\n{shown}",
                "no-sshd",
            )
        if now - shown_at >= REPEAT:
            latest = await _console_tail(s, server_id, 1)
            console = f"; console: {latest[-1]}" if latest else ""
            await _phase(
                s,
                "booting",
                f"waiting for sshd on {address}:{SSH_PORT} ({now - waited_from:.0f} s so far; "
                f"{why}{console})",
                StepState.WAITING,
            )
            shown_at = now
        await asyncio.sleep(max(0.0, POLL - (time.monotonic() - tried)))


async def ssh_banner(address: str, port: int, timeout: float) -> tuple[str, str]:
    """(the SSH identification line, "") when ``address:port`` sends one
    within ``timeout``; ("", why not) otherwise. RFC 4253 lets a server send
    other lines first: up to five are read."""
    first = ""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(address, port)
            try:
                for _ in range(5):
                    raw = await reader.readline()
                    if not raw:
                        break
                    line = raw.decode("ascii", "replace").strip()
                    if line.startswith("SSH-"):
                        return line[:80], ""
                    first = first or line
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except TimeoutError:
        if first:
            return "", f"not an SSH server: it sent {first[:40]!r}"
        return "", f"no answer within {timeout:g} s"
    except OSError as exc:
        return "", os.strerror(exc.errno).lower() if exc.errno else str(exc)
    if first:
        return "", f"not an SSH server: it sent {first[:40]!r}"
    return "", "the connection closed without an SSH banner"


_CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|[\x00-\x08\x0b-\x1f\x7f]")


async def _console_tail(s: Session, server_id: str, count: int) -> list[str]:
    """The last ``count`` non-empty lines of the server's console log,
    without terminal control sequences; [] when Nova cannot give it."""
    try:
        output = await s(
            lambda conn: conn.compute.get_server_console_output(server_id, length=count + 10)
        )
    except sdk_error():
        return []
    text = str((output or {}).get("output") or "")
    lines = [_CONTROL.sub("", line).rstrip() for line in text.splitlines()]
    return [line for line in lines if line.strip()][-count:]


def _floating_ip(conn: Any, name: str, server_id: str) -> Any:
    """The server's floating IP from ``public`` (allocated when it has none)."""
    public = conn.network.find_network("public")
    if public is None:
        raise Failure("no external network 'public' to allocate a floating IP from")
    ports = list(conn.network.ports(device_id=server_id))
    if not ports:
        raise Failure(f"server {name} has no port to associate a floating IP with")
    existing = list(conn.network.ips(port_id=ports[0].id))
    if existing:
        return existing[0]
    try:
        return conn.network.create_ip(floating_network_id=public.id, port_id=ports[0].id)
    except sdk_error() as exc:
        text = str(exc)
        kind = "quota" if "quota" in text.lower() else "error"
        raise Failure(f"cannot allocate a floating IP on public: {text}", kind) from None
