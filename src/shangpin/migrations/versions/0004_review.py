"""Review queue, audit trail, products and API keys (issue 7).

Stored predictions become suggestions: `status` says whether a person (or the auto-accept threshold) decided
on them, `final_value` holds the accepted or corrected value. `audit` records every change; `products` keeps the
text the suggestions point into (for reviewers and for `train --from-reviews`); `api_keys` holds hashed keys.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.add_column(sa.Column("status", sa.String(length=16), nullable=False, server_default="pending"))
        batch.add_column(sa.Column("final_value", sa.Text(), nullable=True))
        batch.add_column(sa.Column("reviewed_by", sa.String(), nullable=True))
        batch.add_column(sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_index("ix_predictions_status_score", ["status", "score", "product_id"])
        batch.create_index("ix_predictions_status_attribute_score", ["status", "attribute", "score"])
        batch.create_index("ix_predictions_stage_value", ["stage", "value", "product_id"])
    op.create_table(
        "products",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("category", sa.Text(), nullable=True),
        sa.Column("image", sa.Text(), nullable=True),
        sa.Column("attributes", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_products")),
    )
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("prediction_id", sa.Integer(), nullable=True),
        sa.Column("product_id", sa.String(), nullable=False),
        sa.Column("actor", sa.String(), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("before", sa.Text(), nullable=True),
        sa.Column("after", sa.Text(), nullable=True),
        sa.Column("model_version", sa.String(), nullable=True),
        sa.Column("evidence", sa.Text(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit")),
    )
    op.create_index(op.f("ix_audit_prediction_id"), "audit", ["prediction_id"])
    op.create_index(op.f("ix_audit_product_id"), "audit", ["product_id"])
    op.create_index(op.f("ix_audit_actor"), "audit", ["actor"])
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("scope", sa.String(length=8), nullable=False),
        sa.Column("name", sa.String(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("prefix", name=op.f("uq_api_keys_prefix")),
    )


def downgrade() -> None:
    op.drop_table("api_keys")
    op.drop_index(op.f("ix_audit_actor"), table_name="audit")
    op.drop_index(op.f("ix_audit_product_id"), table_name="audit")
    op.drop_index(op.f("ix_audit_prediction_id"), table_name="audit")
    op.drop_table("audit")
    op.drop_table("products")
    with op.batch_alter_table("predictions") as batch:
        batch.drop_index("ix_predictions_stage_value")
        batch.drop_index("ix_predictions_status_attribute_score")
        batch.drop_index("ix_predictions_status_score")
        batch.drop_column("updated_at")
        batch.drop_column("reviewed_by")
        batch.drop_column("final_value")
        batch.drop_column("status")
