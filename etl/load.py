"""Writing to the database: upserts, child replacement, status history, soft deletes, run
records and the one-run-at-a-time lock."""

import hashlib
import logging
import operator
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa
from filelock import FileLock, Timeout
from psycopg.types.json import Jsonb
from sqlalchemy import Connection, Engine
from sqlalchemy.dialects import postgresql, sqlite

from etl import redact
from etl.errors import LockBusyError, LockLostError
from etl.schema import (
    etl_failed_jobs,
    etl_rejects,
    etl_runs,
    finetune_jobs,
    finetune_task_checkpoints,
    finetune_task_metrics,
    finetune_task_status_history,
    finetune_tasks,
)
from etl.transform import Reject, TaskRows, same_content

log = logging.getLogger(__name__)

# pg_advisory_lock key: an arbitrary constant that only qianfan-etl uses.
ADVISORY_LOCK_KEY = 0x5A3F0E3C6B1D2E4F
LOCK_POLL_SECONDS = 0.2
ID_CHUNK = 1000
# A task in any other status (`Running`, `Waiting`, `""`, NULL, one not yet known) may still
# change, so an --active-only run lists its job again.
TERMINAL_STATUSES = ("Done", "Failed", "Stopped")
RUNNING = "Running"
# Written by their own UPDATEs, never by the content upsert: progress alone is no change.
PROGRESS_COLUMNS = ("run_progress", "vdl_link", "progress_at")


def now() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


# -- the lock ------------------------------------------------------------------------------


class RunLock:
    """The run lock as held: `check` before a commit proves it is still held."""

    def check(self, connection: Connection) -> None:
        """Raise LockLostError if this run no longer holds the lock (a file lock cannot be
        lost while the process lives)."""


@contextmanager
def run_lock(engine: Engine, wait: float) -> Iterator[RunLock]:
    """Hold the database's run lock for the block, waiting at most `wait` seconds for it."""
    if engine.dialect.name == "postgresql":
        with _advisory_lock(engine, wait) as lock:
            yield lock
    else:
        with _file_lock(engine, wait):
            yield RunLock()


class _AdvisoryLock(RunLock):
    """The advisory lock `key` held by the session with backend process id `pid`."""

    def __init__(self, pid: int, key: int) -> None:
        self.pid = pid
        self.key = key

    def check(self, connection: Connection) -> None:
        """Look the lock up in pg_locks, in the caller's transaction (a bigint key shows as
        its high and low 32 bits, unsigned, in classid and objid)."""
        held = connection.execute(
            sa.text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND pid = :pid AND classid = :high AND objid = :low AND objsubid = 1"
            ),
            {"pid": self.pid, "high": (self.key >> 32) % 2**32, "low": self.key % 2**32},
        ).scalar_one()
        if not held:
            raise LockLostError(
                "this run lost its lock on the database: the session holding it ended "
                f"(backend {self.pid}: pg_terminate_backend, a restart, or a timeout). The "
                "batch in progress was rolled back and the run stopped; the next run converges."
            )


@contextmanager
def _advisory_lock(engine: Engine, wait: float) -> Iterator[RunLock]:
    # A session-level lock on its own connection: it dies with the session, even on SIGKILL.
    with engine.connect() as connection:
        deadline = time.monotonic() + wait
        key = _lock_key(connection)
        try_lock = sa.text("SELECT pg_try_advisory_lock(:key)").bindparams(key=key)
        while not connection.execute(try_lock).scalar_one():
            connection.rollback()
            if time.monotonic() >= deadline:
                raise LockBusyError(_busy_message(wait))
            time.sleep(LOCK_POLL_SECONDS)
        # The lock's session idles for the whole run: no idle timeout may end it.
        connection.execute(sa.text("SET idle_in_transaction_session_timeout = 0"))
        if (connection.dialect.server_version_info or (0,)) >= (14,):
            connection.execute(sa.text("SET idle_session_timeout = 0"))
        pid = connection.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        connection.commit()
        try:
            yield _AdvisoryLock(pid, key)
        finally:
            _unlock(connection, key)


def _unlock(connection: Connection, key: int) -> None:
    """Release the lock; a session that is gone already released it."""
    unlock = sa.text("SELECT pg_advisory_unlock(:key)").bindparams(key=key)
    try:
        connection.execute(unlock)
        connection.commit()
    except sa.exc.DBAPIError as exc:
        log.warning("the run lock's session had ended (%s)", type(exc.orig).__name__)


def _lock_key(connection: Connection) -> int:
    """One lock per schema, so installations in two schemas of a database run independently;
    `public` keeps the key of the versions before schemas, which took no other."""
    schema = connection.execute(sa.text("SELECT current_schema()")).scalar()
    if schema in (None, "public"):
        return ADVISORY_LOCK_KEY
    digest = hashlib.sha256(f"qianfan-etl:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextmanager
def _file_lock(engine: Engine, wait: float) -> Iterator[None]:
    database = engine.url.database
    if not database or database == ":memory:":
        yield
        return
    lock = FileLock(str(Path(database).resolve()) + ".lock")
    try:
        lock.acquire(timeout=wait, poll_interval=LOCK_POLL_SECONDS)
    except Timeout:
        raise LockBusyError(_busy_message(wait)) from None
    try:
        yield
    finally:
        lock.release()


def _busy_message(wait: float) -> str:
    return (
        f"another qianfan-etl run holds the lock on this database (waited {wait:g}s); "
        "nothing was fetched. Let it finish, or pass --lock-wait SECONDS to wait for it."
    )


# -- run records ---------------------------------------------------------------------------


@dataclass
class RunCounts:
    """What a run saw and wrote, as recorded in etl_runs."""

    jobs_seen: int = 0
    tasks_seen: int = 0
    tasks_changed: int = 0
    rows_written: int = 0
    api_calls: int = 0
    rejects: int = 0
    jobs_skipped: int = 0
    jobs_failed: int = 0

    def add(self, other: "RunCounts") -> None:
        """Accumulate another batch's counts."""
        for name in vars(self):
            setattr(self, name, getattr(self, name) + getattr(other, name))


def start_run(connection: Connection, mode: str = "full") -> int:
    """Mark runs that died without finishing as abandoned, then record a new running one."""
    connection.execute(
        etl_runs.update()
        .where(etl_runs.c.status == "running")
        .values(status="abandoned", error="the process ended without finishing its run")
    )
    result = connection.execute(
        etl_runs.insert()
        .values(started_at=now(), status="running", mode=mode)
        .returning(etl_runs.c.run_id)
    )
    return int(result.scalar_one())


def finish_run(
    connection: Connection,
    run_id: int,
    counts: RunCounts,
    error: str | None = None,
    *,
    status: str | None = None,
    exit_code: int | None = None,
) -> None:
    """Record the end of a run: its counts, status and exit code (and error, if any).

    Without a status, a run with an error `failed` (exit 1 unless given), else `succeeded`."""
    status = status or ("failed" if error else "succeeded")
    if exit_code is None:
        exit_code = 0 if status == "succeeded" else 1
    connection.execute(
        etl_runs.update()
        .where(etl_runs.c.run_id == run_id)
        .values(
            finished_at=now(),
            status=status,
            error=redact.bounded(error) if error else None,
            exit_code=exit_code,
            **vars(counts),
        )
    )


# -- batches of whole jobs -----------------------------------------------------------------


@dataclass
class Batch:
    """Whole jobs with all their tasks, written in one transaction."""

    jobs: list[dict[str, Any]] = field(default_factory=list)
    tasks: list[TaskRows] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    # jobs whose task listing is complete and clean: their absent tasks are soft-deleted
    listed_jobs: list[str] = field(default_factory=list)
    # jobs whose task listing failed: job_id, error_class, exit_code, message
    failed_jobs: list[dict[str, Any]] = field(default_factory=list)
    # tasks whose owning job the run already settled (written as given, never deferred)
    owners_settled: bool = False

    def __len__(self) -> int:
        return len(self.jobs) + len(self.tasks)


@dataclass
class Written:
    """What writing one batch did, and what it left for the end of the run.

    `absent`: live tasks of the batch's completely listed jobs that their listing lacked
    (soft-deleted at the end of the run, if the delete guard allows). `deferred`: tasks
    listed by a job that ranks after the live one they are stored under, each with that job,
    kept back until the run knows whether that job still lists them (the ownership rule: of
    the jobs listing a task, the smallest job id wins)."""

    counts: RunCounts
    seen: set[str] = field(default_factory=set)
    absent: list[str] = field(default_factory=list)
    listed_jobs: list[str] = field(default_factory=list)
    deferred: list[tuple[TaskRows, str]] = field(default_factory=list)


def has_tasks(connection: Connection) -> bool:
    """Whether any task is stored yet."""
    return connection.execute(sa.select(finetune_tasks.c.task_id).limit(1)).first() is not None


def stored_tasks(connection: Connection, ids: Sequence[str]) -> dict[str, sa.Row[Any]]:
    """What is stored for these task ids: content hash, status, deletion mark."""
    return _stored(connection, finetune_tasks, ids)


def write_batch(
    connection: Connection,
    batch: Batch,
    run_id: int,
    stored: dict[str, sa.Row[Any]],
) -> Written:
    """Write what changed in a batch of whole jobs; skip what is unchanged, children included.

    `stored` is `stored_tasks` for the batch's task ids, read in the same transaction."""
    stamp = now()
    jobs = list({job["job_id"]: job for job in batch.jobs}.values())
    tasks = list({rows.task["task_id"]: rows for rows in batch.tasks}.values())
    deferred = [] if batch.owners_settled else _outranked(tasks, stored)
    held = {rows.task["task_id"] for rows, _ in deferred}
    tasks = [rows for rows in tasks if rows.task["task_id"] not in held]
    stored_jobs = _stored(connection, finetune_jobs, [j["job_id"] for j in jobs])
    changed_jobs = [job for job in jobs if not _same_job(job, stored_jobs)]
    changed = [rows for rows in tasks if _is_changed(rows.task, "task_id", stored)]
    written = _save(connection, finetune_jobs, changed_jobs, stored_jobs, stamp)
    written += _undelete(
        connection, finetune_jobs, _returning(finetune_jobs, stored_jobs, changed_jobs), stamp
    )
    changed_tasks = [rows.task for rows in changed]
    raw_json = {rows.task["task_id"]: rows.raw_json for rows in changed if rows.raw_json}
    written += _save(connection, finetune_tasks, changed_tasks, stored, stamp, raw_json)
    written += _undelete(
        connection, finetune_tasks, _returning(finetune_tasks, stored, changed_tasks), stamp
    )
    written += _replace_children(connection, changed, stored)
    written += _clear_progress(connection, _left_running(changed, stored))
    history = _status_changes(changed, stored, run_id, stamp)
    written += _insert(connection, finetune_task_status_history, history)
    seen = {r.task["task_id"] for r in tasks} | {r.source_id for r in batch.rejects if r.source_id}
    written += _insert(connection, etl_rejects, _reject_rows(batch.rejects, run_id, stamp))
    written += _insert(connection, etl_failed_jobs, _failure_rows(batch.failed_jobs, run_id, stamp))
    counts = RunCounts(
        tasks_seen=len(tasks) + len(held),
        tasks_changed=len(changed),
        rows_written=written,
        rejects=len(batch.rejects),
        jobs_failed=len(batch.failed_jobs),
    )
    absent = _absent_tasks(connection, batch.listed_jobs, seen)
    return Written(counts, seen, absent, batch.listed_jobs, deferred)


def _outranked(tasks: list[TaskRows], stored: dict[str, sa.Row[Any]]) -> list[tuple[TaskRows, str]]:
    """Typed tasks listed by a job that ranks after the live one they are stored under."""
    held = []
    for rows in tasks:
        job_id = rows.task.get("job_id")
        if job_id is None:  # an unchanged stub: the stored job listed it
            continue
        before = stored.get(rows.task["task_id"])
        if before is None or before.deleted_at is not None:
            continue
        if before.job_id < job_id:
            held.append((rows, before.job_id))
    return held


def live_counts(connection: Connection) -> tuple[int, int]:
    """How many jobs and tasks are live (not soft-deleted)."""
    return (_count(connection, finetune_jobs), _count(connection, finetune_tasks))


def absent_jobs(connection: Connection, seen_jobs: set[str]) -> list[str]:
    """Live jobs that a complete job listing did not contain."""
    live = connection.execute(
        sa.select(finetune_jobs.c.job_id).where(finetune_jobs.c.deleted_at.is_(None))
    ).scalars()
    return sorted(set(live) - seen_jobs)


def live_tasks_of(connection: Connection, job_ids: Sequence[str]) -> int:
    """How many live tasks these jobs hold."""
    return sum(
        _count(connection, finetune_tasks, finetune_tasks.c.job_id.in_(chunk))
        for chunk in _chunks(job_ids)
    )


def delete_jobs(connection: Connection, gone: Sequence[str]) -> int:
    """Soft-delete these jobs and their tasks."""
    stamp = now()
    written = 0
    for chunk in _chunks(gone):
        written += _soft_delete(
            connection, finetune_tasks, finetune_tasks.c.job_id.in_(chunk), stamp
        )
        written += _soft_delete(connection, finetune_jobs, finetune_jobs.c.job_id.in_(chunk), stamp)
    return written


def delete_tasks(connection: Connection, task_ids: Sequence[str]) -> int:
    """Soft-delete these tasks (those still live)."""
    stamp = now()
    return sum(
        _soft_delete(connection, finetune_tasks, finetune_tasks.c.task_id.in_(chunk), stamp)
        for chunk in _chunks(task_ids)
    )


def _count(
    connection: Connection, table: sa.Table, where: sa.ColumnElement[bool] | None = None
) -> int:
    query = sa.select(sa.func.count()).select_from(table).where(table.c.deleted_at.is_(None))
    if where is not None:
        query = query.where(where)
    return int(connection.execute(query).scalar_one())


def _chunks(ids: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(ids), ID_CHUNK):
        yield ids[start : start + ID_CHUNK]


def _key(table: sa.Table) -> sa.Column[Any]:
    return next(iter(table.primary_key.columns))


def _stored(connection: Connection, table: sa.Table, ids: Sequence[str]) -> dict[str, sa.Row[Any]]:
    """What is already stored for these ids: hash, deletion mark and (for tasks) status."""
    key = _key(table)
    columns = [key, table.c.content_hash, table.c.deleted_at]
    if "run_status" in table.c:
        columns += [table.c.run_status, table.c.job_id]
    if connection.dialect.name == "postgresql":
        # One array parameter: far cheaper to compile and plan than a thousand-item IN list.
        ids_array = sa.bindparam("ids", list(ids), type_=postgresql.ARRAY(sa.Text))
        rows = connection.execute(sa.select(*columns).where(key == sa.any_(ids_array)))
        return {row[0]: row for row in rows}
    found: dict[str, sa.Row[Any]] = {}
    for chunk in _chunks(ids):
        for row in connection.execute(sa.select(*columns).where(key.in_(chunk))):
            found[row[0]] = row
    return found


def _is_changed(row: dict[str, Any], key: str, stored: dict[str, sa.Row[Any]]) -> bool:
    before = stored.get(row[key])
    if before is None or before.content_hash != row["content_hash"]:
        return True
    # an unchanged task listed under another job moved there (a stub has no job_id: not moved)
    return key == "task_id" and "job_id" in row and row["job_id"] != before.job_id


def _same_job(job: dict[str, Any], stored: dict[str, sa.Row[Any]]) -> bool:
    """Whether the job is stored with this content (a legacy hash of it counts)."""
    before = stored.get(job["job_id"])
    return before is not None and same_content(before.content_hash, job["content_hash"], job["raw"])


def _returning(
    table: sa.Table, stored: dict[str, sa.Row[Any]], changed: list[dict[str, Any]]
) -> list[str]:
    """Unchanged ids marked deleted that were listed again: they came back."""
    rewritten = {row[_key(table).name] for row in changed}
    return [
        key for key, row in stored.items() if row.deleted_at is not None and key not in rewritten
    ]


def _save(
    connection: Connection,
    table: sa.Table,
    rows: list[dict[str, Any]],
    stored: dict[str, sa.Row[Any]],
    stamp: datetime,
    raw_json: Mapping[str, str] | None = None,
) -> int:
    """Insert new rows (COPY on Postgres: the run lock means no one else inserts them) and
    upsert changed ones. `raw_json` holds the raw column's JSON text by key, if known."""
    key = _key(table).name
    stamped = [
        {**row, "first_seen_at": stamp, "last_changed_at": stamp, "deleted_at": None}
        for row in rows
    ]
    new = [row for row in stamped if row[key] not in stored]
    changed = [row for row in stamped if row[key] in stored]
    return _insert(connection, table, new, raw_json) + _upsert(connection, table, changed, key)


def _upsert(connection: Connection, table: sa.Table, rows: list[dict[str, Any]], key: str) -> int:
    """Update every column but first_seen_at where the key exists, else insert."""
    if not rows:
        return 0
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(table)
    keep = {key, "first_seen_at", *PROGRESS_COLUMNS}
    update = {c.name: statement.excluded[c.name] for c in table.columns if c.name not in keep}
    connection.execute(statement.on_conflict_do_update(index_elements=[key], set_=update), rows)
    return len(rows)


def _insert(
    connection: Connection,
    table: sa.Table,
    rows: list[dict[str, Any]],
    raw_json: Mapping[str, str] | None = None,
) -> int:
    """Insert rows: binary COPY on Postgres (measured fastest), executemany elsewhere."""
    if not rows:
        return 0
    if connection.dialect.name != "postgresql":
        connection.execute(table.insert(), rows)
        return len(rows)
    columns, key = list(rows[0]), _key(table).name
    json_at = [i for i, name in enumerate(columns) if isinstance(table.c[name].type, sa.JSON)]
    values_of = operator.itemgetter(*columns)
    driver: psycopg.Connection[Any] = connection.connection.driver_connection  # type: ignore[assignment]
    # Binary COPY: psycopg packs numbers and times in C, a fifth of the CPU of COPY text.
    statement = f"COPY {table.name} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"
    with driver.cursor() as cursor:
        types = _column_types(connection, cursor, table.name, columns)
        with cursor.copy(statement) as copy:
            copy.set_types(types)
            if not json_at:
                for row in rows:
                    copy.write_row(values_of(row))
                return len(rows)
            for row in rows:
                values = list(values_of(row))
                for i in json_at:
                    # JSON text the transformer already made is sent as it is.
                    text = raw_json.get(row[key]) if raw_json else None
                    values[i] = Jsonb(text, dumps=_as_is) if text else Jsonb(values[i])
                copy.write_row(values)
    return len(rows)


def _column_types(
    connection: Connection, cursor: psycopg.Cursor[Any], table: str, columns: list[str]
) -> list[int]:
    """Each column's type oid, as the database has it: binary COPY must name them. Read once
    per connection (a query per COPY waited on a busy server: a tenth of the writer's time)."""
    known: dict[str, dict[str, int]] = connection.info.setdefault("column_types", {})
    if table not in known:
        cursor.execute(
            "SELECT attname, atttypid FROM pg_attribute WHERE attrelid = %s::regclass", [table]
        )
        known[table] = dict(cursor.fetchall())
    return [known[table][name] for name in columns]


def _as_is(text: str) -> str:
    return text


def _undelete(connection: Connection, table: sa.Table, ids: list[str], stamp: datetime) -> int:
    written = 0
    for chunk in _chunks(ids):
        result = connection.execute(
            table.update()
            .where(_key(table).in_(chunk))
            .values(deleted_at=None, last_changed_at=stamp)
        )
        written += result.rowcount
    return written


def _soft_delete(
    connection: Connection, table: sa.Table, where: sa.ColumnElement[bool], stamp: datetime
) -> int:
    result = connection.execute(
        table.update()
        .where(where, table.c.deleted_at.is_(None))
        .values(deleted_at=stamp, last_changed_at=stamp)
    )
    return result.rowcount


def _replace_children(
    connection: Connection, changed: list[TaskRows], stored: dict[str, sa.Row[Any]]
) -> int:
    """Children of changed tasks are replaced, so what vanished upstream vanishes here."""
    ids = [rows.task["task_id"] for rows in changed if rows.task["task_id"] in stored]
    written = 0
    for table in (finetune_task_metrics, finetune_task_checkpoints):
        for chunk in _chunks(ids):
            written += connection.execute(table.delete().where(table.c.task_id.in_(chunk))).rowcount
    written += _insert(connection, finetune_task_metrics, [m for r in changed for m in r.metrics])
    written += _insert(
        connection, finetune_task_checkpoints, [c for r in changed for c in r.checkpoints]
    )
    return written


def _status_changes(
    changed: list[TaskRows], stored: dict[str, sa.Row[Any]], run_id: int, stamp: datetime
) -> list[dict[str, Any]]:
    """A history row for each task first seen, or seen with a new status."""
    return [
        {
            "task_id": rows.task["task_id"],
            "run_id": run_id,
            "run_status": rows.task["run_status"],
            "observed_at": stamp,
        }
        for rows in changed
        if rows.task["task_id"] not in stored
        or stored[rows.task["task_id"]].run_status != rows.task["run_status"]
    ]


def _absent_tasks(connection: Connection, listed_jobs: list[str], seen: set[str]) -> list[str]:
    """Live tasks of completely listed jobs that the listing did not contain."""
    absent: list[str] = []
    for jobs in _chunks(listed_jobs):
        live = connection.execute(
            sa.select(finetune_tasks.c.task_id).where(
                finetune_tasks.c.job_id.in_(jobs), finetune_tasks.c.deleted_at.is_(None)
            )
        ).scalars()
        absent += sorted(set(live) - seen)
    return absent


def _failure_rows(
    failures: list[dict[str, Any]], run_id: int, stamp: datetime
) -> list[dict[str, Any]]:
    return [
        {
            **failure,
            "message": redact.bounded(failure["message"]),
            "run_id": run_id,
            "failed_at": stamp,
        }
        for failure in failures
    ]


def _left_running(changed: list[TaskRows], stored: dict[str, sa.Row[Any]]) -> list[str]:
    """Changed tasks stored as Running that are no longer: their progress goes."""
    return [
        rows.task["task_id"]
        for rows in changed
        if rows.task["task_id"] in stored
        and stored[rows.task["task_id"]].run_status == RUNNING
        and rows.task["run_status"] != RUNNING
    ]


def _clear_progress(connection: Connection, task_ids: list[str]) -> int:
    written = 0
    for chunk in _chunks(task_ids):
        result = connection.execute(
            finetune_tasks.update()
            .where(finetune_tasks.c.task_id.in_(chunk))
            .values(dict.fromkeys(PROGRESS_COLUMNS))
        )
        written += result.rowcount
    return written


def save_progress(connection: Connection, progress: list[dict[str, Any]]) -> int:
    """Store the live progress of tasks stored as Running, where it changed.

    Its own UPDATE: content_hash, last_changed_at and the status history stay as they were."""
    stored = _stored_progress(connection, [row["task_id"] for row in progress])
    changed = [
        {**row, "progress_at": now()}
        for row in progress
        if row["task_id"] in stored
        and stored[row["task_id"]] != (row["run_progress"], row["vdl_link"])
    ]
    if not changed:
        return 0
    key: sa.BindParameter[str] = sa.bindparam("progress_task_id")
    connection.execute(
        finetune_tasks.update()
        .where(finetune_tasks.c.task_id == key)
        .values({name: sa.bindparam(name) for name in PROGRESS_COLUMNS}),
        [{**row, "progress_task_id": row["task_id"]} for row in changed],
    )
    return len(changed)


def _stored_progress(
    connection: Connection, task_ids: list[str]
) -> dict[str, tuple[float | None, str | None]]:
    """Stored progress of those of these tasks that are live and stored as Running."""
    table, found = finetune_tasks, {}
    for chunk in _chunks(task_ids):
        rows = connection.execute(
            sa.select(table.c.task_id, table.c.run_progress, table.c.vdl_link).where(
                table.c.task_id.in_(chunk),
                table.c.run_status == RUNNING,
                table.c.deleted_at.is_(None),
            )
        )
        found.update({row.task_id: (row.run_progress, row.vdl_link) for row in rows})
    return found


# -- what an --active-only run lists -------------------------------------------------------


def live_job_ids(connection: Connection) -> set[str]:
    """Every job stored and not soft-deleted."""
    query = sa.select(finetune_jobs.c.job_id).where(finetune_jobs.c.deleted_at.is_(None))
    return set(connection.execute(query).scalars())


def jobs_to_relist(connection: Connection) -> set[str]:
    """Jobs whose tasks an --active-only run lists again although stored: those with a live
    task not in a terminal state or with no live task at all (a new job's first task comes
    soon), and those a run since the last complete one failed to list."""
    tasks, jobs = finetune_tasks, finetune_jobs
    unfinished = sa.select(tasks.c.job_id).where(
        tasks.c.deleted_at.is_(None),
        sa.or_(tasks.c.run_status.is_(None), tasks.c.run_status.not_in(TERMINAL_STATUSES)),
    )
    live_task = sa.select(tasks.c.task_id).where(
        tasks.c.job_id == jobs.c.job_id, tasks.c.deleted_at.is_(None)
    )
    empty = sa.select(jobs.c.job_id).where(jobs.c.deleted_at.is_(None), ~live_task.exists())
    failed = sa.select(etl_failed_jobs.c.job_id).where(
        etl_failed_jobs.c.run_id > _last_covering_run()
    )
    return set(connection.execute(sa.union(unfinished, empty, failed)).scalars())


def _last_covering_run() -> sa.ScalarSelect[Any]:
    """The last run that listed every job it had to: a succeeded full or active-only run."""
    runs = etl_runs
    last = sa.select(sa.func.coalesce(sa.func.max(runs.c.run_id), 0)).where(
        runs.c.status == "succeeded", runs.c.mode.in_(("full", "active"))
    )
    return last.scalar_subquery()


def last_full_run_at(connection: Connection) -> datetime | None:
    """When the last full run that listed every job finished (succeeded or partial), if any."""
    runs = etl_runs
    query = sa.select(sa.func.max(runs.c.finished_at)).where(
        runs.c.mode == "full", runs.c.status.in_(("succeeded", "partial"))
    )
    finished: datetime | None = connection.execute(query).scalar_one()
    if finished is not None and finished.tzinfo is None:
        finished = finished.replace(tzinfo=UTC)  # SQLite gives back naive UTC
    return finished


def _reject_rows(rejects: list[Reject], run_id: int, stamp: datetime) -> list[dict[str, Any]]:
    return [
        {
            "run_id": run_id,
            "entity": reject.entity,
            "source_id": reject.source_id,
            "reason": redact.bounded(reject.reason),
            "raw": reject.raw,
            "rejected_at": stamp,
        }
        for reject in rejects
    ]
