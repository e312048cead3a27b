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
    python setup_cloud.py image          the test image ($MSOS_IMAGE_FILE) as
                                          the public image `cirros` (uploaded
                                          again only when its bytes changed)

The admin cloud `microstack` comes from OS_CLIENT_CONFIG_FILE; the rest from
MSOS_* variables (passwords included: never on a command line). Prints no
secret.
"""

from __future__ import annotations

import hashlib
import ipaddress
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
PRIVATE_CIDR = "10.233.0.0/24"
#: 128 MB guests boot here (64 MB do not: the test image's initramfs unpacks in RAM).
TINY = {"ram": 128, "vcpus": 1, "disk": 1}
IMAGE_NAME = "cirros"


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


def external_subnet(cidr: str) -> dict[str, object]:
    """The external network's subnet: its gateway is the first address (on the
    control's br-ex), the floating IPs the rest."""
    network = ipaddress.IPv4Network(cidr)
    hosts = list(network.hosts())
    return {
        "cidr": str(network),
        "gateway_ip": str(hosts[0]),
        "allocation_pools": [{"start": str(hosts[1]), "end": str(hosts[-1])}],
    }


def resources(conn: openstack.connection.Connection) -> None:
    compute, net = conn.compute, conn.network
    flavor = compute.find_flavor("m1.tiny")
    if flavor is not None and (flavor.ram, flavor.vcpus, flavor.disk) != tuple(TINY.values()):
        compute.delete_flavor(flavor)  # an older, larger m1.tiny (flavors are immutable)
        flavor = None
    if flavor is None:
        compute.create_flavor(name="m1.tiny", id="1", **TINY)
    log(f"flavor m1.tiny ({TINY['ram']} MB, {TINY['vcpus']} vCPU, {TINY['disk']} GB)")
    external = external_subnet(os.environ["MSOS_EXTERNAL_CIDR"])
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
            is_dhcp_enabled=False,
            **external,
        )
    log(f"network public (flat, external), subnet {external['cidr']} without DHCP")
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


def _md5(path: str) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def image(conn: openstack.connection.Connection) -> None:
    path = os.environ["MSOS_IMAGE_FILE"]
    checksum = _md5(path)
    found = [i for i in conn.image.images(name=IMAGE_NAME)]
    same = [i for i in found if i.checksum == checksum and i.status == "active"]
    for old in found:
        if old not in same[:1]:
            conn.image.delete_image(old)
            log(f"image {IMAGE_NAME} {old.id}: deleted (other bytes or not active)")
    if same:
        log(f"image {IMAGE_NAME} {same[0].id}: already uploaded (md5 {checksum})")
        return
    started = time.monotonic()
    uploaded = conn.image.create_image(
        name=IMAGE_NAME,
        filename=path,
        disk_format="qcow2",
        container_format="bare",
        visibility="public",
        wait=True,
        os_distro="cirros",
        os_type="linux",
        hw_disk_bus="virtio",
        hw_vif_model="virtio",
    )
    log(
        f"image {IMAGE_NAME} {uploaded.id}: uploaded {os.path.getsize(path) >> 20} MiB "
        f"in {time.monotonic() - started:.1f} s"
    )


def main(argv: list[str]) -> int:
    actions = {"identity": identity, "resources": resources, "image": image}
    if len(argv) != 2 or argv[1] not in actions:
        print(__doc__, file=sys.stderr)
        return 2
    actions[argv[1]](openstack.connect(cloud="microstack"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
