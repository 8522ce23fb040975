"""Writing to the database: a batch as one verb per table (jobs, tasks with their children,
status history, rejects, failed jobs) over a private builder, `_save`: insert new rows (binary
COPY on Postgres, `etl.pgcopy`), upsert changed ones, undelete those that came back. Then soft
deletes, live progress, run records and the one-run-at-a-time lock."""

import hashlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from filelock import FileLock, Timeout
from sqlalchemy import Connection, Engine
from sqlalchemy.dialects import postgresql, sqlite

from etl import pgcopy, redact
from etl.canonical import content_hash, same_content
from etl.errors import LockBusyError, LockLostError
from etl.ownership import outranked
from etl.resources import TASKS, Resource
from etl.schema import (
    etl_failed_jobs,
    etl_held_back_scopes,
    etl_rejects,
    etl_runs,
    finetune_jobs,
    finetune_task_checkpoints,
    finetune_task_metrics,
    finetune_task_status_history,
    finetune_tasks,
)
from etl.scopes import HeldBack
from etl.summary import summarised
from etl.transform import RUNNING, TERMINAL_STATUSES, Reject, TaskRows, Unchanged

log = logging.getLogger(__name__)

# pg_advisory_lock key: an arbitrary constant that only qianfan-etl uses.
ADVISORY_LOCK_KEY = 0x5A3F0E3C6B1D2E4F
LOCK_POLL_SECONDS = 0.2
ID_CHUNK = 1000
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
    advice = (
        "Let it finish, or pass --lock-wait SECONDS to wait for it."
        if wait == 0
        else f"It was still running after --lock-wait {wait:g}: let it finish; if runs often "
        "overlap, schedule them further apart or give a longer --lock-wait."
    )
    return (
        f"another qianfan-etl run holds the lock on this database (waited {wait:g}s); "
        f"nothing was fetched. {advice}"
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
        for name in (counter.name for counter in fields(self)):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def to_row(self) -> dict[str, int]:
        """The counts by etl_runs column, each named here: renaming a field renames no column."""
        return {
            "jobs_seen": self.jobs_seen,
            "tasks_seen": self.tasks_seen,
            "tasks_changed": self.tasks_changed,
            "rows_written": self.rows_written,
            "api_calls": self.api_calls,
            "rejects": self.rejects,
            "jobs_skipped": self.jobs_skipped,
            "jobs_failed": self.jobs_failed,
        }


def start_run(connection: Connection, mode: str = "full", *, dry_run: bool = False) -> int:
    """Mark runs that died without finishing as abandoned, then record a new running one.
    A dry run, rolled back, takes the number after the latest run rather than the sequence's
    next (Postgres never gives that back): it uses up no run number."""
    connection.execute(
        etl_runs.update()
        .where(etl_runs.c.status == "running")
        .values(status="abandoned", error="the process ended without finishing its run")
    )
    values: dict[str, Any] = {"started_at": now(), "status": "running", "mode": mode}
    if dry_run:
        latest = sa.select(sa.func.coalesce(sa.func.max(etl_runs.c.run_id), 0))
        values["run_id"] = latest.scalar_subquery() + 1
    result = connection.execute(etl_runs.insert().values(values).returning(etl_runs.c.run_id))
    return int(result.scalar_one())


def record_counts(connection: Connection, run_id: int, counts: RunCounts) -> None:
    """Set the run's counts to what it has committed: part of each batch's transaction."""
    connection.execute(
        etl_runs.update().where(etl_runs.c.run_id == run_id).values(**counts.to_row())
    )


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
            **counts.to_row(),
        )
    )


# -- batches of whole jobs -----------------------------------------------------------------


@dataclass
class Batch:
    """Whole jobs with all their tasks, written in one transaction."""

    jobs: list[dict[str, Any]] = field(default_factory=list)
    tasks: list[TaskRows | Unchanged] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    # jobs whose task listing was read to its end, each with the readable task ids it listed
    listed: dict[str, set[str]] = field(default_factory=dict)
    # jobs whose task listing failed: job_id, error_class, exit_code, message
    failed_jobs: list[dict[str, Any]] = field(default_factory=list)
    # tasks whose owning job the run already settled (written as given, never deferred)
    owners_settled: bool = False
    # the rows of resources the account lists beside its jobs, each with its declaration
    records: list[tuple[Resource, list[dict[str, Any]]]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.jobs) + len(self.tasks)


@dataclass(kw_only=True)
class Written:
    """What writing one batch did, and what it left for the end of the run.

    `absent`: by listed job, the live tasks stored under it that its listing lacked (the
    scope ledger settles at the end of the run which go). `deferred`: tasks
    listed by a job that ranks after the live one they are stored under, each with that job,
    kept back until the run knows whether that job still lists them (the ownership rule: of
    the jobs listing a task, the smallest job id wins)."""

    counts: RunCounts
    seen: set[str] = field(default_factory=set)
    absent: dict[str, list[str]] = field(default_factory=dict)
    deferred: list[tuple[TaskRows, str]] = field(default_factory=list)
    # the identity of every reject the batch saw, and how many it recorded (new or changed)
    reject_keys: set[str] = field(default_factory=set)
    rejects_recorded: int = 0

    def add(self, other: "Written") -> None:
        """Take in what another piece of the same transaction wrote."""
        self.counts.add(other.counts)
        self.seen |= other.seen
        self.absent.update(other.absent)
        self.deferred += other.deferred
        self.reject_keys |= other.reject_keys
        self.rejects_recorded += other.rejects_recorded


def has_tasks(connection: Connection) -> bool:
    """Whether any task is stored yet."""
    return connection.execute(sa.select(finetune_tasks.c.task_id).limit(1)).first() is not None


def stored_tasks(connection: Connection, ids: Sequence[str]) -> dict[str, sa.Row[Any]]:
    """What is stored for these task ids: content hash, status, deletion mark."""
    return _stored(connection, finetune_tasks, ids)


def stored_hashes(connection: Connection, ids: Sequence[str]) -> dict[str, str]:
    """The content hash stored for each of these task ids that is stored."""
    query = sa.select(finetune_tasks.c.task_id, finetune_tasks.c.content_hash)
    results = _for_ids(connection, query, finetune_tasks.c.task_id, ids)
    return {row.task_id: row.content_hash for result in results for row in result}


def write_batch(
    connection: Connection,
    batch: Batch,
    run_id: int,
    stored: dict[str, sa.Row[Any]],
    reject_room: int = 0,
) -> Written:
    """Write what changed in a batch of whole jobs; skip what is unchanged, children included.

    `stored` is `stored_tasks` for the batch's task ids, read in the same transaction;
    `reject_room`, how many of its rejects the run may still record (new or changed:
    --max-rejects)."""
    tasks, deferred = _owned_now(batch, stored)
    changed = [rows for rows in tasks if isinstance(rows, TaskRows) and _changed(rows, stored)]
    written = _write(connection, batch, changed, stored, run_id)
    recorded, keys = _save_rejects(connection, batch.rejects, run_id, reject_room)
    seen = {rows.task_id for rows in tasks}
    seen |= {r.source_id for r in batch.rejects if r.source_id and r.entity == TASKS.entity}
    counts = RunCounts(
        tasks_seen=len(tasks) + len(deferred),
        tasks_changed=len(changed),
        rows_written=written + recorded,
        rejects=len(keys),
        jobs_failed=len(batch.failed_jobs),
    )
    absent = _absent_tasks(connection, batch.listed)
    return Written(
        counts=counts,
        seen=seen,
        absent=absent,
        deferred=deferred,
        reject_keys=keys,
        rejects_recorded=recorded,
    )


def _write(
    connection: Connection,
    batch: Batch,
    changed: list[TaskRows],
    stored: dict[str, sa.Row[Any]],
    run_id: int,
) -> int:
    """One verb per table: save jobs, save tasks with their children, then record the run's
    status changes and failed jobs. Returns the rows written."""
    stamp = now()
    history = _status_changes(changed, stored, run_id, stamp)
    records = sum(_save_records(connection, r.table, rows, stamp) for r, rows in batch.records)
    return (
        records
        + _save_records(connection, finetune_jobs, batch.jobs, stamp)
        + _save_tasks(connection, changed, stored, stamp)
        + _insert(connection, finetune_task_status_history, history)
        + _insert(connection, etl_failed_jobs, _failure_rows(batch.failed_jobs, run_id, stamp))
    )


def _owned_now(
    batch: Batch, stored: dict[str, sa.Row[Any]]
) -> tuple[list[TaskRows | Unchanged], list[tuple[TaskRows, str]]]:
    """The batch's tasks (the last of each id) to write now, and those deferred."""
    tasks = list({rows.task_id: rows for rows in batch.tasks}.values())
    deferred = [] if batch.owners_settled else outranked(tasks, stored)
    held = {rows.task_id for rows, _ in deferred}
    return [rows for rows in tasks if rows.task_id not in held], deferred


def _changed(rows: TaskRows, stored: dict[str, sa.Row[Any]]) -> bool:
    """Whether a typed task differs from its stored row: its content, or the job listing it."""
    before = stored.get(rows.task_id)
    if before is None or before.content_hash != rows.task["content_hash"]:
        return True
    return bool(rows.task["job_id"] != before.job_id)


# -- one verb per table --------------------------------------------------------------------


def _save_records(
    connection: Connection, table: sa.Table, rows: list[dict[str, Any]], stamp: datetime
) -> int:
    """Save the records (jobs, or a listed resource's) whose content changed; of one listed
    twice, the last copy."""
    key = _key(table).name
    unique = {row[key]: row for row in rows}
    stored = _stored(connection, table, list(unique))
    changed = [row for row in unique.values() if not _same_record(row, stored, key)]
    return _save(connection, table, changed, stored, stamp)


def _same_record(row: dict[str, Any], stored: dict[str, sa.Row[Any]], key: str) -> bool:
    """Whether the record is stored with this content (a legacy hash of it counts)."""
    before = stored.get(row[key])
    return before is not None and same_content(before.content_hash, row["content_hash"], row["raw"])


def _save_tasks(
    connection: Connection, changed: list[TaskRows], stored: dict[str, sa.Row[Any]], stamp: datetime
) -> int:
    """Save changed tasks with the summaries of their children, replace those children, and
    clear the progress of those that stopped running."""
    tasks = [rows.task | summarised(rows) for rows in changed]
    raw_json = {rows.task["task_id"]: rows.raw_json for rows in changed if rows.raw_json}
    return (
        _save(connection, finetune_tasks, tasks, stored, stamp, raw_json)
        + _replace_children(connection, changed, stored)
        + _clear_progress(connection, _left_running(changed, stored))
    )


def _replace_children(
    connection: Connection, changed: list[TaskRows], stored: dict[str, sa.Row[Any]]
) -> int:
    """Children of changed tasks are replaced, so what vanished upstream vanishes here."""
    ids = [rows.task["task_id"] for rows in changed if rows.task["task_id"] in stored]
    deleted = sum(
        _rowcount(_for_ids(connection, table.delete(), table.c.task_id, ids))
        for table in TASKS.children
    )
    metrics = [metric for rows in changed for metric in rows.metrics]
    checkpoints = [checkpoint for rows in changed for checkpoint in rows.checkpoints]
    return (
        deleted
        + _insert(connection, finetune_task_metrics, metrics)
        + _insert(connection, finetune_task_checkpoints, checkpoints)
    )


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
    statement = finetune_tasks.update().values(dict.fromkeys(PROGRESS_COLUMNS))
    return _rowcount(_for_ids(connection, statement, finetune_tasks.c.task_id, task_ids))


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


# -- rejects: stored once per identity while they stay upstream ---------------------------


def reject_key(entity: str, source_id: str | None, scope: str | None, raw_hash: str) -> str:
    """A reject's identity: entity and full id; without a readable id, entity, scope and the
    hash of its raw. Revision 0007 computes the same for the rows stored before it."""
    parts = [entity, source_id] if source_id else [entity, scope or "", raw_hash]
    return hashlib.sha256("\x00".join(parts).encode("utf-8", "surrogatepass")).hexdigest()


def _reject_row(reject: Reject) -> dict[str, Any]:
    """The columns that say what a reject is now (identity, record and reason)."""
    raw_hash = content_hash(reject.raw)
    return {
        "reject_key": reject_key(reject.entity, reject.source_id, reject.scope, raw_hash),
        "entity": reject.entity,
        "source_id": reject.source_id,
        "scope_id": reject.scope,
        "reason": redact.bounded(reject.reason),
        "raw": reject.raw,
        "raw_hash": raw_hash,
    }


def _save_rejects(
    connection: Connection, rejects: list[Reject], run_id: int, room: int
) -> tuple[int, set[str]]:
    """Record the rejects not yet stored as they are, `room` at most; returns how many were
    recorded and the identity of every one."""
    rows = {row["reject_key"]: row for row in map(_reject_row, rejects)}
    stored = _open_rejects(connection, list(rows))
    fresh = [
        row
        for key, row in rows.items()
        if key not in stored or stored[key] != (row["raw_hash"], row["reason"])
    ][: max(room, 0)]
    stamp = now()
    new = [
        {**row, "run_id": run_id, "rejected_at": stamp}
        for row in fresh
        if row["reject_key"] not in stored
    ]
    _insert(connection, etl_rejects, new)
    _rewrite_rejects(connection, [row for row in fresh if row["reject_key"] in stored])
    return len(fresh), set(rows)


def _open_rejects(connection: Connection, keys: list[str]) -> dict[str, tuple[str, str]]:
    """The open rejects with these identities: raw hash and reason, by key."""
    table = etl_rejects
    query = sa.select(table.c.reject_key, table.c.raw_hash, table.c.reason).where(
        table.c.resolved_at.is_(None)
    )
    results = _for_ids(connection, query, table.c.reject_key, keys)
    return {row.reject_key: (row.raw_hash, row.reason) for result in results for row in result}


def _rewrite_rejects(connection: Connection, rows: list[dict[str, Any]]) -> None:
    """An open reject whose record or reason changed takes the new ones (keeping its run)."""
    if not rows:
        return
    table = etl_rejects
    key: sa.BindParameter[str] = sa.bindparam("open_key")
    values: dict[str, Any] = {name: sa.bindparam(name) for name in ("raw", "raw_hash", "reason")}
    statement = (
        table.update()
        .where(table.c.reject_key == key, table.c.resolved_at.is_(None))
        .values(values)
    )
    connection.execute(statement, [{**row, "open_key": row["reject_key"]} for row in rows])


def resolve_rejects(
    connection: Connection, run_id: int, seen: set[str], covered: Callable[[str, str | None], bool]
) -> int:
    """Mark resolved the open rejects this run did not see whose scope it listed completely
    (`covered(entity, scope_id)`)."""
    table = etl_rejects
    still_open = table.c.resolved_at.is_(None)
    open_ = connection.execute(
        sa.select(table.c.reject_key, table.c.entity, table.c.scope_id).where(still_open)
    ).all()
    gone = [
        row.reject_key
        for row in open_
        if row.reject_key not in seen and covered(row.entity, row.scope_id)
    ]
    statement = table.update().where(still_open).values(resolved_at=now(), resolved_run_id=run_id)
    return _rowcount(_for_ids(connection, statement, table.c.reject_key, gone))


def save_held_back(connection: Connection, run_id: int, held: list[HeldBack]) -> int:
    """Record the scopes whose deletes the run held back."""
    rows = [
        {
            "run_id": run_id,
            "scope_kind": h.scope.kind,
            "scope_id": h.scope.id,
            "held_back": h.count,
            "unreadable": h.unreadable,
            "reason": h.reason,
        }
        for h in held
    ]
    return _insert(connection, etl_held_back_scopes, rows)


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


# -- the builder: insert new, upsert changed, undelete returning ---------------------------


def _save(
    connection: Connection,
    table: sa.Table,
    changed: list[dict[str, Any]],
    stored: dict[str, sa.Row[Any]],
    stamp: datetime,
    raw_json: Mapping[str, str] | None = None,
) -> int:
    """Insert the new rows, upsert the stored ones, and undelete the unchanged rows stored as
    deleted (listed again, they came back). `raw_json` holds the raw column's JSON by key."""
    key = _key(table).name
    rows = _stamped(changed, stamp)
    new = [row for row in rows if row[key] not in stored]
    updated = [row for row in rows if row[key] in stored]
    back = _returning(stored, {row[key] for row in rows})
    return (
        _insert(connection, table, new, raw_json)
        + _upsert(connection, table, updated)
        + _undelete(connection, table, back, stamp)
    )


def _stamped(rows: list[dict[str, Any]], stamp: datetime) -> list[dict[str, Any]]:
    """Rows as saved: live, changed now, first seen now (an upsert keeps the stored one)."""
    return [
        {**row, "first_seen_at": stamp, "last_changed_at": stamp, "deleted_at": None}
        for row in rows
    ]


def _returning(stored: dict[str, sa.Row[Any]], rewritten: set[str]) -> list[str]:
    """Unchanged ids stored as deleted: listed again, they came back."""
    return [
        key for key, row in stored.items() if row.deleted_at is not None and key not in rewritten
    ]


def _insert(
    connection: Connection,
    table: sa.Table,
    rows: list[dict[str, Any]],
    raw_json: Mapping[str, str] | None = None,
) -> int:
    """Insert rows: binary COPY on Postgres (measured fastest), executemany elsewhere."""
    if not rows:
        return 0
    if connection.dialect.name == "postgresql":
        return pgcopy.copy_rows(connection, table, rows, raw_json or {})
    connection.execute(table.insert(), rows)
    return len(rows)


def _upsert(connection: Connection, table: sa.Table, rows: list[dict[str, Any]]) -> int:
    """Update stored rows by key (inserting any that are missing)."""
    if not rows:
        return 0
    connection.execute(_upsert_statement(connection.dialect.name, table), rows)
    return len(rows)


def _upsert_statement(dialect: str, table: sa.Table) -> sa.Insert:
    """INSERT ... ON CONFLICT (key) DO UPDATE every column but the key, first_seen_at and the
    progress columns."""
    insert = (postgresql if dialect == "postgresql" else sqlite).insert(table)
    key = _key(table).name
    keep = {key, "first_seen_at", *PROGRESS_COLUMNS}
    update = {c.name: insert.excluded[c.name] for c in table.columns if c.name not in keep}
    statement: sa.Insert = insert.on_conflict_do_update(index_elements=[key], set_=update)
    return statement


def _undelete(connection: Connection, table: sa.Table, ids: list[str], stamp: datetime) -> int:
    statement = table.update().values(deleted_at=None, last_changed_at=stamp)
    return _rowcount(_for_ids(connection, statement, _key(table), ids))


# -- soft deletes at the end of the run ----------------------------------------------------


def live_tasks_of(connection: Connection, job_ids: Sequence[str]) -> int:
    """How many live tasks these jobs hold."""
    results = _for_ids(connection, _live_count(finetune_tasks), finetune_tasks.c.job_id, job_ids)
    return sum(int(result.scalar_one()) for result in results)


def delete_jobs(connection: Connection, gone: Sequence[str]) -> int:
    """Soft-delete these jobs and their tasks."""
    stamp = now()
    return _soft_delete(connection, finetune_tasks.c.job_id, gone, stamp) + _soft_delete(
        connection, finetune_jobs.c.job_id, gone, stamp
    )


def delete_records(connection: Connection, table: sa.Table, ids: Sequence[str]) -> int:
    """Soft-delete these rows of a table keyed by record id (those still live): tasks, or a
    listed resource's."""
    return _soft_delete(connection, _key(table), ids, now())


def live_count(connection: Connection, table: sa.Table) -> int:
    """How many rows of the table are live (not soft-deleted)."""
    return _count(connection, table)


def _absent_tasks(connection: Connection, listed: Mapping[str, set[str]]) -> dict[str, list[str]]:
    """By job listed to its end, its live tasks that the listing did not contain."""
    tasks = finetune_tasks
    live = sa.select(tasks.c.job_id, tasks.c.task_id).where(tasks.c.deleted_at.is_(None))
    absent: dict[str, list[str]] = {job_id: [] for job_id in listed}
    for result in _for_ids(connection, live, tasks.c.job_id, list(listed)):
        for row in result:
            if row.task_id not in listed[row.job_id]:
                absent[row.job_id].append(row.task_id)
    return absent


def _soft_delete(
    connection: Connection, column: sa.Column[Any], ids: Sequence[str], stamp: datetime
) -> int:
    """Mark the live rows whose `column` is one of `ids` deleted."""
    table = column.table
    statement = (
        table.update()
        .where(table.c.deleted_at.is_(None))
        .values(deleted_at=stamp, last_changed_at=stamp)
    )
    return _rowcount(_for_ids(connection, statement, column, ids))


def _count(connection: Connection, table: sa.Table) -> int:
    return int(connection.execute(_live_count(table)).scalar_one())


def _live_count(table: sa.Table) -> sa.Select[int]:
    return sa.select(sa.func.count()).select_from(table).where(table.c.deleted_at.is_(None))


# -- live progress -------------------------------------------------------------------------


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
    table = finetune_tasks
    query = sa.select(table.c.task_id, table.c.run_progress, table.c.vdl_link).where(
        table.c.run_status == RUNNING, table.c.deleted_at.is_(None)
    )
    rows = (
        row for result in _for_ids(connection, query, table.c.task_id, task_ids) for row in result
    )
    return {row.task_id: (row.run_progress, row.vdl_link) for row in rows}


# -- what an --active-only run lists -------------------------------------------------------


def live_job_ids(connection: Connection) -> set[str]:
    """Every job stored and not soft-deleted."""
    return live_ids(connection, finetune_jobs)


def live_ids(connection: Connection, table: sa.Table) -> set[str]:
    """The id of every row of the table stored and not soft-deleted."""
    query = sa.select(_key(table)).where(table.c.deleted_at.is_(None))
    return set(connection.execute(query).scalars())


def jobs_to_relist(connection: Connection, young: timedelta) -> set[str]:
    """Jobs whose tasks an --active-only run lists again although stored: those with a live
    task not in a terminal state, those with no live task at all while younger than `young`
    (by create time and first sighting: a new job's first task comes soon, an old empty job
    waits for the next full run), and those a run since the last complete one failed to list."""
    tasks, jobs = finetune_tasks, finetune_jobs
    unfinished = sa.select(tasks.c.job_id).where(
        tasks.c.deleted_at.is_(None),
        sa.or_(tasks.c.run_status.is_(None), tasks.c.run_status.not_in(TERMINAL_STATUSES)),
    )
    live_task = sa.select(tasks.c.task_id).where(
        tasks.c.job_id == jobs.c.job_id, tasks.c.deleted_at.is_(None)
    )
    born = now() - young
    empty = sa.select(jobs.c.job_id).where(
        jobs.c.deleted_at.is_(None),
        ~live_task.exists(),
        jobs.c.first_seen_at > born,
        sa.or_(jobs.c.create_time.is_(None), jobs.c.create_time > born),
    )
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


# -- reading by id ---------------------------------------------------------------------------


def _stored(connection: Connection, table: sa.Table, ids: Sequence[str]) -> dict[str, sa.Row[Any]]:
    """What is already stored for these ids: hash, deletion mark and (for tasks) status."""
    key = _key(table)
    columns = [key, table.c.content_hash, table.c.deleted_at]
    if table is finetune_tasks:
        columns += [table.c.run_status, table.c.job_id]
    results = _for_ids(connection, sa.select(*columns), key, ids)
    return {row[0]: row for result in results for row in result}


# The statements `_for_ids` narrows to a list of ids.
_Filterable = sa.Select[Any] | sa.Update | sa.Delete


def _for_ids(
    connection: Connection, statement: _Filterable, column: sa.Column[Any], ids: Sequence[str]
) -> Iterator[sa.CursorResult[Any]]:
    """Run the statement on the rows whose `column` is one of `ids`. On Postgres in one go, the
    ids one array parameter (far cheaper to compile and plan than a long IN list); elsewhere in
    IN lists of ID_CHUNK ids, within SQLite's limit on a statement's parameters."""
    if not ids:
        return
    if connection.dialect.name == "postgresql":
        array = sa.bindparam("ids", list(ids), type_=postgresql.ARRAY(sa.Text))
        yield connection.execute(statement.where(column == sa.any_(array)))
        return
    for start in range(0, len(ids), ID_CHUNK):
        yield connection.execute(statement.where(column.in_(ids[start : start + ID_CHUNK])))


def _rowcount(results: Iterator[sa.CursorResult[Any]]) -> int:
    return sum(result.rowcount for result in results)


def _key(table: sa.Table) -> sa.Column[Any]:
    return next(iter(table.primary_key.columns))
