"""The compute role: Open vSwitch and its Neutron agent (``network.py``), a
libvirtd of the node's own, and nova-compute running real instances."""

from __future__ import annotations

from microstackd.node.roles.network import NEEDS as NETWORK_NEEDS
from microstackd.node.roles.network import (
    NEUTRON_AGENT_CONF,
    OVS_AGENT,
    OVS_AGENT_INI,
    ovs_db_steps,
    ovs_services,
)
from microstackd.node.roles.parts import (
    IN_PRIVATE_MOUNTS,
    SERVICE_PATH,
    ConfigFile,
    RoleDefinition,
    RoleService,
    SetupStep,
    cleanup,
    literal,
    service_step,
    together,
)

NOVA_COMPUTE_CONF = "nova/nova.conf.d/microstackd-compute.conf"
#: The cluster's CRL as the control issued it (libvirtd's and QEMU's).
MIGRATION_CRL = "libvirt/pki/ca-crl.pem"
#: libvirt's hook for QEMU guests (``microstackd.node.taps``).
LIBVIRT_QEMU_HOOK = "libvirt/hooks/qemu"
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

#: Where nova-compute and its libvirtd see the instances: the same path on
#: every compute (Nova does not rewrite local disk paths when it moves a
#: guest), the node's own directory under it (``INSTANCES_BIND``).
INSTANCES_PATH = "/var/lib/nova/instances"
#: nova-compute in a mount namespace of its own where ${instances_bind}
#: (the process manager: several nodes on one machine) puts the node's
#: instances directory over INSTANCES_PATH, as in its libvirtd's namespace.
#: $1 bind? (non-empty: yes), $2 the node's directory, $3 INSTANCES_PATH, --, argv.
NOVA_IN_NODE_MOUNTS = r"""
bind=$1 src=$2 dst=$3; shift 3; shift
if [ -n "$bind" ]; then
    mkdir -p "$src" "$dst"; mount --bind "$src" "$dst"
fi
exec "$@"
"""
#: The migration transport's files: libvirt's client directory (the source
#: libvirtd dials the destination's with them: ``pkipath=``), QEMU's
#: (memory and disks over TLS) and libvirtd's own /etc/pki (bound there in
#: its mount namespace: ``virt-admin server-update-tls`` reloads only from
#: the default paths), each a link to the node's own key, certificate and
#: cluster CA, and the CRL the control issued.
#: $1 the node's tls directory, $2 the pki directory, $3 the CRL.
PKI_LINKS = r"""
tls=$1 pki=$2 crl=$3
mkdir -p "$pki/client" "$pki/qemu" "$pki/etc/CA" "$pki/etc/libvirt/private"
ln -sfn "$tls/ca.crt" "$pki/etc/CA/cacert.pem"
ln -sfn "$crl" "$pki/etc/CA/cacrl.pem"
ln -sfn "$tls/node.crt" "$pki/etc/libvirt/servercert.pem"
ln -sfn "$tls/node.key" "$pki/etc/libvirt/private/serverkey.pem"
for pair in cacert.pem:ca.crt clientcert.pem:node.crt clientkey.pem:node.key; do
    ln -sfn "$tls/${pair#*:}" "$pki/client/${pair%%:*}"
done
for pair in ca-cert.pem:ca.crt server-cert.pem:node.crt server-key.pem:node.key \
            client-cert.pem:node.crt client-key.pem:node.key; do
    ln -sfn "$tls/${pair#*:}" "$pki/qemu/${pair%%:*}"
done
ln -sfn "$crl" "$pki/qemu/ca-crl.pem"
"""

#: Has the node's libvirtd probe QEMU now (each emulator binary started
#: once, seconds each; its answers cached under /var/cache/libvirt): the
#: first getCapabilities does it, and nova-compute's start would otherwise
#: wait for it after its own imports. Prints the guest architectures found.
#: $1 the libvirt URI.
QEMU_CAPABILITIES = r"""
caps=$(virsh --quiet --connect "$1" capabilities)
printf '%s\n' "$caps" | sed -n "s/.*<arch name='\([^']*\)'>.*/guest architecture \1/p"
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
        "migration_crl",
    ),
    files=(
        ConfigFile("compute/nova-compute.conf", NOVA_COMPUTE_CONF),
        ConfigFile("compute/neutron.conf", NEUTRON_AGENT_CONF),
        ConfigFile("compute/openvswitch_agent.ini", OVS_AGENT_INI),
        ConfigFile("compute/libvirtd.conf", "libvirt/libvirtd.conf"),
        ConfigFile("compute/qemu.conf", "libvirt/qemu.conf"),
        ConfigFile("compute/ca-crl.pem", MIGRATION_CRL),
        # Read by libvirtd when it starts (taps.py: a guest's tap left down).
        ConfigFile("compute/libvirt-qemu-hook", LIBVIRT_QEMU_HOOK, mode=0o750),
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
                "${state_path}/nova/instances:" + INSTANCES_PATH,
                "${state_path}/libvirt/pki/etc:/etc/pki",
                "--",
                "/usr/sbin/libvirtd",
                # The TLS listener (libvirtd.conf): the migration transport.
                "--listen",
                "--pid-file",
                "/run/libvirt/libvirtd.pid",
            ),
            # Not the CRL: a new one is reloaded (virt-admin), never a restart,
            # which would stop the node's guests.
            reads=("libvirt/libvirtd.conf", "libvirt/qemu.conf"),
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
                *IN_PRIVATE_MOUNTS,
                literal(NOVA_IN_NODE_MOUNTS),
                "nova-compute-ns",
                "${instances_bind}",
                "${state_path}/nova/instances",
                INSTANCES_PATH,
                "--",
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
    setup=(
        *ovs_db_steps(),
        SetupStep(
            name="migration-pki",
            title="linking this node's certificate for libvirt's and QEMU's migration TLS",
            commands=(
                (
                    "/bin/sh",
                    "-ec",
                    literal(PKI_LINKS),
                    "pki-links",
                    "${state_dir}/tls",
                    "${state_path}/libvirt/pki",
                    "${config_root}/" + MIGRATION_CRL,
                ),
            ),
            timeout=30.0,
        ),
        SetupStep(
            name="qemu-capabilities",
            title="having libvirtd probe QEMU's capabilities while nova-compute starts",
            commands=(
                ("/bin/sh", "-ec", literal(QEMU_CAPABILITIES), "qemu-capabilities", LIBVIRT_URI),
            ),
            timeout=120.0,
        ),
    ),
    # The order honours NEEDS (below; tests/unit/test_compute_order.py
    # checks it): Open vSwitch and libvirt side by side, then the OVS agent's
    # first sync with the control beside nova-compute's start, the two
    # longest steps of a join (docs/performance.md, the real cloud's clock).
    order=(
        together(
            ("ovs-db", service_step("ovsdb-server"), service_step("ovs-vswitchd")),
            ("migration-pki", service_step("libvirtd")),
        ),
        together(
            (
                "ovs-bridges",
                service_step("ovs-uplink"),
                service_step("neutron-openvswitch-agent"),
            ),
            service_step("nova-compute"),
            "qemu-capabilities",
        ),
    ),
    resume_settings=("my_ip",),
)

#: What each step of the compute role needs done before it starts, besides
#: render-config (first: every file, the CRL among them). The order must
#: honour every line (a need in an entry before the step's, or before it
#: in its own lane: never only in another lane, which would rest on
#: timing); the unit tests check that every step of the order is here.
#:
#: * Open vSwitch's chain (``network.NEEDS``), then the OVS agent over the
#:   uplink (br-phy holds ``local_ip``, its tunnels' address; the control's
#:   neutron-rpc-server answers it already: the control is initialised);
#: * migration-pki links what libvirtd's TLS listener (``--listen``) reads
#:   from /etc/pki in its namespace;
#: * nova-compute's libvirt driver connects to libvirtd as it starts, and
#:   plugs the VIFs of the node's guests (a restart with guests) into
#:   br-int through os-vif, over ovsdb-server (os-vif makes br-int itself
#:   when the agent has not yet): Open vSwitch must run, not the agent,
#:   whose first sync with the control is not on nova-compute's path;
#: * qemu-capabilities asks libvirtd. nova-compute does not need it: it is
#:   a probe libvirtd makes once for both, started beside nova-compute's
#:   imports (nova-compute's first question waits for it when it is not
#:   done, or makes it when it did not run).
NEEDS: dict[str, tuple[str, ...]] = {
    "ovs-db": (),
    **NETWORK_NEEDS,
    service_step("neutron-openvswitch-agent"): (service_step("ovs-uplink"),),
    "migration-pki": (),
    service_step("libvirtd"): ("migration-pki",),
    service_step("nova-compute"): (service_step("libvirtd"), service_step("ovs-vswitchd")),
    "qemu-capabilities": (service_step("libvirtd"),),
}
