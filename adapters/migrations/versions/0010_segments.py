"""Segments: an alias may have child aliases `<alias>@<segment>`, one per group of users who
want something else (adapters/segments.py). Interactions record the segment that served them,
training runs the alias they trained for (the scheduler trains every alias and segment).

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


def downgrade() -> None:
    with op.batch_alter_table("training_runs") as batch:
        batch.drop_column("alias")
    with op.batch_alter_table("interactions") as batch:
        batch.drop_column("segment")
    with op.batch_alter_table("aliases") as batch:
        batch.drop_column("segment")
        batch.drop_column("parent")
