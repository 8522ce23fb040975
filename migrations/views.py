"""The BI views as SQL text with their descriptions: the current definitions (revision 0005).

Views are replaced, not altered: a revision that changes one drops and re-creates it. Before
changing a definition here, copy this module to views_NNNN.py and point the revisions that use
it at the copy, so they stay reproducible (views_0001.py holds those of revisions 0001-0004).
"""

from alembic import op

from etl.schema import metadata
from migrations.views_0001 import METRIC_COLUMNS, metrics_wide_sql

# Whole milliseconds: SQLite's julianday arithmetic leaves float noise in the microseconds.
DURATION_SECONDS = {
    "postgresql": "ROUND(CAST(EXTRACT(EPOCH FROM (w.finish_time - w.create_time)) AS numeric), 3)",
    "sqlite": "ROUND((julianday(w.finish_time) - julianday(w.create_time)) * 86400.0, 3)",
}
# The table behind each *_live view: its rows of live tasks, plus the task's job and model.
LIVE_VIEWS = {
    "finetune_task_metrics_live": "finetune_task_metrics",
    "finetune_task_checkpoints_live": "finetune_task_checkpoints",
}
VIEW_NAMES = ("finetune_task_metrics_wide", "finetune_task_overview", *LIVE_VIEWS)


def overview_sql(dialect: str) -> str:
    """One row per live task: status, duration, checkpoint summary, metrics, error, job."""
    return f"""
CREATE VIEW finetune_task_overview AS
WITH cp AS (
    SELECT task_id, COUNT(*) AS checkpoint_count, MAX(step) AS last_step,
           MIN(perplexity) AS min_perplexity
    FROM finetune_task_checkpoints
    GROUP BY task_id
)
SELECT
    w.task_id, w.job_id, w.job_name, w.model, w.train_mode, w.parameter_scale, w.run_status,
    w.create_time, w.finish_time,
    {DURATION_SECONDS[dialect]} AS duration_seconds,
    COALESCE(cp.checkpoint_count, 0) AS checkpoint_count,
    cp.last_step,
    (SELECT c.training_loss FROM finetune_task_checkpoints c
      WHERE c.task_id = w.task_id AND c.step = cp.last_step) AS final_training_loss,
    cp.min_perplexity,
    w.bleu_4, w.rouge_1, w.rouge_2, w.rouge_l,
    t.error_code, t.error_message, w.job_description
FROM finetune_task_metrics_wide w
JOIN finetune_tasks t ON t.task_id = w.task_id
LEFT JOIN cp ON cp.task_id = w.task_id
"""


def live_sql(view: str) -> str:
    """The child table's rows whose task is live, with the task's job and model."""
    table = metadata.tables[LIVE_VIEWS[view]]
    columns = ", ".join(f"x.{column.name}" for column in table.columns)
    return f"""
CREATE VIEW {view} AS
SELECT {columns}, t.job_id, t.model
FROM {table.name} x
JOIN finetune_tasks t ON t.task_id = x.task_id
WHERE t.deleted_at IS NULL
"""


def create_all(dialect: str) -> None:
    """Create the views (the overview reads the wide view, so it comes after it)."""
    op.execute(metrics_wide_sql())
    op.execute(overview_sql(dialect))
    for view in LIVE_VIEWS:
        op.execute(live_sql(view))


def drop_all() -> None:
    """Drop the views, dependants first."""
    for view in reversed(VIEW_NAMES):
        op.execute(f"DROP VIEW IF EXISTS {view}")


# -- descriptions (COMMENT ON VIEW / COLUMN; the README's Tables section is made from them) --


def _same(table_column: str) -> str:
    """A view column that passes a table column through keeps its description."""
    table, column = table_column.split(".")
    return str(metadata.tables[table].c[column].comment)


def _metric(column: str) -> str:
    return (
        f"{METRIC_COLUMNS[column]} in percent (finetune_task_metrics.value_percent). "
        "NULL when the task has no such metric or it is not a number."
    )


_TASK_COLUMNS = ("task_id", "job_id", "model", "train_mode", "parameter_scale", "run_status")
_WIDE = {
    **{name: _same(f"finetune_tasks.{name}") for name in _TASK_COLUMNS[:2]},
    "job_name": _same("finetune_jobs.name"),
    "job_description": _same("finetune_jobs.description"),
    **{name: _same(f"finetune_tasks.{name}") for name in _TASK_COLUMNS[2:]},
    "create_time": _same("finetune_tasks.create_time"),
    "finish_time": _same("finetune_tasks.finish_time"),
    **{column: _metric(column) for column in METRIC_COLUMNS},
}
_OVERVIEW = {
    **{name: _WIDE[name] for name in ("task_id", "job_id", "job_name", *_TASK_COLUMNS[2:])},
    "create_time": _WIDE["create_time"],
    "finish_time": _WIDE["finish_time"],
    "duration_seconds": (
        "finish_time - create_time in seconds, rounded to the millisecond. "
        "NULL until the task finishes."
    ),
    "checkpoint_count": "Checkpoints the task has (0 when none).",
    "last_step": "Highest checkpoint step. NULL when the task has no checkpoint.",
    "final_training_loss": (
        "Training loss at last_step. NULL when the task has no checkpoint or no finite loss there."
    ),
    "min_perplexity": "Lowest perplexity over the task's checkpoints. NULL when none is finite.",
    **{column: _WIDE[column] for column in METRIC_COLUMNS},
    "error_code": _same("finetune_tasks.error_code"),
    "error_message": _same("finetune_tasks.error_message"),
    "job_description": _WIDE["job_description"],
}


def _live(view: str) -> dict[str, str]:
    table = metadata.tables[LIVE_VIEWS[view]]
    return {
        **{column.name: str(column.comment) for column in table.columns},
        "job_id": _same("finetune_tasks.job_id"),
        "model": _same("finetune_tasks.model"),
    }


VIEW_DESCRIPTIONS: dict[str, tuple[str, dict[str, str]]] = {
    "finetune_task_metrics_wide": (
        "One row per live task: task and job columns plus the four metrics in percent.",
        _WIDE,
    ),
    "finetune_task_overview": (
        "One row per live task: job, status, duration, checkpoint summary, the four metrics "
        "and the task's error.",
        _OVERVIEW,
    ),
    "finetune_task_metrics_live": (
        "finetune_task_metrics of live tasks only (soft-deleted tasks left out), with the "
        "task's job_id and model.",
        _live("finetune_task_metrics_live"),
    ),
    "finetune_task_checkpoints_live": (
        "finetune_task_checkpoints of live tasks only (soft-deleted tasks left out), with the "
        "task's job_id and model: loss curves.",
        _live("finetune_task_checkpoints_live"),
    ),
}
