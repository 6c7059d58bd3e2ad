"""checkpoint reached: how far back a window read newest first has got

`sync_checkpoints.reached` is the `created` of the oldest object committed in
a window still being read: everything the window holds from the next second on
is stored, so the backfill's history can rebuild the customers created then
without waiting for the window's end. Empty for the rows written before.

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sync_checkpoints") as table:
        table.add_column(sa.Column("reached", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sync_checkpoints") as table:
        table.drop_column("reached")
