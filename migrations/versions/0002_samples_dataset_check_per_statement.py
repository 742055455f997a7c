"""Samples name an existing dataset: checked once per statement instead of once per row.

A foreign key checks each inserted row on its own (one lookup and lock of the dataset per sample): a
fifth of bulk registration's database time (Postgres CPU per sample 12.9 us with the key, 10.3 us with
these triggers; `python -m bench.provenance --samples 200000`, three runs of each, alternated).

On Postgres, statement-level triggers check the distinct datasets a statement's samples name, locking
them as the foreign key did (FOR KEY SHARE, so a concurrent delete of the dataset waits), and a dataset
that samples name cannot be deleted or renumbered. On SQLite (the demo's embedded database) row-level
triggers keep the same rules.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FOREIGN_KEY = "fk_samples_dataset_id_datasets"

_POSTGRES_UPGRADE = [
    # The statement's rows are read once (into `named`); the datasets found are locked as the key did.
    f"""
    CREATE FUNCTION samples_check_datasets() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        named text[];
        missing text;
    BEGIN
        SELECT array_agg(DISTINCT dataset_id) INTO named FROM new_samples;
        PERFORM 1 FROM datasets WHERE id = ANY(named) FOR KEY SHARE;
        SELECT wanted INTO missing FROM unnest(named) AS wanted
        WHERE NOT EXISTS (SELECT 1 FROM datasets WHERE datasets.id = wanted)
        LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'samples name dataset % which does not exist', missing
                USING ERRCODE = 'foreign_key_violation', CONSTRAINT = '{FOREIGN_KEY}',
                      TABLE = 'samples', COLUMN = 'dataset_id';
        END IF;
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER samples_check_datasets_on_insert AFTER INSERT ON samples
    REFERENCING NEW TABLE AS new_samples FOR EACH STATEMENT EXECUTE FUNCTION samples_check_datasets()
    """,
    """
    CREATE TRIGGER samples_check_datasets_on_update AFTER UPDATE ON samples
    REFERENCING NEW TABLE AS new_samples FOR EACH STATEMENT EXECUTE FUNCTION samples_check_datasets()
    """,
    f"""
    CREATE FUNCTION datasets_keep_samples() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'UPDATE' AND NEW.id = OLD.id THEN
            RETURN NEW;
        END IF;
        IF EXISTS (SELECT 1 FROM samples WHERE dataset_id = OLD.id) THEN
            RAISE EXCEPTION 'dataset % still has samples', OLD.id
                USING ERRCODE = 'foreign_key_violation', CONSTRAINT = '{FOREIGN_KEY}',
                      TABLE = 'datasets';
        END IF;
        RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
    END
    $$
    """,
    """
    CREATE TRIGGER datasets_keep_samples BEFORE DELETE OR UPDATE OF id ON datasets
    FOR EACH ROW EXECUTE FUNCTION datasets_keep_samples()
    """,
]
_POSTGRES_DOWNGRADE = [
    "DROP TRIGGER datasets_keep_samples ON datasets",
    "DROP FUNCTION datasets_keep_samples()",
    "DROP TRIGGER samples_check_datasets_on_update ON samples",
    "DROP TRIGGER samples_check_datasets_on_insert ON samples",
    "DROP FUNCTION samples_check_datasets()",
]

_SQLITE_FAILED = "SELECT RAISE(ABORT, 'FOREIGN KEY constraint failed')"
_SQLITE_UPGRADE = [
    f"""
    CREATE TRIGGER samples_check_datasets_on_insert BEFORE INSERT ON samples
    WHEN NOT EXISTS (SELECT 1 FROM datasets WHERE id = NEW.dataset_id)
    BEGIN {_SQLITE_FAILED}; END
    """,
    f"""
    CREATE TRIGGER samples_check_datasets_on_update BEFORE UPDATE OF dataset_id ON samples
    WHEN NOT EXISTS (SELECT 1 FROM datasets WHERE id = NEW.dataset_id)
    BEGIN {_SQLITE_FAILED}; END
    """,
    f"""
    CREATE TRIGGER datasets_keep_samples_on_delete BEFORE DELETE ON datasets
    WHEN EXISTS (SELECT 1 FROM samples WHERE dataset_id = OLD.id)
    BEGIN {_SQLITE_FAILED}; END
    """,
    f"""
    CREATE TRIGGER datasets_keep_samples_on_update BEFORE UPDATE OF id ON datasets
    WHEN NEW.id <> OLD.id AND EXISTS (SELECT 1 FROM samples WHERE dataset_id = OLD.id)
    BEGIN {_SQLITE_FAILED}; END
    """,
]
_SQLITE_DOWNGRADE = [
    "DROP TRIGGER datasets_keep_samples_on_update",
    "DROP TRIGGER datasets_keep_samples_on_delete",
    "DROP TRIGGER samples_check_datasets_on_update",
    "DROP TRIGGER samples_check_datasets_on_insert",
]


def _is_postgres() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    with op.batch_alter_table("samples") as batch:
        batch.drop_constraint(FOREIGN_KEY, type_="foreignkey")
    for statement in _POSTGRES_UPGRADE if _is_postgres() else _SQLITE_UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in _POSTGRES_DOWNGRADE if _is_postgres() else _SQLITE_DOWNGRADE:
        op.execute(statement)
    with op.batch_alter_table("samples") as batch:
        batch.create_foreign_key(FOREIGN_KEY, "datasets", ["dataset_id"], ["id"])
