"""Who is asking: Flask-Login sessions (the pages) and bearer tokens (the API), CSRF on cookie-authenticated writes,
and a rate-limited login form.

A request with an ``Authorization`` header is authenticated by its token alone (the session cookie is ignored), and
needs no CSRF token: a cross-site page cannot set that header. Every other state-changing request that rides on the
session cookie must carry the Flask-WTF token (form field ``csrf_token`` or header ``X-CSRFToken``). The login form
always needs it. Session cookies are HttpOnly and SameSite=Lax. Usernames are logged on failed logins; nothing about
patients is logged anywhere here.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from flask import Blueprint, Flask, current_app, g, redirect, render_template, render_template_string, request, url_for
from flask_login import LoginManager, current_user, login_user, logout_user
from flask_wtf.csrf import CSRFError, CSRFProtect

from ..cases import db
from ..cases.users import REVIEW_ROLES, authenticate, user_for_token
from .responses import _drain_refused_body, error_response

bp = Blueprint("auth", __name__)
csrf = CSRFProtect()
LIMITER_KEY = "leukostage.limiter"
SECRET_FILE = "secret_key"
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

LOGIN_FORM = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Sign in - leukostage</title>
<link rel="stylesheet" href="{{ url_for('static', filename='style.css') }}"></head><body><main>
<h1>Sign in</h1>{% if error %}<p role="alert">{{ error }}</p>{% endif %}
<form method="post" action="{{ url_for('auth.login') }}">
<input type="hidden" name="csrf_token" value="{{ csrf_token() }}"><input type="hidden" name="next" value="{{ next }}">
<label>User name <input name="username" autocomplete="username" required></label>
<label>Password <input name="password" type="password" autocomplete="current-password" required></label>
<button type="submit">Sign in</button></form></main></body></html>"""


@dataclass(frozen=True)
class CurrentUser:
    """The signed-in user, detached from any database session (what Flask-Login keeps for a request)."""

    id: int
    username: str
    role: str
    via_token: bool = False
    is_authenticated: bool = True
    is_active: bool = True
    is_anonymous: bool = False

    @property
    def can_review(self) -> bool:
        return self.role in REVIEW_ROLES

    def get_id(self) -> str:
        return str(self.id)

    @classmethod
    def of(cls, user, via_token: bool = False) -> CurrentUser:
        return cls(user.id, user.username, user.role, via_token)


def _bearer() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _load_session_user(user_id: str) -> CurrentUser | None:
    if "Authorization" in request.headers or not user_id.isdigit():
        return None  # a request with a token is judged by the token alone
    from ..cases.models import User

    with db.session_scope(current_app.config["DATABASE_URL"]) as session:
        user = session.get(User, int(user_id))
        return CurrentUser.of(user) if user is not None and user.active else None


def _load_token_user(req) -> CurrentUser | None:
    token = _bearer()
    if token is None:
        return None
    with db.session_scope(current_app.config["DATABASE_URL"]) as session:
        user = user_for_token(session, token)
        return CurrentUser.of(user, via_token=True) if user is not None else None


def _unauthorized():
    if request.path.startswith("/api/"):
        _drain_refused_body()
        response, status = error_response(
            401,
            "unauthorized",
            "Sign in, or send a valid API token as 'Authorization: Bearer <token>' (`leukostage users token NAME`).",
        )
        response.headers["WWW-Authenticate"] = 'Bearer realm="leukostage"'
        return response, status
    return redirect(url_for("auth.login", next=request.full_path if request.query_string else request.path))


def _csrf_failed(exc: CSRFError):
    _drain_refused_body()
    return error_response(
        400,
        "csrf_failed",
        f"{exc.description} Reload the page and try again; API clients send "
        "'Authorization: Bearer <token>' instead of the session cookie.",
    )


def protect_writes() -> None:
    """``before_request`` for blueprints with session-authenticated writes: CSRF unless a token authenticates."""
    if request.method in WRITE_METHODS and "Authorization" not in request.headers and current_user.is_authenticated:
        csrf.protect()


def _secret_key(instance: Path) -> str:
    """The instance's session secret, created once (atomically: every gunicorn worker must read the same one)."""
    path = instance / SECRET_FILE
    if not path.is_file():
        instance.mkdir(parents=True, exist_ok=True)
        tmp = instance / f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
        tmp.write_text(secrets.token_hex(32))
        tmp.chmod(0o600)
        try:
            os.link(tmp, path)  # fails if another worker won the race; then read theirs
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    return path.read_text().strip()


def init_auth(app: Flask) -> None:
    """Sessions, Flask-Login, CSRF and the login rate limit for ``app``."""
    from flask_limiter import Limiter
    from flask_limiter.util import get_remote_address

    from ..cases.config import instance_dir

    app.config.setdefault("INSTANCE", str(instance_dir()))
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = _secret_key(Path(app.config["INSTANCE"]))
    app.config["SESSION_COOKIE_HTTPONLY"] = True
    app.config["SESSION_COOKIE_SAMESITE"] = app.config.get("SESSION_COOKIE_SAMESITE") or "Lax"  # Flask's is None
    app.config.setdefault("LOGIN_RATE_LIMIT", "10 per minute")
    app.config["WTF_CSRF_CHECK_DEFAULT"] = False  # checked by protect_writes, where a session cookie authenticates
    app.config.setdefault("WTF_CSRF_TIME_LIMIT", None)  # valid for the session's life
    login = LoginManager()
    login.user_loader(_load_session_user)
    login.request_loader(_load_token_user)
    login.unauthorized_handler(_unauthorized)
    login.init_app(app)
    csrf.init_app(app)
    app.register_error_handler(CSRFError, _csrf_failed)
    # one limiter per app, in this process's memory (per gunicorn worker: N workers allow N x the limit)
    app.extensions[LIMITER_KEY] = Limiter(
        get_remote_address, app=app, storage_uri="memory://", enabled=app.config.get("RATELIMIT_ENABLED", True)
    )
    app.register_blueprint(bp)


def _safe_next(target: str | None) -> str:
    """Only same-site paths: no open redirect through ``next``."""
    if not target or not target.startswith("/") or target.startswith("//") or urlsplit(target).netloc:
        return url_for("cases_pages.case_list") if "cases_pages.case_list" in current_app.view_functions else "/"
    return target


def _login_page(error: str | None = None, status: int = 200):
    context = {"error": error, "next": request.values.get("next", "")}
    if "login.html" in current_app.jinja_env.list_templates():
        return render_template("login.html", **context), status
    return render_template_string(LOGIN_FORM, **context), status


@bp.get("/login")
def login_form():
    return _login_page()


@bp.post("/login")
def login():
    """Check the form (CSRF first, then the rate limit per client address), sign in, go to ``next``."""
    csrf.protect()
    with current_app.extensions[LIMITER_KEY].limit(current_app.config["LOGIN_RATE_LIMIT"], scope="login"):
        username = request.form.get("username", "")[:64]
        password = request.form.get("password", "")
        with db.session_scope(current_app.config["DATABASE_URL"]) as session:
            user = authenticate(session, username, password)
            signed_in = CurrentUser.of(user) if user is not None else None
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
