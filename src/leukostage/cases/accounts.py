"""User administration, for the admin's Users page, the ``/api/v1/users`` API and the ``leukostage users`` verbs:
list, create, change role, disable or enable, reset a password. Admin only; every change is an audit event (no case,
the account in ``detail``); no password or hash ever leaves this module.

Two guards keep a laboratory from locking itself out: the last active admin can be neither disabled nor given
another role, and nobody disables their own account. A disabled account keeps its name, role and history; its
sign-ins and tokens are refused (``users.authenticate``, ``users.user_for_token``) until it is enabled again.
Disabling an account, resetting its password or changing its role also ends its sessions on every app node
(``users.end_sessions``): the next request of each signs in again, with the new password and role.

``actor`` is the signed-in admin, or None for the command line (the operator of the server, trusted like its shell;
its events are recorded with no user and ``via: "cli"``).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .models import ROLES, User
from .service import Conflict, InvalidInput, NotFound, iso, record, require_role
from .users import MIN_PASSWORD_CHARS, UserError, UserExists, add_user, end_sessions, hash_password

ADMIN_ROLES = frozenset({"admin"})
CHANGES = ("role", "disabled", "password")  # what PATCH /api/v1/users/<username> may change


def user_dict(user: User) -> dict:
    """An account as the API and the page show it (never the password hash)."""
    return {
        "username": user.username,
        "role": user.role,
        "disabled": not user.active,
        "created_at": iso(user.created_at),
    }


def _admin(actor: User | None, what: str) -> None:
    if actor is not None:
        require_role(actor, ADMIN_ROLES, what)


def _record(session: Session, action: str, actor: User | None, **detail: Any) -> None:
    record(session, action, actor, None, **detail, **({"via": "cli"} if actor is None else {}))


def list_users(session: Session, actor: User | None) -> list[dict]:
    """Every account, by name."""
    _admin(actor, "list users")
    return [user_dict(u) for u in session.scalars(select(User).order_by(User.username))]


def create_user(session: Session, actor: User | None, body: Any) -> dict:
    """A new account from ``{"username", "role", "password"}``.

    Raises Forbidden, InvalidInput (a bad name, role or short password), Conflict (the name is taken).
    """
    _admin(actor, "create users")
    if not isinstance(body, dict):
        raise InvalidInput('send a JSON object: {"username": str, "role": str, "password": str}', "bad_json")
    values = {}
    for key in ("username", "role", "password"):
        value = body.get(key)
        if not isinstance(value, str) or not value:
            raise InvalidInput(f"'{key}' is required: a non-empty string", "missing_field")
        values[key] = value
    try:
        user = add_user(session, values["username"], values["role"], values["password"])
    except UserExists as exc:
        raise Conflict(str(exc), "user_exists") from None
    except UserError as exc:
        raise InvalidInput(str(exc), "invalid_field") from None
    _record(session, "user_created", actor, username=user.username, role=user.role)
    return user_dict(user)


def get_account(session: Session, username: str) -> User:
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise NotFound(f"no user {username[:80]!r}", "unknown_user")
    return user


def _last_admin(session: Session, user: User) -> bool:
    if user.role != "admin" or not user.active:
        return False
    admins = session.scalar(select(func.count(User.id)).where(User.role == "admin", User.active.is_(True)))
    return (admins or 0) <= 1


def update_user(session: Session, actor: User | None, username: str, body: Any) -> dict:
    """Change an account: any of ``{"role": str, "disabled": bool, "password": str}``; returns it as it now is.

    Raises Forbidden, NotFound (no such user), InvalidInput (nothing or something unknown to change, a bad value),
    Conflict (the last active admin, or one's own account disabled).
    """
    _admin(actor, "change users")
    user = get_account(session, username)
    if not isinstance(body, dict) or not body:
        raise InvalidInput(f"send a JSON object with any of {', '.join(CHANGES)}", "bad_json")
    unknown = sorted(set(body) - set(CHANGES))
    if unknown:
        raise InvalidInput(f"cannot change {unknown[0]!r}; send any of {', '.join(CHANGES)}", "invalid_field")
    role, disabled, password = body.get("role"), body.get("disabled"), body.get("password")
    if role is not None and role not in ROLES:
        raise InvalidInput(f"unknown role {str(role)[:40]!r}; expected one of {', '.join(ROLES)}", "invalid_field")
    if disabled is not None and not isinstance(disabled, bool):
        raise InvalidInput("'disabled' must be true or false", "invalid_field")
    if password is not None and (not isinstance(password, str) or len(password) < MIN_PASSWORD_CHARS):
        raise InvalidInput(f"the password must have at least {MIN_PASSWORD_CHARS} characters", "invalid_field")
    losing_admin = (role is not None and role != "admin") or disabled is True
    if losing_admin and _last_admin(session, user):
        raise Conflict(
            f"{user.username} is the last active admin; make another admin first, or nobody could manage users",
            "last_admin",
        )
    if disabled is True and actor is not None and actor.id == user.id:
        raise Conflict("you cannot disable your own account; another admin can", "own_account")
    signed_out = False  # a change that must not outlive a session opened before it
    if role is not None and role != user.role:
        _record(session, "role_changed", actor, username=user.username, role_before=user.role, role=role)
        user.role = role
        signed_out = True
    if disabled is not None and disabled == user.active:
        user.active = not disabled
        _record(session, "user_disabled" if disabled else "user_enabled", actor, username=user.username)
        signed_out = signed_out or disabled
    if password is not None:
        user.password_hash = hash_password(password)
        _record(session, "password_reset", actor, username=user.username)
        signed_out = True
    if signed_out:
        end_sessions(user)
    session.flush()
    return user_dict(user)
