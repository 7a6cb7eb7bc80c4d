"""Events: queues and their messages, event source mappings, async invoke configs; async
events gain an age limit, an idempotency key and a source.

Revision ID: 0004_events
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_events"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("async_events") as batch:
        batch.add_column(sa.Column("max_age_s", sa.Float(), nullable=True))
        batch.add_column(sa.Column("idempotency_key", sa.String(length=128), nullable=True))
        batch.add_column(sa.Column("source", sa.String(length=256), nullable=True))
    op.create_index(
        "ix_async_events_idempotency",
        "async_events",
        ["account_id", "idempotency_key"],
        unique=False,
    )
    op.create_table(
        "queues",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("account_id", sa.String(length=12), nullable=False),
        sa.Column("name", sa.String(length=80), nullable=False),
        sa.Column("attributes", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("account_id", "name"),
    )
    op.create_table(
        "queue_messages",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("queue_id", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.String(length=36), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("md5_body", sa.String(length=32), nullable=False),
        sa.Column("attributes", sa.Text(), server_default="{}", nullable=False),
        sa.Column("md5_attributes", sa.String(length=32), nullable=True),
        sa.Column("system_attributes", sa.Text(), server_default="{}", nullable=False),
        sa.Column("group_id", sa.String(length=128), nullable=True),
        sa.Column("dedup_id", sa.String(length=128), nullable=True),
        sa.Column("sent_at", sa.Float(), nullable=False),
        sa.Column("visible_at", sa.Float(), nullable=False),
        sa.Column("receive_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("first_received_at", sa.Float(), nullable=True),
        sa.Column("receipt", sa.String(length=32), nullable=True),
        sa.Column("dead_letter_source", sa.String(length=256), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_queue_messages_visible", "queue_messages", ["queue_id", "visible_at"], unique=False
    )
    op.create_table(
        "queue_dedup",
        sa.Column("queue_id", sa.Integer(), nullable=False),
        sa.Column("dedup_id", sa.String(length=128), nullable=False),
        sa.Column("message_id", sa.String(length=36), nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("queue_id", "dedup_id"),
    )
    op.create_table(
        "event_source_mappings",
        sa.Column("uuid", sa.String(length=36), nullable=False),
        sa.Column("account_id", sa.String(length=12), nullable=False),
        sa.Column("function_name", sa.String(length=64), nullable=False),
        sa.Column("qualifier", sa.String(length=128), server_default="", nullable=False),
        sa.Column("source_arn", sa.String(length=256), nullable=False),
        sa.Column("batch_size", sa.Integer(), nullable=False),
        sa.Column("window_s", sa.Integer(), server_default="0", nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("response_types", sa.Text(), server_default="[]", nullable=False),
        sa.Column("max_concurrency", sa.Integer(), nullable=True),
        sa.Column("last_modified", sa.Float(), nullable=False),
        sa.Column(
            "last_result",
            sa.String(length=256),
            server_default="No records processed",
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("uuid"),
    )
    op.create_index(
        "ix_event_source_mappings_function",
        "event_source_mappings",
        ["account_id", "function_name"],
        unique=False,
    )
    op.create_table(
        "event_invoke_configs",
        sa.Column("account_id", sa.String(length=12), nullable=False),
        sa.Column("function_name", sa.String(length=64), nullable=False),
        sa.Column("qualifier", sa.String(length=128), nullable=False),
        sa.Column("max_retry_attempts", sa.Integer(), nullable=True),
        sa.Column("max_event_age_s", sa.Integer(), nullable=True),
        sa.Column("on_success", sa.String(length=256), nullable=True),
        sa.Column("on_failure", sa.String(length=256), nullable=True),
        sa.Column("last_modified", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("account_id", "function_name", "qualifier"),
    )


def downgrade() -> None:
    op.drop_table("event_invoke_configs")
    op.drop_index("ix_event_source_mappings_function", table_name="event_source_mappings")
    op.drop_table("event_source_mappings")
    op.drop_table("queue_dedup")
    op.drop_index("ix_queue_messages_visible", table_name="queue_messages")
    op.drop_table("queue_messages")
    op.drop_table("queues")
    op.drop_index("ix_async_events_idempotency", table_name="async_events")
    with op.batch_alter_table("async_events") as batch:
        batch.drop_column("source")
        batch.drop_column("idempotency_key")
        batch.drop_column("max_age_s")
