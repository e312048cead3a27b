"""The compute role's order as data (what a join runs on the node, in
lanes): every need of every step (``compute.NEEDS``) is met by the order
itself, never by another lane's timing, and the needs hold what the steps'
commands and files say they use: ovsdb-server's socket, libvirtd's URI,
what a setup step makes."""

from __future__ import annotations

from microstackd.node import render
from microstackd.node.roles import COMPUTE
from microstackd.node.roles.compute import LIBVIRT_URI, NEEDS
from microstackd.node.roles.network import OVS_SOCK
from microstackd.node.roles.parts import service_step

from .test_control_order import _closure, _position, _unmet


def test_the_order_meets_every_need_without_relying_on_another_lane() -> None:
    broken = _unmet(COMPUTE, NEEDS)
    assert not broken, broken


def test_every_step_of_the_order_says_what_it_needs_and_nothing_else_is_named() -> None:
    order = set(COMPUTE.order_names())
    assert set(NEEDS) == order
    assert {n for needs in NEEDS.values() for n in needs} <= order


def test_the_longest_steps_run_side_by_side() -> None:
    """The OVS agent's first sync and nova-compute's start (docs/performance.md)."""
    at = _position(COMPUTE)
    agent, nova = at[service_step("neutron-openvswitch-agent")], at[service_step("nova-compute")]
    assert agent[0] == nova[0] and agent[1] != nova[1]


def _uses(step: str) -> str:
    """A step's commands, and the templates of the role's files they name."""
    if step.startswith("service "):
        argv = COMPUTE.service(step.removeprefix("service ")).command
        words = " ".join(argv)
    else:
        words = " ".join(" ".join(c) for c in COMPUTE.setup_step(step).commands)
    files = [f for f in COMPUTE.files if "${config_root}/" + f.path in words]
    return " ".join([words, *(render.template_text(f.template) for f in files)])


def test_what_a_step_uses_is_among_its_needs() -> None:
    checked = set()
    for step in COMPUTE.order_names():
        uses, needs = _uses(step), _closure(step, NEEDS)
        if OVS_SOCK in uses and step != service_step("ovsdb-server"):
            assert service_step("ovsdb-server") in needs, f"{step} talks to ovsdb-server"
            checked.add(step)
        if LIBVIRT_URI in uses and step != service_step("libvirtd"):
            assert service_step("libvirtd") in needs, f"{step} connects to libvirtd"
            checked.add(step)
    # Found in their commands and files (a failing read finds none of them).
    assert {
        service_step("ovs-vswitchd"),
        "ovs-bridges",
        service_step("ovs-uplink"),
        service_step("neutron-openvswitch-agent"),
        service_step("nova-compute"),
    } <= checked


def test_what_a_setup_step_makes_is_read_only_after_it() -> None:
    """A service whose command names a path a setup step makes (under the
    node's state) needs that step: libvirtd's /etc/pki, ovsdb-server's database."""
    checked = set()
    for setup in COMPUTE.setup:
        made = {a for c in setup.commands for a in c if a.startswith("${state_path}/")}
        for service in COMPUTE.services:
            args = {part for a in service.command for part in a.split(":")}
            if any(arg.startswith(m) for arg in args for m in made):
                assert setup.name in _closure(service_step(service.name), NEEDS), (
                    f"{service.name} reads what {setup.name} makes"
                )
                checked.add(service.name)
    assert {"libvirtd", "ovsdb-server"} <= checked
