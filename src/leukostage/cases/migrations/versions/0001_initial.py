"""The case schema: users, tokens, cases, images, results, reviews, overrides, amendments, append-only audit events.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""
from alembic import op
import sqlalchemy as sa

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def _id() -> sa.Column:
    return sa.Column("id", sa.Integer, primary_key=True)


def _user_fk(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.Integer, sa.ForeignKey("users.id"), nullable=nullable)


def upgrade() -> None:
    op.create_table("users", _id(),
                    sa.Column("username", sa.String(64), nullable=False, unique=True),
                    sa.Column("password_hash", sa.String(255), nullable=False),
                    sa.Column("role", sa.String(16), nullable=False),
                    sa.Column("active", sa.Boolean, nullable=False),
                    sa.Column("created_at", TS, nullable=False))
    op.create_table("api_tokens", _id(),
                    _user_fk("user_id"),
                    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
                    sa.Column("created_at", TS, nullable=False),
                    sa.Column("revoked_at", TS, nullable=True))
    op.create_index("ix_api_tokens_user_id", "api_tokens", ["user_id"])
    op.create_table("cases", _id(),
                    sa.Column("accession", sa.String(64), nullable=False, unique=True),
                    sa.Column("patient_ref", sa.String(255), nullable=True),
                    sa.Column("note", sa.Text, nullable=True),
                    sa.Column("status", sa.String(16), nullable=False),
                    sa.Column("created_at", TS, nullable=False),
                    _user_fk("created_by_id"),
                    sa.Column("updated_at", TS, nullable=False),
                    sa.Column("model_name", sa.String(128), nullable=False),
                    sa.Column("model_version", sa.String(64), nullable=False))
    op.create_index("ix_cases_status", "cases", ["status"])
    op.create_index("ix_cases_created_at", "cases", ["created_at"])
    op.create_table("images", _id(),
                    sa.Column("case_id", sa.Integer, sa.ForeignKey("cases.id"), nullable=False),
                    sa.Column("sha256", sa.String(64), nullable=False),
                    sa.Column("filename", sa.String(255), nullable=False),
                    sa.Column("size_bytes", sa.Integer, nullable=False),
                    sa.Column("width", sa.Integer, nullable=True),
                    sa.Column("height", sa.Integer, nullable=True),
                    sa.Column("uploaded_at", TS, nullable=False),
                    _user_fk("uploaded_by_id"))
    op.create_index("ix_images_case_id", "images", ["case_id"])
    op.create_index("ix_images_sha256", "images", ["sha256"])
    op.create_table("results", _id(),
                    sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id"), nullable=False, unique=True),
                    sa.Column("valid", sa.Boolean, nullable=False),
                    sa.Column("label", sa.String(32), nullable=True),
                    sa.Column("code", sa.String(64), nullable=True),
                    sa.Column("model_name", sa.String(128), nullable=False),
                    sa.Column("model_version", sa.String(64), nullable=False),
                    sa.Column("payload", sa.JSON, nullable=False))
    op.create_table("reviews", _id(),
                    sa.Column("case_id", sa.Integer, sa.ForeignKey("cases.id"), nullable=False, unique=True),
                    sa.Column("final_call", sa.String(32), nullable=False),
                    sa.Column("comment", sa.Text, nullable=False),
                    _user_fk("reviewer_id"),
                    sa.Column("signed_off_at", TS, nullable=False))
    op.create_table("overrides", _id(),
                    sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id"), nullable=False),
                    sa.Column("label", sa.String(32), nullable=False),
                    _user_fk("by_id"),
                    sa.Column("at", TS, nullable=False))
    op.create_index("ix_overrides_image_id", "overrides", ["image_id"])
    op.create_table("amendments", _id(),
                    sa.Column("case_id", sa.Integer, sa.ForeignKey("cases.id"), nullable=False),
                    sa.Column("reason", sa.Text, nullable=False),
                    sa.Column("final_call", sa.String(32), nullable=True),
                    sa.Column("comment", sa.Text, nullable=True),
                    _user_fk("by_id"),
                    sa.Column("at", TS, nullable=False))
    op.create_index("ix_amendments_case_id", "amendments", ["case_id"])
    op.create_table("audit_events", _id(),
                    sa.Column("case_id", sa.Integer, sa.ForeignKey("cases.id"), nullable=True),
                    _user_fk("user_id", nullable=True),
                    sa.Column("username", sa.String(64), nullable=True),
                    sa.Column("action", sa.String(32), nullable=False),
                    sa.Column("at", TS, nullable=False),
                    sa.Column("detail", sa.JSON, nullable=False))
    op.create_index("ix_audit_events_case_id", "audit_events", ["case_id"])
    _append_only("audit_events")


def _append_only(table: str) -> None:
    """Refuse UPDATE and DELETE on ``table`` in the database itself, whatever client writes to it."""
    message = f"{table} is append-only"
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"CREATE FUNCTION {table}_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
                   f"BEGIN RAISE EXCEPTION '{message}'; END $$")
        op.execute(f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                   f"FOR EACH ROW EXECUTE FUNCTION {table}_append_only()")
    else:
        for verb in ("UPDATE", "DELETE"):
            op.execute(f"CREATE TRIGGER {table}_no_{verb.lower()} BEFORE {verb} ON {table} "
                       f"BEGIN SELECT RAISE(ABORT, '{message}'); END")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_events_append_only ON audit_events")
        op.execute("DROP FUNCTION IF EXISTS audit_events_append_only()")
    for table in ("audit_events", "amendments", "overrides", "reviews", "results", "images", "cases", "api_tokens",
                  "users"):
        op.drop_table(table)
