"""Bring your own model: artifact formats, a version status for the load check, held-out samples, label maps.

- model_versions.artifact_format (huggingface | torch-classifier | lethe) and status_reason; status
  `checking` (a registered artifact waits for a worker to load it);
- models.task `tabular-classification`;
- datasets.label_map (class name -> integer label);
- heldout_samples: the samples a root version was not trained on and verification may use.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
BIGINT_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

OLD_STATUSES = ("registered", "training", "candidate", "verified", "rejected", "failed")
NEW_STATUSES = ("checking", *OLD_STATUSES)
OLD_TASKS = ("causal-lm", "sequence-classification", "image-classification")
NEW_TASKS = (*OLD_TASKS, "tabular-classification")
FORMATS = ("huggingface", "torch-classifier", "lethe")


def _allowed(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(value) for value in values)})"


def upgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("artifact_format", sa.String(length=40), nullable=True))
        batch.add_column(sa.Column("status_reason", sa.Text(), nullable=True))
        batch.drop_constraint("status_allowed", type_="check")
        batch.create_check_constraint("status_allowed", _allowed("status", NEW_STATUSES))
        batch.create_check_constraint("artifact_format_allowed", _allowed("artifact_format", FORMATS))
    with op.batch_alter_table("models") as batch:
        batch.drop_constraint("task_allowed", type_="check")
        batch.create_check_constraint("task_allowed", _allowed("task", NEW_TASKS))
    # In place, not as a batch: a batch would rebuild `datasets`, which 0002's triggers name.
    op.add_column("datasets", sa.Column("label_map", JSON, nullable=True))
    op.create_table(
        "heldout_samples",
        sa.Column("root_version_id", sa.String(length=36), nullable=False),
        sa.Column("sample_id", BIGINT_ID, nullable=False),
        sa.ForeignKeyConstraint(
            ["root_version_id"],
            ["model_versions.id"],
            name=op.f("fk_heldout_samples_root_version_id_model_versions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["sample_id"], ["samples.id"], name=op.f("fk_heldout_samples_sample_id_samples")
        ),
        sa.PrimaryKeyConstraint("root_version_id", "sample_id", name=op.f("pk_heldout_samples")),
    )


def downgrade() -> None:
    op.drop_table("heldout_samples")
    op.drop_column("datasets", "label_map")
    with op.batch_alter_table("models") as batch:
        batch.drop_constraint("task_allowed", type_="check")
        batch.create_check_constraint("task_allowed", _allowed("task", OLD_TASKS))
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_constraint("artifact_format_allowed", type_="check")
        batch.drop_constraint("status_allowed", type_="check")
        batch.create_check_constraint("status_allowed", _allowed("status", OLD_STATUSES))
        batch.drop_column("status_reason")
        batch.drop_column("artifact_format")
