"""What monitors read: the freshness check of `status --max-age` and the metrics file of `sync`."""

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine

from etl.config import show_duration
from etl.errors import EXIT_OK, StaleError, exit_code_of
from etl.files import replace_file
from etl.schema import etl_held_back_scopes, etl_runs

if TYPE_CHECKING:
    from etl.qianfan import QianfanClient

log = logging.getLogger(__name__)

# Runs by --job-id refresh only some jobs, so they say nothing about the account's freshness.
SELECTED_MODE = "selected"
RUN_STATUSES = ("succeeded", "partial", "failed", "abandoned")
ERROR_EXCERPT = 200
EXIT_CODE_HELP = (
    "Exit code of the last sync: 0 success, 65 bad upstream data, 74 the database's disk is "
    "full, 75 temporary, 77 not allowed, 78 configuration (README, 'Exit codes')."
)


# -- status --max-age ----------------------------------------------------------------------


def check_freshness(engine: Engine, max_age: float, max_age_text: str) -> str:
    """One line saying the data is fresh, or raise StaleError with one line saying why not.

    The judge is the latest finished run (a run still in progress is skipped, so a long run
    does not flap the check; one that never finishes lets the finished one grow stale)."""
    with engine.connect() as connection:
        latest = connection.execute(
            sa.select(etl_runs)
            .where(etl_runs.c.status != "running", etl_runs.c.mode != SELECTED_MODE)
            .order_by(etl_runs.c.run_id.desc())
            .limit(1)
        ).first()
    if latest is None:
        raise StaleError("never ran: no finished qianfan-etl run in this database yet")
    age = show_duration(max(0.0, time.time() - _epoch(latest.finished_at or latest.started_at)))
    if latest.status != "succeeded":
        error = " ".join((latest.error or "no error recorded").split())[:ERROR_EXCERPT]
        if latest.jobs_failed:
            error = f"{latest.jobs_failed} jobs could not be listed (see etl_failed_jobs); {error}"
        code = "" if latest.exit_code is None else f" with exit {latest.exit_code}"
        raise StaleError(f"{latest.status}: run {latest.run_id} ended {age} ago{code}: {error}")
    if time.time() - _epoch(latest.finished_at) > max_age:
        raise StaleError(
            f"stale: the latest run, {latest.run_id}, succeeded {age} ago, "
            f"longer ago than --max-age {max_age_text}"
        )
    return f"fresh: run {latest.run_id} succeeded {age} ago (--max-age {max_age_text})"


def _epoch(moment: datetime) -> float:
    """Seconds since the epoch; SQLite hands back naive times, which are UTC."""
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


# -- sync --metrics-file -------------------------------------------------------------------

COUNT_METRICS = {
    "jobs_seen": ("last_run_jobs", "Jobs the last run listed."),
    "tasks_seen": ("last_run_tasks", "Tasks the last run listed."),
    "tasks_changed": ("last_run_tasks_changed", "Tasks the last run found new or changed."),
    "rows_written": ("last_run_rows_written", "Rows the last run wrote, all tables together."),
    "rejects": ("last_run_rejects", "Records the last run set aside in etl_rejects."),
    "jobs_failed": ("last_run_failed_jobs", "Jobs whose task listing failed in the last run."),
    "jobs_skipped": ("last_run_skipped_jobs", "Jobs the last run carried over without listing."),
}


@dataclass
class RunOutcome:
    """What is known about a run when it ends, from its etl_runs row where it could be read."""

    exit_code: int
    finished: float
    duration: float
    api_calls: int
    status: str = "failed"
    run_id: int | None = None
    counts: dict[str, int] = field(default_factory=dict)
    last_success: float | None = None
    # (scope kind, scope id) -> stored rows whose soft delete the run held back
    held_back: dict[tuple[str, str], int] = field(default_factory=dict)


class RunMetrics:
    """Around one `sync`: whatever ends it, write the metrics file (unless it is a dry run),
    from the run record in `engine` where it can be read and the calls `client` made; with
    neither (the run could not start), from what is known. The last success time is carried
    over from the file when the database cannot say."""

    def __init__(
        self,
        path: Path | None,
        dry_run: bool = False,
        engine: Engine | None = None,
        client: "QianfanClient | None" = None,
    ) -> None:
        self.path = None if dry_run else path
        self.engine = engine
        self.client = client
        self.started = time.time()
        self._monotonic = time.monotonic()

    def __enter__(self) -> "RunMetrics":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.record(exc)

    def record(self, exc: BaseException | None) -> None:
        """Write the file for a run that ended with `exc` (None: it went through)."""
        if self.path is None:
            return
        outcome = RunOutcome(
            exit_code=exit_code_of(exc),
            finished=time.time(),
            duration=time.monotonic() - self._monotonic,
            api_calls=self.client.api_calls if self.client is not None else 0,
        )
        try:
            self._write(self.path, outcome)
        except Exception as error:  # monitoring never changes the run's outcome: warn, go on
            log.warning(
                "could not write the metrics file %s (%s: %s); the run's exit code stays %d. "
                "Check that its directory exists and is writable",
                self.path,
                type(error).__name__,
                error,
                outcome.exit_code,
                exc_info=not isinstance(error, OSError),  # anything else is a bug: show where
            )

    def _write(self, path: Path, outcome: RunOutcome) -> None:
        """Complete the outcome from the run record (or the previous file), then write it."""
        outcome.status = "succeeded" if outcome.exit_code == EXIT_OK else "failed"
        if self.engine is not None:
            _read_run(self.engine, self.started, outcome)
        if outcome.last_success is None:
            outcome.last_success = previous_last_success(path)
        write_metrics(path, outcome)


def _read_run(engine: Engine, started: float, outcome: RunOutcome) -> None:
    """Fill the outcome from this run's etl_runs row, if the database answers."""
    try:
        with engine.connect() as connection:
            row = connection.execute(
                sa.select(etl_runs).order_by(etl_runs.c.run_id.desc()).limit(1)
            ).first()
            success = connection.execute(
                sa.select(sa.func.max(etl_runs.c.finished_at)).where(
                    etl_runs.c.status == "succeeded"
                )
            ).scalar()
    except Exception as error:  # the database may be why the run failed: write what is known
        log.warning("metrics: could not read the run record: %s", type(error).__name__)
        return
    if success is not None:
        outcome.last_success = _epoch(_as_datetime(success))
    # A run row older than this process is an earlier run's: this one never got recorded.
    if row is None or _epoch(row.started_at) < started - 1:
        return
    outcome.run_id, outcome.status = row.run_id, row.status
    outcome.counts = {name: getattr(row, name) for name in COUNT_METRICS}
    outcome.api_calls = max(outcome.api_calls, row.api_calls)
    outcome.held_back = _held_back(engine, row.run_id)


def _held_back(engine: Engine, run_id: int) -> dict[tuple[str, str], int]:
    table = etl_held_back_scopes
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(table.c.scope_kind, table.c.scope_id, table.c.held_back).where(
                table.c.run_id == run_id
            )
        ).all()
    return {(row.scope_kind, row.scope_id): row.held_back for row in rows}


def _as_datetime(value: Any) -> datetime:
    # MAX() over a SQLite column comes back as text, bypassing the column's type.
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


def previous_last_success(path: Path) -> float | None:
    """The last success time an earlier run wrote to the metrics file, if any; a file that
    cannot be read or parsed (a power cut, another writer) is warned about and replaced."""
    try:
        for family in text_string_to_metric_families(path.read_text(encoding="utf-8")):
            if family.name == "qianfan_etl_last_success_timestamp_seconds" and family.samples:
                return float(family.samples[0].value)
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as error:  # ValueError: not UTF-8, or not the text format
        log.warning(
            "metrics: the previous metrics file %s could not be read (%s: %s); it is replaced, "
            "without the last success time it may have held",
            path,
            type(error).__name__,
            error,
        )
    return None


def _held_back_metrics(registry: CollectorRegistry, outcome: RunOutcome) -> None:
    """How many scopes held back deletes, and what each kept (etl_held_back_scopes)."""
    if outcome.run_id is None:
        return
    scopes = Gauge(
        "qianfan_etl_last_run_held_back_scopes",
        "Scopes whose soft deletes the last run held back (records without a readable id).",
        registry=registry,
    )
    scopes.set(len(outcome.held_back))
    kept = Gauge(
        "qianfan_etl_last_run_held_back_rows",
        "Stored rows the last run kept live in a scope that held back its deletes.",
        ["scope_kind", "scope_id"],
        registry=registry,
    )
    for (kind, scope_id), count in outcome.held_back.items():
        kept.labels(scope_kind=kind, scope_id=scope_id).set(count)


def write_metrics(path: Path, outcome: RunOutcome) -> None:
    """Write the run's metrics in Prometheus text format, atomically (rename into place)."""
    registry = CollectorRegistry()

    def gauge(name: str, text: str, value: float, **labels: str) -> None:
        metric = Gauge(f"qianfan_etl_{name}", text, list(labels), registry=registry)
        (metric.labels(**labels) if labels else metric).set(value)

    gauge("last_run_timestamp_seconds", "When the last sync ended, Unix time.", outcome.finished)
    gauge("last_run_duration_seconds", "Wall time of the last sync.", outcome.duration)
    gauge("last_run_exit_code", EXIT_CODE_HELP, outcome.exit_code)
    gauge("last_run_api_calls", "Qianfan API requests the last sync made.", outcome.api_calls)
    if outcome.last_success is not None:
        gauge(
            "last_success_timestamp_seconds",
            "When the last successful sync ended, Unix time.",
            outcome.last_success,
        )
    if outcome.run_id is not None:
        gauge("last_run_id", "etl_runs.run_id of the last sync.", outcome.run_id)
    status = Gauge(
        "qianfan_etl_last_run_status",
        "1 for the status of the last sync (etl_runs.status), 0 for the others.",
        ["status"],
        registry=registry,
    )
    for name in RUN_STATUSES:
        status.labels(status=name).set(1 if name == outcome.status else 0)
    for column, value in outcome.counts.items():
        name, text = COUNT_METRICS[column]
        gauge(name, text, value)
    _held_back_metrics(registry, outcome)
    replace_file(path, generate_latest(registry))
