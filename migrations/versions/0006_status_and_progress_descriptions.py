"""Two descriptions that said less than the code does.

- `etl_runs.status`: a run also ends `partial` when its soft deletes were refused by
  `--max-delete-fraction`, not only when some jobs could not be listed.
- `finetune_tasks.progress_at`: when the progress last changed (a fetch that returns the same
  values leaves it), and that leaving Running clears it.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 17:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATUS_0005 = (
    "running, succeeded, partial (some jobs could not be listed: see etl_failed_jobs), "
    "failed (error says why), or abandoned (the process died; marked by the next run)."
)
STATUS = (
    "running, succeeded, partial (the run went through, but some jobs could not be listed, see "
    "etl_failed_jobs, or its soft deletes were refused by --max-delete-fraction, see error), "
    "failed (error says why), or abandoned (the process died; marked by the next run)."
)
PROGRESS_AT_0005 = "When run_progress and vdl_link were fetched, UTC. NULL when never fetched."
PROGRESS_AT = (
    "When a detail call last changed run_progress or vdl_link, UTC (one that returns the same "
    "values leaves it). NULL when never fetched, and again once the task leaves Running."
)


def upgrade() -> None:
    _describe(STATUS, PROGRESS_AT, STATUS_0005, PROGRESS_AT_0005)


def downgrade() -> None:
    _describe(STATUS_0005, PROGRESS_AT_0005, STATUS, PROGRESS_AT)


def _describe(status: str, progress_at: str, old_status: str, old_progress_at: str) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite keeps no comments
    op.alter_column(
        "etl_runs",
        "status",
        comment=status,
        existing_comment=old_status,
        existing_type=sa.Text,
        existing_nullable=False,
    )
    op.alter_column(
        "finetune_tasks",
        "progress_at",
        comment=progress_at,
        existing_comment=old_progress_at,
        existing_type=sa.DateTime(timezone=True),
        existing_nullable=True,
    )
