"""Kept task summaries, indexes on live tasks, views that read them.

- `finetune_tasks` gains, at the end, the summaries the views computed per query:
  `checkpoint_count`, `last_step`, `final_training_loss`, `min_perplexity` (from its
  checkpoints) and `bleu_4`, `rouge_1`, `rouge_2`, `rouge_l` (from its metrics). From now on the
  load writes them in the transaction that replaces the task's children; this revision
  backfills them from the child tables.
- Partial indexes over live tasks (deleted_at IS NULL) for what dashboards filter and sort by:
  creation time and checkpoint count; the job already has one. Text the API sends (model,
  status, parameter scale) is no index key: a long value would fail the load.
- `finetune_task_metrics_wide` and `finetune_task_overview` read the kept columns (SQL frozen in
  migrations/frozen/views_0008.py): same names, columns, order and values. On Postgres they are
  replaced in place (CREATE OR REPLACE), so their descriptions stay.

Self-contained: it imports nothing from etl, so what it creates never follows later code.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 15:00:00
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

from migrations.frozen import views_0005, views_0008

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEPT = " Kept by the load with its checkpoints."
METRICS = {"bleu_4": "BLEU-4", "rouge_1": "ROUGE-1", "rouge_2": "ROUGE-2", "rouge_l": "ROUGE-L"}
# Only columns of bounded size are keys (a btree refuses an entry over about 2,700 bytes on
# Postgres: an index on text the API sends would fail the load of a long one). deleted_at (NULL
# in all of them) ends each: SQLite counts a partial index as covering only if it holds the
# column of its own WHERE.
INDEXES = {
    "ix_finetune_tasks_live_create_time": ["create_time", "deleted_at"],
    "ix_finetune_tasks_live_checkpoint_count": ["checkpoint_count", "task_id", "deleted_at"],
}
LIVE = "deleted_at IS NULL"

BACKFILL_CHECKPOINTS = """
UPDATE finetune_tasks SET checkpoint_count = cp.n, last_step = cp.last_step,
       final_training_loss = cp.final_loss, min_perplexity = cp.min_perplexity
FROM (
    SELECT a.task_id, a.n, a.last_step, a.min_perplexity, c.training_loss AS final_loss
    FROM (
        SELECT task_id, COUNT(*) AS n, MAX(step) AS last_step, MIN(perplexity) AS min_perplexity
        FROM finetune_task_checkpoints GROUP BY task_id
    ) a
    JOIN finetune_task_checkpoints c ON c.task_id = a.task_id AND c.step = a.last_step
) cp
WHERE finetune_tasks.task_id = cp.task_id
"""


def _backfill_metrics_sql() -> str:
    pivots = ", ".join(
        f"MAX(CASE WHEN metric_name = '{name}' THEN value_percent END) AS {column}"
        for column, name in METRICS.items()
    )
    sets = ", ".join(f"{column} = m.{column}" for column in METRICS)
    return (
        f"UPDATE finetune_tasks SET {sets} FROM ("
        f"SELECT task_id, {pivots} FROM finetune_task_metrics GROUP BY task_id) m "
        "WHERE finetune_tasks.task_id = m.task_id"
    )


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect != "postgresql":
        views_0005.drop_all()  # SQLite checks views against a table it alters
    with op.batch_alter_table("finetune_tasks", schema=None) as batch_op:
        for column in _columns():
            batch_op.add_column(column)
    op.execute(BACKFILL_CHECKPOINTS)
    op.execute(_backfill_metrics_sql())
    for name, columns in INDEXES.items():
        op.create_index(
            name,
            "finetune_tasks",
            columns,
            postgresql_where=sa.text(LIVE),
            sqlite_where=sa.text(LIVE),
        )
    _create_views(views_0008.statements(dialect), dialect)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        _create_views(views_0005.statements(dialect), dialect)
    else:
        views_0005.drop_all()
    for name in INDEXES:
        op.drop_index(name, table_name="finetune_tasks")
    with op.batch_alter_table("finetune_tasks", schema=None) as batch_op:
        for column in reversed(_columns()):
            batch_op.drop_column(column.name)
    if dialect != "postgresql":
        _create_views(views_0005.statements(dialect), dialect)


def _create_views(statements: list[str], dialect: str) -> None:
    """Create the views; on Postgres replace them in place, which keeps their descriptions."""
    for statement in statements:
        if dialect == "postgresql":
            statement = statement.replace("CREATE VIEW", "CREATE OR REPLACE VIEW", 1)
        op.execute(statement)


def _columns() -> list[sa.Column[Any]]:
    return [
        sa.Column(
            "checkpoint_count",
            sa.BigInteger(),
            nullable=False,
            server_default="0",
            comment="Checkpoints the task has (0 when none)." + KEPT,
        ),
        sa.Column(
            "last_step",
            sa.BigInteger(),
            comment="Highest checkpoint step. NULL when the task has no checkpoint." + KEPT,
        ),
        sa.Column(
            "final_training_loss",
            sa.Float(),
            comment=(
                "Training loss at last_step. NULL when the task has no checkpoint or no finite "
                "loss there." + KEPT
            ),
        ),
        sa.Column(
            "min_perplexity",
            sa.Float(),
            comment="Lowest perplexity over the task's checkpoints. NULL when none is finite."
            + KEPT,
        ),
        *_metric_columns(),
    ]


def _metric_columns() -> list[sa.Column[Any]]:
    return [
        sa.Column(
            column,
            sa.Float(),
            comment=(
                f"{name} in percent (its finetune_task_metrics.value_percent). NULL when the "
                "task has no such metric or it is not a number. Kept by the load with its metrics."
            ),
        )
        for column, name in METRICS.items()
    ]
