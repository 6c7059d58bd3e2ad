"""checkpoint counts and errors: what a run's history process did, committed with its checkpoint

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("sync_checkpoints") as table:
        table.add_column(sa.Column("counts", JSON, nullable=True))
        table.add_column(sa.Column("errors", JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sync_checkpoints") as table:
        table.drop_column("errors")
        table.drop_column("counts")
