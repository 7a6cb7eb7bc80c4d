"""Object storage: buckets, objects, multipart uploads and their parts.

Revision ID: 0003_objects
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_objects"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "s3_buckets",
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("account_id", sa.String(length=12), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("notification", sa.Text(), server_default="", nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "s3_objects",
        sa.Column("bucket", sa.String(length=63), nullable=False),
        sa.Column("key", sa.LargeBinary(), nullable=False),
        sa.Column("blob", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("etag", sa.String(length=64), nullable=False),
        sa.Column("last_modified", sa.Float(), nullable=False),
        sa.Column("headers", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["bucket"], ["s3_buckets.name"]),
        sa.PrimaryKeyConstraint("bucket", "key"),
    )
    op.create_table(
        "s3_uploads",
        sa.Column("upload_id", sa.String(length=64), nullable=False),
        sa.Column("bucket", sa.String(length=63), nullable=False),
        sa.Column("key", sa.LargeBinary(), nullable=False),
        sa.Column("headers", sa.Text(), nullable=False),
        sa.Column("initiated_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["bucket"], ["s3_buckets.name"]),
        sa.PrimaryKeyConstraint("upload_id"),
    )
    op.create_index("ix_s3_uploads_bucket_key", "s3_uploads", ["bucket", "key"], unique=False)
    op.create_table(
        "s3_parts",
        sa.Column("upload_id", sa.String(length=64), nullable=False),
        sa.Column("part_number", sa.Integer(), nullable=False),
        sa.Column("blob", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("etag", sa.String(length=64), nullable=False),
        sa.Column("last_modified", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["upload_id"], ["s3_uploads.upload_id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("upload_id", "part_number"),
    )


def downgrade() -> None:
    op.drop_table("s3_parts")
    op.drop_index("ix_s3_uploads_bucket_key", table_name="s3_uploads")
    op.drop_table("s3_uploads")
    op.drop_table("s3_objects")
    op.drop_table("s3_buckets")
