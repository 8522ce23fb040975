"""The tables of design.md as SQLAlchemy Core metadata: what Alembic autogenerates from."""

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

finetune_jobs = sa.Table(
    "finetune_jobs",
    metadata,
    sa.Column("job_id", sa.Text, primary_key=True),
    sa.Column("name", sa.Text),
    sa.Column("description", sa.Text),
    sa.Column("model", sa.Text),
    sa.Column("train_mode", sa.Text),
    sa.Column("create_time", Timestamp),
    sa.Column("raw", Json, nullable=False),
    sa.Column("content_hash", sa.Text, nullable=False),
    sa.Column("first_seen_at", Timestamp, nullable=False),
    sa.Column("last_changed_at", Timestamp, nullable=False),
    sa.Column("deleted_at", Timestamp),
)

finetune_tasks = sa.Table(
    "finetune_tasks",
    metadata,
    sa.Column("task_id", sa.Text, primary_key=True),
    sa.Column("job_id", sa.Text, sa.ForeignKey("finetune_jobs.job_id"), nullable=False, index=True),
    sa.Column("job_name", sa.Text),
    sa.Column("job_description", sa.Text),
    sa.Column("model", sa.Text),
    sa.Column("train_mode", sa.Text),
    sa.Column("parameter_scale", sa.Text),
    sa.Column("run_status", sa.Text),
    sa.Column("create_time", Timestamp),
    sa.Column("finish_time", Timestamp),
    sa.Column("error_code", sa.BigInteger),
    sa.Column("error_message", sa.Text),
    sa.Column("raw", Json, nullable=False),
    sa.Column("content_hash", sa.Text, nullable=False),
    sa.Column("first_seen_at", Timestamp, nullable=False),
    sa.Column("last_changed_at", Timestamp, nullable=False),
    sa.Column("deleted_at", Timestamp),
    # Live progress from the detail call: outside content_hash, so progress alone is no change.
    sa.Column("run_progress", sa.Float),
    sa.Column("vdl_link", sa.Text),
    sa.Column("progress_at", Timestamp),
)

# Child tables carry no foreign key to finetune_tasks: the loader writes children only after
# their task, in the same transaction, and per-row FK triggers cost a fifth of a full load
# (measured with bench/, size M). Migration 0002 dropped them; tests check for orphans.
finetune_task_metrics = sa.Table(
    "finetune_task_metrics",
    metadata,
    sa.Column("task_id", sa.Text, primary_key=True),
    sa.Column("metric_name", sa.Text, primary_key=True),
    sa.Column("value_percent", sa.Float),
    sa.Column("value_raw", sa.Text),
)

finetune_task_checkpoints = sa.Table(
    "finetune_task_checkpoints",
    metadata,
    sa.Column("task_id", sa.Text, primary_key=True),
    sa.Column("step", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("training_loss", sa.Float),
    sa.Column("perplexity", sa.Float),
)

etl_runs = sa.Table(
    "etl_runs",
    metadata,
    sa.Column("run_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("started_at", Timestamp, nullable=False),
    sa.Column("finished_at", Timestamp),
    # running, succeeded, failed; abandoned for a run that died without finishing.
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("jobs_seen", sa.Integer, nullable=False, server_default="0"),
    sa.Column("tasks_seen", sa.Integer, nullable=False, server_default="0"),
    sa.Column("tasks_changed", sa.Integer, nullable=False, server_default="0"),
    sa.Column("rows_written", sa.Integer, nullable=False, server_default="0"),
    sa.Column("api_calls", sa.Integer, nullable=False, server_default="0"),
    sa.Column("rejects", sa.Integer, nullable=False, server_default="0"),
    sa.Column("error", sa.Text),
    # full; selected (--job-id); active (--active-only).
    sa.Column("mode", sa.Text, nullable=False, server_default="full"),
    sa.Column("exit_code", sa.Integer),
    sa.Column("jobs_failed", sa.Integer, nullable=False, server_default="0"),
    sa.Column("jobs_skipped", sa.Integer, nullable=False, server_default="0"),
)

# The jobs a run could not list, with why: their stored rows were left as they were.
etl_failed_jobs = sa.Table(
    "etl_failed_jobs",
    metadata,
    sa.Column("run_id", sa.Integer, sa.ForeignKey("etl_runs.run_id"), primary_key=True),
    sa.Column("job_id", sa.Text, primary_key=True),
    sa.Column("error_class", sa.Text, nullable=False),
    sa.Column("exit_code", sa.Integer, nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("failed_at", Timestamp, nullable=False),
)

finetune_task_status_history = sa.Table(
    "finetune_task_status_history",
    metadata,
    sa.Column("task_id", sa.Text, primary_key=True),
    sa.Column("run_id", sa.Integer, sa.ForeignKey("etl_runs.run_id"), primary_key=True),
    sa.Column("run_status", sa.Text),
    sa.Column("observed_at", Timestamp, nullable=False),
)

etl_rejects = sa.Table(
    "etl_rejects",
    metadata,
    sa.Column("reject_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.Integer, sa.ForeignKey("etl_runs.run_id"), nullable=False, index=True),
    sa.Column("entity", sa.Text, nullable=False),
    sa.Column("source_id", sa.Text),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("raw", Json),
    sa.Column("rejected_at", Timestamp, nullable=False),
)

CONTENT_TABLES = (
    finetune_jobs,
    finetune_tasks,
    finetune_task_metrics,
    finetune_task_checkpoints,
    finetune_task_status_history,
)
