"""The compute role: Open vSwitch and its Neutron agent (``network.py``), a
libvirtd of the node's own, and nova-compute running real instances."""

from __future__ import annotations

from microstackd.node.roles.network import (
    NEUTRON_AGENT_CONF,
    OVS_AGENT,
    OVS_AGENT_INI,
    ovs_db_steps,
    ovs_services,
)
from microstackd.node.roles.network import ORDER as NETWORK_ORDER
from microstackd.node.roles.parts import (
    SERVICE_PATH,
    ConfigFile,
    RoleDefinition,
    RoleService,
    cleanup,
    literal,
    service_step,
)

NOVA_COMPUTE_CONF = "nova/nova.conf.d/microstackd-compute.conf"
LIBVIRT_URI = "${libvirt_uri}"
#: libvirtd for this node alone, on a machine that may run several nodes: in
#: a mount and UTS namespace of its own, the node's directories over
#: libvirt's, a passwd/group with the user the QEMU driver looks up before
#: it reads qemu.conf (libvirt-qemu: only libvirt-daemon-system makes it),
#: and the node's name as hostname (libvirt's hostname is Nova's
#: hypervisor_hostname and the Placement provider's name).
#: $1 node name, $2 a directory for passwd/group, then SRC:DST pairs, --, argv.
LIBVIRTD_IN_NODE_NAMESPACES = r"""
node=$1 users=$2; shift 2
while [ "$1" != -- ]; do
    mkdir -p "${1%%:*}" "${1#*:}"; mount --bind "${1%%:*}" "${1#*:}"; shift
done
shift
mkdir -p "$users"
qemu_user='libvirt-qemu:x:64055:64055:Libvirt Qemu:/var/lib/libvirt:/usr/sbin/nologin'
if ! grep -q '^libvirt-qemu:' /etc/passwd; then
    { cat /etc/passwd; echo "$qemu_user"; } > "$users/passwd"
    mount --bind "$users/passwd" /etc/passwd
fi
if ! grep -q '^libvirt-qemu:' /etc/group; then
    { cat /etc/group; grep -q '^kvm:' /etc/group || echo 'kvm:x:64054:'
      echo 'libvirt-qemu:x:64055:'; } > "$users/group"
    mount --bind "$users/group" /etc/group
fi
hostname "$node"
exec "$@"
"""

COMPUTE = RoleDefinition(
    name="compute",
    settings=(
        "host",
        "my_ip",
        "local_ip",
        "control_address",
        "region",
        "auth_url",
        "transport_url",
        "virt_type",
        "compute_driver",
        "vif_plugging_is_fatal",
        "vif_plugging_timeout",
        "tunnel_types",
        "nova_username",
        "nova_password",
        "neutron_username",
        "neutron_password",
        "placement_username",
        "placement_password",
    ),
    files=(
        ConfigFile("compute/nova-compute.conf", NOVA_COMPUTE_CONF),
        ConfigFile("compute/neutron.conf", NEUTRON_AGENT_CONF),
        ConfigFile("compute/openvswitch_agent.ini", OVS_AGENT_INI),
        ConfigFile("compute/libvirtd.conf", "libvirt/libvirtd.conf"),
        ConfigFile("compute/qemu.conf", "libvirt/qemu.conf"),
    ),
    services=(
        *ovs_services("${my_ip}"),
        OVS_AGENT,
        RoleService(
            name="libvirtd",
            command=(
                "/usr/bin/unshare",
                "--mount",
                "--uts",
                "--propagation",
                "private",
                "--",
                "/bin/sh",
                "-ec",
                literal(LIBVIRTD_IN_NODE_NAMESPACES),
                "libvirtd-ns",
                "${node_name}",
                "${state_path}/libvirt/users",
                "${config_root}/libvirt:/etc/libvirt",
                "${run_dir}/libvirt:/run/libvirt",
                "${state_path}/libvirt/lib:/var/lib/libvirt",
                "${log_dir}/libvirt:/var/log/libvirt",
                "${state_path}/libvirt/cache:/var/cache/libvirt",
                "--",
                "/usr/sbin/libvirtd",
                "--pid-file",
                "/run/libvirt/libvirtd.pid",
            ),
            # Under systemd and snapd: the host's libvirt (qemu:///system).
            unit="libvirtd.service",
            snap_service="microstack.libvirtd",
            ready_check="unix://${run_dir}/libvirt/libvirt-sock",
            ready_after=0.2,
            start_timeout=60.0,
            real_only=True,
            # Nova's domains first: QEMU leaves libvirtd's process group.
            pre_stop=(cleanup("destroy-domains", "--uri", LIBVIRT_URI),),
            post_stop=(
                cleanup("kill-pidfiles", "--name", "qemu-system", "${run_dir}/libvirt/qemu/*.pid"),
            ),
        ),
        RoleService(
            name="nova-compute",
            command=(
                "${openstack_prefix}/bin/nova-compute",
                "--config-file",
                "${config_root}/" + NOVA_COMPUTE_CONF,
            ),
            requires=(
                f"{NOVA_COMPUTE_CONF}:DEFAULT.host",
                f"{NOVA_COMPUTE_CONF}:DEFAULT.my_ip",
                f"{NOVA_COMPUTE_CONF}:DEFAULT.transport_url",
                f"{NOVA_COMPUTE_CONF}:keystone_authtoken.password",
                f"{NOVA_COMPUTE_CONF}:placement.password",
                f"{NOVA_COMPUTE_CONF}:neutron.password",
                f"{NOVA_COMPUTE_CONF}:libvirt.virt_type",
            ),
            snap_service="microstack.nova-compute",
            env=(("PATH", SERVICE_PATH),),
            dirs=("${state_path}/nova/lock", "${state_path}/nova/instances"),
            # Logged once its driver is up and its RPC server listens (nova.service
            # logs at DEBUG: nova-compute.conf raises that one logger).
            ready_pattern=r"Join ServiceGroup membership for this service compute",
            ready_after=0.5,
            start_timeout=300.0,
            detail="${compute_driver}, ${virt_detail}",
        ),
    ),
    setup=ovs_db_steps(),
    order=(
        *NETWORK_ORDER,
        service_step("libvirtd"),
        service_step("nova-compute"),
    ),
    resume_settings=("my_ip",),
)
