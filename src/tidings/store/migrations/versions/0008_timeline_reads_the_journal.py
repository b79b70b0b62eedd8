"""timeline: flow lines are read from the runs' journal (flow_steps), no longer copied

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29 17:20:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_timeline = sa.table(
    "timeline",
    sa.column("profile_id", sa.BigInteger),
    sa.column("at"),  # untyped: the value goes back as it came out, on either database
    sa.column("recorded_at"),
    sa.column("kind", sa.String),
    sa.column("field", sa.String),
    sa.column("new", sa.JSON),
    sa.column("detail", sa.JSON),
)


def upgrade() -> None:
    op.execute(sa.delete(_timeline).where(_timeline.c.kind == "flow"))


def downgrade() -> None:
    """Copy the journal back into the timeline, as the previous version kept it."""
    steps = sa.table(
        "flow_steps",
        sa.column("run_id", sa.BigInteger),
        sa.column("flow", sa.String),
        sa.column("profile_id", sa.BigInteger),
        sa.column("at"),  # untyped: the value goes back as it came out, on either database
        sa.column("step", sa.String),
        sa.column("kind", sa.String),
        sa.column("outcome", sa.String),
        sa.column("reason", sa.String),
        sa.column("detail", sa.JSON),
    )
    conn = op.get_bind()
    rows = [
        {
            "profile_id": r.profile_id,
            "at": r.at,
            "recorded_at": r.at,
            "kind": "flow",
            "field": r.flow,
            "new": r.outcome,
            "detail": {
                "run_id": r.run_id,
                "step": r.step,
                "kind": r.kind,
                "reason": r.reason,
                **(r.detail or {}),
            },
        }
        for r in conn.execute(sa.select(steps))
    ]
    if rows:
        conn.execute(sa.insert(_timeline), rows)
