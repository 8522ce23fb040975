"""The BI views as revision 0008 made them (frozen: that revision stays reproducible).

The wide view and the overview read the summaries kept on finetune_tasks (checkpoint count,
last step, final loss, minimum perplexity, the four metrics) instead of aggregating every
checkpoint and pivoting every metric per query. Same names, columns, order and values as
revision 0005's; the *_live views are unchanged. The job's name and description are scalar
subqueries rather than a join: the same values (every task's job exists, finetune_tasks.job_id
being NOT NULL with a foreign key), and a query that reads no job column reads no job, so
Postgres can answer it from an index on finetune_tasks alone (index-only; a join, even a
removable LEFT JOIN, keeps job_id needed on Postgres 15 and so forces the heap).
"""

from migrations.frozen.views_0005 import CHECKPOINTS_LIVE_SQL, LIVE_VIEWS, METRICS_LIVE_SQL

JOB_NAME = "(SELECT j.name FROM finetune_jobs j WHERE j.job_id = t.job_id)"
JOB_DESCRIPTION = "(SELECT j.description FROM finetune_jobs j WHERE j.job_id = t.job_id)"

# Whole milliseconds: SQLite's julianday arithmetic leaves float noise in the microseconds.
DURATION_SECONDS = {
    "postgresql": "ROUND(CAST(EXTRACT(EPOCH FROM (t.finish_time - t.create_time)) AS numeric), 3)",
    "sqlite": "ROUND((julianday(t.finish_time) - julianday(t.create_time)) * 86400.0, 3)",
}
VIEW_NAMES = ("finetune_task_metrics_wide", "finetune_task_overview", *LIVE_VIEWS)

METRICS_WIDE_SQL = f"""
CREATE VIEW finetune_task_metrics_wide AS
SELECT
    t.task_id, t.job_id, {JOB_NAME} AS job_name,
    {JOB_DESCRIPTION} AS job_description,
    t.model, t.train_mode, t.parameter_scale, t.run_status, t.create_time, t.finish_time,
    t.bleu_4, t.rouge_1, t.rouge_2, t.rouge_l
FROM finetune_tasks t
WHERE t.deleted_at IS NULL
"""


def overview_sql(dialect: str) -> str:
    """One row per live task: status, duration, checkpoint summary, metrics, error, job."""
    return f"""
CREATE VIEW finetune_task_overview AS
SELECT
    t.task_id, t.job_id, {JOB_NAME} AS job_name, t.model, t.train_mode, t.parameter_scale,
    t.run_status, t.create_time, t.finish_time,
    {DURATION_SECONDS[dialect]} AS duration_seconds,
    t.checkpoint_count, t.last_step, t.final_training_loss, t.min_perplexity,
    t.bleu_4, t.rouge_1, t.rouge_2, t.rouge_l,
    t.error_code, t.error_message, {JOB_DESCRIPTION} AS job_description
FROM finetune_tasks t
WHERE t.deleted_at IS NULL
"""


def statements(dialect: str) -> list[str]:
    """The CREATE VIEW statements in order."""
    return [METRICS_WIDE_SQL, overview_sql(dialect), METRICS_LIVE_SQL, CHECKPOINTS_LIVE_SQL]
