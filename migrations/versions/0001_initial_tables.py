"""Initial tables and BI views.

Revision ID: 0001
Revises:
Create Date: 2026-11-27 09:50:39.096791
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from migrations.frozen import views_0001 as views

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "etl_runs",
        sa.Column("run_id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("jobs_seen", sa.Integer(), server_default="0", nullable=False),
        sa.Column("tasks_seen", sa.Integer(), server_default="0", nullable=False),
        sa.Column("tasks_changed", sa.Integer(), server_default="0", nullable=False),
        sa.Column("rows_written", sa.Integer(), server_default="0", nullable=False),
        sa.Column("api_calls", sa.Integer(), server_default="0", nullable=False),
        sa.Column("rejects", sa.Integer(), server_default="0", nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("run_id", name=op.f("pk_etl_runs")),
    )
    op.create_table(
        "finetune_jobs",
        sa.Column("job_id", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("model", sa.Text(), nullable=True),
        sa.Column("train_mode", sa.Text(), nullable=True),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("raw", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("content_hash", sa.Text(), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_finetune_jobs")),
    )
    op.create_table(
        "etl_rejects",
        sa.Column("reject_id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("entity", sa.Text(), nullable=False),
        sa.Column("source_id", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("raw", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=True),
        sa.Column("rejected_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["etl_runs.run_id"], name=op.f("fk_etl_rejects_run_id_etl_runs")
        ),
        sa.PrimaryKeyConstraint("reject_id", name=op.f("pk_etl_rejects")),
    )
    with op.batch_alter_table("etl_rejects", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_etl_rejects_run_id"), ["run_id"], unique=False)

    op.create_table(
        "finetune_tasks",
        sa.Column("task_id", sa.Text(), nullable=False),
        sa.Column("job_id", sa.Text(), nullable=False),
        sa.Column("job_name", sa.Text(), nullable=True),
        sa.Column("job_description", sa.Text(), nullable=True),
        sa.Column("model", sa.Text(), nullable=True),
        sa.Column("train_mode", sa.Text(), nullable=True),
        sa.Column("parameter_scale", sa.Text(), nullable=True),
        sa.Column("run_status", sa.Text(), nullable=True),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finish_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error_code", sa.BigInteger(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("raw", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("content_hash", sa.Text(), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["finetune_jobs.job_id"],
            name=op.f("fk_finetune_tasks_job_id_finetune_jobs"),
        ),
        sa.PrimaryKeyConstraint("task_id", name=op.f("pk_finetune_tasks")),
    )
    with op.batch_alter_table("finetune_tasks", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_finetune_tasks_job_id"), ["job_id"], unique=False)

    op.create_table(
        "finetune_task_checkpoints",
        sa.Column("task_id", sa.Text(), nullable=False),
        sa.Column("step", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("training_loss", sa.Float(), nullable=True),
        sa.Column("perplexity", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["finetune_tasks.task_id"],
            name=op.f("fk_finetune_task_checkpoints_task_id_finetune_tasks"),
        ),
        sa.PrimaryKeyConstraint("task_id", "step", name=op.f("pk_finetune_task_checkpoints")),
    )
    op.create_table(
        "finetune_task_metrics",
        sa.Column("task_id", sa.Text(), nullable=False),
        sa.Column("metric_name", sa.Text(), nullable=False),
        sa.Column("value_percent", sa.Float(), nullable=True),
        sa.Column("value_raw", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["finetune_tasks.task_id"],
            name=op.f("fk_finetune_task_metrics_task_id_finetune_tasks"),
        ),
        sa.PrimaryKeyConstraint("task_id", "metric_name", name=op.f("pk_finetune_task_metrics")),
    )
    op.create_table(
        "finetune_task_status_history",
        sa.Column("task_id", sa.Text(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("run_status", sa.Text(), nullable=True),
        sa.Column("observed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["etl_runs.run_id"],
            name=op.f("fk_finetune_task_status_history_run_id_etl_runs"),
        ),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["finetune_tasks.task_id"],
            name=op.f("fk_finetune_task_status_history_task_id_finetune_tasks"),
        ),
        sa.PrimaryKeyConstraint("task_id", "run_id", name=op.f("pk_finetune_task_status_history")),
    )
    views.create_all(op.get_bind().dialect.name)


def downgrade() -> None:
    views.drop_all()
    op.drop_table("finetune_task_status_history")
    op.drop_table("finetune_task_metrics")
    op.drop_table("finetune_task_checkpoints")
    with op.batch_alter_table("finetune_tasks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_finetune_tasks_job_id"))

    op.drop_table("finetune_tasks")
    with op.batch_alter_table("etl_rejects", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_etl_rejects_run_id"))

    op.drop_table("etl_rejects")
    op.drop_table("finetune_jobs")
    op.drop_table("etl_runs")
