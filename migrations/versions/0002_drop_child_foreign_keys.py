"""Drop the foreign keys from metrics, checkpoints and status history to finetune_tasks.

Per-row FK triggers cost about a fifth of a full load (bench/, size M); the loader writes
children only after their task in the same transaction, and tests check for orphans.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 10:35:50.606491
"""

from collections.abc import Sequence

from alembic import op

from migrations.frozen import views_0001 as views

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # SQLite rebuilds the tables to drop a constraint, which views over them would block.
    views.drop_all()
    with op.batch_alter_table("finetune_task_checkpoints", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_finetune_task_checkpoints_task_id_finetune_tasks"), type_="foreignkey"
        )

    with op.batch_alter_table("finetune_task_metrics", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_finetune_task_metrics_task_id_finetune_tasks"), type_="foreignkey"
        )

    with op.batch_alter_table("finetune_task_status_history", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("fk_finetune_task_status_history_task_id_finetune_tasks"), type_="foreignkey"
        )

    views.create_all(op.get_bind().dialect.name)


def downgrade() -> None:
    views.drop_all()
    with op.batch_alter_table("finetune_task_status_history", schema=None) as batch_op:
        batch_op.create_foreign_key(
            batch_op.f("fk_finetune_task_status_history_task_id_finetune_tasks"),
            "finetune_tasks",
            ["task_id"],
            ["task_id"],
        )

    with op.batch_alter_table("finetune_task_metrics", schema=None) as batch_op:
        batch_op.create_foreign_key(
            batch_op.f("fk_finetune_task_metrics_task_id_finetune_tasks"),
            "finetune_tasks",
            ["task_id"],
            ["task_id"],
        )

    with op.batch_alter_table("finetune_task_checkpoints", schema=None) as batch_op:
        batch_op.create_foreign_key(
            batch_op.f("fk_finetune_task_checkpoints_task_id_finetune_tasks"),
            "finetune_tasks",
            ["task_id"],
            ["task_id"],
        )
    views.create_all(op.get_bind().dialect.name)
