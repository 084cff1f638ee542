"""User administration: the admin's Users page and the ``/api/v1/users`` API, thin views over
:mod:`leukostage.cases.accounts` (which checks the role, guards the last admin and records every change).

API: ``GET /api/v1/users`` lists, ``POST /api/v1/users`` ``{"username", "role", "password"}`` creates (409
``user_exists`` for a name taken), ``PATCH /api/v1/users/<username>`` with any of ``{"role"}``, ``{"disabled": bool}``,
``{"password"}`` changes. The page does the same with plain forms (CSRF token in each), so it needs no script. Only an
admin gets either: 401 without a session or token, 403 for another role.
"""

from __future__ import annotations

from flask import Blueprint, jsonify, redirect, render_template, request, url_for
from flask_login import current_user, login_required, login_user

from ..cases import accounts, service
from ..cases.models import ROLES
from ..cases.users import MIN_PASSWORD_CHARS
from ..reports.content import show_time
from .auth import CurrentUser, protect_writes
from .context import transaction
from .frame import chrome
from .responses import ApiError

bp = Blueprint("users", __name__)
bp.before_request(protect_writes)

PAGE_ACTIONS = ("role", "disable", "enable", "password")  # the page's per-account forms


def _update(username: str, changes: dict) -> dict:
    """``accounts.update_user`` in one transaction. A change to an account ends its sessions everywhere; an admin
    who changed their own account through this session stays signed in, under the new session epoch."""
    with transaction() as s:
        changed = accounts.update_user(s, current_user, username, changes)
        if username == current_user.username and not current_user.via_token:
            login_user(CurrentUser.of(accounts.get_account(s, username)))
    return changed


def _json_body() -> dict:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(400, "bad_json", "Send a JSON object with Content-Type: application/json.")
    return body


@bp.get("/api/v1/users")
@login_required
def list_users():
    with transaction() as s:
        return jsonify({"users": accounts.list_users(s, current_user)})


@bp.post("/api/v1/users")
@login_required
def create_user():
    service.require_role(current_user, accounts.ADMIN_ROLES, "create users")  # 403 before the body is read
    with transaction() as s:
        return jsonify(accounts.create_user(s, current_user, _json_body())), 201


@bp.patch("/api/v1/users/<username>")
@login_required
def update_user(username: str):
    service.require_role(current_user, accounts.ADMIN_ROLES, "change users")
    return jsonify(_update(username, _json_body()))


# --- the page --------------------------------------------------------------------------------------------------------


def _page(status: int = 200, error: str | None = None, form: dict | None = None, saved: str | None = None):
    with transaction() as s:
        people = accounts.list_users(s, current_user)
    return (
        render_template(
            "users.html",
            people=people,
            roles=ROLES,
            error=error,
            form=form or {},
            saved=saved,
            min_password=MIN_PASSWORD_CHARS,
            show_time=show_time,
            **chrome(),
        ),
        status,
    )


def _error_page(exc: service.ServiceError):
    return render_template("cases/error.html", status=exc.status, message=exc.message, **chrome()), exc.status


@bp.get("/users")
@login_required
def user_list():
    try:
        return _page(saved=request.args.get("saved"))
    except service.Forbidden as exc:
        return _error_page(exc)


@bp.post("/users")
@login_required
def user_create():
    form = {k: request.form.get(k, "") for k in ("username", "role", "password")}
    try:
        with transaction() as s:
            name = accounts.create_user(s, current_user, form)["username"]
    except service.Forbidden as exc:
        return _error_page(exc)
    except service.ServiceError as exc:
        return _page(exc.status, exc.message, {**form, "password": ""})
    return redirect(url_for("users.user_list", saved=name), 303)


@bp.post("/users/<username>")
@login_required
def user_change(username: str):
    action = request.form.get("action", "")
    changes = {
        "role": {"role": request.form.get("role", "")},
        "disable": {"disabled": True},
        "enable": {"disabled": False},
        "password": {"password": request.form.get("password", "")},
    }.get(action)
    try:
        if changes is None:
            raise service.InvalidInput(f"unknown action {action[:40]!r}; expected one of {', '.join(PAGE_ACTIONS)}")
        _update(username, changes)
    except service.Forbidden as exc:
        return _error_page(exc)
    except service.NotFound as exc:
        return _error_page(exc)
    except service.ServiceError as exc:
        return _page(exc.status, f"{username}: {exc.message}")
    return redirect(url_for("users.user_list", saved=username), 303)
