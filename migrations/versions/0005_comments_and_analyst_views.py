"""Descriptions on every table, column and view; analyst views.

- `COMMENT ON` every table, column and view, and every view column (Postgres; SQLite has no
  comments): units, meaning, NULL rules. The texts below are a copy as of this revision; the
  current ones live in etl/schema.py (`comment=`) and migrations/views.py. The views' SQL is
  frozen in migrations/frozen/views_0005.py.
- `finetune_task_metrics_live` and `finetune_task_checkpoints_live`: the child rows of live
  tasks only.
- `finetune_task_overview` gains `error_code`, `error_message` and `job_description` (at the
  end); its `duration_seconds` is rounded to the millisecond on both backends.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 11:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from migrations.frozen import views_0001, views_0005

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    views_0001.drop_all()
    views_0005.create_all(dialect)
    if dialect == "postgresql":
        describe(TABLES, "TABLE")
        describe(VIEWS, "VIEW")


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    views_0005.drop_all()
    views_0001.create_all(dialect)
    if dialect == "postgresql":
        describe({name: (None, dict.fromkeys(columns)) for name, (_, columns) in TABLES.items()})


def describe(
    objects: dict[str, tuple[str | None, dict[str, str | None]]], kind: str = "TABLE"
) -> None:
    """COMMENT ON each object and its columns (None removes a comment)."""
    for name, (comment, columns) in objects.items():
        op.execute(sa.text(f"COMMENT ON {kind} {name} IS {_literal(comment)}"))
        for column, text in columns.items():
            op.execute(sa.text(f"COMMENT ON COLUMN {name}.{column} IS {_literal(text)}"))


def _literal(text: str | None) -> str:
    # COMMENT takes no bind parameters; a colon would read as one to sa.text.
    return "NULL" if text is None else "'" + text.replace("'", "''").replace(":", "\\:") + "'"


TABLES: dict[str, tuple[str, dict[str, str]]] = {
    "etl_runs": (
        (
            "One row per qianfan-etl sync run (dry runs leave none): what it saw, wrote and how it "
            "ended."
        ),
        {
            "run_id": "Run number, increasing. Primary key.",
            "started_at": "When the run started, UTC. Never NULL.",
            "finished_at": "When the run ended, UTC. NULL while running and for abandoned runs.",
            "status": (
                "running, succeeded, partial (some jobs could not be listed: see etl_failed_jobs), "
                "failed (error says why), or abandoned (the process died; marked by the next run)."
            ),
            "jobs_seen": "Jobs the run listed.",
            "tasks_seen": "Tasks the run listed.",
            "tasks_changed": "Tasks the run found new or changed (and wrote).",
            "rows_written": "Rows the run inserted, updated or soft-deleted, all tables together.",
            "api_calls": "Qianfan API requests the run made, retries included.",
            "rejects": "Records the run set aside in etl_rejects.",
            "error": "Why the run failed or was abandoned. NULL when it succeeded or is running.",
            "mode": (
                "full (every job), selected (--job-id: only those jobs), or active "
                "(--active-only). Never NULL."
            ),
            "exit_code": (
                "The process exit code the run ended with (0 success; see README, Exit codes). "
                "NULL while running or when it could not be recorded."
            ),
            "jobs_failed": (
                "Jobs whose task listing failed in this run (listed in etl_failed_jobs)."
            ),
            "jobs_skipped": "Jobs carried over without listing their tasks (--active-only).",
        },
    ),
    "finetune_jobs": (
        (
            "Fine-tuning jobs of the Qianfan account (DescribeFineTuningJobs), one row per job. A "
            "row is live while deleted_at is NULL."
        ),
        {
            "job_id": "Qianfan job id (jobId). Primary key.",
            "name": "Job name (name) as shown in the console. NULL when upstream gave none.",
            "description": "Job description (description). NULL when upstream gave none.",
            "model": "Base model being fine-tuned (model). NULL when upstream gave none.",
            "train_mode": "Training mode (trainMode), e.g. SFT. NULL when upstream gave none.",
            "create_time": (
                "When the job was created upstream (createTime), UTC. NULL when missing or "
                "unparseable (the text stays in raw)."
            ),
            "raw": (
                "The job exactly as the API returned it (JSON; NUL characters removed). Never NULL."
            ),
            "content_hash": (
                "SHA-256 of the record's canonical JSON: the same hash means the same record, so a "
                "re-run skips it. Never NULL."
            ),
            "first_seen_at": "When a run first stored this job, UTC. Never NULL.",
            "last_changed_at": (
                "When a run last stored a change to this job (first stored it, at first), UTC. "
                "Never NULL."
            ),
            "deleted_at": (
                "When a complete listing first lacked this job, UTC. NULL while the job exists "
                "upstream; cleared if it comes back."
            ),
        },
    ),
    "finetune_task_checkpoints": (
        (
            "Training checkpoints of each task (its checkpointList), one row per task and step. "
            "Rows of a soft-deleted task stay: read finetune_task_checkpoints_live for live tasks "
            "only."
        ),
        {
            "task_id": (
                "The task (finetune_tasks.task_id; no foreign key, see README). Part of the "
                "primary key."
            ),
            "step": "Training step of the checkpoint. Part of the primary key.",
            "training_loss": (
                "Training loss at this step (trainingLoss), unitless. NULL when not a finite "
                "number."
            ),
            "perplexity": "Perplexity at this step, unitless. NULL when not a finite number.",
        },
    ),
    "finetune_task_metrics": (
        (
            "Evaluation metrics of each task (its metrics object), one row per task and metric "
            "name. Rows of a soft-deleted task stay: read finetune_task_metrics_live for live "
            "tasks only."
        ),
        {
            "task_id": (
                "The task (finetune_tasks.task_id; no foreign key, see README). Part of the "
                "primary key."
            ),
            "metric_name": (
                "Metric name as upstream gives it, e.g. BLEU-4, ROUGE-1, ROUGE-2, ROUGE-L. Part of "
                "the primary key."
            ),
            "value_percent": (
                'The value in percent ("17.03%" gives 17.03). NULL when it is not a finite number '
                '(e.g. "N/A").'
            ),
            "value_raw": "The value as received, as text. NULL when upstream gave null.",
        },
    ),
    "etl_failed_jobs": (
        (
            "The jobs a run could not list, with why; their stored rows were left as they were. "
            "One row per run and job."
        ),
        {
            "run_id": "The run (etl_runs.run_id). Part of the primary key.",
            "job_id": "The job whose task listing failed. Part of the primary key.",
            "error_class": (
                "Kind of failure, the error's class name (e.g. TransientError, ContractError)."
            ),
            "exit_code": (
                "Exit code this failure alone would give (65 broken data, 75 temporary, 77 not "
                "allowed)."
            ),
            "message": "What happened, as the log said it (no secrets).",
            "failed_at": "When the job's listing failed, UTC.",
        },
    ),
    "etl_rejects": (
        (
            "Records a run could not type or store, kept with their raw JSON and the reason; the "
            "good records of the run loaded."
        ),
        {
            "reject_id": "Reject number, increasing. Primary key.",
            "run_id": "The run that set the record aside (etl_runs.run_id).",
            "entity": "job or task.",
            "source_id": "The record's jobId or taskId. NULL when it has no readable id.",
            "reason": "Why the record was set aside, e.g. metrics is not an object.",
            "raw": (
                "The record as received (JSON), or an excerpt of an over-long or over-deep one. "
                "NULL when it could not be kept."
            ),
            "rejected_at": "When it was set aside, UTC.",
        },
    ),
    "finetune_task_status_history": (
        (
            "Status changes of each task: a row when a run first sees a task and whenever a run "
            "sees its run_status change."
        ),
        {
            "task_id": "The task (finetune_tasks.task_id). Part of the primary key.",
            "run_id": "The run that saw this status (etl_runs.run_id). Part of the primary key.",
            "run_status": "The task's runStatus as that run saw it. NULL when upstream gave none.",
            "observed_at": "When that run saw it, UTC.",
        },
    ),
    "finetune_tasks": (
        (
            "Fine-tuning tasks (runs) of every job (DescribeFineTuningTasks), one row per task. A "
            "row is live while deleted_at is NULL."
        ),
        {
            "task_id": "Qianfan task id (taskId). Primary key.",
            "job_id": "The task's job (references finetune_jobs.job_id). Never NULL.",
            "job_name": (
                "Job name as the task listing gives it (jobName). NULL when upstream gave none."
            ),
            "job_description": (
                "Job description as the task listing gives it (jobDescription). NULL when upstream "
                "gave none."
            ),
            "model": "Base model being fine-tuned (model). NULL when upstream gave none.",
            "train_mode": "Training mode (trainMode), e.g. SFT. NULL when upstream gave none.",
            "parameter_scale": (
                "Parameter-efficient or full training (parameterScale), e.g. LoRA, FullFineTuning. "
                "NULL when upstream gave none."
            ),
            "run_status": (
                "Run status as upstream reports it (runStatus): Done, Running, Failed, Stopped, "
                "Waiting. NULL when upstream gave none."
            ),
            "create_time": (
                "When the task was created upstream (createTime), UTC. NULL when missing or "
                "unparseable."
            ),
            "finish_time": (
                "When the task finished (finishTime), UTC. NULL until it finishes, for the "
                "0000-00-00 sentinel, and when unparseable."
            ),
            "error_code": (
                "Upstream error code of a failed task (errorCode). NULL when the task has none."
            ),
            "error_message": (
                "Upstream error message of a failed task (errorMessage). NULL when the task has "
                "none."
            ),
            "raw": (
                "The task exactly as the API returned it (JSON; NUL characters removed). Never "
                "NULL."
            ),
            "content_hash": (
                "SHA-256 of the record's canonical JSON: the same hash means the same record, so a "
                "re-run skips it and its children. Never NULL."
            ),
            "first_seen_at": "When a run first stored this task, UTC. Never NULL.",
            "last_changed_at": (
                "When a run last stored a change to this task (first stored it, at first), UTC. "
                "Never NULL."
            ),
            "deleted_at": (
                "When its job's complete task listing first lacked this task, UTC. NULL while the "
                "task exists upstream; cleared if it comes back."
            ),
            "run_progress": (
                "Training progress in percent (0-100) from the task detail call, while Running. "
                "NULL when not fetched. Outside content_hash."
            ),
            "vdl_link": (
                "Link to the task's VisualDL training charts in the console (vdlLink, from the "
                "detail call). NULL when not fetched."
            ),
            "progress_at": (
                "When run_progress and vdl_link were fetched, UTC. NULL when never fetched."
            ),
        },
    ),
}

VIEWS: dict[str, tuple[str, dict[str, str]]] = {
    "finetune_task_metrics_wide": (
        "One row per live task: task and job columns plus the four metrics in percent.",
        {
            "task_id": "Qianfan task id (taskId). Primary key.",
            "job_id": "The task's job (references finetune_jobs.job_id). Never NULL.",
            "job_name": "Job name (name) as shown in the console. NULL when upstream gave none.",
            "job_description": "Job description (description). NULL when upstream gave none.",
            "model": "Base model being fine-tuned (model). NULL when upstream gave none.",
            "train_mode": "Training mode (trainMode), e.g. SFT. NULL when upstream gave none.",
            "parameter_scale": (
                "Parameter-efficient or full training (parameterScale), e.g. LoRA, FullFineTuning. "
                "NULL when upstream gave none."
            ),
            "run_status": (
                "Run status as upstream reports it (runStatus): Done, Running, Failed, Stopped, "
                "Waiting. NULL when upstream gave none."
            ),
            "create_time": (
                "When the task was created upstream (createTime), UTC. NULL when missing or "
                "unparseable."
            ),
            "finish_time": (
                "When the task finished (finishTime), UTC. NULL until it finishes, for the "
                "0000-00-00 sentinel, and when unparseable."
            ),
            "bleu_4": (
                "BLEU-4 in percent (finetune_task_metrics.value_percent). NULL when the task has "
                "no such metric or it is not a number."
            ),
            "rouge_1": (
                "ROUGE-1 in percent (finetune_task_metrics.value_percent). NULL when the task has "
                "no such metric or it is not a number."
            ),
            "rouge_2": (
                "ROUGE-2 in percent (finetune_task_metrics.value_percent). NULL when the task has "
                "no such metric or it is not a number."
            ),
            "rouge_l": (
                "ROUGE-L in percent (finetune_task_metrics.value_percent). NULL when the task has "
                "no such metric or it is not a number."
            ),
        },
    ),
    "finetune_task_overview": (
        (
            "One row per live task: job, status, duration, checkpoint summary, the four metrics "
            "and the task's error."
        ),
        {
            "task_id": "Qianfan task id (taskId). Primary key.",
            "job_id": "The task's job (references finetune_jobs.job_id). Never NULL.",
            "job_name": "Job name (name) as shown in the console. NULL when upstream gave none.",
            "model": "Base model being fine-tuned (model). NULL when upstream gave none.",
            "train_mode": "Training mode (trainMode), e.g. SFT. NULL when upstream gave none.",
            "parameter_scale": (
                "Parameter-efficient or full training (parameterScale), e.g. LoRA, FullFineTuning. "
                "NULL when upstream gave none."
            ),
            "run_status": (
                "Run status as upstream reports it (runStatus): Done, Running, Failed, Stopped, "
                "Waiting. NULL when upstream gave none."
            ),
            "create_time": (
                "When the task was created upstream (createTime), UTC. NULL when missing or "
                "unparseable."
            ),
            "finish_time": (
                "When the task finished (finishTime), UTC. NULL until it finishes, for the "
                "0000-00-00 sentinel, and when unparseable."
            ),
            "duration_seconds": (
                "finish_time - create_time in seconds, rounded to the millisecond. NULL until the "
                "task finishes."
            ),
            "checkpoint_count": "Checkpoints the task has (0 when none).",
            "last_step": "Highest checkpoint step. NULL when the task has no checkpoint.",
            "final_training_loss": (
                "Training loss at last_step. NULL when the task has no checkpoint or no finite "
                "loss there."
            ),
            "min_perplexity": (
                "Lowest perplexity over the task's checkpoints. NULL when none is finite."
            ),
            "bleu_4": (
                "BLEU-4 in percent (finetune_task_metrics.value_percent). NULL when the task has "
                "no such metric or it is not a number."
            ),
            "rouge_1": (
                "ROUGE-1 in percent (finetune_task_metrics.value_percent). NULL when the task has "
                "no such metric or it is not a number."
            ),
            "rouge_2": (
                "ROUGE-2 in percent (finetune_task_metrics.value_percent). NULL when the task has "
                "no such metric or it is not a number."
            ),
            "rouge_l": (
                "ROUGE-L in percent (finetune_task_metrics.value_percent). NULL when the task has "
                "no such metric or it is not a number."
            ),
            "error_code": (
                "Upstream error code of a failed task (errorCode). NULL when the task has none."
            ),
            "error_message": (
                "Upstream error message of a failed task (errorMessage). NULL when the task has "
                "none."
            ),
            "job_description": "Job description (description). NULL when upstream gave none.",
        },
    ),
    "finetune_task_metrics_live": (
        (
            "finetune_task_metrics of live tasks only (soft-deleted tasks left out), with the "
            "task's job_id and model."
        ),
        {
            "task_id": (
                "The task (finetune_tasks.task_id; no foreign key, see README). Part of the "
                "primary key."
            ),
            "metric_name": (
                "Metric name as upstream gives it, e.g. BLEU-4, ROUGE-1, ROUGE-2, ROUGE-L. Part of "
                "the primary key."
            ),
            "value_percent": (
                'The value in percent ("17.03%" gives 17.03). NULL when it is not a finite number '
                '(e.g. "N/A").'
            ),
            "value_raw": "The value as received, as text. NULL when upstream gave null.",
            "job_id": "The task's job (references finetune_jobs.job_id). Never NULL.",
            "model": "Base model being fine-tuned (model). NULL when upstream gave none.",
        },
    ),
    "finetune_task_checkpoints_live": (
        (
            "finetune_task_checkpoints of live tasks only (soft-deleted tasks left out), with the "
            "task's job_id and model: loss curves."
        ),
        {
            "task_id": (
                "The task (finetune_tasks.task_id; no foreign key, see README). Part of the "
                "primary key."
            ),
            "step": "Training step of the checkpoint. Part of the primary key.",
            "training_loss": (
                "Training loss at this step (trainingLoss), unitless. NULL when not a finite "
                "number."
            ),
            "perplexity": "Perplexity at this step, unitless. NULL when not a finite number.",
            "job_id": "The task's job (references finetune_jobs.job_id). Never NULL.",
            "model": "Base model being fine-tuned (model). NULL when upstream gave none.",
        },
    ),
}
