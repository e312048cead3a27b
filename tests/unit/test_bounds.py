"""The bounds on what a member reports (issue 14, item 5): the control
refuses more; a member clips its own report to fit, so a legit one always
passes."""

from __future__ import annotations

import pytest

from microstackd import errors
from microstackd.control.members import check_services
from microstackd.member.heartbeat import bounded
from microstackd.model import (
    MAX_SERVICE_MESSAGE,
    MAX_SERVICES,
    MAX_SERVICES_TEXT,
    ServiceRecord,
)


def test_a_report_within_the_bounds_passes() -> None:
    services = [ServiceRecord(f"s{i}", "failed", "m" * 900) for i in range(MAX_SERVICES)]
    assert check_services(services, "n1") == services


@pytest.mark.parametrize(
    "services",
    [
        [ServiceRecord(f"s{i}", "running") for i in range(MAX_SERVICES + 1)],
        [ServiceRecord("", "running")],
        [ServiceRecord("s" * 101, "running")],
        [ServiceRecord("s", "exploded")],
        [ServiceRecord("s", "failed", "m" * (MAX_SERVICE_MESSAGE + 1))],
        [ServiceRecord(f"s{i}", "failed", "m" * MAX_SERVICE_MESSAGE) for i in range(9)],
    ],
)
def test_the_control_refuses_more(services: list[ServiceRecord]) -> None:
    with pytest.raises(errors.InvalidArgument, match="n1 reported"):
        check_services(services, "n1")


def test_a_member_clips_its_own_report_to_what_the_control_takes() -> None:
    services = [ServiceRecord(f"s{i}", "failed", "x" * 100_000) for i in range(200)]
    clipped = bounded(services)
    assert check_services(clipped, "n1") == clipped
    assert len(clipped) == MAX_SERVICES
    assert sum(len(s.message) for s in clipped) <= MAX_SERVICES_TEXT
    assert all(s.message.endswith("…") for s in clipped)
    few = [ServiceRecord("nova-compute", "failed", "y" * 6000)]
    assert bounded(few) == few  # a real failure message is not cut


def test_a_member_keeps_what_its_services_run_with() -> None:
    detail = "libvirt.LibvirtDriver, virt_type qemu (detected: no vmx/svm)"
    few = [ServiceRecord("nova-compute", "running", "", detail)]
    assert bounded(few) == few  # the detail reaches status, as the agent reported it
    many = [ServiceRecord(f"s{i}", "failed", "x" * 9000, "d" * 9000) for i in range(64)]
    clipped = bounded(many)
    assert check_services(clipped, "n1") == clipped
    assert all(s.detail.startswith("d") for s in clipped)
