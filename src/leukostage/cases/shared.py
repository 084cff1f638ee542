"""What every gunicorn worker and every app node on one database must agree on, kept in that database: failed
sign-ins (per account and per client address) and the session signing key.

Counting failures in the database (one row per failure) makes the limit the same whichever worker or node answers:
N workers, or N nodes behind a load balancer, do not allow N times the attempts. The address is the client's as
the app sees it: behind a reverse proxy, ``LEUKOSTAGE_TRUSTED_PROXIES`` lets Werkzeug's ``ProxyFix`` take it from
``X-Forwarded-For`` (see ``web``).
"""

from __future__ import annotations

import math
import secrets
from datetime import UTC, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from .db import dialect_insert
from .models import AppSecret, LoginFailure, utcnow

ACCOUNT, ADDRESS = "account", "address"
KEY_MAX = 128  # LoginFailure.key
SESSION_SECRET = "session_secret"


def _recent(session: Session, scope: str, key: str, window_s: float) -> list:
    since = utcnow() - timedelta(seconds=window_s)
    return list(
        session.scalars(
            select(LoginFailure.at)
            .where(LoginFailure.scope == scope, LoginFailure.key == key[:KEY_MAX], LoginFailure.at > since)
            .order_by(LoginFailure.at)
        )
    )


def login_blocked(
    session: Session, account: str, address: str, window_s: float, per_account: int, per_address: int
) -> int | None:
    """Seconds until another sign-in may be tried, when ``account`` or ``address`` has had its limit of failures
    in the last ``window_s`` seconds; None when it may be tried now."""
    waits = []
    for scope, key, limit in ((ACCOUNT, account, per_account), (ADDRESS, address, per_address)):
        times = _recent(session, scope, key, window_s)
        if len(times) >= limit:
            oldest_that_counts = times[len(times) - limit]  # once it leaves the window, one more try is allowed
            at = oldest_that_counts if oldest_that_counts.tzinfo else oldest_that_counts.replace(tzinfo=UTC)
            waits.append(window_s - (utcnow() - at).total_seconds())
    return max(1, math.ceil(max(waits))) if waits else None


def record_login_failure(session: Session, account: str, address: str, window_s: float) -> None:
    """Count one failed sign-in against the account and the address (and forget failures older than the window)."""
    session.execute(delete(LoginFailure).where(LoginFailure.at <= utcnow() - timedelta(seconds=window_s)))
    session.add_all(
        [LoginFailure(scope=ACCOUNT, key=account[:KEY_MAX]), LoginFailure(scope=ADDRESS, key=address[:KEY_MAX])]
    )


def clear_login_failures(session: Session, account: str) -> None:
    """A successful sign-in forgets the account's failures (the address keeps its count)."""
    session.execute(delete(LoginFailure).where(LoginFailure.scope == ACCOUNT, LoginFailure.key == account[:KEY_MAX]))


def shared_secret(session: Session, name: str = SESSION_SECRET) -> str:
    """The secret ``name``, made by whichever node asks first (random, 256 bits) and read by all the others."""
    insert = dialect_insert(session)
    session.execute(
        insert(AppSecret).values(name=name, value=secrets.token_hex(32), created_at=utcnow()).on_conflict_do_nothing()
    )
    return session.scalar(select(AppSecret.value).where(AppSecret.name == name))


def failures(session: Session, scope: str, key: str) -> int:
    """How many failed sign-ins are on record for ``key`` (an account name or an address)."""
    return session.scalar(
        select(func.count(LoginFailure.id)).where(LoginFailure.scope == scope, LoginFailure.key == key[:KEY_MAX])
    )
