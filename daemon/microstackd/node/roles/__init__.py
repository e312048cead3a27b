"""Roles as data: what each role of the cluster (``model.Role``) renders, runs
and sets up once. Adding a service to a role is one ``RoleService`` entry and
one template; no code path changes."""

from __future__ import annotations

from collections.abc import Mapping

from microstackd.model import Role
from microstackd.node.roles.compute import COMPUTE
from microstackd.node.roles.control import CONTROL
from microstackd.node.roles.parts import RoleDefinition

#: Every role's definition.
DEFINITIONS: Mapping[Role, RoleDefinition] = {Role.COMPUTE: COMPUTE, Role.CONTROL: CONTROL}
#: The roles a node's agent applies when the control asks; the control role is
#: the control's own, run by ``microstackd.control.plane`` as init's steps.
APPLIED_BY_AGENT = frozenset({Role.COMPUTE})

__all__ = ["APPLIED_BY_AGENT", "COMPUTE", "CONTROL", "DEFINITIONS", "RoleDefinition"]
