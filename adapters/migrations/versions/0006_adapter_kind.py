"""Adapter versions have a kind: `policy` (a chat adapter users can be routed to) or
`reward` (a reward model: the judge for the eval gate and the reward for PPO, never served).

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("adapter_versions") as batch:
        batch.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="policy"))


def downgrade() -> None:
    with op.batch_alter_table("adapter_versions") as batch:
        batch.drop_column("kind")
