"""An index on interactions (requested_model, created_at): the experiment judge counts one
alias's traffic since its experiment started, every round, and without it reads all traffic.

Revision ID: 0009
Revises: 0008
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_interactions_requested_model_created_at", "interactions", ["requested_model", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_interactions_requested_model_created_at", table_name="interactions")
