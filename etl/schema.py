"""The tables (README, 'Tables') as SQLAlchemy Core metadata: what Alembic autogenerates from."""

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

# jsonb on Postgres, JSON text elsewhere.
Json = sa.JSON().with_variant(JSONB(), "postgresql")
Timestamp = sa.DateTime(timezone=True)
# The metrics the wide view pivots and finetune_tasks keeps, by column: column -> metric_name.
PIVOTED_METRICS = {
    "bleu_4": "BLEU-4",
    "rouge_1": "ROUGE-1",
    "rouge_2": "ROUGE-2",
    "rouge_l": "ROUGE-L",
}
# Partial indexes over live tasks (deleted_at IS NULL) for what dashboards sort and filter by.
# Only columns of bounded size are keys: a btree refuses an entry over about 2,700 bytes on
# Postgres, so an index on text the API sends (model, status, parameter scale) would fail the
# load of a task with a long one. deleted_at (NULL in all of them) ends each one: SQLite counts a
# partial index as covering only if it holds the column of its own WHERE.
LIVE_TASK_INDEXES = {
    "ix_finetune_tasks_live_create_time": ("create_time", "deleted_at"),
    "ix_finetune_tasks_live_checkpoint_count": ("checkpoint_count", "task_id", "deleted_at"),
}
# What dashboards filter live tasks by equality on, text the API sends: a hash index on
# Postgres keeps a 4-byte hash of any value, however long (SQLite's btree takes long keys).
LIVE_TASK_FILTER_INDEXES = {
    "ix_finetune_tasks_live_run_status": "run_status",
    "ix_finetune_tasks_live_model": "model",
    "ix_finetune_tasks_live_parameter_scale": "parameter_scale",
}

finetune_jobs = sa.Table(
    "finetune_jobs",
    metadata,
    sa.Column(
        "job_id",
        sa.Text,
        primary_key=True,
        comment="Qianfan job id (jobId). Primary key.",
    ),
    sa.Column(
        "name",
        sa.Text,
        comment="Job name (name) as shown in the console. NULL when upstream gave none.",
    ),
    sa.Column(
        "description",
        sa.Text,
        comment="Job description (description). NULL when upstream gave none.",
    ),
    sa.Column(
        "model",
        sa.Text,
        comment="Base model being fine-tuned (model). NULL when upstream gave none.",
    ),
    sa.Column(
        "train_mode",
        sa.Text,
        comment="Training mode (trainMode), e.g. SFT. NULL when upstream gave none.",
    ),
    sa.Column(
        "create_time",
        Timestamp,
        comment=(
            "When the job was created upstream (createTime), UTC. NULL when missing or "
            "unparseable (the text stays in raw)."
        ),
    ),
    sa.Column(
        "raw",
        Json,
        nullable=False,
        comment=(
            "The job exactly as the API returned it (JSON; NUL characters removed). Never NULL."
        ),
    ),
    sa.Column(
        "content_hash",
        sa.Text,
        nullable=False,
        comment=(
            "SHA-256 of the record's canonical JSON: the same hash means the same record, so a "
            "re-run skips it. Never NULL."
        ),
    ),
    sa.Column(
        "first_seen_at",
        Timestamp,
        nullable=False,
        comment="When a run first stored this job, UTC. Never NULL.",
    ),
    sa.Column(
        "last_changed_at",
        Timestamp,
        nullable=False,
        comment=(
            "When a run last stored a change to this job (first stored it, at first), UTC. Never "
            "NULL."
        ),
    ),
    sa.Column(
        "deleted_at",
        Timestamp,
        comment=(
            "When a complete listing first lacked this job, UTC. NULL while the job exists "
            "upstream; cleared if it comes back."
        ),
    ),
    comment=(
        "Fine-tuning jobs of the Qianfan account (DescribeFineTuningJobs), one row per job. A row "
        "is live while deleted_at is NULL."
    ),
)

finetune_tasks = sa.Table(
    "finetune_tasks",
    metadata,
    sa.Column(
        "task_id",
        sa.Text,
        primary_key=True,
        comment="Qianfan task id (taskId). Primary key.",
    ),
    sa.Column(
        "job_id",
        sa.Text,
        sa.ForeignKey("finetune_jobs.job_id"),
        nullable=False,
        index=True,
        comment="The task's job (references finetune_jobs.job_id). Never NULL.",
    ),
    sa.Column(
        "job_name",
        sa.Text,
        comment="Job name as the task listing gives it (jobName). NULL when upstream gave none.",
    ),
    sa.Column(
        "job_description",
        sa.Text,
        comment=(
            "Job description as the task listing gives it (jobDescription). NULL when upstream "
            "gave none."
        ),
    ),
    sa.Column(
        "model",
        sa.Text,
        comment="Base model being fine-tuned (model). NULL when upstream gave none.",
    ),
    sa.Column(
        "train_mode",
        sa.Text,
        comment="Training mode (trainMode), e.g. SFT. NULL when upstream gave none.",
    ),
    sa.Column(
        "parameter_scale",
        sa.Text,
        comment=(
            "Parameter-efficient or full training (parameterScale), e.g. LoRA, FullFineTuning. "
            "NULL when upstream gave none."
        ),
    ),
    sa.Column(
        "run_status",
        sa.Text,
        comment=(
            "Run status as upstream reports it (runStatus): Done, Running, Failed, Stopped, "
            "Waiting. NULL when upstream gave none."
        ),
    ),
    sa.Column(
        "create_time",
        Timestamp,
        comment=(
            "When the task was created upstream (createTime), UTC. NULL when missing or "
            "unparseable."
        ),
    ),
    sa.Column(
        "finish_time",
        Timestamp,
        comment=(
            "When the task finished (finishTime), UTC. NULL until it finishes, for the 0000-00-00 "
            "sentinel, and when unparseable."
        ),
    ),
    sa.Column(
        "error_code",
        sa.BigInteger,
        comment="Upstream error code of a failed task (errorCode). NULL when the task has none.",
    ),
    sa.Column(
        "error_message",
        sa.Text,
        comment=(
            "Upstream error message of a failed task (errorMessage). NULL when the task has none."
        ),
    ),
    sa.Column(
        "raw",
        Json,
        nullable=False,
        comment=(
            "The task exactly as the API returned it (JSON; NUL characters removed). Never NULL."
        ),
    ),
    sa.Column(
        "content_hash",
        sa.Text,
        nullable=False,
        comment=(
            "SHA-256 of the record's canonical JSON: the same hash means the same record, so a "
            "re-run skips it and its children. Never NULL."
        ),
    ),
    sa.Column(
        "first_seen_at",
        Timestamp,
        nullable=False,
        comment="When a run first stored this task, UTC. Never NULL.",
    ),
    sa.Column(
        "last_changed_at",
        Timestamp,
        nullable=False,
        comment=(
            "When a run last stored a change to this task (first stored it, at first), UTC. Never "
            "NULL."
        ),
    ),
    sa.Column(
        "deleted_at",
        Timestamp,
        comment=(
            "When its job's complete task listing first lacked this task, UTC. NULL while the "
            "task exists upstream; cleared if it comes back."
        ),
    ),
    # Live progress from the detail call: outside content_hash, so progress alone is no change.
    sa.Column(
        "run_progress",
        sa.Float,
        comment=(
            "Training progress in percent (0-100) from the task detail call, while Running. NULL "
            "when not fetched. Outside content_hash."
        ),
    ),
    sa.Column(
        "vdl_link",
        sa.Text,
        comment=(
            "Link to the task's VisualDL training charts in the console (vdlLink, from the detail "
            "call). NULL when not fetched."
        ),
    ),
    sa.Column(
        "progress_at",
        Timestamp,
        comment=(
            "When a detail call last changed run_progress or vdl_link, UTC (one that returns the "
            "same values leaves it). NULL when never fetched, and again once the task leaves "
            "Running."
        ),
    ),
    # Kept summaries of the task's children, written by the load in the transaction that
    # replaces them, so the BI views read one row per task instead of every checkpoint.
    sa.Column(
        "checkpoint_count",
        sa.BigInteger,
        nullable=False,
        server_default="0",
        comment=("Checkpoints the task has (0 when none). Kept by the load with its checkpoints."),
    ),
    sa.Column(
        "last_step",
        sa.BigInteger,
        comment=(
            "Highest checkpoint step. NULL when the task has no checkpoint. Kept by the load "
            "with its checkpoints."
        ),
    ),
    sa.Column(
        "final_training_loss",
        sa.Float,
        comment=(
            "Training loss at last_step. NULL when the task has no checkpoint or no finite loss "
            "there. Kept by the load with its checkpoints."
        ),
    ),
    sa.Column(
        "min_perplexity",
        sa.Float,
        comment=(
            "Lowest perplexity over the task's checkpoints. NULL when none is finite. Kept by "
            "the load with its checkpoints."
        ),
    ),
    *(
        sa.Column(
            column,
            sa.Float,
            comment=(
                f"{name} in percent (its finetune_task_metrics.value_percent). NULL when the "
                "task has no such metric or it is not a number. Kept by the load with its metrics."
            ),
        )
        for column, name in PIVOTED_METRICS.items()
    ),
    # What dashboards filter and sort live tasks by (README, Performance).
    *(
        sa.Index(
            name,
            *columns,
            postgresql_where=sa.text("deleted_at IS NULL"),
            sqlite_where=sa.text("deleted_at IS NULL"),
        )
        for name, columns in LIVE_TASK_INDEXES.items()
    ),
    *(
        sa.Index(
            name,
            column,
            postgresql_using="hash",
            postgresql_where=sa.text("deleted_at IS NULL"),
            sqlite_where=sa.text("deleted_at IS NULL"),
        )
        for name, column in LIVE_TASK_FILTER_INDEXES.items()
    ),
    comment=(
        "Fine-tuning tasks (runs) of every job (DescribeFineTuningTasks), one row per task. A row "
        "is live while deleted_at is NULL."
    ),
)

# Child tables carry no foreign key to finetune_tasks: the loader writes children only after
# their task, in the same transaction, and per-row FK triggers made every full load slower
# (README, Performance). Migration 0002 dropped them; tests check for orphans.
finetune_task_metrics = sa.Table(
    "finetune_task_metrics",
    metadata,
    sa.Column(
        "task_id",
        sa.Text,
        primary_key=True,
        comment=(
            "The task (finetune_tasks.task_id; no foreign key, see README). Part of the primary "
            "key."
        ),
    ),
    sa.Column(
        "metric_name",
        sa.Text,
        primary_key=True,
        comment=(
            "Metric name as upstream gives it, e.g. BLEU-4, ROUGE-1, ROUGE-2, ROUGE-L. Part of "
            "the primary key."
        ),
    ),
    sa.Column(
        "value_percent",
        sa.Float,
        comment=(
            'The value in percent ("17.03%" gives 17.03). NULL when it is not a finite number '
            '(e.g. "N/A").'
        ),
    ),
    sa.Column(
        "value_raw",
        sa.Text,
        comment="The value as received, as text. NULL when upstream gave null.",
    ),
    comment=(
        "Evaluation metrics of each task (its metrics object), one row per task and metric name. "
        "Rows of a soft-deleted task stay: read finetune_task_metrics_live for live tasks only."
    ),
)

finetune_task_checkpoints = sa.Table(
    "finetune_task_checkpoints",
    metadata,
    sa.Column(
        "task_id",
        sa.Text,
        primary_key=True,
        comment=(
            "The task (finetune_tasks.task_id; no foreign key, see README). Part of the primary "
            "key."
        ),
    ),
    sa.Column(
        "step",
        sa.BigInteger,
        primary_key=True,
        autoincrement=False,
        comment="Training step of the checkpoint. Part of the primary key.",
    ),
    sa.Column(
        "training_loss",
        sa.Float,
        comment=(
            "Training loss at this step (trainingLoss), unitless. NULL when not a finite number."
        ),
    ),
    sa.Column(
        "perplexity",
        sa.Float,
        comment="Perplexity at this step, unitless. NULL when not a finite number.",
    ),
    comment=(
        "Training checkpoints of each task (its checkpointList), one row per task and step. Rows "
        "of a soft-deleted task stay: read finetune_task_checkpoints_live for live tasks only."
    ),
)

etl_runs = sa.Table(
    "etl_runs",
    metadata,
    sa.Column(
        "run_id",
        sa.Integer,
        primary_key=True,
        autoincrement=True,
        comment="Run number, increasing. Primary key.",
    ),
    sa.Column(
        "started_at",
        Timestamp,
        nullable=False,
        comment="When the run started, UTC. Never NULL.",
    ),
    sa.Column(
        "finished_at",
        Timestamp,
        comment="When the run ended, UTC. NULL while running and for abandoned runs.",
    ),
    # running, succeeded, failed; abandoned for a run that died without finishing.
    sa.Column(
        "status",
        sa.Text,
        nullable=False,
        comment=(
            "running, succeeded, partial (the run went through, but some jobs could not be "
            "listed, see etl_failed_jobs, or its soft deletes were refused by "
            "--max-delete-fraction, or held back, see etl_held_back_scopes, or it saw more "
            "rejects than --max-rejects; see error), failed (error says why), or abandoned (the "
            "process died; marked by the next run)."
        ),
    ),
    sa.Column(
        "jobs_seen",
        sa.Integer,
        nullable=False,
        server_default="0",
        comment="Jobs the run listed.",
    ),
    sa.Column(
        "tasks_seen",
        sa.Integer,
        nullable=False,
        server_default="0",
        comment="Tasks the run listed.",
    ),
    sa.Column(
        "tasks_changed",
        sa.Integer,
        nullable=False,
        server_default="0",
        comment="Tasks the run found new or changed (and wrote).",
    ),
    sa.Column(
        "rows_written",
        sa.Integer,
        nullable=False,
        server_default="0",
        comment="Rows the run inserted, updated or soft-deleted, all tables together.",
    ),
    sa.Column(
        "api_calls",
        sa.Integer,
        nullable=False,
        server_default="0",
        comment="Qianfan API requests the run made, retries included.",
    ),
    sa.Column(
        "rejects",
        sa.Integer,
        nullable=False,
        server_default="0",
        comment=(
            "Records the run set aside, already in etl_rejects or new (more than "
            "--max-rejects ends it partial)."
        ),
    ),
    sa.Column(
        "error",
        sa.Text,
        comment="Why the run failed or was abandoned. NULL when it succeeded or is running.",
    ),
    # full; selected (--job-id); active (--active-only).
    sa.Column(
        "mode",
        sa.Text,
        nullable=False,
        server_default="full",
        comment=(
            "full (every job), selected (--job-id: only those jobs), or active (--active-only). "
            "Never NULL."
        ),
    ),
    sa.Column(
        "exit_code",
        sa.Integer,
        comment=(
            "The process exit code the run ended with (0 success; see README, Exit codes). NULL "
            "while running or when it could not be recorded."
        ),
    ),
    sa.Column(
        "jobs_failed",
        sa.Integer,
        nullable=False,
        server_default="0",
        comment="Jobs whose task listing failed in this run (listed in etl_failed_jobs).",
    ),
    sa.Column(
        "jobs_skipped",
        sa.Integer,
        nullable=False,
        server_default="0",
        comment="Jobs carried over without listing their tasks (--active-only).",
    ),
    comment=(
        "One row per qianfan-etl sync run (dry runs leave none): what it saw, wrote and how it "
        "ended."
    ),
)

# The jobs a run could not list, with why: their stored rows were left as they were.
etl_failed_jobs = sa.Table(
    "etl_failed_jobs",
    metadata,
    sa.Column(
        "run_id",
        sa.Integer,
        sa.ForeignKey("etl_runs.run_id"),
        primary_key=True,
        comment="The run (etl_runs.run_id). Part of the primary key.",
    ),
    sa.Column(
        "job_id",
        sa.Text,
        primary_key=True,
        comment="The job whose task listing failed. Part of the primary key.",
    ),
    sa.Column(
        "error_class",
        sa.Text,
        nullable=False,
        comment="Kind of failure, the error's class name (e.g. TransientError, ContractError).",
    ),
    sa.Column(
        "exit_code",
        sa.Integer,
        nullable=False,
        comment=(
            "Exit code this failure alone would give (65 broken data, 75 temporary, 77 not "
            "allowed)."
        ),
    ),
    sa.Column(
        "message",
        sa.Text,
        nullable=False,
        comment="What happened, as the log said it (no secrets).",
    ),
    sa.Column(
        "failed_at",
        Timestamp,
        nullable=False,
        comment="When the job's listing failed, UTC.",
    ),
    comment=(
        "The jobs a run could not list, with why; their stored rows were left as they were. One "
        "row per run and job."
    ),
)

finetune_task_status_history = sa.Table(
    "finetune_task_status_history",
    metadata,
    sa.Column(
        "task_id",
        sa.Text,
        primary_key=True,
        comment="The task (finetune_tasks.task_id). Part of the primary key.",
    ),
    sa.Column(
        "run_id",
        sa.Integer,
        sa.ForeignKey("etl_runs.run_id"),
        primary_key=True,
        comment="The run that saw this status (etl_runs.run_id). Part of the primary key.",
    ),
    sa.Column(
        "run_status",
        sa.Text,
        comment="The task's runStatus as that run saw it. NULL when upstream gave none.",
    ),
    sa.Column(
        "observed_at",
        Timestamp,
        nullable=False,
        comment="When that run saw it, UTC.",
    ),
    comment=(
        "Status changes of each task: a row when a run first sees a task and whenever a run sees "
        "its run_status change."
    ),
)

etl_rejects = sa.Table(
    "etl_rejects",
    metadata,
    sa.Column(
        "reject_id",
        sa.Integer,
        primary_key=True,
        autoincrement=True,
        comment="Reject number, increasing. Primary key.",
    ),
    sa.Column(
        "run_id",
        sa.Integer,
        sa.ForeignKey("etl_runs.run_id"),
        nullable=False,
        index=True,
        comment="The run that first set the record aside (etl_runs.run_id).",
    ),
    sa.Column(
        "entity",
        sa.Text,
        nullable=False,
        comment="job or task.",
    ),
    sa.Column(
        "source_id",
        sa.Text,
        comment="The record's jobId or taskId, whole. NULL when it has no readable id.",
    ),
    sa.Column(
        "reason",
        sa.Text,
        nullable=False,
        comment="Why the record was set aside, e.g. metrics is not an object.",
    ),
    sa.Column(
        "raw",
        Json,
        comment=(
            "The record as received (JSON), or an excerpt of an over-long or over-deep one. NULL "
            "when it could not be kept."
        ),
    ),
    sa.Column(
        "rejected_at",
        Timestamp,
        nullable=False,
        comment="When it was first set aside, UTC.",
    ),
    sa.Column(
        "reject_key",
        sa.Text,
        nullable=False,
        comment=(
            "Who the record is: a hash of entity and the full id, or, without a readable id, of "
            "entity, scope_id and raw. One open reject per key."
        ),
    ),
    sa.Column(
        "scope_id",
        sa.Text,
        comment="The job whose task list listed it. NULL for a job (the account's job list).",
    ),
    sa.Column(
        "raw_hash",
        sa.Text,
        comment="Hash of raw: the reject is rewritten only when raw or reason changes.",
    ),
    sa.Column(
        "resolved_at",
        Timestamp,
        comment=(
            "When a complete listing of its scope no longer had it, UTC. NULL while it is still "
            "upstream (open)."
        ),
    ),
    sa.Column(
        "resolved_run_id",
        sa.Integer,
        # no foreign key: a second one would make SQLite's table copies order them at random
        comment=(
            "The run that found it gone (etl_runs.run_id, no foreign key). NULL while open, and "
            "for those revision 0007 resolved."
        ),
    ),
    sa.Index(
        "ux_etl_rejects_open_key",
        "reject_key",
        unique=True,
        postgresql_where=sa.text("resolved_at IS NULL"),
        sqlite_where=sa.text("resolved_at IS NULL"),
    ),
    comment=(
        "Records runs could not type or store, each stored once while it stays upstream, with "
        "its raw JSON and the reason; the good records of the run loaded."
    ),
)

# The scopes whose deletes a run held back, since some record in them had no readable id.
etl_held_back_scopes = sa.Table(
    "etl_held_back_scopes",
    metadata,
    sa.Column(
        "run_id",
        sa.Integer,
        sa.ForeignKey("etl_runs.run_id"),
        primary_key=True,
        comment="The run (etl_runs.run_id). Part of the primary key.",
    ),
    sa.Column(
        "scope_kind",
        sa.Text,
        primary_key=True,
        comment="account (the job list) or job (one job's task list). Part of the primary key.",
    ),
    sa.Column(
        "scope_id",
        sa.Text,
        primary_key=True,
        comment="The job id for a job; '' for the account. Part of the primary key.",
    ),
    sa.Column(
        "held_back",
        sa.Integer,
        nullable=False,
        comment=(
            "Stored live rows absent from the scope's listing that the run did not soft-delete "
            "(any may be a record it could not read)."
        ),
    ),
    sa.Column(
        "unreadable",
        sa.Integer,
        nullable=False,
        comment="Records the listing gave without a readable id (see etl_rejects).",
    ),
    sa.Column(
        "reason",
        sa.Text,
        nullable=False,
        comment="Why, in words, e.g. 1 job(s) listed without a readable jobId.",
    ),
    comment=(
        "Scopes whose soft deletes a run held back, since their listing had records without a "
        "readable id; such a run ends partial (65). One row per run and scope."
    ),
)

CONTENT_TABLES = (
    finetune_jobs,
    finetune_tasks,
    finetune_task_metrics,
    finetune_task_checkpoints,
    finetune_task_status_history,
)
