"""drift dated by: how each reconciliation correction was dated

`records` (Stripe's invoices and proration lines), `run` (nothing dates it:
the run's time) or `records, run` (both). Items recorded before say `run`:
reconciliation dated every correction at the run then.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("drift_items") as table:
        table.add_column(sa.Column("dated_by", sa.String(length=16), nullable=False, server_default="run"))


def downgrade() -> None:
    with op.batch_alter_table("drift_items") as table:
        table.drop_column("dated_by")
