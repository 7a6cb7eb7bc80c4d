"""Initial schema: accounts, functions, versions, aliases, invocations, async events.

Revision ID: 0001
Frozen: later schema changes go into new revisions, never into this file.
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", sa.String(length=12), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "async_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("request_id", sa.String(length=36), nullable=False),
        sa.Column("account_id", sa.String(length=12), nullable=False),
        sa.Column("function_name", sa.String(length=64), nullable=False),
        sa.Column("qualifier", sa.String(length=128), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("not_before", sa.Float(), nullable=False),
        sa.Column("lease_until", sa.Float(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("request_id"),
    )
    op.create_index("ix_async_events_due", "async_events", ["state", "not_before"], unique=False)
    op.create_table(
        "invocations",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("request_id", sa.String(length=36), nullable=False),
        sa.Column("account_id", sa.String(length=12), nullable=False),
        sa.Column("function_name", sa.String(length=64), nullable=False),
        sa.Column("version", sa.String(length=16), nullable=False),
        sa.Column("trigger", sa.String(length=32), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("ended_at", sa.Float(), nullable=False),
        sa.Column("queue_ms", sa.Float(), nullable=False),
        sa.Column("init_ms", sa.Float(), nullable=False),
        sa.Column("run_ms", sa.Float(), nullable=False),
        sa.Column("billed_ms", sa.Integer(), nullable=False),
        sa.Column("memory_mb", sa.Integer(), nullable=False),
        sa.Column("max_memory_mb", sa.Integer(), nullable=False),
        sa.Column("gb_seconds", sa.Float(), nullable=False),
        sa.Column("cold", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error_type", sa.String(length=128), nullable=True),
        sa.Column("log", sa.Text(), server_default="", nullable=False),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("request_id"),
    )
    op.create_index(
        "ix_invocations_function",
        "invocations",
        ["account_id", "function_name", "seq"],
        unique=False,
    )
    op.create_table(
        "functions",
        sa.Column("account_id", sa.String(length=12), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("config", sa.Text(), nullable=False),
        sa.Column("next_version", sa.Integer(), server_default="1", nullable=False),
        sa.Column("reserved_concurrency", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
        ),
        sa.PrimaryKeyConstraint("account_id", "name"),
    )
    op.create_table(
        "aliases",
        sa.Column("account_id", sa.String(length=12), nullable=False),
        sa.Column("function_name", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("function_version", sa.String(length=16), nullable=False),
        sa.Column("description", sa.String(length=256), server_default="", nullable=False),
        sa.Column("routing", sa.Text(), server_default="{}", nullable=False),
        sa.Column("revision_id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id", "function_name"],
            ["functions.account_id", "functions.name"],
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("account_id", "function_name", "name"),
    )
    op.create_table(
        "versions",
        sa.Column("account_id", sa.String(length=12), nullable=False),
        sa.Column("function_name", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("config", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id", "function_name"],
            ["functions.account_id", "functions.name"],
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("account_id", "function_name", "version"),
    )


def downgrade() -> None:
    op.drop_table("versions")
    op.drop_table("aliases")
    op.drop_table("functions")
    op.drop_index("ix_invocations_function", table_name="invocations")
    op.drop_table("invocations")
    op.drop_index("ix_async_events_due", table_name="async_events")
    op.drop_table("async_events")
    op.drop_table("accounts")
