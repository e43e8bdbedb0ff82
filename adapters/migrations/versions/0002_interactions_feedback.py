"""Interaction log and feedback; per-key prompt logging switch.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("log_prompts", sa.Boolean, nullable=False, server_default=sa.true()))
    op.create_table(
        "interactions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("key_id", sa.Integer, nullable=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("end_user", sa.String(256), nullable=False),
        sa.Column("requested_model", sa.String(256), nullable=False),
        sa.Column("adapter_version", sa.String(128), nullable=True),
        sa.Column("arm", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("prompt", sa.JSON, nullable=True),
        sa.Column("response", sa.Text, nullable=True),
        sa.Column("finish_reason", sa.String(32), nullable=True),
        sa.Column("status", sa.SmallInteger, nullable=False),
        sa.Column("prompt_tokens", sa.Integer, nullable=True),
        sa.Column("completion_tokens", sa.Integer, nullable=True),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("regenerates", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_interactions_tenant", "interactions", ["tenant"])
    op.create_index("ix_interactions_adapter_version", "interactions", ["adapter_version"])
    op.create_index("ix_interactions_regenerates", "interactions", ["regenerates"])
    op.create_index("ix_interactions_created_at", "interactions", ["created_at"])
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("interaction_id", sa.String(64), sa.ForeignKey("interactions.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("end_user", sa.String(256), nullable=False),
        sa.Column("rating", sa.SmallInteger, nullable=False),
        sa.Column("comment", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("interaction_id", "end_user", name="uq_feedback_interaction_user"),
    )


def downgrade() -> None:
    op.drop_table("feedback")
    op.drop_table("interactions")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("log_prompts")
