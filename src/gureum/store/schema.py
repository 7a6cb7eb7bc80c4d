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
    # added in 0004_events: per-event age limit, client idempotency key, where it came from
    sa.Column("max_age_s", sa.Float, nullable=True),
    sa.Column("idempotency_key", sa.String(128), nullable=True),
    sa.Column("source", sa.String(256), nullable=True),
    sa.Index("ix_async_events_due", "state", "not_before"),
    sa.Index("ix_async_events_idempotency", "account_id", "idempotency_key"),
)

# ---- queues, event source mappings, async invoke configs (0004_events) ---------------------

queues = sa.Table(
    "queues",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("account_id", sa.String(12), nullable=False),
    sa.Column("name", sa.String(80), nullable=False),
    # SQS queue attributes as JSON: {"VisibilityTimeout": "30", ...}
    sa.Column("attributes", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.UniqueConstraint("account_id", "name"),
)

queue_messages = sa.Table(
    "queue_messages",
    metadata,
    # also the FIFO sequence number and the delivery order
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("queue_id", sa.Integer, nullable=False),
    sa.Column("message_id", sa.String(36), nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("md5_body", sa.String(32), nullable=False),
    # MessageAttributes as JSON (binary values base64), and their MD5 as AWS computes it
    sa.Column("attributes", sa.Text, nullable=False, server_default="{}"),
    sa.Column("md5_attributes", sa.String(32), nullable=True),
    sa.Column("system_attributes", sa.Text, nullable=False, server_default="{}"),
    sa.Column("group_id", sa.String(128), nullable=True),
    sa.Column("dedup_id", sa.String(128), nullable=True),
    sa.Column("sent_at", sa.Float, nullable=False),
    sa.Column("visible_at", sa.Float, nullable=False),
    sa.Column("receive_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("first_received_at", sa.Float, nullable=True),
    # token of the newest receive; a receipt handle names the row and this token
    sa.Column("receipt", sa.String(32), nullable=True),
    sa.Column("dead_letter_source", sa.String(256), nullable=True),
    sa.Index("ix_queue_messages_visible", "queue_id", "visible_at"),
)

queue_dedup = sa.Table(
    "queue_dedup",
    metadata,
    sa.Column("queue_id", sa.Integer, primary_key=True),
    sa.Column("dedup_id", sa.String(128), primary_key=True),
    sa.Column("message_id", sa.String(36), nullable=False),
    sa.Column("sequence", sa.Integer, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
)

event_source_mappings = sa.Table(
    "event_source_mappings",
    metadata,
    sa.Column("uuid", sa.String(36), primary_key=True),
    sa.Column("account_id", sa.String(12), nullable=False),
    sa.Column("function_name", sa.String(64), nullable=False),
    sa.Column("qualifier", sa.String(128), nullable=False, server_default=""),
    sa.Column("source_arn", sa.String(256), nullable=False),
    sa.Column("batch_size", sa.Integer, nullable=False),
    sa.Column("window_s", sa.Integer, nullable=False, server_default="0"),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("response_types", sa.Text, nullable=False, server_default="[]"),
    sa.Column("max_concurrency", sa.Integer, nullable=True),
    sa.Column("last_modified", sa.Float, nullable=False),
    sa.Column("last_result", sa.String(256), nullable=False, server_default="No records processed"),
    sa.Index("ix_event_source_mappings_function", "account_id", "function_name"),
)

event_invoke_configs = sa.Table(
    "event_invoke_configs",
    metadata,
    sa.Column("account_id", sa.String(12), primary_key=True),
    sa.Column("function_name", sa.String(64), primary_key=True),
    sa.Column("qualifier", sa.String(128), primary_key=True),
    sa.Column("max_retry_attempts", sa.Integer, nullable=True),
    sa.Column("max_event_age_s", sa.Integer, nullable=True),
    sa.Column("on_success", sa.String(256), nullable=True),
    sa.Column("on_failure", sa.String(256), nullable=True),
    sa.Column("last_modified", sa.Float, nullable=False),
)

# ---- object storage (0003_objects) ------------------------------------------------------------

s3_buckets = sa.Table(
    "s3_buckets",
    metadata,
    sa.Column("name", sa.String(63), primary_key=True),
    sa.Column("account_id", sa.String(12), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("notification", sa.Text, nullable=False, server_default=""),
)

s3_objects = sa.Table(
    "s3_objects",
    metadata,
    sa.Column("bucket", sa.String(63), sa.ForeignKey("s3_buckets.name"), primary_key=True),
    sa.Column("key", sa.LargeBinary, primary_key=True),
    sa.Column("blob", sa.String(64), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("etag", sa.String(64), nullable=False),
    sa.Column("last_modified", sa.Float, nullable=False),
    sa.Column("headers", sa.Text, nullable=False),
)

s3_uploads = sa.Table(
    "s3_uploads",
    metadata,
    sa.Column("upload_id", sa.String(64), primary_key=True),
    sa.Column("bucket", sa.String(63), sa.ForeignKey("s3_buckets.name"), nullable=False),
    sa.Column("key", sa.LargeBinary, nullable=False),
    sa.Column("headers", sa.Text, nullable=False),
    sa.Column("initiated_at", sa.Float, nullable=False),
    sa.Index("ix_s3_uploads_bucket_key", "bucket", "key"),
)

s3_parts = sa.Table(
    "s3_parts",
    metadata,
    sa.Column(
        "upload_id",
        sa.String(64),
        sa.ForeignKey("s3_uploads.upload_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("part_number", sa.Integer, primary_key=True),
    sa.Column("blob", sa.String(64), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("etag", sa.String(64), nullable=False),
    sa.Column("last_modified", sa.Float, nullable=False),
)


# ---- API gateway (gureum.control.route_store; migration 0002_gateway) ----------------------

gateway_apis = sa.Table(
    "gateway_apis",
    metadata,
    sa.Column("api_id", sa.String(16), primary_key=True),
    sa.Column("account_id", sa.String(12), nullable=False),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("base_path", sa.String(256), nullable=False, server_default=""),
    sa.Column("host", sa.String(253), nullable=False, server_default=""),
    sa.Column("stage", sa.String(128), nullable=False),
    # gureum.control.routes.Cors as JSON, or NULL
    sa.Column("cors", sa.Text, nullable=True),
    sa.Column("rate_limit", sa.Float, nullable=True),
    sa.Column("burst", sa.Integer, nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    # the stage's variables as a JSON object, or NULL for none
    sa.Column("stage_variables", sa.Text, nullable=True),
    sa.UniqueConstraint("account_id", "name", name="uq_gateway_apis_account_name"),
)

gateway_routes = sa.Table(
    "gateway_routes",
    metadata,
    sa.Column("api_id", sa.String(16), primary_key=True),
    sa.Column("route_key", sa.String(600), primary_key=True),
    sa.Column("route_id", sa.String(16), nullable=False, unique=True),
    sa.Column("function_name", sa.String(64), nullable=False),
    sa.Column("qualifier", sa.String(128), nullable=True),
    # gureum.control.routes.Authorization as JSON
    sa.Column("auth", sa.Text, nullable=False),
    sa.Column("rate_limit", sa.Float, nullable=True),
    sa.Column("burst", sa.Integer, nullable=True),
    sa.Column("timeout_ms", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.ForeignKeyConstraint(["api_id"], ["gateway_apis.api_id"], ondelete="CASCADE"),
)

gateway_api_keys = sa.Table(
    "gateway_api_keys",
    metadata,
    sa.Column("key_id", sa.String(16), primary_key=True),
    sa.Column("account_id", sa.String(12), nullable=False),
    sa.Column("api_id", sa.String(16), nullable=False),
    sa.Column("name", sa.String(128), nullable=False),
    # SHA-256 of the key; the key itself is shown once, at creation
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("hint", sa.String(8), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.ForeignKeyConstraint(["api_id"], ["gateway_apis.api_id"], ondelete="CASCADE"),
)

# ---- schedules and topics (gureum.events.schedules, gureum.events.topics; 0005_schedules) ----

schedules = sa.Table(
    "schedules",
    metadata,
    sa.Column("account_id", sa.String(12), primary_key=True),
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("expression", sa.String(256), nullable=False),
    sa.Column("timezone", sa.String(64), nullable=False),
    sa.Column("function_name", sa.String(64), nullable=False),
    sa.Column("qualifier", sa.String(128), nullable=False, server_default=""),
    # fixed JSON input; NULL sends EventBridge's "Scheduled Event"
    sa.Column("input", sa.Text, nullable=True),
    sa.Column("missed", sa.String(16), nullable=False),  # fire-once | skip
    sa.Column("state", sa.String(16), nullable=False),  # enabled | paused | completed
    # the next tick not yet fired; advanced in the transaction that enqueues the tick's event
    sa.Column("next_tick", sa.Float, nullable=True),
    sa.Column("anchor", sa.Float, nullable=False),  # rate() counts from here
    sa.Column("last_tick", sa.Float, nullable=True),
    sa.Column("fired", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Index("ix_schedules_due", "state", "next_tick"),
)

topics = sa.Table(
    "topics",
    metadata,
    sa.Column("account_id", sa.String(12), primary_key=True),
    sa.Column("name", sa.String(256), primary_key=True),
    sa.Column("created_at", sa.Float, nullable=False),
)

topic_subscriptions = sa.Table(
    "topic_subscriptions",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("account_id", sa.String(12), nullable=False),
    sa.Column("topic_name", sa.String(256), nullable=False),
    sa.Column("protocol", sa.String(16), nullable=False),  # function | queue
    sa.Column("endpoint", sa.String(256), nullable=False),  # name[:qualifier] | queue name
    sa.Column("filter_policy", sa.Text, nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Index("ix_topic_subscriptions_topic", "account_id", "topic_name"),
)
