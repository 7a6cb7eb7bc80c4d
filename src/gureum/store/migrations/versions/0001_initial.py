"""Initial schema: accounts, functions, versions, aliases, invocations, async events.

Revision ID: 0001
"""

from alembic import op

from gureum.store.schema import metadata

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The first revision creates the schema as declared; later revisions alter it step by step.
    metadata.create_all(op.get_bind())


def downgrade() -> None:
    metadata.drop_all(op.get_bind())
