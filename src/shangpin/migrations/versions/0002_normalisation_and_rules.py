"""Predictions keep the canonical value, the business rule that acted, and the conflict/rejected flags.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("predictions") as batch:  # batch: SQLite cannot ALTER most things in place
        batch.add_column(sa.Column("canonical", sa.Text(), nullable=True))
        batch.add_column(sa.Column("rule", sa.Text(), nullable=True))
        batch.add_column(sa.Column("conflict", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("rejected", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("rejected")
        batch.drop_column("conflict")
        batch.drop_column("rule")
        batch.drop_column("canonical")
