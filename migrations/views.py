"""The BI views as the code knows them now: their SQL, and their descriptions.

The SQL is that of the newest revision that changed a view (0008): revisions never import this
module, which reads etl/schema.py; each one creates its views from a frozen copy named for it
(migrations/frozen/views_NNNN.py). A revision that changes a view writes its own copy, and
this module then points at it. The descriptions are made from etl/schema.py's comments.
"""

from etl.schema import metadata
from migrations.frozen.views_0001 import METRIC_COLUMNS
from migrations.frozen.views_0005 import LIVE_VIEWS
from migrations.frozen.views_0008 import VIEW_NAMES, statements

__all__ = ["VIEW_DESCRIPTIONS", "VIEW_NAMES", "statements"]


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
