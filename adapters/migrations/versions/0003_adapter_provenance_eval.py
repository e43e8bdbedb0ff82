"""Adapter versions keep their training provenance and eval report.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("adapter_versions") as batch:
        batch.add_column(sa.Column("provenance", sa.JSON, nullable=True))
        batch.add_column(sa.Column("eval_report", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("adapter_versions") as batch:
        batch.drop_column("eval_report")
        batch.drop_column("provenance")
