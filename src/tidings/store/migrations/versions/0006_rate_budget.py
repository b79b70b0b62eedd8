"""shared rate budget: schedule, slot counts, worker heartbeats, permits

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 12:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rate_schedule",
        sa.Column("destination", sa.String(length=100), nullable=False),
        sa.Column("next_start_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("destination", name=op.f("pk_rate_schedule")),
    )
    op.create_table(
        "rate_budget",
        sa.Column("destination", sa.String(length=100), nullable=False),
        sa.Column("window_us", sa.BigInteger(), nullable=False),
        sa.Column("slot_start_us", sa.BigInteger(), nullable=False),
        sa.Column("used", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("destination", "window_us", "slot_start_us", name=op.f("pk_rate_budget")),
    )
    op.create_table(
        "rate_workers",
        sa.Column("destination", sa.String(length=100), nullable=False),
        sa.Column("worker", sa.String(length=100), nullable=False),
        sa.Column("wants", sa.Integer(), nullable=False),
        sa.Column("expires_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("destination", "worker", name=op.f("pk_rate_workers")),
    )
    op.create_table(
        "rate_permits",
        sa.Column("destination", sa.String(length=100), nullable=False),
        sa.Column("permit", sa.Integer(), nullable=False),
        sa.Column("holder", sa.String(length=100), nullable=True),
        sa.Column("expires_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("destination", "permit", name=op.f("pk_rate_permits")),
    )


def downgrade() -> None:
    op.drop_table("rate_permits")
    op.drop_table("rate_workers")
    op.drop_table("rate_budget")
    op.drop_table("rate_schedule")
