#!/usr/bin/env python3
"""Idempotent API-side bootstrap of the dev control plane (one process, SDK).

    bootstrap_cloud.py identity  API_HOST SERVICE_PASSWORD
        service project, service users (roles admin + service in project
        service), services and endpoints (public/internal/admin) for glance,
        placement, nova, neutron.
    bootstrap_cloud.py resources
        flavor m1.tiny, flat external network `public` + subnet without DHCP,
        vxlan network `private` + subnet, router `router` (gateway on public,
        interface on private), ICMP + SSH ingress in the admin project's
        default security group.

Uses the admin cloud `microstack` from OS_CLIENT_CONFIG_FILE; the API ports
come from GLANCE_PORT, PLACEMENT_PORT, NOVA_PORT, NEUTRON_PORT.  One Python
process instead of ~40 `openstack` CLI runs (each costs ~1.5 s of start-up).
"""

import os
import sys
import time

import openstack
from openstack import exceptions

SERVICES = [
    # name, type, port (environment variable set by control-up.sh, default), path
    ("glance", "image", int(os.environ.get("GLANCE_PORT", 19292)), ""),
    ("placement", "placement", int(os.environ.get("PLACEMENT_PORT", 18778)), ""),
    ("nova", "compute", int(os.environ.get("NOVA_PORT", 18774)), "/v2.1"),
    ("neutron", "network", int(os.environ.get("NEUTRON_PORT", 19696)), ""),
]
REGION = "RegionOne"
PUBLIC_CIDR, PUBLIC_GW = "10.232.0.0/24", "10.232.0.1"
PRIVATE_CIDR = "10.233.0.0/24"


def log(msg: str) -> None:
    print(f"[bootstrap_cloud {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def identity(conn, api_host: str, service_password: str) -> None:
    idn = conn.identity
    default = idn.find_domain("default") or idn.find_domain("Default")
    project = idn.find_project("service", domain_id=default.id)
    if project is None:
        project = idn.create_project(name="service", domain_id=default.id,
                                     description="OpenStack service users")
    roles = {}
    for rname in ("admin", "service"):
        role = idn.find_role(rname)
        if role is None:
            role = idn.create_role(name=rname)
        roles[rname] = role
    for name, stype, port, path in SERVICES:
        user = idn.find_user(name, domain_id=default.id)
        if user is None:
            user = idn.create_user(name=name, password=service_password,
                                   domain_id=default.id, default_project_id=project.id)
        else:
            idn.update_user(user, password=service_password)
        for role in roles.values():
            idn.assign_project_role_to_user(project, user, role)
        svc = next(iter(idn.services(name=name)), None)
        if svc is None:
            svc = idn.create_service(name=name, type=stype, description=f"{name} ({stype})")
        url = f"http://{api_host}:{port}{path}"
        have = {e.interface: e for e in idn.endpoints(service_id=svc.id)}
        for iface in ("public", "internal", "admin"):
            e = have.get(iface)
            if e is None:
                idn.create_endpoint(service_id=svc.id, interface=iface, url=url, region_id=REGION)
            elif e.url != url:
                idn.update_endpoint(e, url=url)
        log(f"{name}: user, roles, service {stype}, endpoints {url}")


def resources(conn) -> None:
    if conn.compute.find_flavor("m1.tiny") is None:
        conn.compute.create_flavor(name="m1.tiny", ram=512, vcpus=1, disk=1, id="1")
    log("flavor m1.tiny")

    net = conn.network
    public = net.find_network("public")
    if public is None:
        public = net.create_network(name="public", is_router_external=True,
                                    provider_network_type="flat",
                                    provider_physical_network="public")
    if net.find_subnet("public-subnet") is None:
        net.create_subnet(name="public-subnet", network_id=public.id, ip_version=4,
                          cidr=PUBLIC_CIDR, gateway_ip=PUBLIC_GW, is_dhcp_enabled=False,
                          allocation_pools=[{"start": "10.232.0.100", "end": "10.232.0.250"}])
    log(f"network public (flat, external) + subnet {PUBLIC_CIDR} without DHCP")

    private = net.find_network("private")
    if private is None:
        private = net.create_network(name="private")  # tenant type: vxlan
    psub = net.find_subnet("private-subnet")
    if psub is None:
        psub = net.create_subnet(name="private-subnet", network_id=private.id,
                                 ip_version=4, cidr=PRIVATE_CIDR)
    log(f"network private ({private.provider_network_type}) + subnet {PRIVATE_CIDR}")

    router = net.find_router("router")
    if router is None:
        router = net.create_router(name="router",
                                   external_gateway_info={"network_id": public.id})
    if not list(net.ports(device_id=router.id, network_id=private.id)):
        net.add_interface_to_router(router, subnet_id=psub.id)
    log("router: gateway on public, interface on private-subnet")

    project_id = conn.current_project_id
    sg = net.find_security_group("default", project_id=project_id)
    for rule in ({"protocol": "icmp"},
                 {"protocol": "tcp", "port_range_min": 22, "port_range_max": 22}):
        try:
            net.create_security_group_rule(security_group_id=sg.id, direction="ingress",
                                           ethertype="IPv4", remote_ip_prefix="0.0.0.0/0",
                                           **rule)
        except exceptions.ConflictException:
            pass
    log("default security group: ICMP + SSH ingress")


def main(argv: list[str]) -> int:
    conn = openstack.connect(cloud="microstack")
    if argv[1:2] == ["identity"] and len(argv) == 4:
        identity(conn, argv[2], argv[3])
    elif argv[1:] == ["resources"]:
        resources(conn)
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
