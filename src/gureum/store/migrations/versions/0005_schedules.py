"""Schedules, topics and topic subscriptions.

Revision ID: 0005_schedules
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_schedules"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "schedules",
        sa.Column("account_id", sa.String(length=12), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("expression", sa.String(length=256), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("function_name", sa.String(length=64), nullable=False),
        sa.Column("qualifier", sa.String(length=128), server_default="", nullable=False),
        sa.Column("input", sa.Text(), nullable=True),
        sa.Column("missed", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("next_tick", sa.Float(), nullable=True),
        sa.Column("anchor", sa.Float(), nullable=False),
        sa.Column("last_tick", sa.Float(), nullable=True),
        sa.Column("fired", sa.Integer(), server_default="0", nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("account_id", "name"),
    )
    op.create_index("ix_schedules_due", "schedules", ["state", "next_tick"], unique=False)
    op.create_table(
        "topics",
        sa.Column("account_id", sa.String(length=12), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("account_id", "name"),
    )
    op.create_table(
        "topic_subscriptions",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("account_id", sa.String(length=12), nullable=False),
        sa.Column("topic_name", sa.String(length=256), nullable=False),
        sa.Column("protocol", sa.String(length=16), nullable=False),
        sa.Column("endpoint", sa.String(length=256), nullable=False),
        sa.Column("filter_policy", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_topic_subscriptions_topic",
        "topic_subscriptions",
        ["account_id", "topic_name"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_topic_subscriptions_topic", table_name="topic_subscriptions")
    op.drop_table("topic_subscriptions")
    op.drop_table("topics")
    op.drop_index("ix_schedules_due", table_name="schedules")
    op.drop_table("schedules")
