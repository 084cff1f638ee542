"""Reliability and security, round two: TRUNCATE refused on the audit trail, token expiry, a session epoch per user,
failed sign-ins and the session secret shared through the database, field images stored in the database.

- PostgreSQL: a statement-level trigger refuses TRUNCATE on audit_events (0001's row-level triggers cover UPDATE and
  DELETE; TRUNCATE fires no row trigger). SQLite has no TRUNCATE: its ``DELETE FROM`` is a row delete, refused.
- api_tokens.expires_at (NOT NULL): tokens issued before this revision expire DEFAULT_TOKEN_DAYS after they were made.
- users.session_epoch: part of every session's user id; raised when a user's tokens are revoked or the account is
  disabled, which ends the user's sessions on every node.
- login_failures, app_secrets: what app nodes share (failed sign-ins per account and address; the session key).
- image_blobs: field bytes by SHA-256. On PostgreSQL this is the image store (unless LEUKOSTAGE_IMAGE_STORE=files),
  so the files an earlier version stored under LEUKOSTAGE_STORAGE are copied in here (a file already missing is
  left to `leukostage db check` to report).

Revision ID: 0003_reliability
Revises: 0002_review_safety
Create Date: 2026-12-10
"""
import os
from datetime import timedelta
from pathlib import Path

from alembic import op
import sqlalchemy as sa

revision = "0003_reliability"
down_revision = "0002_review_safety"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
DEFAULT_TOKEN_DAYS = 90  # cases.config.DEFAULT_TOKEN_DAYS when this revision was written


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute("CREATE FUNCTION audit_events_no_truncate() RETURNS trigger LANGUAGE plpgsql AS $$ "
                   "BEGIN RAISE EXCEPTION 'audit_events is append-only: TRUNCATE is refused'; END $$")
        op.execute("CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events "
                   "FOR EACH STATEMENT EXECUTE FUNCTION audit_events_no_truncate()")

    op.add_column("users", sa.Column("session_epoch", sa.Integer, nullable=False, server_default="0"))
    op.add_column("api_tokens", sa.Column("expires_at", TS, nullable=True))
    tokens = sa.table("api_tokens", sa.column("id", sa.Integer), sa.column("created_at", TS),
                      sa.column("expires_at", TS))
    for token_id, created in bind.execute(sa.select(tokens.c.id, tokens.c.created_at)).all():
        bind.execute(tokens.update().where(tokens.c.id == token_id)
                     .values(expires_at=created + timedelta(days=DEFAULT_TOKEN_DAYS)))
    with op.batch_alter_table("api_tokens") as batch:
        batch.alter_column("expires_at", existing_type=TS, nullable=False)

    op.create_table("login_failures",
                    sa.Column("id", sa.Integer, primary_key=True),
                    sa.Column("scope", sa.String(16), nullable=False),
                    sa.Column("key", sa.String(128), nullable=False),
                    sa.Column("at", TS, nullable=False))
    op.create_index("ix_login_failures_scope_key_at", "login_failures", ["scope", "key", "at"])
    op.create_index("ix_login_failures_at", "login_failures", ["at"])
    op.create_table("app_secrets",
                    sa.Column("name", sa.String(64), primary_key=True),
                    sa.Column("value", sa.String(255), nullable=False),
                    sa.Column("created_at", TS, nullable=False))
    op.create_table("image_blobs",
                    sa.Column("sha256", sa.String(64), primary_key=True),
                    sa.Column("data", sa.LargeBinary, nullable=False),
                    sa.Column("created_at", TS, nullable=False))
    if bind.dialect.name == "postgresql" and os.environ.get("LEUKOSTAGE_IMAGE_STORE", "").lower() != "files":
        _copy_stored_files(bind)


def _storage_root() -> Path:
    """The file store as cases.config.storage_dir() found it when this revision was written."""
    instance = Path(os.environ.get("LEUKOSTAGE_INSTANCE") or "instance")
    return Path(os.environ.get("LEUKOSTAGE_STORAGE") or instance / "images").absolute()


def _copy_stored_files(bind) -> None:
    from leukostage.cases.models import utcnow

    root = _storage_root()
    images = sa.table("images", sa.column("sha256", sa.String))
    blobs = sa.table("image_blobs", sa.column("sha256", sa.String), sa.column("data", sa.LargeBinary),
                     sa.column("created_at", TS))
    for sha256 in bind.execute(sa.select(images.c.sha256).distinct()).scalars():
        path = root / sha256[:2] / sha256[2:4] / sha256
        if len(sha256) == 64 and path.is_file():
            bind.execute(blobs.insert().values(sha256=sha256, data=path.read_bytes(), created_at=utcnow()))


def downgrade() -> None:
    op.drop_table("image_blobs")
    op.drop_table("app_secrets")
    op.drop_index("ix_login_failures_at", "login_failures")
    op.drop_index("ix_login_failures_scope_key_at", "login_failures")
    op.drop_table("login_failures")
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_column("expires_at")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("session_epoch")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_events_no_truncate ON audit_events")
        op.execute("DROP FUNCTION IF EXISTS audit_events_no_truncate()")
