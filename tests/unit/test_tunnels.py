"""The control's check of its own tunnel to a compute (control/tunnels.py):
what ovs-vsctl lists, and the one restart of its OVS agent when the tunnel
is missing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping

import pytest

from microstackd import errors
from microstackd.control import tunnels

#: ovs-vsctl --format=json --columns=name,options,ofport find Interface type=vxlan
LISTED = json.dumps(
    {
        "data": [
            [
                "vxlan-0afb000c",
                ["map", [["df_default", "true"], ["remote_ip", "10.251.0.12"]]],
                4,
            ],
            ["vxlan-0afb000b", ["map", [["remote_ip", "10.251.0.11"]]], ["set", []]],
            ["vxlan-0afb000d", ["map", [["remote_ip", "10.251.0.13"]]], -1],
        ],
        "headings": ["name", "options", "ofport"],
    }
)


def test_only_ports_that_ovs_vswitchd_made_count() -> None:
    assert tunnels.parse_remotes(LISTED) == {"10.251.0.12": "vxlan-0afb000c"}


@pytest.mark.parametrize("text", ["", "{}", '{"data": [[1]], "headings": ["name"]}'])
def test_an_unreadable_listing_is_a_cloud_error(text: str) -> None:
    with pytest.raises(errors.CloudError, match="cannot read ovs-vsctl's list of VXLAN ports"):
        tunnels.parse_remotes(text)


class Bridge:
    """br-tun as the control's OVS agent keeps it: the port to the compute
    appears after ``after`` listings, or only once the agent restarted."""

    def __init__(self, after: int | None, after_restart: int | None = None) -> None:
        self.after, self.after_restart = after, after_restart
        self.listed = 0
        self.restarts = 0

    async def remotes(self) -> Mapping[str, str]:
        self.listed += 1
        due = self.after if self.restarts == 0 else self.after_restart
        return {"10.0.0.12": "vxlan-0a00000c"} if due is not None and self.listed > due else {}

    async def restart(self) -> None:
        self.restarts += 1
        self.listed = 0


def ensure(bridge: Bridge, said: list[str]) -> str:
    async def progress(text: str) -> None:
        said.append(text)

    return asyncio.run(
        tunnels.ensure(
            "node-2",
            "10.0.0.12",
            bridge.remotes,
            bridge.restart,
            progress,
            wait=0.05,
            after_restart=0.05,
            poll=0.001,
        )  # fmt: skip
    )


def test_a_tunnel_there_or_coming_needs_no_restart() -> None:
    for after in (0, 3):
        bridge, said = Bridge(after), list[str]()
        assert (
            ensure(bridge, said)
            == "the control's tunnel to node-2 is up (vxlan-0a00000c to 10.0.0.12)"
        )
        assert bridge.restarts == 0 and said == []


def test_a_missing_tunnel_restarts_the_controls_agent_once_and_says_so() -> None:
    bridge, said = Bridge(None, after_restart=2), list[str]()
    message = ensure(bridge, said)
    assert bridge.restarts == 1
    assert message.endswith("re-made by restarting the control's neutron-openvswitch-agent")
    assert len(said) == 1 and "has no VXLAN tunnel to node-2 (10.0.0.12)" in said[0], said


def test_a_tunnel_still_missing_after_the_restart_fails_the_step_with_what_to_do() -> None:
    bridge, said = Bridge(None, after_restart=None), list[str]()
    with pytest.raises(errors.CloudError) as failed:
        ensure(bridge, said)
    assert bridge.restarts == 1
    text = failed.value.message
    assert "still has no VXLAN tunnel to node-2 (10.0.0.12)" in text
    assert "instances on node-2 would get no network" in text
    assert "neutron-openvswitch-agent.log" in text and "microstackctl join" in text
