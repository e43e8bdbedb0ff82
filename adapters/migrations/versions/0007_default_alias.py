"""The `default` alias exists from the start (serving the base model until it has a
champion), so apps can call `model="default"` on a fresh install and the feedback loop's
first candidate has an alias to be tested on.

Revision ID: 0007
Revises: 0006
"""

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

aliases = sa.table("aliases", sa.column("name", sa.String), sa.column("updated_at", sa.DateTime(timezone=True)))


def upgrade() -> None:
    exists = op.get_bind().execute(sa.select(sa.func.count()).select_from(aliases)
                                   .where(aliases.c.name == "default")).scalar()
    if not exists:
        op.bulk_insert(aliases, [{"name": "default", "updated_at": datetime.now(UTC)}])


def downgrade() -> None:
    pass  # the alias may have a champion and history by now: leave it
