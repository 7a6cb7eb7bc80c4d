"""API gateway: HTTP APIs, their routes, and API keys.

Revision ID: 0002_gateway
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_gateway"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gateway_apis",
        sa.Column("api_id", sa.String(length=16), nullable=False),
        sa.Column("account_id", sa.String(length=12), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("base_path", sa.String(length=256), server_default="", nullable=False),
        sa.Column("host", sa.String(length=253), server_default="", nullable=False),
        sa.Column("stage", sa.String(length=128), nullable=False),
        sa.Column("cors", sa.Text(), nullable=True),
        sa.Column("rate_limit", sa.Float(), nullable=True),
        sa.Column("burst", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("api_id"),
        sa.UniqueConstraint("account_id", "name", name="uq_gateway_apis_account_name"),
    )
    op.create_table(
        "gateway_routes",
        sa.Column("api_id", sa.String(length=16), nullable=False),
        sa.Column("route_key", sa.String(length=600), nullable=False),
        sa.Column("route_id", sa.String(length=16), nullable=False),
        sa.Column("function_name", sa.String(length=64), nullable=False),
        sa.Column("qualifier", sa.String(length=128), nullable=True),
        sa.Column("auth", sa.Text(), nullable=False),
        sa.Column("rate_limit", sa.Float(), nullable=True),
        sa.Column("burst", sa.Integer(), nullable=True),
        sa.Column("timeout_ms", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["api_id"], ["gateway_apis.api_id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("api_id", "route_key"),
        sa.UniqueConstraint("route_id"),
    )
    op.create_table(
        "gateway_api_keys",
        sa.Column("key_id", sa.String(length=16), nullable=False),
        sa.Column("account_id", sa.String(length=12), nullable=False),
        sa.Column("api_id", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("hint", sa.String(length=8), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["api_id"], ["gateway_apis.api_id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("key_id"),
        sa.UniqueConstraint("key_hash"),
    )


def downgrade() -> None:
    op.drop_table("gateway_api_keys")
    op.drop_table("gateway_routes")
    op.drop_table("gateway_apis")
