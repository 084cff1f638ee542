"""Fields removed from a case before sign-off: one ``image_removals`` row per removed field (who, when, why); the
image row and its stored bytes stay for the audit trail.

Self-contained: one new table, nothing altered.

Revision ID: 0002_review_safety
Revises: 0001
Create Date: 2026-11-27
"""
from alembic import op
import sqlalchemy as sa

revision = "0002_review_safety"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("image_removals",
                    sa.Column("id", sa.Integer, primary_key=True),
                    sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id"), nullable=False, unique=True),
                    sa.Column("reason", sa.Text, nullable=False),
                    sa.Column("by_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False),
                    sa.Column("at", sa.DateTime(timezone=True), nullable=False))


def downgrade() -> None:
    op.drop_table("image_removals")
