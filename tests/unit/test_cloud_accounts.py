"""A node's Keystone user (``cloud/accounts.py``) against a stand-in for
openstacksdk's identity proxy: exactly the roles asked on the project, a
stray assignment taken away, each lookup one request, and what is missing
named."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from microstackd.cloud import accounts
from microstackd.cloud.session import Failure


@dataclass
class _Identity:
    made: dict[str, Any] = field(default_factory=dict)
    grants: set[tuple[str, str, str]] = field(default_factory=set)  # (project, user, role)
    requests: list[str] = field(default_factory=list)
    roles_known: tuple[str, ...] = ("admin", "service", "member")

    def find_domain(self, name: str) -> Any:
        self.requests.append("GET domain")
        return SimpleNamespace(id="default") if name == "default" else None

    def projects(self, **query: str) -> list[Any]:
        self.requests.append("GET projects")
        assert query == {"name": "service", "domain_id": "default"}, query
        return [SimpleNamespace(id="p-service")]

    def roles(self, **query: str) -> list[Any]:
        self.requests.append("GET roles")
        return [SimpleNamespace(id=f"r-{n}", name=n) for n in self.roles_known]

    def users(self, **query: str) -> list[Any]:
        self.requests.append("GET users")
        user = self.made.get(query["name"])
        return [] if user is None else [user]

    def create_user(self, **attrs: Any) -> Any:
        self.requests.append("POST user")
        user = self.made[attrs["name"]] = SimpleNamespace(id="u-" + attrs["name"], **attrs)
        return user

    def update_user(self, user: Any, **attrs: Any) -> None:
        self.requests.append("PATCH user")
        vars(user).update(attrs)

    def role_assignments(self, user_id: str) -> list[Any]:
        self.requests.append("GET assignments")
        return [
            SimpleNamespace(role={"id": r}, scope={"project": {"id": p}})
            for p, u, r in sorted(self.grants)
            if u == user_id
        ]

    def assign_project_role_to_user(self, project: Any, user: Any, role: Any) -> None:
        self.requests.append("PUT grant")
        self.grants.add((project.id, user.id, role.id))

    def unassign_project_role_from_user(self, project: str, user: Any, role: str) -> None:
        self.requests.append("DELETE grant")
        self.grants.discard((project, user.id, role))


REQUEST = {"name": "compute-node-1", "password": "pw", "roles": ["admin", "service"]}
REQUEST |= {"project": "service", "description": "d"}


def test_a_new_user_gets_exactly_its_roles_in_one_request_per_lookup() -> None:
    idn = _Identity()
    assert accounts._ensure_user(SimpleNamespace(identity=idn), REQUEST) == "created"
    assert idn.grants == {("p-service", "u-compute-node-1", r) for r in ("r-admin", "r-service")}
    assert idn.made["compute-node-1"].password == "pw"
    # A new user has no assignment to read back.
    assert idn.requests == [
        "GET domain", "GET projects", "GET roles", "GET users", "POST user",
        "PUT grant", "PUT grant",
    ]  # fmt: skip


def test_an_existing_user_gets_the_new_password_and_loses_any_other_role() -> None:
    idn = _Identity()
    conn = SimpleNamespace(identity=idn)
    accounts._ensure_user(conn, REQUEST)
    idn.grants.add(("p-other", "u-compute-node-1", "r-member"))
    idn.requests.clear()
    assert accounts._ensure_user(conn, {**REQUEST, "password": "new"}) == "updated"
    assert idn.made["compute-node-1"].password == "new"
    assert idn.grants == {("p-service", "u-compute-node-1", r) for r in ("r-admin", "r-service")}
    assert "DELETE grant" in idn.requests and "GET assignments" in idn.requests


def test_a_missing_role_is_named() -> None:
    idn = _Identity(roles_known=("admin",))
    with pytest.raises(Failure, match="Keystone has no role 'service'"):
        accounts._ensure_user(SimpleNamespace(identity=idn), REQUEST)
    assert not idn.made
