"""outbox: claim per destination in due order, so a paused destination's backlog is never scanned

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 14:30:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_outbox_destination_status_next_attempt_at",
        "outbox",
        ["destination", "status", "next_attempt_at"],
    )
    op.drop_index("ix_outbox_destination_status", table_name="outbox")


def downgrade() -> None:
    op.create_index("ix_outbox_destination_status", "outbox", ["destination", "status"])
    op.drop_index("ix_outbox_destination_status_next_attempt_at", table_name="outbox")
