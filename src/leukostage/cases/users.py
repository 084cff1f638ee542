"""Users, roles and API tokens.

Roles: ``technician`` creates cases and uploads fields; ``reviewer`` (a haematologist) also overrides, signs off and
amends; ``admin`` manages users (and may do what a reviewer does). Passwords are hashed with argon2id; bearer tokens
are random 256-bit strings of which only the SHA-256 is stored (a token has the entropy a password lacks, so a fast
hash is enough and lets a request find its user with one indexed lookup), valid for ``LEUKOSTAGE_TOKEN_DAYS`` days
(default 90). A user's ``session_epoch`` is part of each of their sessions: :func:`end_sessions` raises it, which
signs the user out everywhere; revoking their tokens does it too.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import UTC, datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from .config import token_days
from .models import NAME_MAX, ROLES, ApiToken, User, utcnow

REVIEW_ROLES = frozenset({"reviewer", "admin"})
UPLOAD_ROLES = frozenset({"technician", "reviewer", "admin"})
MIN_PASSWORD_CHARS = 8
USERNAME_RE = re.compile(rf"^[A-Za-z0-9._-]{{1,{NAME_MAX}}}$")
_hasher = PasswordHasher()


class UserError(ValueError):
    """A user request that cannot be done (the message says why and what to do)."""


class UserExists(UserError):
    """The name is taken (the message says by whom and how to change that account instead)."""


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def check_password(user: User, password: str) -> bool:
    try:
        return _hasher.verify(user.password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def add_user(session: Session, username: str, role: str, password: str) -> User:
    """Create a user.

    Raises:
        UserError: a bad name, an unknown role, a short password, or a name already taken.
    """
    if not USERNAME_RE.match(username):
        raise UserError(f"user name {username[:80]!r}: use 1-{NAME_MAX} letters, digits, '.', '_' or '-'")
    if role not in ROLES:
        raise UserError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
    if len(password) < MIN_PASSWORD_CHARS:
        raise UserError(f"the password must have at least {MIN_PASSWORD_CHARS} characters")
    taken = session.scalar(select(User).where(User.username == username))
    if taken is not None:
        state = "active" if taken.active else "disabled"
        raise UserExists(
            f"user {username!r} already exists ({taken.role}, {state}); change that account instead: "
            f"`leukostage users set {username} --role ROLE | --disable | --enable | --password-stdin`, "
            f"or the Users page"
        )
    user = User(username=username, role=role, password_hash=hash_password(password), active=True)
    session.add(user)
    session.flush()
    return user


def get_user(session: Session, username: str) -> User:
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise UserError(
            f"no user {username!r}; add one with `leukostage users add {username} --role ROLE --password-stdin`"
        )
    return user


def authenticate(session: Session, username: str, password: str) -> User | None:
    """The active user with this name and password, else None (the same answer whichever part was wrong)."""
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        _hasher.hash(password)  # spend the same time as a real check: no user enumeration by timing
        return None
    return user if user.active and check_password(user, password) else None


def issue_token(session: Session, user: User, days: int | None = None) -> str:
    """A new bearer token for ``user``, valid for ``days`` (default: ``config.token_days()``); returned once, only
    its hash is kept (:func:`token_expiry` says until when it is valid)."""
    token = secrets.token_urlsafe(32)
    valid_days = token_days() if days is None else days
    if valid_days < 1:
        raise UserError(f"a token must be valid for at least 1 day, not {valid_days}")
    expires = utcnow() + timedelta(days=valid_days)
    session.add(ApiToken(user_id=user.id, token_hash=hash_token(token), expires_at=expires))
    session.flush()
    return token


def token_expiry(session: Session, token: str) -> datetime | None:
    """When ``token`` expires (UTC), or None for a token that was never issued."""
    expires = session.scalar(select(ApiToken.expires_at).where(ApiToken.token_hash == hash_token(token)))
    return _utc(expires) if expires is not None else None


def end_sessions(user: User) -> None:
    """Sign ``user`` out of every session on every node (the next request of each is refused): call it when the
    account is disabled, its password reset or its tokens revoked."""
    user.session_epoch = (user.session_epoch or 0) + 1


def revoke_tokens(session: Session, user: User) -> int:
    """Revoke every live token of ``user`` and end their sessions; returns how many tokens."""
    result = session.execute(
        update(ApiToken).where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None)).values(revoked_at=utcnow())
    )
    end_sessions(user)
    return result.rowcount or 0


def user_for_token(session: Session, token: str) -> User | None:
    """The active user a live (not revoked, not expired) token belongs to, else None."""
    row = session.scalar(
        select(ApiToken).where(ApiToken.token_hash == hash_token(token), ApiToken.revoked_at.is_(None))
    )
    if row is None or _utc(row.expires_at) <= utcnow():
        return None
    return row.user if row.user.active else None


def _utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes: they were written as UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
