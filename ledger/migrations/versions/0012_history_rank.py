"""history rank: versions a backfill rebuilt come after the event versions of their second

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

HISTORY = "source LIKE 'backfill:%'"


def upgrade() -> None:
    # Identical rebuilt copies of one second (two runs, one since re-ranked among events) would meet
    # on the one rank: the first stored is kept.
    op.execute(
        f"DELETE FROM subscription_snapshots WHERE {HISTORY} AND id NOT IN ("
        f"SELECT MIN(id) FROM subscription_snapshots WHERE {HISTORY} "
        "GROUP BY subscription_id, observed_at, content_hash)"
    )
    op.execute(f"UPDATE subscription_snapshots SET rank = 500 WHERE {HISTORY}")


def downgrade() -> None:
    op.execute(f"UPDATE subscription_snapshots SET rank = 0 WHERE {HISTORY} AND rank = 500")
