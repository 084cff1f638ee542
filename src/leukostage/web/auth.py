"""Who is asking: Flask-Login sessions (the pages) and bearer tokens (the API), CSRF on cookie-authenticated writes,
and the login rate limit (the sign-in pages themselves are the ``login`` blueprint).

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

from flask import Flask, redirect, request, url_for
from flask_login import LoginManager, current_user
from flask_wtf.csrf import CSRFProtect

from ..cases.users import REVIEW_ROLES, user_for_token
from .context import transaction
from .responses import drain_refused_body, error_response

csrf = CSRFProtect()
LIMITER_KEY = "leukostage.limiter"
SECRET_FILE = "secret_key"
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


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

    with transaction() as session:
        user = session.get(User, int(user_id))
        return CurrentUser.of(user) if user is not None and user.active else None


def _load_token_user(req) -> CurrentUser | None:
    token = _bearer()
    if token is None:
        return None
    with transaction() as session:
        user = user_for_token(session, token)
        return CurrentUser.of(user, via_token=True) if user is not None else None


def _unauthorized():
    if request.path.startswith("/api/"):
        drain_refused_body()
        response, status = error_response(
            401,
            "unauthorized",
            "Sign in, or send a valid API token as 'Authorization: Bearer <token>' (`leukostage users token NAME`).",
        )
        response.headers["WWW-Authenticate"] = 'Bearer realm="leukostage"'
        return response, status
    return redirect(url_for("auth.login", next=request.full_path if request.query_string else request.path))


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
    """Sessions, Flask-Login, CSRF and the login rate limit for ``app`` (after ``context.init_app``, which settles
    the instance folder that keeps the session secret)."""
    from flask_limiter import Limiter
    from flask_limiter.util import get_remote_address

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
    # one limiter per app, in this process's memory (per gunicorn worker: N workers allow N x the limit)
    app.extensions[LIMITER_KEY] = Limiter(
        get_remote_address, app=app, storage_uri="memory://", enabled=app.config.get("RATELIMIT_ENABLED", True)
    )
