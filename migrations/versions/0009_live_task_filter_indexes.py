"""Indexes for what dashboards filter live tasks by: status, model, parameter scale.

These are text the API sends, of any length, so on Postgres they are hash indexes: a hash
index keeps a 4-byte hash of the value, where a btree refuses an entry over about 2,700 bytes
and so would fail the load of a task with a long model name. A hash index answers equality
(`WHERE model = 'ERNIE-Speed'`, `run_status IN (...)`), which is how a dashboard's filter asks;
sorting and grouping read the table, one row per live task. SQLite's btree takes long keys.
Partial, over live tasks (deleted_at IS NULL), like the indexes of 0008.

Self-contained: it imports nothing from etl, so what it creates never follows later code.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 21:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXES = {
    "ix_finetune_tasks_live_run_status": "run_status",
    "ix_finetune_tasks_live_model": "model",
    "ix_finetune_tasks_live_parameter_scale": "parameter_scale",
}
LIVE = "deleted_at IS NULL"


def upgrade() -> None:
    for name, column in INDEXES.items():
        op.create_index(
            name,
            "finetune_tasks",
            [column],
            postgresql_using="hash",
            postgresql_where=sa.text(LIVE),
            sqlite_where=sa.text(LIVE),
        )


def downgrade() -> None:
    for name in INDEXES:
        op.drop_index(name, table_name="finetune_tasks")
