"""Per-key rate limits, and adapters and aliases owned by one tenant.

`api_keys.rate_limit_rpm`: requests per minute for this key (NULL: the gateway's default,
0: unlimited). `aliases.tenant` / `adapter_versions.tenant`: the tenant whose keys may see
and call them; NULL: every tenant (what existed before stays shared).

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("rate_limit_rpm", sa.Integer(), nullable=True))
    for table in ("aliases", "adapter_versions"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("tenant", sa.String(128), nullable=True))


def downgrade() -> None:
    for table in ("adapter_versions", "aliases"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("tenant")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("rate_limit_rpm")
