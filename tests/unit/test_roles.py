"""Role definitions and rendering: every template renders, parses as INI and
carries the issued values; bad input fails with the path or key named."""

from __future__ import annotations

import configparser
import os
import stat
from importlib import resources
from pathlib import Path

import pytest

from microstackd import errors
from microstackd.control import config as control_config
from microstackd.model import NodeRecord, NodeState, Role
from microstackd.node import render
from microstackd.node.roles import COMPUTE, DEFINITIONS
from microstackd.node.roles.compute import NOVA_COMPUTE_CONF
from microstackd.node.roles.network import NEUTRON_AGENT_CONF, OVS_AGENT_INI
from microstackd.node.standin import check

#: A CRL as the control issues it (its content does not matter here).
CRL = "-----BEGIN X509 CRL-----\n-----END X509 CRL-----"

NODE = NodeRecord(
    name="node-1",
    role=Role.COMPUTE,
    address="10.0.0.2",
    hostname="node-1",
    state=NodeState.ENROLLING,
    message="",
    cert_serial="aa",
    cert_not_after=0,
    joined=0,
)


@pytest.fixture
def settings(tmp_path: Path) -> dict[str, str]:
    config = control_config.ensure(tmp_path / "control.yaml", "10.0.0.1")
    return control_config.issue_compute_settings(config, NODE, revocation_list=CRL) | {
        "config_root": str(tmp_path / "etc"),
        "state_dir": str(tmp_path / "state"),
        "state_path": str(tmp_path / "state" / "services"),
        "run_dir": str(tmp_path / "run"),
        "log_dir": str(tmp_path / "state" / "logs"),
        "helpers_dir": str(tmp_path / "helpers"),
        "openstack_prefix": "/opt/os",
        "python": "/usr/bin/python3",
        "node_name": "node-1",
        # What the node's agent adds: its hypervisor and its libvirt.
        "virt_type": "qemu",
        "virt_detail": "virt_type qemu (detected: no /dev/kvm)",
        "libvirt_uri": "qemu+unix:///system?socket=/run/n1/libvirt/libvirt-sock",
        "instances_bind": "yes",
    }


def _ini(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    assert parser.read(path), path
    return parser


def test_compute_role_renders_parseable_files_with_the_issued_values(
    tmp_path: Path, settings: dict[str, str]
) -> None:
    root = tmp_path / "etc"
    paths = render.render_role(COMPUTE, settings, root)
    assert sorted(p.relative_to(root).as_posix() for p in paths) == sorted(
        [
            NOVA_COMPUTE_CONF,
            NEUTRON_AGENT_CONF,
            OVS_AGENT_INI,
            "libvirt/libvirtd.conf",
            "libvirt/qemu.conf",
            "libvirt/pki/ca-crl.pem",
            "libvirt/hooks/qemu",
        ]
    )
    nova = _ini(root / NOVA_COMPUTE_CONF)
    assert nova["DEFAULT"]["host"] == "node-1"
    assert nova["DEFAULT"]["my_ip"] == "10.0.0.2"
    assert nova["DEFAULT"]["transport_url"].startswith("rabbit://openstack:")
    assert nova["DEFAULT"]["transport_url"].endswith("@10.0.0.1:5672/")
    assert nova["keystone_authtoken"]["auth_url"] == "http://10.0.0.1:5000/v3"
    assert nova["keystone_authtoken"]["password"] == settings["nova_password"]
    assert nova["placement"]["username"] == "placement"
    assert nova["neutron"]["password"] == settings["neutron_password"]
    assert nova["DEFAULT"]["compute_driver"] == "libvirt.LibvirtDriver"
    assert nova["DEFAULT"]["force_config_drive"] == "true"
    assert nova["DEFAULT"]["vif_plugging_is_fatal"] == "true"
    assert nova["libvirt"]["virt_type"] == "qemu"
    assert nova["libvirt"]["connection_uri"] == settings["libvirt_uri"]
    assert nova["libvirt"]["hw_machine_type"] == "x86_64=pc"
    assert nova["vnc"]["enabled"] == "false"
    assert nova["os_vif_ovs"]["ovsdb_connection"].endswith("/run/ovs/db.sock")
    for section in ("nova_sys_admin", "vif_plug_ovs_privileged", "privsep_osbrick"):
        helper = nova[section]["helper_command"].split()
        assert helper[:2] == ["/opt/os/bin/python", "/opt/os/bin/privsep-helper"], helper
        assert helper[-1].endswith(NOVA_COMPUTE_CONF)
    assert "nova.service=DEBUG" in nova["DEFAULT"]["default_log_levels"]
    ovs = _ini(root / OVS_AGENT_INI)
    assert ovs["ovs"]["local_ip"] == "10.0.0.2"
    assert ovs["agent"]["tunnel_types"] == "vxlan"
    assert _ini(root / NEUTRON_AGENT_CONF)["DEFAULT"]["host"] == "node-1"
    qemu = (root / "libvirt" / "qemu.conf").read_text()
    for line in ('user = "root"', 'security_driver = "none"', 'stdio_handler = "file"'):
        assert line in qemu
    # The migration transport: TLS only, on the node's address, its own certificate.
    for line in ("migrate_tls_force = 1", 'migration_address = "10.0.0.2"'):
        assert line in qemu
    libvirtd = (root / "libvirt" / "libvirtd.conf").read_text()
    for line in (
        'listen_addr = "10.0.0.2"',
        "listen_tcp = 0",
        'tls_allowed_dn_list = ["OU=compute',
    ):
        assert line in libvirtd
    assert (root / "libvirt" / "pki" / "ca-crl.pem").read_text().strip() == settings[
        "migration_crl"
    ]
    assert nova["DEFAULT"]["instances_path"] == "/var/lib/nova/instances"
    assert nova["libvirt"]["live_migration_uri"].startswith("qemu+tls://%s/system?pkipath=")
    assert nova["libvirt"]["live_migration_inbound_addr"] == "10.0.0.2"
    assert nova["libvirt"]["live_migration_with_native_tls"] == "true"
    assert nova["compute"]["live_migration_wait_for_vif_plug"] == "false"
    for path in paths:
        # libvirt's hook is a program (taps.py), root's alone like the rest.
        mode = 0o750 if path.parent.name == "hooks" else 0o640
        assert stat.S_IMODE(os.stat(path).st_mode) == mode


def test_every_role_template_renders(tmp_path: Path, settings: dict[str, str]) -> None:
    """Every role of the cluster has a definition, and every template shipped
    in the package is one of a role's files (or a setup step's stdin) and
    renders completely with that role's own settings."""
    assert set(DEFINITIONS) == {Role.CONTROL, Role.COMPUTE}
    config = control_config.ensure(tmp_path / "control.yaml", "10.0.0.1")
    role_settings = {
        Role.COMPUTE: settings,
        Role.CONTROL: {
            **{k: v for k, v in settings.items() if k not in control_config.SECRET_KEYS},
            **control_config.control_settings(config),
        },
    }
    rendered: set[str] = set()
    for role, definition in DEFINITIONS.items():
        values = role_settings[role]
        used = [f.template for f in definition.files]
        used += [s.stdin_template for s in definition.setup if s.stdin_template]
        for template in used:
            text = render.render_text(template, values)
            assert "${" not in text, template
            if template.endswith((".conf", ".ini")) and not template.endswith(
                ("libvirtd.conf", "qemu.conf", "dnsmasq.conf", "rabbitmq.conf")
            ):
                configparser.ConfigParser(interpolation=None).read_string(text)
            rendered.add(template)
    root = resources.files("microstackd.node") / "templates"
    shipped = {
        f"{role_dir.name}/{t.name}"
        for role_dir in root.iterdir()
        if role_dir.is_dir()
        for t in role_dir.iterdir()
    }
    assert rendered == shipped, f"templates no role uses: {sorted(shipped - rendered)}"


def test_every_requirement_of_every_service_is_met_by_the_rendered_files(
    tmp_path: Path, settings: dict[str, str]
) -> None:
    root = tmp_path / "etc"
    render.render_role(COMPUTE, settings, root)
    for service in COMPUTE.services:
        assert check(root, list(service.requires)) == []


def test_a_missing_setting_writes_nothing_and_names_the_keys(
    tmp_path: Path, settings: dict[str, str]
) -> None:
    del settings["transport_url"], settings["host"]
    with pytest.raises(errors.InvalidArgument, match="host, transport_url"):
        render.render_role(COMPUTE, settings, tmp_path / "etc")
    assert not (tmp_path / "etc").exists()


def test_an_unwritable_config_root_names_the_path(tmp_path: Path, settings: dict[str, str]) -> None:
    blocker = tmp_path / "etc"
    blocker.write_text("a file, not a directory")
    with pytest.raises(errors.ConfigError, match=str(blocker)):
        render.render_role(COMPUTE, settings, blocker)


def test_template_errors_name_the_template() -> None:
    with pytest.raises(errors.ConfigError, match="compute/nova-compute.conf needs setting"):
        render.render_text("compute/nova-compute.conf", {})
    with pytest.raises(errors.ConfigError, match="missing"):
        render.render_text("compute/no-such-template.conf", {})


def test_commands_expand(settings: dict[str, str]) -> None:
    service = COMPUTE.service("nova-compute")
    argv = render.expand(service.command, settings)
    # In a mount namespace of its own where the node's instances are bound
    # over the common path (as in its libvirtd's).
    assert argv[0] == "/usr/bin/unshare" and argv[-1].endswith(NOVA_COMPUTE_CONF)
    program = argv.index("--", argv.index("nova-compute-ns")) + 1
    assert argv[program] == "/opt/os/bin/nova-compute"
    assert list(argv[argv.index("nova-compute-ns") + 1 : program - 1]) == [
        "yes",
        settings["state_path"] + "/nova/instances",
        "/var/lib/nova/instances",
    ]


def test_standin_reports_every_missing_key(tmp_path: Path) -> None:
    (tmp_path / "a.conf").write_text("[DEFAULT]\nhost = x\nempty =\n")
    missing = check(
        tmp_path,
        ["a.conf:DEFAULT.host", "a.conf:DEFAULT.empty", "a.conf:ovs.local_ip", "b.conf:x.y"],
    )
    assert missing == [
        f"{tmp_path / 'a.conf'}: [DEFAULT] empty",
        f"{tmp_path / 'a.conf'}: [ovs] local_ip",
        f"{tmp_path / 'b.conf'} (file missing or unreadable)",
    ]


def test_control_config_is_generated_once_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "control.yaml"
    first = control_config.ensure(path, "10.0.0.1")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    second = control_config.ensure(path, "10.9.9.9")
    assert first == second  # secrets and addresses survive a reload
    assert len(set(first.service_passwords.values())) == 4
    assert first.database_password and first.admin_password


def test_control_config_keeps_operator_values_and_fills_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "control.yaml"
    path.write_text("region: east\nrabbitmq:\n  host: 10.0.0.50\n  password: hunter2\n")
    config = control_config.ensure(path, "10.0.0.1")
    assert (config.region, config.rabbitmq_host, config.rabbitmq_password) == (
        "east",
        "10.0.0.50",
        "hunter2",
    )
    assert config.transport_url == "rabbit://openstack:hunter2@10.0.0.50:5672/"
    assert "hunter2" not in config.public_summary()


@pytest.mark.parametrize("text", ["[1, 2]", "rabbitmq: 3\n", "control_address: nope\n", "a: [\n"])
def test_a_bad_control_config_is_a_clear_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "control.yaml"
    path.write_text(text)
    with pytest.raises(errors.InvalidArgument, match="control"):
        control_config.ensure(path, "10.0.0.1")


def test_redact_hides_every_secret(settings: dict[str, str]) -> None:
    shown = control_config.redact(settings)
    for key in control_config.SECRET_KEYS & settings.keys():
        assert shown[key] == "<secret>"
    assert shown["host"] == "node-1"
