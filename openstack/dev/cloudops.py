#!/usr/bin/env python3
"""Waits and smoke checks against the dev cloud (admin cloud `microstack`).

    cloudops.py wait-agent HOST [TIMEOUT [SINCE]]  OVS agent on HOST alive and
                                              started at/after SINCE (epoch s)
    cloudops.py wait-compute HOST [TIMEOUT]   nova-compute up + resource provider
    cloudops.py image                         tiny raw test image `tiny` (idempotent)
    cloudops.py boot HOST [COUNT]             boot COUNT servers on forced host
                                              (az nova:HOST), wait ACTIVE, port
                                              binding, then a floating IP from
                                              `public` on the first one
    cloudops.py cleanup                       delete servers `smoke-*` and FIPs
    cloudops.py demo-delete HOST              as a non-admin member: boot, then
                                              delete (exercises the service token)

Prints one JSON line of timings per command on stdout; progress on stderr.
Polls every 0.1 s, so the figures are ~0.1 s coarse.
"""

import json
import os
import sys
import time

import openstack

POLL = 0.1


def log(msg: str) -> None:
    print(f"[cloudops {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def until(what: str, fn, timeout: float):
    t0 = time.monotonic()
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() - t0 > timeout:
            raise SystemExit(f"timeout ({timeout}s) waiting for {what}")
        time.sleep(POLL)


def wait_agent(conn, host: str, timeout: float, since: float = 0.0) -> dict:
    """Alive, and (re)started at or after `since` (epoch s, 1 s resolution):
    a restarted agent's old heartbeat stays "alive" for agent_down_time."""
    import datetime
    t0 = time.monotonic()

    def alive():
        for a in conn.network.agents(host=host, agent_type="Open vSwitch agent"):
            started = datetime.datetime.fromisoformat(a.started_at).replace(
                tzinfo=datetime.timezone.utc).timestamp() if a.started_at else 0
            if a.is_alive and started >= int(since):
                return a
        return None

    a = until(f"OVS agent on {host}", alive, timeout)
    cfg = a.configuration or {}
    log(f"agent {a.id} alive on {host}; tunneling_ip={cfg.get('tunneling_ip')} "
        f"bridge_mappings={cfg.get('bridge_mappings')} datapath={cfg.get('datapath_type')}")
    return {"agent_alive_s": round(time.monotonic() - t0, 2)}


def wait_compute(conn, host: str, timeout: float) -> dict:
    t0 = time.monotonic()

    def up():
        for s in conn.compute.services(binary="nova-compute", host=host):
            if s.state == "up":
                return s
        return None

    until(f"nova-compute on {host}", up, timeout)
    t_up = time.monotonic() - t0
    until(f"resource provider {host}",
          lambda: list(conn.placement.resource_providers(name=host)), timeout)
    log(f"nova-compute up on {host}, resource provider present")
    return {"compute_up_s": round(t_up, 2), "provider_s": round(time.monotonic() - t0, 2)}


def image(conn) -> dict:
    img = conn.image.find_image("tiny")
    if img is None:
        t0 = time.monotonic()
        # 1 MiB raw: the fake driver never reads it; Glance stores it on file.
        img = conn.image.create_image(name="tiny", disk_format="raw", container_format="bare",
                                      data=os.urandom(1 << 20), visibility="public",
                                      allow_duplicates=True)
        log(f"image tiny {img.id} uploaded")
        return {"image_upload_s": round(time.monotonic() - t0, 2)}
    return {"image_upload_s": None}


def _wait_active(conn, server_ids: list[str], timeout: float) -> None:
    pending = set(server_ids)
    t0 = time.monotonic()
    while pending:
        for sid in list(pending):
            s = conn.compute.get_server(sid)
            if s.status == "ACTIVE":
                pending.discard(sid)
            elif s.status == "ERROR":
                raise SystemExit(f"server {sid} went to ERROR: {s.fault}")
        if time.monotonic() - t0 > timeout:
            raise SystemExit(f"timeout waiting for ACTIVE: {pending}")
        if pending:
            time.sleep(POLL)


def boot(conn, host: str, count: int, name_prefix: str = "smoke") -> dict:
    img = conn.image.find_image("tiny")
    flavor = conn.compute.find_flavor("m1.tiny")
    private = conn.network.find_network("private")
    t0 = time.monotonic()
    ids = []
    for i in range(count):
        s = conn.compute.create_server(
            name=f"{name_prefix}-{host}-{int(time.time())}-{i}", image_id=img.id,
            flavor_id=flavor.id, networks=[{"uuid": private.id}],
            availability_zone=f"nova:{host}")
        ids.append(s.id)
    _wait_active(conn, ids, 120)
    t_active = time.monotonic() - t0
    out = {"servers": count, "boot_to_active_s": round(t_active, 2)}
    for sid in ids:
        s = conn.compute.get_server(sid)
        ports = list(conn.network.ports(device_id=sid))
        p = ports[0]
        log(f"server {s.name} ACTIVE on {s.compute_host}; port {p.id} "
            f"vif_type={p.binding_vif_type} host={p.binding_host_id} status={p.status} "
            f"ips={[f['ip_address'] for f in p.fixed_ips]}")
        if p.binding_vif_type != "ovs" or s.compute_host != host:
            raise SystemExit("port not bound as ovs or wrong host")

    # Floating IP on the first server.
    sid = ids[0]
    port = next(iter(conn.network.ports(device_id=sid)))
    public = conn.network.find_network("public")
    t1 = time.monotonic()
    fip = conn.network.create_ip(floating_network_id=public.id)
    t2 = time.monotonic()
    conn.network.update_ip(fip, port_id=port.id)
    t3 = time.monotonic()

    def in_nova():
        s = conn.compute.get_server(sid)
        for addrs in (s.addresses or {}).values():
            for a in addrs:
                if a.get("OS-EXT-IPS:type") == "floating" and a["addr"] == fip.floating_ip_address:
                    return True
        return False

    until("floating IP in Nova's addresses", in_nova, 30)
    t4 = time.monotonic()
    log(f"floating IP {fip.floating_ip_address} -> {port.fixed_ips[0]['ip_address']}, "
        f"visible in nova")
    out.update(fip_create_s=round(t2 - t1, 2), fip_associate_s=round(t3 - t2, 2),
               fip_visible_in_nova_s=round(t4 - t3, 2))
    return out


def cleanup(conn) -> dict:
    t0 = time.monotonic()
    n = 0
    for fip in conn.network.ips():
        conn.network.delete_ip(fip)
    for s in conn.compute.servers(all_projects=True):
        if s.name.startswith(("smoke-", "demo-")):
            conn.compute.delete_server(s)
            n += 1
    until("servers deleted", lambda: not [s for s in conn.compute.servers(all_projects=True)
                                          if s.name.startswith(("smoke-", "demo-"))], 120)
    return {"deleted": n, "delete_s": round(time.monotonic() - t0, 2)}


def demo_delete(conn, host: str) -> dict:
    """A member (non-admin) boots and deletes: needs Nova's service token."""
    idn = conn.identity
    dom = idn.find_domain("default")
    proj = idn.find_project("demo", domain_id=dom.id) or idn.create_project(name="demo", domain_id=dom.id)
    user = idn.find_user("demo", domain_id=dom.id) or idn.create_user(
        name="demo", password="demo-secret", domain_id=dom.id, default_project_id=proj.id)
    idn.assign_project_role_to_user(proj, user, idn.find_role("member"))
    # admin's network is not shared: give the demo project its own.
    # Not openstack.connect(username=...): with OS_CLOUD set it merges the
    # admin cloud's password into these arguments (401).
    from keystoneauth1 import session as ks_session
    from keystoneauth1.identity import v3
    auth = v3.Password(auth_url=conn.config.auth["auth_url"], username="demo",
                       password="demo-secret", project_name="demo",
                       user_domain_name="Default", project_domain_name="Default")
    demo = openstack.connection.Connection(session=ks_session.Session(auth=auth),
                                           region_name=conn.config.region_name)
    net = demo.network.find_network("demo-net")
    if net is None:
        net = demo.network.create_network(name="demo-net")
        demo.network.create_subnet(network_id=net.id, cidr="10.234.0.0/24", ip_version=4,
                                   name="demo-subnet")
    img = demo.image.find_image("tiny")
    flavor = demo.compute.find_flavor("m1.tiny")
    t0 = time.monotonic()
    s = demo.compute.create_server(name=f"demo-{int(time.time())}", image_id=img.id,
                                   flavor_id=flavor.id, networks=[{"uuid": net.id}])
    _wait_active(demo, [s.id], 120)
    t1 = time.monotonic()
    demo.compute.delete_server(s)

    def gone():
        try:
            x = demo.compute.get_server(s.id)
        except openstack.exceptions.NotFoundException:
            return True
        if x.status == "ERROR":
            raise SystemExit(f"demo server went to ERROR on delete: {x.fault}")
        return False

    until("demo server deleted", gone, 60)
    t2 = time.monotonic()
    log("non-admin boot + delete OK")
    return {"demo_boot_s": round(t1 - t0, 2), "demo_delete_s": round(t2 - t1, 2)}


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    conn = openstack.connect(cloud="microstack")
    cmd, args = argv[1], argv[2:]
    if cmd == "wait-agent":
        out = wait_agent(conn, args[0], float(args[1]) if len(args) > 1 else 60,
                         float(args[2]) if len(args) > 2 else 0.0)
    elif cmd == "wait-compute":
        out = wait_compute(conn, args[0], float(args[1]) if len(args) > 1 else 90)
    elif cmd == "image":
        out = image(conn)
    elif cmd == "boot":
        out = boot(conn, args[0], int(args[1]) if len(args) > 1 else 1)
    elif cmd == "cleanup":
        out = cleanup(conn)
    elif cmd == "demo-delete":
        out = demo_delete(conn, args[0])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
