"""What people and log shippers read: the summary line, `status`, progress, JSON log lines."""

import json
import logging
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine

from etl.load import RunCounts
from etl.schema import etl_runs, metadata
from etl.sync import SyncResult

PROGRESS_INTERVAL = 0.2
COUNTED_TABLES = (
    "finetune_jobs",
    "finetune_tasks",
    "finetune_task_metrics",
    "finetune_task_checkpoints",
    "finetune_task_status_history",
    "etl_rejects",
)
SOFT_DELETED = ("finetune_jobs", "finetune_tasks")


def summary_fields(result: SyncResult) -> dict[str, Any]:
    """The run's figures as a flat mapping."""
    return {
        "run_id": result.run_id,
        "dry_run": result.dry_run,
        "mode": result.mode,
        **asdict(result.counts),
        "progress_failed": result.progress_failed,
        "soft_deleted": result.deleted,
        "seconds": round(result.seconds, 2),
    }


def summary_line(result: SyncResult) -> str:
    """One line: what the run saw, changed and wrote, API calls and seconds."""
    c = result.counts
    verb = "would write" if result.dry_run else "wrote"
    mode = "" if result.mode == "full" else f" ({result.mode})"
    return (
        f"{'dry run' if result.dry_run else 'sync run'} {result.run_id}{mode}: "
        f"{c.jobs_seen} jobs{_skipped(c.jobs_skipped)}, "
        f"{c.tasks_seen} tasks ({c.tasks_changed} changed), "
        f"{verb} {c.rows_written} rows, {c.rejects} rejects, {c.api_calls} API calls, "
        f"{_failed_progress(result.progress_failed)}{result.seconds:.1f}s"
    )


def _skipped(jobs: int) -> str:
    """Jobs carried over: each saved at least one task-listing call."""
    return f" ({jobs} carried over: {jobs}+ API calls saved)" if jobs else ""


def _failed_progress(tasks: int) -> str:
    return f"progress of {tasks} Running tasks not fetched (kept), " if tasks else ""


class Progress:
    """A one-line progress display on a terminal, redrawn at most every PROGRESS_INTERVAL."""

    def __init__(self) -> None:
        self.last = 0.0

    def update(self, counts: RunCounts) -> None:
        """Redraw with the latest counts, unless drawn very recently."""
        now = time.monotonic()
        if now - self.last >= PROGRESS_INTERVAL:
            self.last = now
            sys.stderr.write(
                f"\r{counts.jobs_seen} jobs, {counts.tasks_seen} tasks, "
                f"{counts.api_calls} API calls"
            )
            sys.stderr.flush()

    def close(self) -> None:
        """Clear the progress line, so the summary takes its place."""
        if self.last:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def status(engine: Engine, runs: int) -> dict[str, Any]:
    """Recent runs and table counts (live and soft-deleted)."""
    with engine.connect() as connection:
        recent = connection.execute(
            sa.select(etl_runs).order_by(etl_runs.c.run_id.desc()).limit(runs)
        ).mappings()
        rows = [{key: aware(value) for key, value in row.items()} for row in recent]
        return {"runs": rows, "tables": _counts(connection)}


def _counts(connection: sa.Connection) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for name in COUNTED_TABLES:
        table = metadata.tables[name]
        rows = connection.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
        counts[name] = {"rows": rows}
        if name in SOFT_DELETED:
            deleted = sa.select(sa.func.count()).where(table.c.deleted_at.is_not(None))
            counts[name]["deleted"] = connection.execute(deleted).scalar_one()
    return counts


def status_text(status: dict[str, Any]) -> str:
    """`status` for people: a runs table, then counts."""
    lines = [
        "run  status      mode      started                    jobs  skipped  tasks  changed  "
        "rows  rejects  calls  error"
    ]
    for run in status["runs"]:
        started = str(run["started_at"])[:19]
        lines.append(
            f"{run['run_id']:<4} {run['status']:<11} {run['mode']:<9} {started:<26} "
            f"{run['jobs_seen']:>4} {run['jobs_skipped']:>8} "
            f"{run['tasks_seen']:>6} {run['tasks_changed']:>8} {run['rows_written']:>5} "
            f"{run['rejects']:>8} {run['api_calls']:>6}  {(run['error'] or '')[:60]}"
        )
    lines.append("")
    for name, count in status["tables"].items():
        deleted = f" ({count['deleted']} deleted)" if "deleted" in count else ""
        lines.append(f"{name:<30} {count['rows']:>9}{deleted}")
    return "\n".join(lines)


def sample_text(engine: Engine, limit: int = 5) -> str:
    """A few rows of the overview view, to show what analysts get."""
    query = sa.text(
        "SELECT task_id, run_status, checkpoint_count, final_training_loss, bleu_4 "
        "FROM finetune_task_overview ORDER BY task_id LIMIT :limit"
    )
    with engine.connect() as connection:
        rows = connection.execute(query, {"limit": limit}).all()
    lines = ["", "finetune_task_overview (first rows):"]
    lines += [
        f"  {r.task_id}  {r.run_status:<8} checkpoints={r.checkpoint_count:<3} "
        f"final_loss={_num(r.final_training_loss)}  bleu_4={_num(r.bleu_4)}"
        for r in rows
    ]
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def rfc3339(timestamp: float) -> str:
    """A Unix time as RFC 3339 in UTC with milliseconds: 2026-12-01T10:41:43.123Z."""
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def aware(value: Any) -> Any:
    """A naive datetime (SQLite keeps no zone; every stored time is UTC) marked as UTC."""
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def json_default(value: Any) -> Any:
    """json.dumps' fallback: datetimes as RFC 3339, anything else as its str()."""
    return aware(value).isoformat() if isinstance(value, datetime) else str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per log record."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": rfc3339(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False)
