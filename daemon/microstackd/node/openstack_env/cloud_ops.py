"""The control's operations on its cloud, run with the OpenStack environment's
own Python (openstacksdk lives there, never in microstackd's environment).

    python cloud_ops.py admit    wait for HOST's nova-compute to be up, map it
                                 into a cell, wait for its hypervisor
    python cloud_ops.py remove   disable and delete HOST's nova-compute service
    python cloud_ops.py launch   boot a server like microstack.launch
    python cloud_ops.py view     Nova's view of every compute host

The request is one JSON object on stdin; the cloud comes from OS_CLOUD and
OS_CLIENT_CONFIG_FILE. The output is JSON lines on stdout, one object each:
``{"progress": MESSAGE, "waiting": BOOL}`` while it works, then either
``{"result": {...}}`` (exit 0) or ``{"error": MESSAGE, "kind": KIND}``
(exit 1). Prints no secret.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import openstack
from openstack import exceptions

#: How often a wait polls the cloud, seconds.
POLL = 2.0
#: A wait repeats an unchanged state at most this often, seconds.
REPEAT = 10.0
DEFAULT_KEY = "microstack"
DEFAULT_NETWORK = "test"
TEST_CIDR = "192.168.222.0/24"


class Failure(Exception):
    def __init__(self, message: str, kind: str = "error") -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind


def emit(**obj: Any) -> None:
    print(json.dumps(obj), flush=True)


def progress(message: str, waiting: bool = False) -> None:
    emit(progress=message, waiting=waiting)


def wait(what: str, check: Callable[[], tuple[bool, str]], timeout: float, host: str) -> str:
    """Poll ``check`` (done?, state seen) until done; stream what it waits
    for and for how long; on time-out name the host and the last state."""
    started = time.monotonic()
    shown, shown_at = "", 0.0
    while True:
        try:
            done, state = check()
        except exceptions.SDKException as exc:
            done, state = False, f"cloud error: {exc}"
        now = time.monotonic()
        if done:
            progress(f"{what}: {state} after {now - started:.0f} s")
            return state
        if now - started > timeout:
            raise Failure(
                f"{host}: timed out after {timeout:.0f} s waiting for {what}; "
                f"last state seen: {state}",
                "timeout",
            )
        if state != shown or now - shown_at >= REPEAT:
            progress(f"waiting for {what} ({now - started:.0f} s so far; {state})", waiting=True)
            shown, shown_at = state, now
        time.sleep(POLL)


# ---------------------------------------------------------------- admit --


def _compute_services(conn: Any, host: str) -> list[Any]:
    return [
        s
        for s in conn.compute.services(binary="nova-compute", host=host)
        if s.host == host and s.binary == "nova-compute"
    ]


def _service_state(conn: Any, host: str) -> tuple[bool, str]:
    found = _compute_services(conn, host)
    if not found:
        return False, "no nova-compute service registered yet"
    s = found[0]
    return s.state == "up", f"nova-compute {s.state}, {s.status}"


def _hypervisor(conn: Any, host: str) -> Any | None:
    for h in conn.compute.hypervisors(details=True):
        owner = (h.service_details or {}).get("host")
        if owner == host or (owner is None and h.name == host):
            return h
    return None


def _hypervisor_state(conn: Any, host: str) -> tuple[bool, str]:
    h = _hypervisor(conn, host)
    if h is None:
        return False, "no hypervisor listed for the host"
    return True, f"hypervisor {h.name} {h.state}, {h.status}"


def _manage(argv: list[str], *args: str) -> str:
    result = subprocess.run(
        [*argv, *args], capture_output=True, text=True, timeout=300, check=False
    )
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-5:]
        raise Failure(f"nova-manage {' '.join(args)} exited {result.returncode}: {tail}")
    return result.stdout


def _mapped(argv: list[str], host: str) -> tuple[bool, str]:
    """Run discover_hosts, then read the host mappings back."""
    _manage(argv, "cell_v2", "discover_hosts")
    rows = _manage(argv, "cell_v2", "list_hosts")
    for line in rows.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[-1] == host:
            return True, f"mapped to cell {cells[0]}"
    return False, "not in nova-manage cell_v2 list_hosts yet"


def admit(conn: Any, req: dict[str, Any]) -> dict[str, Any]:
    host, timeout = req["host"], float(req.get("timeout", 300))
    service = wait(
        f"nova-compute on {host} to be up", lambda: _service_state(conn, host), timeout, host
    )
    manage = req.get("nova_manage")
    if manage:
        how = "nova-manage cell_v2 discover_hosts"
        mapping = wait(
            f"{host} to be mapped into a cell ({how})", lambda: _mapped(manage, host), timeout, host
        )
    else:
        interval = int(req.get("discover_interval") or 0)
        how = f"nova-scheduler's periodic discovery (every {interval} s)"
        mapping = f"left to {how}"
        progress(f"no nova-manage on this control: relying on {how} to map {host}")
    hypervisor = wait(
        f"the hypervisor of {host} to be listed",
        lambda: _hypervisor_state(conn, host),
        timeout,
        host,
    )
    if not manage:
        # The host mapping is not visible through the API: give the scheduler
        # one full discovery period after the compute node exists.
        interval = int(req.get("discover_interval") or 0)
        deadline = time.monotonic() + interval + POLL
        while time.monotonic() < deadline:
            progress(
                f"waiting for {how} to map {host} "
                f"({deadline - time.monotonic():.0f} s of one period left)",
                waiting=True,
            )
            time.sleep(min(POLL, max(0.0, deadline - time.monotonic())))
        mapping = f"mapped by {how} (one period waited)"
    return {"host": host, "service": service, "mapping": mapping, "hypervisor": hypervisor}


# --------------------------------------------------------------- remove --


def remove(conn: Any, req: dict[str, Any]) -> dict[str, Any]:
    host = req["host"]
    found = _compute_services(conn, host)
    if not found:
        return {"host": host, "deleted": 0, "message": f"Nova has no compute service on {host}"}
    for s in found:
        if s.status != "disabled":
            conn.compute.disable_service(
                s, host=s.host, binary=s.binary, disabled_reason="removed by microstackd"
            )
            progress(f"nova-compute on {host} disabled")
        conn.compute.delete_service(s, ignore_missing=True)
        progress(f"nova-compute on {host} deleted")
    return {
        "host": host,
        "deleted": len(found),
        "message": f"Nova compute service on {host} disabled and deleted",
    }


# --------------------------------------------------------------- launch --


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


def _flavor(conn: Any, name: str) -> Any:
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
        # As bootstrap_cloud.py makes it: 128 MB guests boot here, 64 MB do not.
        flavor = conn.compute.create_flavor(name="m1.tiny", ram=128, vcpus=1, disk=1)
        progress("flavor m1.tiny created")
    return flavor


def _image(conn: Any, name: str) -> Any:
    image = conn.image.find_image(name)
    if image is None:
        names = sorted(i.name or i.id for i in conn.image.images())
        raise Failure(f"unknown image {name!r} (images: {', '.join(names) or 'none'})")
    return image


def _network(conn: Any, name: str) -> Any:
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
    progress(f"network {name} created ({TEST_CIDR}, on router {router.name})")
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


def _boot_error(exc: exceptions.SDKException) -> Failure:
    text = str(exc)
    if "quota" in text.lower():
        return Failure(f"quota exceeded: {text}", "quota")
    return Failure(f"the server could not be created: {text}")


def launch(conn: Any, req: dict[str, Any]) -> dict[str, Any]:
    image = _image(conn, req["image"])
    progress(f"image {image.name} ({image.id})")
    flavor = _flavor(conn, req.get("flavor", ""))
    progress(f"flavor {flavor.name} ({flavor.vcpus} vCPU, {flavor.ram} MiB, {flavor.disk} GB)")
    zone, host = _zone(conn, req["availability_zone"]) if req.get("availability_zone") else ("", "")
    key_name = req.get("key_name") or DEFAULT_KEY
    progress(_keypair(conn, key_name, req.get("public_key", "")))
    network = _network(conn, req.get("network", ""))
    progress(f"network {network.name}")
    name = req.get("name") or f"microstack-{time.strftime('%Y%m%d%H%M%S')}"
    attrs: dict[str, Any] = {
        "name": name,
        "image_id": image.id,
        "flavor_id": flavor.id,
        "networks": [{"uuid": network.id}],
        "key_name": key_name,
    }
    if req.get("availability_zone"):
        attrs["availability_zone"] = req["availability_zone"]
    try:
        server = conn.compute.create_server(**attrs)
    except exceptions.SDKException as exc:
        raise _boot_error(exc) from None
    progress(f"server {name} ({server.id}) created; waiting for ACTIVE")
    started, shown = time.monotonic(), ""
    timeout = float(req.get("timeout", 600))
    while True:
        server = conn.compute.get_server(server.id)
        state = f"{server.status}" + (f", {server.task_state}" if server.task_state else "")
        elapsed = time.monotonic() - started
        if server.status == "ACTIVE":
            progress(f"server {name} ACTIVE on {server.compute_host} after {elapsed:.0f} s")
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
            progress(f"server {name}: {state} ({elapsed:.0f} s)", waiting=True)
            shown = state
        time.sleep(1)
    if host and server.compute_host != host:
        raise Failure(f"server {name} landed on {server.compute_host}, not on {host}")
    public = conn.network.find_network("public")
    if public is None:
        raise Failure("no external network 'public' to allocate a floating IP from")
    ports = list(conn.network.ports(device_id=server.id))
    if not ports:
        raise Failure(f"server {name} has no port to associate a floating IP with")
    existing = list(conn.network.ips(port_id=ports[0].id))
    if existing:
        fip = existing[0]
    else:
        try:
            fip = conn.network.create_ip(floating_network_id=public.id, port_id=ports[0].id)
        except exceptions.SDKException as exc:
            text = str(exc)
            kind = "quota" if "quota" in text.lower() else "error"
            raise Failure(f"cannot allocate a floating IP on public: {text}", kind) from None
    progress(f"floating IP {fip.floating_ip_address} (public) associated")
    server = conn.compute.get_server(server.id)
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


# ----------------------------------------------------------------- view --


def view(conn: Any, req: dict[str, Any]) -> dict[str, Any]:
    hosts: dict[str, dict[str, Any]] = {}

    def entry(host: str) -> dict[str, Any]:
        return hosts.setdefault(
            host, {"compute_service": "", "hypervisor": "", "running_instances": 0}
        )

    for s in conn.compute.services(binary="nova-compute"):
        if s.binary == "nova-compute":
            entry(s.host)["compute_service"] = f"{s.state}" + (
                "" if s.status == "enabled" else f" ({s.status})"
            )
    for h in conn.compute.hypervisors(details=True):
        owner = (h.service_details or {}).get("host") or h.name
        entry(owner)["hypervisor"] = f"{h.state}" + (
            "" if h.status == "enabled" else f" ({h.status})"
        )
    for server in conn.compute.servers(details=True, all_projects=True):
        if server.compute_host and server.status == "ACTIVE":
            entry(server.compute_host)["running_instances"] += 1
    return {"hosts": hosts}


def main(argv: list[str]) -> int:
    actions = {"admit": admit, "remove": remove, "launch": launch, "view": view}
    if len(argv) != 2 or argv[1] not in actions:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        req = json.loads(sys.stdin.read() or "{}")
        conn = openstack.connect(cloud=os.environ.get("OS_CLOUD") or None)
        emit(result=actions[argv[1]](conn, req))
    except Failure as exc:
        emit(error=exc.message, kind=exc.kind)
        return 1
    except exceptions.SDKException as exc:
        emit(error=f"{type(exc).__name__}: {exc}", kind="cloud")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
