"""The control role's API-side setup steps, run with the OpenStack environment's
own Python (a command of the role, like keystone-manage).
Idempotent: every object is looked up before it is created.

    python setup_cloud.py identity       service project, service users (roles
                                          admin and service in project service),
                                          services and endpoints
    python setup_cloud.py resources      flavor m1.tiny, external flat network
                                          `public` (subnet without DHCP), vxlan
                                          network `private`, router `router`,
                                          ICMP and SSH ingress rules

The admin cloud `microstack` comes from OS_CLIENT_CONFIG_FILE; the rest from
MSOS_* variables (passwords included: never on a command line). Prints no
secret.
"""

from __future__ import annotations

import os
import sys
import time

import openstack
from openstack import exceptions

SERVICES = (
    # user, service type, port variable, path
    ("glance", "image", "MSOS_GLANCE_PORT", ""),
    ("placement", "placement", "MSOS_PLACEMENT_PORT", ""),
    ("nova", "compute", "MSOS_NOVA_PORT", "/v2.1"),
    ("neutron", "network", "MSOS_NEUTRON_PORT", ""),
)
PUBLIC_CIDR, PUBLIC_GW = "10.232.0.0/24", "10.232.0.1"
PUBLIC_POOL = {"start": "10.232.0.100", "end": "10.232.0.250"}
PRIVATE_CIDR = "10.233.0.0/24"


def log(msg: str) -> None:
    print(f"[setup_cloud {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def identity(conn: openstack.connection.Connection) -> None:
    idn = conn.identity
    api_host, region = os.environ["MSOS_API_HOST"], os.environ["MSOS_REGION"]
    default = idn.find_domain("default") or idn.find_domain("Default")
    project = idn.find_project("service", domain_id=default.id)
    if project is None:
        project = idn.create_project(
            name="service", domain_id=default.id, description="OpenStack service users"
        )
    roles = []
    for name in ("admin", "service"):
        role = idn.find_role(name) or idn.create_role(name=name)
        roles.append(role)
    for name, stype, port_var, path in SERVICES:
        password = os.environ[f"MSOS_{name.upper()}_PASSWORD"]
        user = idn.find_user(name, domain_id=default.id)
        if user is None:
            user = idn.create_user(
                name=name, password=password, domain_id=default.id, default_project_id=project.id
            )
        else:
            idn.update_user(user, password=password)
        for role in roles:
            idn.assign_project_role_to_user(project, user, role)
        service = next(iter(idn.services(name=name)), None)
        if service is None:
            service = idn.create_service(name=name, type=stype, description=f"{name} ({stype})")
        url = f"http://{api_host}:{os.environ[port_var]}{path}"
        have = {e.interface: e for e in idn.endpoints(service_id=service.id)}
        for interface in ("public", "internal", "admin"):
            endpoint = have.get(interface)
            if endpoint is None:
                idn.create_endpoint(
                    service_id=service.id, interface=interface, url=url, region_id=region
                )
            elif endpoint.url != url:
                idn.update_endpoint(endpoint, url=url)
        log(f"{name}: user, roles, service {stype}, endpoints {url}")


def resources(conn: openstack.connection.Connection) -> None:
    compute, net = conn.compute, conn.network
    if compute.find_flavor("m1.tiny") is None:
        compute.create_flavor(name="m1.tiny", ram=512, vcpus=1, disk=1, id="1")
    log("flavor m1.tiny")
    public = net.find_network("public")
    if public is None:
        public = net.create_network(
            name="public",
            is_router_external=True,
            provider_network_type="flat",
            provider_physical_network="public",
        )
    if net.find_subnet("public-subnet") is None:
        net.create_subnet(
            name="public-subnet",
            network_id=public.id,
            ip_version=4,
            cidr=PUBLIC_CIDR,
            gateway_ip=PUBLIC_GW,
            is_dhcp_enabled=False,
            allocation_pools=[PUBLIC_POOL],
        )
    log(f"network public (flat, external), subnet {PUBLIC_CIDR} without DHCP")
    private = net.find_network("private") or net.create_network(name="private")
    subnet = net.find_subnet("private-subnet")
    if subnet is None:
        subnet = net.create_subnet(
            name="private-subnet", network_id=private.id, ip_version=4, cidr=PRIVATE_CIDR
        )
    log(f"network private ({private.provider_network_type}), subnet {PRIVATE_CIDR}")
    router = net.find_router("router")
    if router is None:
        router = net.create_router(name="router", external_gateway_info={"network_id": public.id})
    if not list(net.ports(device_id=router.id, network_id=private.id)):
        net.add_interface_to_router(router, subnet_id=subnet.id)
    log("router: gateway on public, interface on private-subnet")
    group = net.find_security_group("default", project_id=conn.current_project_id)
    for rule in (
        {"protocol": "icmp"},
        {"protocol": "tcp", "port_range_min": 22, "port_range_max": 22},
    ):
        try:
            net.create_security_group_rule(
                security_group_id=group.id,
                direction="ingress",
                ethertype="IPv4",
                remote_ip_prefix="0.0.0.0/0",
                **rule,
            )
        except exceptions.ConflictException:
            pass
    log("default security group: ICMP and SSH ingress")


def main(argv: list[str]) -> int:
    actions = {"identity": identity, "resources": resources}
    if len(argv) != 2 or argv[1] not in actions:
        print(__doc__, file=sys.stderr)
        return 2
    actions[argv[1]](openstack.connect(cloud="microstack"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
