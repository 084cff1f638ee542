"""The case tables (SQLAlchemy 2, typed). The schema itself is created by the Alembic migrations in ``migrations/``.

A model's result is written once and never changed: a reviewer's correction is an ``Override`` row beside it, a
sign-off a ``Review``, a later change an ``Amendment``, a field taken out of a case an ``ImageRemoval`` (the image row
and its stored bytes stay, for the audit trail); ``AuditEvent`` rows are append-only (the database refuses UPDATE,
DELETE and, on PostgreSQL, TRUNCATE on them: see the migrations).

What several app nodes share lives here too: field images (``ImageBlob``, the database image store), failed sign-ins
(``LoginFailure``) and the session secret (``AppSecret``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

ROLES = ("technician", "reviewer", "admin")
CASE_STATUSES = ("open", "signed_off", "amended")
ACCESSION_MAX = 64
NAME_MAX = 64
FILENAME_MAX = 255  # the client's file name, metadata only (web.uploads.MAX_NAME_CHARS)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, datetime: DateTime(timezone=True)}


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(NAME_MAX), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # part of every session's user id: raising it ends every session of the user (tokens revoked, account disabled)
    session_epoch: Mapped[int] = mapped_column(Integer, default=0)

    tokens: Mapped[list[ApiToken]] = relationship(back_populates="user")


class ApiToken(Base):
    """A bearer token; only its SHA-256 is stored (the token is shown once, by ``leukostage users token``)."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    expires_at: Mapped[datetime] = mapped_column()

    user: Mapped[User] = relationship(back_populates="tokens")


class Case(Base):
    __tablename__ = "cases"

    id: Mapped[int] = mapped_column(primary_key=True)
    accession: Mapped[str] = mapped_column(String(ACCESSION_MAX), unique=True)
    patient_ref: Mapped[str | None] = mapped_column(String(255), default=None)
    note: Mapped[str | None] = mapped_column(Text, default=None)
    status: Mapped[str] = mapped_column(String(16), default="open", index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    created_by_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))

    created_by: Mapped[User] = relationship()
    images: Mapped[list[Image]] = relationship(back_populates="case", order_by="Image.id")
    review: Mapped[Review | None] = relationship(back_populates="case")
    amendments: Mapped[list[Amendment]] = relationship(order_by="Amendment.id")


class Image(Base):
    """One uploaded field: where its bytes are (``sha256`` in the image store) and who sent it."""

    __tablename__ = "images"

    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), index=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    filename: Mapped[str] = mapped_column(String(FILENAME_MAX))
    size_bytes: Mapped[int] = mapped_column(Integer)
    width: Mapped[int | None] = mapped_column(default=None)
    height: Mapped[int | None] = mapped_column(default=None)
    uploaded_at: Mapped[datetime] = mapped_column(default=utcnow)
    uploaded_by_id: Mapped[int] = mapped_column(ForeignKey("users.id"))

    case: Mapped[Case] = relationship(back_populates="images")
    uploaded_by: Mapped[User] = relationship()
    result: Mapped[Result] = relationship(back_populates="image")
    overrides: Mapped[list[Override]] = relationship(order_by="Override.id")
    removal: Mapped[ImageRemoval | None] = relationship(back_populates="image")


class ImageRemoval(Base):
    """A field taken out of its case before sign-off (a mistaken upload), with who, when and why. At most one per
    image; a removed field no longer counts, and its row and bytes are kept."""

    __tablename__ = "image_removals"

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), unique=True)
    reason: Mapped[str] = mapped_column(Text)
    by_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    at: Mapped[datetime] = mapped_column(default=utcnow)

    image: Mapped[Image] = relationship(back_populates="removal")
    by: Mapped[User] = relationship()


class Result(Base):
    """The model's answer for one image, exactly as ``/api/v1/predict`` gives it (``payload``); never updated."""

    __tablename__ = "results"

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), unique=True)
    valid: Mapped[bool] = mapped_column(Boolean)
    label: Mapped[str | None] = mapped_column(String(32), default=None)  # class key or "uncertain"
    code: Mapped[str | None] = mapped_column(String(64), default=None)  # the validator's code when refused
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column()

    image: Mapped[Image] = relationship(back_populates="result")


class Review(Base):
    """The reviewer's sign-off: one per case (a second one is a conflict; later changes are amendments)."""

    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), unique=True)
    final_call: Mapped[str] = mapped_column(String(32))
    comment: Mapped[str] = mapped_column(Text, default="")
    reviewer_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    signed_off_at: Mapped[datetime] = mapped_column(default=utcnow)

    case: Mapped[Case] = relationship(back_populates="review")
    reviewer: Mapped[User] = relationship()


class Override(Base):
    """A reviewer's label for one image, beside the model's result (the latest row for an image is in force)."""

    __tablename__ = "overrides"

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), index=True)
    label: Mapped[str] = mapped_column(String(32))
    by_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    at: Mapped[datetime] = mapped_column(default=utcnow)

    by: Mapped[User] = relationship()


class Amendment(Base):
    __tablename__ = "amendments"

    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), index=True)
    reason: Mapped[str] = mapped_column(Text)
    final_call: Mapped[str | None] = mapped_column(String(32), default=None)
    comment: Mapped[str | None] = mapped_column(Text, default=None)
    by_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    at: Mapped[datetime] = mapped_column(default=utcnow)

    by: Mapped[User] = relationship()


class AuditEvent(Base):
    """Who did what to which case, when. Append-only: the database rejects UPDATE and DELETE (triggers)."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id"), index=True, default=None)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), default=None)
    username: Mapped[str | None] = mapped_column(String(NAME_MAX), default=None)
    action: Mapped[str] = mapped_column(String(32))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class ImageBlob(Base):
    """The bytes of a field, by SHA-256: the image store when the database is PostgreSQL (``store.DatabaseStore``),
    written in the same transaction as the field's rows, so every app node sees it and a crash leaves no orphan."""

    __tablename__ = "image_blobs"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class LoginFailure(Base):
    """One failed sign-in, counted per account and per client address (``shared.login_blocked``): in the database,
    so every gunicorn worker and every app node counts the same failures."""

    __tablename__ = "login_failures"
    __table_args__ = (Index("ix_login_failures_scope_key_at", "scope", "key", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    scope: Mapped[str] = mapped_column(String(16))  # "account" or "address"
    key: Mapped[str] = mapped_column(String(128))
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class AppSecret(Base):
    """A secret every app node must share (the session signing key), created once by whichever node asks first."""

    __tablename__ = "app_secrets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
