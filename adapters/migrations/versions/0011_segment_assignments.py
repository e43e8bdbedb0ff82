"""Learned segments: which segment each end user of an alias was put in by their thumbs
(trainer/segment_learning.py), which segments' aliases were learned rather than declared,
and which were deleted (kept, with their experiments and audit trail, but routed to nobody).

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("aliases") as batch:
        batch.add_column(sa.Column("learned", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("taste", sa.JSON(), nullable=True))
    op.create_table(
        "segment_assignments",
        sa.Column("parent", sa.String(128), primary_key=True),
        sa.Column("tenant", sa.String(128), primary_key=True),
        sa.Column("end_user", sa.String(256), primary_key=True),
        sa.Column("segment", sa.String(32), nullable=False),
        sa.Column("previous_segment", sa.String(32), nullable=True),
        sa.Column("votes", sa.Integer(), nullable=False),
        sa.Column("similarity", sa.Float(), nullable=False),
        sa.Column("assigned_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_segment_assignments_parent_segment", "segment_assignments", ["parent", "segment"])


def downgrade() -> None:
    op.drop_index("ix_segment_assignments_parent_segment", table_name="segment_assignments")
    op.drop_table("segment_assignments")
    with op.batch_alter_table("aliases") as batch:
        batch.drop_column("taste")
        batch.drop_column("deleted_at")
        batch.drop_column("learned")
