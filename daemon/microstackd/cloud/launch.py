"""Boot a server the way microstack.launch did: image, flavor (m1.tiny by
default), keypair, network (``test``, made on the router to ``public`` when
missing), an availability zone and host when asked, and a floating IP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from microstackd.cloud.session import Failure, Session, sdk_error

T = TypeVar("T")

DEFAULT_KEY = "microstack"
DEFAULT_NETWORK = "test"
TEST_CIDR = "192.168.222.0/24"


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
        names = sorted(i.name or i.id for i in conn.image.images())
        raise Failure(f"unknown image {name!r} (images: {', '.join(names) or 'none'})")
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
    """Check ``zone[:host[:node]]``; return (zone, host)."""
    zone, _, rest = az.partition(":")
    host = rest.partition(":")[0]
    zones = {z.name: z for z in conn.compute.availability_zones(details=True)}
    if zone not in zones:
        raise Failure(
            f"unknown availability zone {zone!r} (zones: {', '.join(sorted(zones)) or 'none'})"
        )
    if host:
        hosts = zones[zone].hosts or {}
        if host not in hosts or "nova-compute" not in hosts[host]:
            computes = sorted(h for h, svc in hosts.items() if "nova-compute" in svc)
            raise Failure(
                f"unknown host {host!r} in availability zone {zone!r} "
                f"(compute hosts: {', '.join(computes) or 'none'})"
            )
    return zone, host


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


async def launch(s: Session, req: Mapping[str, Any]) -> dict[str, Any]:
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
    await s.progress(f"server {name} ({server.id}) created; waiting for ACTIVE")
    started, shown = time.monotonic(), ""
    timeout = float(req.get("timeout", 600))
    server_id = server.id
    while True:
        server = await s(lambda conn: conn.compute.get_server(server_id))
        state = f"{server.status}" + (f", {server.task_state}" if server.task_state else "")
        elapsed = time.monotonic() - started
        if server.status == "ACTIVE":
            await s.progress(f"server {name} ACTIVE on {server.compute_host} after {elapsed:.0f} s")
            break
        if server.status == "ERROR":
            fault = (server.fault or {}).get("message", "no fault recorded")
            if "No valid host" in fault:
                raise Failure(f"no capacity for server {name}: {fault}", "no-capacity")
            raise Failure(f"server {name} went to ERROR: {fault}")
        if elapsed > timeout:
            raise Failure(
                f"server {name} not ACTIVE after {timeout:.0f} s; last state seen: {state}",
                "timeout",
            )
        if state != shown:
            await s.progress(f"server {name}: {state} ({elapsed:.0f} s)", waiting=True)
            shown = state
        await asyncio.sleep(1)
    if host and server.compute_host != host:
        raise Failure(f"server {name} landed on {server.compute_host}, not on {host}")
    fip = await s(lambda conn: _floating_ip(conn, name, server_id))
    await s.progress(f"floating IP {fip.floating_ip_address} (public) associated")
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
    }


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
