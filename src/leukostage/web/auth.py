"""Who is asking: Flask-Login sessions (the pages) and bearer tokens (the API), CSRF on cookie-authenticated writes,
the session secret and the sign-in limits (the sign-in pages themselves are the ``login`` blueprint).

A request with an ``Authorization`` header is authenticated by its token alone (the session cookie is ignored), and
needs no CSRF token: a cross-site page cannot set that header. Every other state-changing request that rides on the
session cookie must carry the Flask-WTF token (form field ``csrf_token`` or header ``X-CSRFToken``). The login form
always needs it. Session cookies are HttpOnly and SameSite=Lax, and Secure with ``LEUKOSTAGE_SESSION_COOKIE_SECURE``
(behind HTTPS). A session names its user and the user's session epoch: raising the epoch (tokens revoked, account
disabled: ``users.end_sessions``) ends every session of that user on every node. Usernames are logged on failed
logins; nothing about patients is logged anywhere here.

The session key is ``LEUKOSTAGE_SECRET_KEY`` (at least 32 bytes) when set; otherwise, on PostgreSQL, one kept in the
database (every app node signs with it), and on SQLite the instance's ``secret_key`` file, created once with mode
0600. Failed sign-ins are counted in the database (``cases.shared``), per account and per client address.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from flask import Flask, redirect, request, url_for
from flask_login import LoginManager, current_user
from flask_wtf.csrf import CSRFProtect

from ..cases import db
from ..cases.config import check_secret_key, is_postgresql
from ..cases.shared import shared_secret
from ..cases.users import REVIEW_ROLES, user_for_token
from .context import transaction
from .responses import drain_refused_body, error_response

csrf = CSRFProtect()
SECRET_FILE = "secret_key"
SECRET_FILE_MODE = 0o600
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True)
class CurrentUser:
    """The signed-in user, detached from any database session (what Flask-Login keeps for a request)."""

    id: int
    username: str
    role: str
    via_token: bool = False
    epoch: int = 0  # the user's session epoch when this session began
    is_authenticated: bool = True
    is_active: bool = True
    is_anonymous: bool = False

    @property
    def can_review(self) -> bool:
        return self.role in REVIEW_ROLES

    def get_id(self) -> str:
        """What the session keeps: the user and their session epoch (a raised epoch ends the session)."""
        return f"{self.id}:{self.epoch}"

    @classmethod
    def of(cls, user, via_token: bool = False) -> CurrentUser:
        return cls(user.id, user.username, user.role, via_token, user.session_epoch or 0)


def _bearer() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _load_session_user(session_id: str) -> CurrentUser | None:
    """The session's user, while the account is active and its session epoch is the one the session began with."""
    user_id, _, epoch = session_id.partition(":")
    if "Authorization" in request.headers or not user_id.isdigit() or not epoch.isdigit():
        return None  # a request with a token is judged by the token alone; an old-style session signs in again
    from ..cases.models import User

    with transaction() as session:
        user = session.get(User, int(user_id))
        current = user is not None and user.active and (user.session_epoch or 0) == int(epoch)
        return CurrentUser.of(user) if current else None


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


def secret_file(instance: Path) -> str:
    """The instance's session secret (SQLite deployments), created once.

    The file is created with mode 0600 by ``os.open`` itself (``O_CREAT | O_EXCL``), so it is never readable by
    others, not even for a moment, and filled under a temporary name before ``os.link`` gives it its real one: an
    atomic rename that never replaces an existing file, so every gunicorn worker ends up reading the same secret
    (a worker that loses the race reads the winner's).
    """
    path = instance / SECRET_FILE
    if not path.is_file():
        instance.mkdir(parents=True, exist_ok=True)
        tmp = instance / f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, SECRET_FILE_MODE)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    return path.read_text().strip()


def session_secret(config: dict) -> str:
    """The key sessions are signed with: ``SECRET_KEY`` ($LEUKOSTAGE_SECRET_KEY) if set, else the database's shared
    one (PostgreSQL: every node), else the instance's file (SQLite).

    Raises:
        ValueError: a configured key shorter than 32 bytes (``config.check_secret_key``).
    """
    if config.get("SECRET_KEY"):
        return check_secret_key(config["SECRET_KEY"])
    if is_postgresql(config["DATABASE_URL"]):
        with db.session_scope(config["DATABASE_URL"]) as session:
            return shared_secret(session)
    return secret_file(Path(config["INSTANCE"]))


def init_auth(app: Flask) -> None:
    """Sessions, Flask-Login, CSRF and the sign-in limits for ``app`` (after ``context.init_app``, which settles
    the database and the instance folder that keep the session secret).

    Raises:
        ValueError: ``SECRET_KEY`` ($LEUKOSTAGE_SECRET_KEY) is shorter than 32 bytes.
    """
    app.config["SECRET_KEY"] = session_secret(app.config)
    app.config["SESSION_COOKIE_HTTPONLY"] = True
    app.config["SESSION_COOKIE_SAMESITE"] = app.config.get("SESSION_COOKIE_SAMESITE") or "Lax"  # Flask's is None
    app.config["REMEMBER_COOKIE_SECURE"] = app.config["SESSION_COOKIE_SECURE"]
    app.config["WTF_CSRF_CHECK_DEFAULT"] = False  # checked by protect_writes, where a session cookie authenticates
    app.config.setdefault("WTF_CSRF_TIME_LIMIT", None)  # valid for the session's life
    login = LoginManager()
    login.user_loader(_load_session_user)
    login.request_loader(_load_token_user)
    login.unauthorized_handler(_unauthorized)
    login.init_app(app)
    csrf.init_app(app)
