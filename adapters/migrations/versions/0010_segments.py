"""Segments: an alias may have child aliases `<alias>@<segment>`, one per group of users who
want something else (adapters/segments.py). Interactions record the segment their request
declared, training runs the alias they trained for (the scheduler trains each segment too),
and the scheduler's per-tick counts get their indexes.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("aliases") as batch:
        batch.add_column(sa.Column("parent", sa.String(128), nullable=True))
        batch.add_column(sa.Column("segment", sa.String(32), nullable=True))
    with op.batch_alter_table("interactions") as batch:
        batch.add_column(sa.Column("segment", sa.String(32), nullable=False, server_default=""))
    with op.batch_alter_table("training_runs") as batch:
        batch.add_column(sa.Column("alias", sa.String(128), nullable=True))
    # the scheduler's counts, every tick: declared segments' answers, each alias's new ratings
    op.create_index("ix_interactions_requested_model_segment", "interactions", ["requested_model", "segment"])
    op.create_index("ix_feedback_updated_at", "feedback", ["updated_at"])


def downgrade() -> None:
    op.drop_index("ix_feedback_updated_at", table_name="feedback")
    op.drop_index("ix_interactions_requested_model_segment", table_name="interactions")
    with op.batch_alter_table("training_runs") as batch:
        batch.drop_column("alias")
    with op.batch_alter_table("interactions") as batch:
        batch.drop_column("segment")
    with op.batch_alter_table("aliases") as batch:
        batch.drop_column("segment")
        batch.drop_column("parent")
