"""running state of aggregate traits

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 09:57:33.323909
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:

    with op.batch_alter_table("profiles", schema=None) as batch_op:
        batch_op.add_column(sa.Column("aggregates", sa.JSON(), server_default="{}", nullable=False))


def downgrade() -> None:

    with op.batch_alter_table("profiles", schema=None) as batch_op:
        batch_op.drop_column("aggregates")
