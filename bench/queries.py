"""`python -m bench --queries`: time what dashboards ask of the BI views, beside the targets.

Each query shape (README, Performance: the dashboard table, the README's examples, and the
report's own queries) runs warm, after VACUUM ANALYZE (ANALYZE on SQLite), best of three,
against a database synced at the size asked for, or against an existing database (`--url`,
e.g. one loaded by an older release).
"""

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import click
import sqlalchemy as sa
from sqlalchemy import Connection

from etl import db
from etl.report.queries import Selection

# Postgres targets, in ms, by size (the issue: <= 100 ms at M, <= 300 ms at L = 8,000 jobs).
TARGET_MS = {"S": 100.0, "M": 100.0, "L": 300.0}
REPEATS = 3


@dataclass(frozen=True)
class Shape:
    """One thing a dashboard asks: its name and its SQL on each backend."""

    name: str
    postgresql: str
    sqlite: str = ""

    def sql(self, dialect: str) -> str:
        return self.sqlite if dialect == "sqlite" and self.sqlite else self.postgresql


SHAPES = (
    Shape(
        "the 50 latest tasks (overview)",
        "SELECT * FROM finetune_task_overview ORDER BY create_time DESC LIMIT 50",
    ),
    Shape(
        "one job's 25 tasks (overview)", "SELECT * FROM finetune_task_overview WHERE job_id = :job"
    ),
    Shape(
        "tasks per day by status (overview)",
        "SELECT date_trunc('day', create_time) AS day, run_status, COUNT(*) "
        "FROM finetune_task_overview GROUP BY 1, 2",
        "SELECT date(create_time) AS day, run_status, COUNT(*) "
        "FROM finetune_task_overview GROUP BY 1, 2",
    ),
    Shape(
        "best and mean BLEU-4 per model (wide)",
        "SELECT model, MAX(bleu_4), AVG(bleu_4) FROM finetune_task_metrics_wide GROUP BY model",
    ),
    Shape(
        "mean final loss by scale, finished (overview)",
        "SELECT parameter_scale, AVG(final_training_loss) FROM finetune_task_overview "
        "WHERE run_status = 'Done' GROUP BY parameter_scale",
    ),
    Shape(
        "one model's 50 latest tasks (overview)",
        "SELECT * FROM finetune_task_overview WHERE model = :model "
        "ORDER BY create_time DESC LIMIT 50",
    ),
    Shape(
        "failed tasks of one model and scale (overview)",
        "SELECT task_id, create_time, error_code FROM finetune_task_overview "
        "WHERE run_status = 'Failed' AND model = :model AND parameter_scale = :scale",
    ),
    Shape(
        "one task's loss curve (checkpoints_live)",
        "SELECT step, training_loss FROM finetune_task_checkpoints_live "
        "WHERE task_id = :task ORDER BY step",
    ),
    Shape(
        "README: best BLEU-4 per model (metrics_live)",
        "SELECT model, MAX(value_percent) AS best_bleu_4 FROM finetune_task_metrics_live "
        "WHERE metric_name = 'BLEU-4' GROUP BY model",
    ),
    Shape(
        "README: curve of the task with most checkpoints",
        "SELECT step, training_loss FROM finetune_task_checkpoints_live "
        "WHERE task_id = (SELECT task_id FROM finetune_task_overview "
        "ORDER BY checkpoint_count DESC, task_id LIMIT 1) ORDER BY step",
    ),
    Shape(
        "README: failed tasks this week (overview)",
        "SELECT task_id, job_name, create_time, error_code, error_message "
        "FROM finetune_task_overview WHERE run_status = 'Failed' "
        "AND create_time >= now() - interval '7 days'",
        "SELECT task_id, job_name, create_time, error_code, error_message "
        "FROM finetune_task_overview WHERE run_status = 'Failed' "
        "AND create_time >= datetime('now', '-7 days')",
    ),
)
REPORT = "the report's queries, all of them"


def time_shapes(url: str) -> dict[str, float]:
    """Best-of-three milliseconds of each shape and of the report's queries, after ANALYZE."""
    engine = db.create(sa.make_url(url))
    try:
        _settle(engine)
        with engine.connect() as connection:
            params = _parameters(connection)
            timings = {
                shape.name: _best(lambda s=shape: _run(connection, s, params)) for shape in SHAPES
            }
            if db.current_revision(engine) == db.SCHEMA_HEAD:  # the report reads today's schema
                timings[REPORT] = _best(lambda: _report(connection))
    finally:
        engine.dispose()
    return timings


def _settle(engine: sa.Engine) -> None:
    """ANALYZE; on Postgres VACUUM too, as autovacuum leaves a table after a load: its
    visibility map lets the live-task indexes answer without reading the heap."""
    statement = "VACUUM (ANALYZE)" if engine.dialect.name == "postgresql" else "ANALYZE"
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(sa.text(statement))


def _parameters(connection: Connection) -> dict[str, Any]:
    """A job and a task to ask about: the live ones in the middle of the account."""
    job = connection.execute(
        sa.text(
            "SELECT job_id FROM finetune_jobs WHERE deleted_at IS NULL ORDER BY job_id "
            "LIMIT 1 OFFSET (SELECT COUNT(*) / 2 FROM finetune_jobs WHERE deleted_at IS NULL)"
        )
    ).scalar()
    task, model, scale = connection.execute(
        sa.text(
            "SELECT task_id, model, parameter_scale FROM finetune_tasks WHERE task_id = "
            "(SELECT MIN(task_id) FROM finetune_tasks WHERE job_id = :job)"
        ),
        {"job": job},
    ).one()
    return {"job": job, "task": task, "model": model, "scale": scale}


def _run(connection: Connection, shape: Shape, params: dict[str, Any]) -> None:
    sql = shape.sql(connection.dialect.name)
    used = {key: value for key, value in params.items() if f":{key}" in sql}
    connection.execute(sa.text(sql), used).all()


def _report(connection: Connection) -> None:
    """What `qianfan-etl report` asks of the database (its page built, not drawn)."""
    from etl.report import page  # the report extra's module, imported only when timed

    now = datetime.now(UTC)
    page.header_html(connection, Selection(), "bench", now)
    page.build_sections(connection, Selection(), now)


def _best(action: Callable[[], None]) -> float:
    """Milliseconds of the fastest of REPEATS runs, after one warm-up run."""
    action()
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        action()
        times.append((time.perf_counter() - start) * 1000)
    return min(times)


def print_table(timings: dict[str, float], size: str, dialect: str) -> None:
    """Each shape's best time beside its target (Postgres; SQLite's is 3x Postgres at S)."""
    target = TARGET_MS[size]
    settled = "VACUUM ANALYZE" if dialect == "postgresql" else "ANALYZE"
    click.echo(f"queries at size {size} on {dialect}, best of {REPEATS}, warm, after {settled}")
    click.echo(f"{'shape':<50} {'ms':>9}  target")
    for name, ms in timings.items():
        if name == REPORT:
            click.echo(f"{name:<50} {ms:>9.1f}  (README: report)")
            continue
        mark = "ok" if ms <= target else "OVER"
        goal = f"<= {target:.0f} ms" if dialect == "postgresql" else "<= 3x Postgres at S"
        click.echo(f"{name:<50} {ms:>9.1f}  {goal} {mark if dialect == 'postgresql' else ''}")
