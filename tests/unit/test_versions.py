"""The skew window (versions.py): a compute runs its control's minor version
or the one before, never one ahead, and speaks its API; each refusal says
which side to upgrade."""

from __future__ import annotations

import pytest

from microstackd import errors, versions
from microstackd.model import Software
from microstackd.versions import Release


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.1.0", Release(0, 1)),
        ("1.12.3", Release(1, 12)),
        ("0.2", Release(0, 2)),
        ("0.2.0.dev1", Release(0, 2)),
        ("0.2.0rc1", Release(0, 2)),
        (" 0.3.1 ", Release(0, 3)),
        ("", None),
        ("v1", None),
        ("latest", None),
        ("1", None),
        ("0.x.1", None),
    ],
)
def test_a_release_is_major_and_minor(text: str, expected: Release | None) -> None:
    assert versions.release(text) == expected


@pytest.mark.parametrize("member", ["0.3.0", "0.3.7", "0.2.0", "0.2.9", "0.3.0.dev2"])
def test_the_control_minor_and_the_one_before_are_inside(member: str) -> None:
    versions.check_member("node-1", Software(member, "v1"), "0.3.2")


def test_the_build_is_inside_its_own_window() -> None:
    versions.check_member(
        "node-1", Software(versions.VERSION, versions.API_VERSION), versions.VERSION
    )


@pytest.mark.parametrize(
    ("member", "api", "words"),
    [
        # Ahead of the control, by a minor or a major version.
        ("0.4.0", "v1", ["node-1 runs microstackd 0.4.0", "upgrade the control first"]),
        ("1.0.0", "v1", ["newer than its control's 0.3.2", "upgrade the control first"]),
        # Two minor versions behind, or an older major.
        ("0.1.5", "v1", ["too old", "upgrade microstackd on node-1 to 0.3"]),
        ("0.0.1", "v1", ["computes run 0.2 or 0.3", "upgrade microstackd on node-1 to 0.3"]),
        # Nothing declared (older than versions declared), or nonsense.
        ("", "", ["did not declare", "upgrade microstackd on node-1 to 0.3"]),
        ("banana", "v1", ["'banana'", "upgrade microstackd on node-1"]),
        # Another API: the side with the older one upgrades.
        ("0.3.0", "v2", ["speaks API v2", "upgrade microstackd on the control"]),
        ("0.3.0", "v0", ["speaks API v0", "upgrade microstackd on node-1"]),
        ("0.3.0", "", ["speaks API none", "upgrade microstackd on node-1"]),
    ],
)
def test_outside_the_window_is_refused_naming_the_side_to_upgrade(
    member: str, api: str, words: list[str]
) -> None:
    with pytest.raises(errors.VersionSkew) as caught:
        versions.check_member("node-1", Software(member, api), "0.3.2")
    for word in words:
        assert word in caught.value.message
    assert caught.value.code == "FAILED_PRECONDITION"


def test_at_minor_zero_only_that_minor_is_inside() -> None:
    versions.check_member("n", Software("1.0.3", "v1"), "1.0.0")
    with pytest.raises(errors.VersionSkew, match="computes run 1.0"):
        versions.check_member("n", Software("0.9.0", "v1"), "1.0.0")


def test_a_test_version_must_look_like_one() -> None:
    assert versions.check_version("0.9.0", "--report-version") == "0.9.0"
    with pytest.raises(errors.InvalidArgument, match="--report-version 'nine'"):
        versions.check_version("nine", "--report-version")
