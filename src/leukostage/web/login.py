"""The sign-in pages: the login form (CSRF first, then the limits on failed sign-ins) and sign-out.

Failed sign-ins are counted in the database per account and per client address (``cases.shared``), so every worker
and every app node applies one limit: ``LOGIN_MAX_FAILURES`` per account and ``LOGIN_MAX_FAILURES_PER_ADDRESS`` per
address within ``LOGIN_WINDOW_S``; past either, 429 with ``Retry-After`` and the password is not even checked. The
client address is ``request.remote_addr``: behind reverse proxies, ``TRUSTED_PROXIES`` (Werkzeug's ``ProxyFix``,
see ``create_app``) makes it the client's rather than the proxy's.

The blueprint keeps the name ``auth`` (endpoints ``auth.login``, ``auth.login_form``, ``auth.logout``); who is asking
and the CSRF rule are :mod:`.auth`'s.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, current_app, g, redirect, render_template, render_template_string, request, url_for
from flask_login import current_user, login_user, logout_user

from ..cases import shared
from ..cases.users import authenticate
from .auth import CurrentUser, csrf
from .context import transaction

bp = Blueprint("auth", __name__)

LOGIN_FORM = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Sign in - leukostage</title>
<link rel="stylesheet" href="{{ url_for('static', filename='style.css') }}"></head><body><main>
<h1>Sign in</h1>{% if error %}<p role="alert">{{ error }}</p>{% endif %}
<form method="post" action="{{ url_for('auth.login') }}">
<input type="hidden" name="csrf_token" value="{{ csrf_token() }}"><input type="hidden" name="next" value="{{ next }}">
<label>User name <input name="username" autocomplete="username" required></label>
<label>Password <input name="password" type="password" autocomplete="current-password" required></label>
<button type="submit">Sign in</button></form></main></body></html>"""


def _safe_next(target: str | None) -> str:
    """Only same-site paths: no open redirect through ``next``."""
    if not target or not target.startswith("/") or target.startswith("//") or urlsplit(target).netloc:
        return url_for("cases_pages.case_list") if "cases_pages.case_list" in current_app.view_functions else "/"
    return target


def _login_page(error: str | None = None, status: int = 200, headers: dict | None = None):
    context = {"error": error, "next": request.values.get("next", "")}
    if "login.html" in current_app.jinja_env.list_templates():
        return render_template("login.html", **context), status, headers or {}
    return render_template_string(LOGIN_FORM, **context), status, headers or {}


def _wait_text(seconds: int) -> str:
    return f"{seconds} seconds" if seconds < 120 else f"{-(-seconds // 60)} minutes"


@bp.get("/login")
def login_form():
    return _login_page()


@bp.post("/login")
def login():
    """Check the form (CSRF first, then the failed sign-ins of the account and the address), sign in, go to
    ``next``."""
    csrf.protect()
    config = current_app.config
    username = request.form.get("username", "")[:64]
    password = request.form.get("password", "")
    address = request.remote_addr or "unknown"
    window = float(config["LOGIN_WINDOW_S"])
    with transaction() as session:
        wait = shared.login_blocked(
            session,
            username,
            address,
            window,
            int(config["LOGIN_MAX_FAILURES"]),
            int(config["LOGIN_MAX_FAILURES_PER_ADDRESS"]),
        )
        if wait is not None:
            signed_in = None
        else:
            user = authenticate(session, username, password)
            signed_in = CurrentUser.of(user) if user is not None else None
            if signed_in is None:
                shared.record_login_failure(session, username, address, window)
            else:
                shared.clear_login_failures(session, username)
    if wait is not None:
        current_app.logger.info("sign-in refused: too many failures for user name %r or its address", username)
        message = f"Too many failed sign-ins for this account or from this address; try again in {_wait_text(wait)}."
        return _login_page(message, 429, {"Retry-After": str(wait)})
    if signed_in is None:
        current_app.logger.info("failed login for user name %r", username)
        return _login_page("Wrong user name or password.", 401)
    login_user(signed_in)
    g.pop("_login_user", None)
    return redirect(_safe_next(request.form.get("next")))


@bp.post("/logout")
def logout():
    if current_user.is_authenticated and not getattr(current_user, "via_token", False):
        csrf.protect()
    logout_user()
    return redirect(url_for("auth.login_form"))
