"""Keystone users of one node, through openstacksdk with the control's admin
cloud:

    node-user         create NAME (or give the existing one its new password),
                      in the default domain, with exactly the roles ROLES
                      on the project PROJECT, and no other role anywhere
    delete-node-user  delete NAME (Keystone revokes its tokens with it)
    user-password     give the existing user NAME (a service user) a new
                      password (Keystone revokes its tokens with it)

Passwords come in the request and go nowhere else: not into a result, a
progress note or a log line.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from microstackd.cloud.session import Failure, Session


def _domain(conn: Any) -> Any:
    domain = conn.identity.find_domain("default") or conn.identity.find_domain("Default")
    if domain is None:
        raise Failure("Keystone has no default domain")
    return domain


def _ensure_user(conn: Any, req: Mapping[str, Any]) -> str:
    """One request per lookup (a listing filtered by name: openstacksdk's
    ``find_*`` tries the name as an id first, two requests each), and the
    assignments read back only for a user that may have some: a join's
    issue-config waits on each of these, on Keystone's two workers."""
    idn = conn.identity
    domain = _domain(conn)
    project = next(iter(idn.projects(name=req["project"], domain_id=domain.id)), None)
    if project is None:
        raise Failure(f"Keystone has no project {req['project']!r} (the control's identity step)")
    known = {role.name: role for role in idn.roles()}
    missing = [name for name in req["roles"] if name not in known]
    if missing:
        raise Failure(f"Keystone has no role {missing[0]!r} (the control's identity step)")
    roles = [known[name] for name in req["roles"]]
    wanted = {role.id for role in roles}
    user = next(iter(idn.users(name=req["name"], domain_id=domain.id)), None)
    if user is None:
        how = "created"
        user = idn.create_user(
            name=req["name"],
            password=req["password"],
            domain_id=domain.id,
            default_project_id=project.id,
            description=req.get("description", ""),
            is_enabled=True,
        )
    else:
        how = "updated"
        idn.update_user(user, password=req["password"], is_enabled=True)
        # Exactly these roles on the project: whatever else it was given goes.
        for assignment in idn.role_assignments(user_id=user.id):
            scope = assignment.scope or {}
            granted = (assignment.role or {}).get("id")
            on = (scope.get("project") or {}).get("id")
            if granted in wanted and on == project.id:
                continue
            if on is not None and granted is not None:
                idn.unassign_project_role_from_user(on, user, granted)
    for role in roles:
        idn.assign_project_role_to_user(project, user, role)
    return how


async def node_user(s: Session, req: Mapping[str, Any]) -> dict[str, Any]:
    how = await s(lambda conn: _ensure_user(conn, req))
    roles = ", ".join(req["roles"])
    return {
        "user": req["name"],
        "message": f"Keystone user {req['name']} {how} (roles {roles} on {req['project']})",
    }


def _delete_user(conn: Any, name: str) -> bool:
    user = conn.identity.find_user(name, domain_id=_domain(conn).id)
    if user is None:
        return False
    conn.identity.delete_user(user)
    return True


async def delete_node_user(s: Session, req: Mapping[str, Any]) -> dict[str, Any]:
    deleted = await s(lambda conn: _delete_user(conn, req["name"]))
    return {
        "deleted": deleted,
        "message": (
            f"Keystone user {req['name']} deleted"
            if deleted
            else f"Keystone had no user {req['name']}"
        ),
    }


def _set_password(conn: Any, name: str, password: str) -> None:
    user = conn.identity.find_user(name, domain_id=_domain(conn).id)
    if user is None:
        raise Failure(f"Keystone has no user {name!r} (the control's identity step makes it)")
    conn.identity.update_user(user, password=password)


async def user_password(s: Session, req: Mapping[str, Any]) -> dict[str, Any]:
    await s(lambda conn: _set_password(conn, req["name"], req["password"]))
    return {"user": req["name"], "message": f"Keystone user {req['name']}: new password set"}
