"""The BI views as revisions 0001-0004 made them (frozen: those revisions stay reproducible).

The current definitions are read through migrations/views.py.
"""

from alembic import op

METRIC_COLUMNS = {
    "bleu_4": "BLEU-4",
    "rouge_1": "ROUGE-1",
    "rouge_2": "ROUGE-2",
    "rouge_l": "ROUGE-L",
}

DURATION_SECONDS = {
    "postgresql": "EXTRACT(EPOCH FROM (w.finish_time - w.create_time))",
    "sqlite": "(julianday(w.finish_time) - julianday(w.create_time)) * 86400.0",
}


def metrics_wide_sql() -> str:
    """One row per live task: task and job columns plus the four metrics in percent."""
    pivots = ",\n".join(
        f"    MAX(CASE WHEN m.metric_name = '{name}' THEN m.value_percent END) AS {column}"
        for column, name in METRIC_COLUMNS.items()
    )
    return f"""
CREATE VIEW finetune_task_metrics_wide AS
SELECT
    t.task_id, t.job_id, j.name AS job_name, j.description AS job_description,
    t.model, t.train_mode, t.parameter_scale, t.run_status, t.create_time, t.finish_time,
{pivots}
FROM finetune_tasks t
JOIN finetune_jobs j ON j.job_id = t.job_id
LEFT JOIN finetune_task_metrics m ON m.task_id = t.task_id
WHERE t.deleted_at IS NULL
GROUP BY
    t.task_id, t.job_id, j.name, j.description, t.model, t.train_mode, t.parameter_scale,
    t.run_status, t.create_time, t.finish_time
"""


def overview_sql(dialect: str) -> str:
    """One row per live task: status, duration, checkpoint summary and the four metrics."""
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
    w.bleu_4, w.rouge_1, w.rouge_2, w.rouge_l
FROM finetune_task_metrics_wide w
LEFT JOIN cp ON cp.task_id = w.task_id
"""


def create_all(dialect: str) -> None:
    """Create both views (the overview reads the wide view, so it comes second)."""
    op.execute(metrics_wide_sql())
    op.execute(overview_sql(dialect))


def drop_all() -> None:
    """Drop both views, dependants first."""
    op.execute("DROP VIEW IF EXISTS finetune_task_overview")
    op.execute("DROP VIEW IF EXISTS finetune_task_metrics_wide")
