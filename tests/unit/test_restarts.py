"""Which services a re-applied role restarts (node/restarts.py): the files
each reads (named by its command, or by ``reads``), the files a rendering
changes, and a digest of its command line."""

from __future__ import annotations

from pathlib import Path

from microstackd.control import config as control_config
from microstackd.node import render, restarts
from microstackd.node.roles import COMPUTE
from microstackd.node.roles.compute import MIGRATION_CRL, NOVA_COMPUTE_CONF
from microstackd.node.roles.network import NEUTRON_AGENT_CONF, OVS_AGENT_INI
from microstackd.node.services import ServiceSpec
from tests.unit.test_node_accounts import CRL, _node, _values


def _settings(tmp_path: Path, **changes: str) -> dict[str, str]:
    config = control_config.ensure(tmp_path / "control.yaml", "10.0.0.1")
    issued = control_config.issue_compute_settings(config, _node("node-1"), revocation_list=CRL)
    return issued | _values(tmp_path) | changes


def test_each_service_reads_the_files_its_command_names(tmp_path: Path) -> None:
    values, root = _settings(tmp_path), tmp_path / "etc"
    reads = {s.name: restarts.files_read(s, COMPUTE, values, root) for s in COMPUTE.services}
    assert reads["nova-compute"] == {NOVA_COMPUTE_CONF}
    assert reads["neutron-openvswitch-agent"] == {NEUTRON_AGENT_CONF, OVS_AGENT_INI}
    # libvirtd's bind mount names the whole libvirt/ directory; not its CRL,
    # which is reloaded (a restart would stop the node's guests).
    assert reads["libvirtd"] == {"libvirt/libvirtd.conf", "libvirt/qemu.conf"}
    assert reads["ovsdb-server"] == reads["ovs-vswitchd"] == set()


def test_a_rendering_changes_only_the_files_whose_text_changes(tmp_path: Path) -> None:
    root = tmp_path / "etc"
    values = _settings(tmp_path)
    assert restarts.changed_files(COMPUTE, values, root) == {f.path for f in COMPUTE.files}
    render.render_role(COMPUTE, values, root)
    assert restarts.changed_files(COMPUTE, values, root) == set()
    other = values | {"virt_type": "kvm"}
    assert restarts.changed_files(COMPUTE, other, root) == {NOVA_COMPUTE_CONF}
    crl = values | {"migration_crl": CRL + "\n"}
    assert restarts.changed_files(COMPUTE, crl, root) == {MIGRATION_CRL}


def test_a_digest_follows_the_command_line_and_environment() -> None:
    one = ServiceSpec(name="a", argv=("x", "--y"), env={"K": "1"})
    assert restarts.spec_digest(one) == restarts.spec_digest(
        ServiceSpec(name="a", argv=("x", "--y"), env={"K": "1"})
    )
    assert restarts.spec_digest(one) != restarts.spec_digest(
        ServiceSpec(name="a", argv=("x", "--z"), env={"K": "1"})
    )
    assert restarts.spec_digest(one) != restarts.spec_digest(
        ServiceSpec(name="a", argv=("x", "--y"), env={"K": "2"})
    )
