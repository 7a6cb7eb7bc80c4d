"""The metadata schema. Changes go through a new Alembic revision in `migrations/versions`."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

accounts = sa.Table(
    "accounts",
    metadata,
    sa.Column("id", sa.String(12), primary_key=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.Float, nullable=False),
)

functions = sa.Table(
    "functions",
    metadata,
    sa.Column("account_id", sa.String(12), sa.ForeignKey("accounts.id"), primary_key=True),
    sa.Column("name", sa.String(64), primary_key=True),
    # the $LATEST configuration, as JSON (see gureum.control.models.FunctionConfig)
    sa.Column("config", sa.Text, nullable=False),
    sa.Column("next_version", sa.Integer, nullable=False, server_default="1"),
    sa.Column("reserved_concurrency", sa.Integer, nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
)

versions = sa.Table(
    "versions",
    metadata,
    sa.Column("account_id", sa.String(12), primary_key=True),
    sa.Column("function_name", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("config", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.ForeignKeyConstraint(
        ["account_id", "function_name"],
        ["functions.account_id", "functions.name"],
        ondelete="CASCADE",
    ),
)

aliases = sa.Table(
    "aliases",
    metadata,
    sa.Column("account_id", sa.String(12), primary_key=True),
    sa.Column("function_name", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("function_version", sa.String(16), nullable=False),
    sa.Column("description", sa.String(256), nullable=False, server_default=""),
    # {"<version>": weight} for the second version, or empty
    sa.Column("routing", sa.Text, nullable=False, server_default="{}"),
    sa.Column("revision_id", sa.String(36), nullable=False),
    sa.ForeignKeyConstraint(
        ["account_id", "function_name"],
        ["functions.account_id", "functions.name"],
        ondelete="CASCADE",
    ),
)

invocations = sa.Table(
    "invocations",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(36), nullable=False, unique=True),
    sa.Column("account_id", sa.String(12), nullable=False),
    sa.Column("function_name", sa.String(64), nullable=False),
    sa.Column("version", sa.String(16), nullable=False),
    sa.Column("trigger", sa.String(32), nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("ended_at", sa.Float, nullable=False),
    sa.Column("queue_ms", sa.Float, nullable=False),
    sa.Column("init_ms", sa.Float, nullable=False),
    sa.Column("run_ms", sa.Float, nullable=False),
    sa.Column("billed_ms", sa.Integer, nullable=False),
    sa.Column("memory_mb", sa.Integer, nullable=False),
    sa.Column("max_memory_mb", sa.Integer, nullable=False),
    sa.Column("gb_seconds", sa.Float, nullable=False),
    sa.Column("cold", sa.Boolean, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("error_type", sa.String(128), nullable=True),
    sa.Column("log", sa.Text, nullable=False, server_default=""),
    sa.Index("ix_invocations_function", "account_id", "function_name", "seq"),
)

async_events = sa.Table(
    "async_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String(36), nullable=False, unique=True),
    sa.Column("account_id", sa.String(12), nullable=False),
    sa.Column("function_name", sa.String(64), nullable=False),
    sa.Column("qualifier", sa.String(128), nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),
    # pending → running → succeeded | failed; a running event whose lease ran out is pending
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("max_attempts", sa.Integer, nullable=False),
    sa.Column("not_before", sa.Float, nullable=False),
    sa.Column("lease_until", sa.Float, nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Index("ix_async_events_due", "state", "not_before"),
)
