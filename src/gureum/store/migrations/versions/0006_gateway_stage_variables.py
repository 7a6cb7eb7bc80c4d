"""API gateway: stage variables of an HTTP API.

Revision ID: 0006_gateway_stage_variables
Revises: 0002_gateway
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_gateway_stage_variables"
down_revision = "0002_gateway"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("gateway_apis", sa.Column("stage_variables", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("gateway_apis") as batch:
        batch.drop_column("stage_variables")
