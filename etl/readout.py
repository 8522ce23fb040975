"""What people and log shippers read: the summary line, `status`, log lines."""

import logging
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine

from etl import terminal
from etl.schema import (
    CONTENT_TABLES,
    etl_failed_jobs,
    etl_held_back_scopes,
    etl_rejects,
    etl_runs,
)
from etl.scopes import HeldBack
from etl.sync import SyncResult

COUNTED_TABLES = (*CONTENT_TABLES, etl_rejects)
# failed jobs shown per run in the summary and `status`, and their messages' length
FAILED_JOBS_SHOWN = 5
MESSAGE_CHARS = 160
# a run's error in the text `status` table (`status --json` has it whole)
ERROR_CHARS = 60


def summary_fields(result: SyncResult) -> dict[str, Any]:
    """The run's figures as a flat mapping (failed jobs as a bounded list)."""
    return {
        "run_id": result.run_id,
        "dry_run": result.dry_run,
        "mode": result.mode,
        "status": result.status,
        "exit_code": result.exit_code,
        **asdict(result.counts),
        "progress_failed": result.progress_failed,
        "enrichment_failed": result.enrichment_failed,
        "soft_deleted": result.deleted,
        "listing_warnings": result.listing_warnings,
        "failed_jobs": [
            {"job_id": f.job_id, "error_class": f.error_class, "message": f.message[:MESSAGE_CHARS]}
            for f in result.failed_jobs[:FAILED_JOBS_SHOWN]
        ],
        "held_back": [_held_back_fields(h) for h in result.held_back[:FAILED_JOBS_SHOWN]],
        "seconds": round(result.seconds, 2),
    }


def summary_line(result: SyncResult) -> str:
    """One line: what the run saw, changed and wrote, API calls and seconds; failed jobs."""
    c = result.counts
    verb = "would write" if result.dry_run else "wrote"
    mode = "" if result.mode == "full" else f" ({result.mode})"
    line = (
        f"{'dry run' if result.dry_run else 'sync run'} {result.run_id}{mode}: "
        f"{c.jobs_seen} jobs{_skipped(c.jobs_skipped)}, "
        f"{c.tasks_seen} tasks ({c.tasks_changed} changed), "
        f"{verb} {c.rows_written} rows, {c.rejects} rejects, {c.api_calls} API calls, "
        f"{_failed_progress(result.progress_failed)}{result.seconds:.1f}s"
    )
    if result.listing_warnings:
        line += f", {result.listing_warnings} listing warnings"
    if result.enrichment_failed:
        line += (
            f", metrics and checkpoints of {result.enrichment_failed} lean-listed tasks not "
            "fetched (kept as stored; the next run tries again)"
        )
    if result.status != "succeeded":
        line += f"; {result.status} (exit {result.exit_code})"
    if result.failed_jobs:
        line += f"; {c.jobs_failed} jobs failed: " + _failed_text(
            [
                {"job_id": f.job_id, "error_class": f.error_class, "message": f.message}
                for f in result.failed_jobs
            ]
        )
    if result.held_back:
        line += f"; {len(result.held_back)} scopes held back deletes: " + _held_back_text(
            [_held_back_fields(h) for h in result.held_back]
        )
    return terminal.safe(line)


def _held_back_fields(held: HeldBack) -> dict[str, Any]:
    """A held-back scope as etl_held_back_scopes has it."""
    return {
        "scope_kind": held.scope.kind,
        "scope_id": held.scope.id,
        "held_back": held.count,
        "reason": held.reason,
    }


def _held_back_text(held: list[dict[str, Any]]) -> str:
    """Held-back scopes as `account kept N (reason)` / `job ID kept N (reason)`, bounded."""
    shown = "; ".join(
        f"{' '.join(filter(None, (h['scope_kind'], h['scope_id'])))} kept {h['held_back']} "
        f"({h['reason']})"
        for h in held[:FAILED_JOBS_SHOWN]
    )
    more = len(held) - FAILED_JOBS_SHOWN
    return shown + (f"; and {more} more" if more > 0 else "")


def _failed_text(failed: list[dict[str, Any]]) -> str:
    """Failed jobs as `id (class: message)`, bounded."""
    shown = "; ".join(
        f"{f['job_id']} ({f['error_class']}: {f['message'][:MESSAGE_CHARS]})"
        for f in failed[:FAILED_JOBS_SHOWN]
    )
    more = len(failed) - FAILED_JOBS_SHOWN
    return shown + (f"; and {more} more" if more > 0 else "")


def _skipped(jobs: int) -> str:
    """Jobs carried over: each saved at least one task-listing call."""
    return f" ({jobs} carried over: {jobs}+ API calls saved)" if jobs else ""


def _failed_progress(tasks: int) -> str:
    return f"progress of {tasks} Running tasks not fetched (kept), " if tasks else ""


def status(engine: Engine, runs: int) -> dict[str, Any]:
    """Recent runs (with their first failed jobs) and table counts (live and soft-deleted)."""
    with engine.connect() as connection:
        recent = connection.execute(
            sa.select(etl_runs).order_by(etl_runs.c.run_id.desc()).limit(runs)
        ).mappings()
        listed = [{key: aware(value) for key, value in row.items()} for row in recent]
        for run in listed:
            run["failed_jobs"] = (
                _failed_jobs(connection, run["run_id"]) if run["jobs_failed"] else []
            )
            run["held_back"] = held_back_scopes(connection, run["run_id"])
        return {"runs": listed, "tables": _counts(connection)}


def _failed_jobs(connection: sa.Connection, run_id: int) -> list[dict[str, Any]]:
    """The first failed jobs of a run: id, class, exit code, message (shortened)."""
    table = etl_failed_jobs
    rows = connection.execute(
        sa.select(table.c.job_id, table.c.error_class, table.c.exit_code, table.c.message)
        .where(table.c.run_id == run_id)
        .order_by(table.c.job_id)
        .limit(FAILED_JOBS_SHOWN)
    ).mappings()
    return [{**row, "message": row["message"][:MESSAGE_CHARS]} for row in rows]


def held_back_scopes(connection: sa.Connection, run_id: int) -> list[dict[str, Any]]:
    """The scopes whose deletes a run held back: kind, id, rows kept, reason."""
    table = etl_held_back_scopes
    rows = connection.execute(
        sa.select(table.c.scope_kind, table.c.scope_id, table.c.held_back, table.c.reason)
        .where(table.c.run_id == run_id)
        .order_by(table.c.scope_kind, table.c.scope_id)
    ).mappings()
    return [dict(row) for row in rows]


def _counts(connection: sa.Connection) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for table in COUNTED_TABLES:
        rows = connection.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
        counts[table.name] = {"rows": rows}
        if "deleted_at" in table.c:  # soft-deleted: live while deleted_at is NULL
            deleted = sa.select(sa.func.count()).where(table.c.deleted_at.is_not(None))
            counts[table.name]["deleted"] = connection.execute(deleted).scalar_one()
    return counts


NO_RUNS = "no runs yet: load the account with `qianfan-etl sync` (see `qianfan-etl sync --help`)"


def status_text(status: dict[str, Any]) -> str:
    """`status` for people: a runs table (or how to make the first run), then counts."""
    if not status["runs"]:
        return "\n".join([NO_RUNS, "", *_counts_text(status)])  # table names: nothing to escape
    lines = [
        "run  status      mode      started                    jobs  skipped  tasks  changed  "
        "rows  rejects  calls  error"
    ]
    for run in status["runs"]:
        started = str(run["started_at"])[:19]
        error = _cut_at_word(run["error"] or "", ERROR_CHARS)
        lines.append(
            f"{run['run_id']:<4} {run['status']:<11} {run['mode']:<9} {started:<26} "
            f"{run['jobs_seen']:>4} {run['jobs_skipped']:>8} "
            f"{run['tasks_seen']:>6} {run['tasks_changed']:>8} {run['rows_written']:>5} "
            f"{run['rejects']:>8} {run['api_calls']:>6}  {error}"
        )
    for run in status["runs"]:
        if run["jobs_failed"]:
            lines.append(
                f"  run {run['run_id']}: {run['jobs_failed']} jobs failed: "
                + _failed_text(run["failed_jobs"])
                + (" (see etl_failed_jobs)" if run["jobs_failed"] > FAILED_JOBS_SHOWN else "")
            )
        if run["held_back"]:
            lines.append(
                f"  run {run['run_id']}: {len(run['held_back'])} scopes held back deletes: "
                + _held_back_text(run["held_back"])
                + " (see etl_held_back_scopes)"
            )
    return "\n".join(terminal.safe(line) for line in [*lines, "", *_counts_text(status)])


def _counts_text(status: dict[str, Any]) -> list[str]:
    """One line per table: rows, and soft-deleted ones."""
    lines = []
    for name, count in status["tables"].items():
        deleted = f" ({count['deleted']} deleted)" if "deleted" in count else ""
        lines.append(f"{name:<30} {count['rows']:>9}{deleted}")
    return lines


def _cut_at_word(text: str, limit: int) -> str:
    """`text` within `limit` characters, cut at a word boundary with "…" when longer."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    return (cut[:space] if space > limit // 2 else cut).rstrip() + "…"


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
    return "\n".join(terminal.safe(line) for line in lines)


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
        return terminal.dumps(entry)


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message` on one line whatever the message holds; a traceback
    follows, its lines indented (see etl.terminal)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        record.asctime = self.formatTime(record, self.datefmt)
        lines = [terminal.safe(self.formatMessage(record))]
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        lines += [terminal.indented(text) for text in (record.exc_text, record.stack_info) if text]
        return "\n".join(lines)
