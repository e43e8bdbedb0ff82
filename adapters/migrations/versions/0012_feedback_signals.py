"""Feedback as rich as users give it: a thumb per choice of an `n` > 1 answer (and every
choice's text), and the signals beyond a thumb (pairwise preferences, edits, named scores,
implicit copied/regenerated) in `feedback_signals`.

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("interactions") as batch:
        batch.add_column(sa.Column("choices", sa.JSON(), nullable=True))
    with op.batch_alter_table("feedback") as batch:
        batch.add_column(sa.Column("choice", sa.SmallInteger(), nullable=False, server_default="0"))
        batch.drop_constraint("uq_feedback_interaction_user", type_="unique")
        batch.create_unique_constraint("uq_feedback_interaction_choice_user", ["interaction_id", "choice", "end_user"])
    op.create_table(
        "feedback_signals",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("interaction_id", sa.String(64), sa.ForeignKey("interactions.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("choice", sa.SmallInteger(), nullable=False),
        sa.Column("end_user", sa.String(256), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("other_id", sa.String(64), nullable=False),
        sa.Column("other_choice", sa.SmallInteger(), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("interaction_id", "choice", "end_user", "kind", "name", "other_id", "other_choice",
                            name="uq_feedback_signals_once"),
    )
    op.create_index("ix_feedback_signals_other_id", "feedback_signals", ["other_id"])
    op.create_index("ix_feedback_signals_updated_at", "feedback_signals", ["updated_at"])


def downgrade() -> None:
    op.drop_table("feedback_signals")
    with op.batch_alter_table("feedback") as batch:
        batch.drop_constraint("uq_feedback_interaction_choice_user", type_="unique")
        batch.create_unique_constraint("uq_feedback_interaction_user", ["interaction_id", "end_user"])
        batch.drop_column("choice")
    with op.batch_alter_table("interactions") as batch:
        batch.drop_column("choices")
