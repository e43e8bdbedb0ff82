"""Experiments (A/B tests on aliases), the audit trail, and the alias's previous champion.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("aliases") as batch:  # batch: SQLite cannot add a foreign key in place
        batch.add_column(sa.Column("previous_champion", sa.String(128), nullable=True))
        batch.create_foreign_key("fk_aliases_previous_champion", "adapter_versions",
                                 ["previous_champion"], ["name"])
    op.create_table(
        "experiments",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("alias", sa.String(128), sa.ForeignKey("aliases.name"), nullable=False),
        sa.Column("champion", sa.String(128), sa.ForeignKey("adapter_versions.name"), nullable=True),
        sa.Column("canary", sa.String(128), sa.ForeignKey("adapter_versions.name"), nullable=False),
        sa.Column("canary_share", sa.Float, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("max_hours", sa.Float, nullable=False),
        sa.Column("decided_by", sa.String(128), nullable=True),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("stats", sa.JSON, nullable=True),
    )
    op.create_table(
        "adapter_events",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("version", sa.String(128), nullable=True),
        sa.Column("alias", sa.String(128), nullable=True),
        sa.Column("from_state", sa.String(16), nullable=True),
        sa.Column("to_state", sa.String(16), nullable=True),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("numbers", sa.JSON, nullable=True),
    )
    op.create_index("ix_experiments_alias", "experiments", ["alias"])
    op.create_index("ix_adapter_events_at", "adapter_events", ["at"])
    op.create_index("ix_adapter_events_version", "adapter_events", ["version"])


def downgrade() -> None:
    op.drop_table("adapter_events")
    op.drop_table("experiments")
    with op.batch_alter_table("aliases") as batch:
        batch.drop_constraint("fk_aliases_previous_champion", type_="foreignkey")
        batch.drop_column("previous_champion")
