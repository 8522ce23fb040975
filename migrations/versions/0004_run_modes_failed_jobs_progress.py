"""Per-job failures, run modes and live task progress.

- `etl_failed_jobs`: the jobs a run could not list, with the error (one bad job no longer
  holds back the run; the run ends `partial`).
- `etl_runs.mode` (`full`, `selected` for `--job-id`, `active` for `--active-only`),
  `exit_code`, `jobs_failed` and `jobs_skipped` (jobs carried over without listing their tasks).
- `finetune_tasks.run_progress` (percent), `vdl_link` and `progress_at`: live progress from the
  task detail call, kept outside `content_hash`, so progress alone is not a change.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 10:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from migrations.frozen import views_0001 as views

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "etl_failed_jobs",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Text(), nullable=False),
        sa.Column("error_class", sa.Text(), nullable=False),
        sa.Column("exit_code", sa.Integer(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("failed_at", Timestamp, nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["etl_runs.run_id"], name=op.f("fk_etl_failed_jobs_run_id_etl_runs")
        ),
        sa.PrimaryKeyConstraint("run_id", "job_id", name=op.f("pk_etl_failed_jobs")),
    )
    with op.batch_alter_table("etl_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("mode", sa.Text(), server_default="full", nullable=False))
        batch_op.add_column(sa.Column("exit_code", sa.Integer(), nullable=True))
        batch_op.add_column(
            sa.Column("jobs_failed", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column("jobs_skipped", sa.Integer(), server_default="0", nullable=False)
        )
    with op.batch_alter_table("finetune_tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("run_progress", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("vdl_link", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("progress_at", Timestamp, nullable=True))


def downgrade() -> None:
    # Plain DROP COLUMN (SQLite 3.35+ has it): a batch rebuild of etl_runs would trip the
    # foreign keys that point at it. Views are dropped while their tables change.
    views.drop_all()
    for table, columns in DOWNGRADE_COLUMNS.items():
        for column in columns:
            op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    op.drop_table("etl_failed_jobs")
    views.create_all(op.get_bind().dialect.name)


DOWNGRADE_COLUMNS = {
    "finetune_tasks": ("progress_at", "vdl_link", "run_progress"),
    "etl_runs": ("jobs_skipped", "jobs_failed", "exit_code", "mode"),
}
