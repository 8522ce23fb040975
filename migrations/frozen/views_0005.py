"""The BI views as revision 0005 made them (frozen: that revision stays reproducible).

A later change to a view copies this module to views_NNNN.py for its own revision; the code
reads the current definitions through migrations/views.py.
"""

from alembic import op

from migrations.frozen.views_0001 import metrics_wide_sql

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

METRICS_LIVE_SQL = """
CREATE VIEW finetune_task_metrics_live AS
SELECT x.task_id, x.metric_name, x.value_percent, x.value_raw, t.job_id, t.model
FROM finetune_task_metrics x
JOIN finetune_tasks t ON t.task_id = x.task_id
WHERE t.deleted_at IS NULL
"""
CHECKPOINTS_LIVE_SQL = """
CREATE VIEW finetune_task_checkpoints_live AS
SELECT x.task_id, x.step, x.training_loss, x.perplexity, t.job_id, t.model
FROM finetune_task_checkpoints x
JOIN finetune_tasks t ON t.task_id = x.task_id
WHERE t.deleted_at IS NULL
"""


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


def statements(dialect: str) -> list[str]:
    """The CREATE VIEW statements in order (the overview reads the wide view)."""
    return [metrics_wide_sql(), overview_sql(dialect), METRICS_LIVE_SQL, CHECKPOINTS_LIVE_SQL]


def create_all(dialect: str) -> None:
    """Create the views."""
    for statement in statements(dialect):
        op.execute(statement)


def drop_all() -> None:
    """Drop the views, dependants first."""
    for view in reversed(VIEW_NAMES):
        op.execute(f"DROP VIEW IF EXISTS {view}")
