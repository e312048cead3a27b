"""Which versions of microstackd may form one cluster: the skew window.

Rules (docs/api.md, "Versions"):

1. Every node declares two things: its microstackd version (``MAJOR.MINOR.PATCH``,
   PEP 440 suffixes such as ``.dev1`` allowed and ignored) and the gRPC API it
   speaks (``v1``, the package ``microstack.cluster.v1``).
2. A compute speaks the control's API, and runs the control's major version
   and either its minor version or the one before (``MINOR_BEHIND``). Patch
   releases never matter. A compute is never ahead of its control: upgrade the
   control first, then the computes, one minor version at a time.
3. A node that declares no version (a microstackd from before versions were
   declared) is outside every window.

Pure: the versions come in as strings, the verdict goes out as
``errors.VersionSkew`` with a message that says which side to upgrade.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import microstackd
from microstackd import errors
from microstackd.model import Software

#: The gRPC API this code speaks: the protocol package's version.
API_VERSION = "v1"
#: How many minor versions a compute may be behind its control.
MINOR_BEHIND = 1
#: This build's version (pyproject.toml's, as the package declares it).
VERSION: str = microstackd.__version__

_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?(?:[.+-]?[A-Za-z0-9.+-]*)?")
_API = re.compile(r"v(\d+)")


@dataclass(frozen=True, order=True)
class Release:
    """A version as the window compares it: major and minor (patch ignored)."""

    major: int
    minor: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"


def release(text: str) -> Release | None:
    """``"0.2.1"`` -> ``Release(0, 2)``; None when ``text`` is no version."""
    match = _VERSION.fullmatch(text.strip())
    if match is None:
        return None
    return Release(int(match[1]), int(match[2]))


def check_version(text: str, what: str) -> str:
    """``text`` when it is a version (for a flag); ``errors.InvalidArgument`` otherwise."""
    if release(text) is None:
        raise errors.InvalidArgument(
            f"{what} {text!r} is not a version (expected MAJOR.MINOR.PATCH, e.g. 0.2.0)"
        )
    return text.strip()


def oldest_allowed(control: Release) -> Release:
    """The oldest release a compute of a control at ``control`` may run."""
    return Release(control.major, max(0, control.minor - MINOR_BEHIND))


def check_member(node: str, software: Software, control_version: str) -> None:
    """Refuse (``errors.VersionSkew``) a member ``node`` that declares
    ``software`` outside the window of a control at ``control_version``."""
    version, api = software.version, software.api
    control = release(control_version)
    if control is None:  # our own version: a bug in the build, not the member's fault
        raise errors.ConfigError(f"the control's own version {control_version!r} is not a version")
    oldest = oldest_allowed(control)
    window = (
        f"computes run {control}" if oldest == control else f"computes run {oldest} or {control}"
    )
    member = release(version)
    if member is None:
        raise errors.VersionSkew(
            f"{node} did not declare a microstackd version it runs (a microstackd older than "
            f"versions declared, or a bad one: {version!r}); the control runs {control_version} "
            f"and {window}: upgrade microstackd on {node} to {control}"
        )
    member_api = _API.fullmatch(api.strip())
    own_api = _API.fullmatch(API_VERSION)
    assert own_api is not None
    if member_api is None or member_api[0] != own_api[0]:
        side = (
            "the control"
            if member_api is not None and int(member_api[1]) > int(own_api[1])
            else node
        )
        raise errors.VersionSkew(
            f"{node} speaks API {api or 'none'} (microstackd {version}), the control API "
            f"{API_VERSION} (microstackd {control_version}): upgrade microstackd on {side}"
        )
    if member > control:
        raise errors.VersionSkew(
            f"{node} runs microstackd {version}, newer than its control's {control_version}: "
            f"a compute may not be ahead of its control ({window}); upgrade the control first, "
            f"then {node}"
        )
    if member < oldest:
        raise errors.VersionSkew(
            f"{node} runs microstackd {version}, too old for a control at {control_version} "
            f"({window}: at most {MINOR_BEHIND} minor version behind); upgrade microstackd on "
            f"{node} to {control}"
        )
