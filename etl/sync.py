"""One run of the main job: lock, run record, extract → transform → load, soft deletes."""

import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from etl import db, load, redact, stopping
from etl.errors import ContractError
from etl.extract import ActiveSelection, JobListing, fetch_account
from etl.faults import fault_point
from etl.load import Batch, RunCounts
from etl.qianfan import QianfanClient
from etl.transform import (
    PreparedTask,
    Reject,
    job_to_row,
    prepare_task,
    progress_to_row,
    tasks_to_rows,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyncOptions:
    """How one run behaves; the CLI fills it from options and env."""

    job_ids: frozenset[str] = frozenset()
    concurrency: int = 8
    dry_run: bool = False
    max_rejects: int = 100
    lock_wait: float = 0.0
    batch_tasks: int = 2000
    active_only: bool = False
    # seconds: an --active-only run is full when the last full run is older than this
    full_every: float = 86400.0


@dataclass
class SyncResult:
    """What a run did, for the summary line."""

    run_id: int
    counts: RunCounts
    seconds: float
    dry_run: bool
    deleted: int = 0
    mode: str = "full"
    progress_failed: int = 0


@dataclass
class _State:
    batch: Batch = field(default_factory=Batch)
    # Listed jobs whose tasks the writer types, once it knows the stored hashes.
    untyped: list[tuple[str, list[PreparedTask]]] = field(default_factory=list)
    untyped_tasks: int = 0
    seen_jobs: set[str] = field(default_factory=set)
    complete: bool = True
    # an --active-only run soft-deletes nothing, tasks of the jobs it listed included
    deletes: bool = True
    progress: list[dict[str, Any]] = field(default_factory=list)
    progress_failed: int = 0
    # Type tasks as they arrive on a first load, or when most of the last batch changed, so the
    # writer only writes; leave typing to the writer when most were unchanged (a no-op run).
    type_ahead: bool = True


@dataclass
class _Pending:
    """A batch of whole jobs: job rows and rejects typed, tasks prepared but not yet typed."""

    batch: Batch
    untyped: list[tuple[str, list[PreparedTask]]]
    progress: list[dict[str, Any]]
    deletes: bool


def sync(
    engine: Engine,
    client: QianfanClient,
    options: SyncOptions,
    progress: Callable[[RunCounts], None] | None = None,
) -> SyncResult:
    """Copy every job and task the account lists into the database."""
    started = time.monotonic()
    with db.translated_errors(engine.url):
        db.require_head(engine)
        with load.run_lock(engine, options.lock_wait) as lock, engine.connect() as connection:
            outer = connection.begin() if options.dry_run else None
            with _transaction(connection, options.dry_run):
                mode = _mode(connection, options)
                run_id = load.start_run(connection, mode)
            log.info("run %d (%s) started%s", run_id, mode, " (dry run)" if options.dry_run else "")
            counts = RunCounts()
            state = _State(complete=mode == "full", deletes=mode != "active")
            try:
                deleted = _copy_account(
                    connection, client, options, _Run(run_id, lock), counts, progress, state
                )
                counts.api_calls = client.api_calls
                with _transaction(connection, options.dry_run, lock):
                    load.finish_run(connection, run_id, counts)
            except BaseException as exc:
                counts.api_calls = client.api_calls
                _record_failure(connection, run_id, counts, exc, options.dry_run)
                raise
            if outer is not None:
                outer.rollback()
    log.info("run %d finished: %s", run_id, _figures(counts))
    seconds = time.monotonic() - started
    return SyncResult(
        run_id, counts, seconds, options.dry_run, deleted, mode, state.progress_failed
    )


def _mode(connection: Connection, options: SyncOptions) -> str:
    """`selected` for --job-id; `active` for --active-only unless a full run is due; else `full`."""
    if options.job_ids:
        return "selected"
    if not options.active_only:
        return "full"
    last_full = load.last_full_run_at(connection)
    if last_full is None or load.now() - last_full >= timedelta(seconds=options.full_every):
        log.info(
            "no full run within --full-every %gs: this --active-only run is full",
            options.full_every,
        )
        return "full"
    return "active"


@dataclass(frozen=True)
class _Run:
    """The run's id and the lock it must still hold at each commit."""

    run_id: int
    lock: load.RunLock


@contextmanager
def _transaction(
    connection: Connection, dry_run: bool, lock: load.RunLock | None = None
) -> Iterator[None]:
    """A transaction of its own, committed only while `lock` is still held; in a dry run,
    part of the outer one that is rolled back."""
    if dry_run:
        yield
        return
    with connection.begin():
        yield
        if lock is not None:
            lock.check(connection)


def _copy_account(
    connection: Connection,
    client: QianfanClient,
    options: SyncOptions,
    run: _Run,
    counts: RunCounts,
    progress: Callable[[RunCounts], None] | None,
    state: _State,
) -> int:
    with _transaction(connection, options.dry_run):
        state.type_ahead = not load.has_tasks(connection)
        select = None if state.deletes else _active_selection(connection)
    run_id = run.run_id
    writer = _Writer(connection, run, options.dry_run)
    try:
        listings = fetch_account(
            client,
            job_ids=options.job_ids or None,
            concurrency=options.concurrency,
            select=select,
        )
        for listing in listings:
            fault_point("after_fetch")
            _add_listing(state, listing)
            counts.jobs_seen += 1
            if state.untyped_tasks >= options.batch_tasks:
                _check(state, counts, writer.submit(_take(state)), options, run_id)
            if progress:
                counts.api_calls = client.api_calls
                progress(counts)
        _check(state, counts, writer.submit(_take(state)), options, run_id)
        _check(state, counts, writer.finish(), options, run_id)
    except BaseException:
        writer.abandon()
        raise
    if select is not None:
        _count_skipped(counts, select)
    if not state.complete:
        return 0
    with _transaction(connection, options.dry_run, run.lock):
        deleted = load.delete_absent_jobs(connection, state.seen_jobs)
    counts.rows_written += deleted
    if deleted:
        log.info("soft-deleted %d rows no longer listed upstream", deleted)
    return deleted


def _active_selection(connection: Connection) -> ActiveSelection:
    """The jobs stored, and those of them to list again, as the run starts."""
    return ActiveSelection(load.live_job_ids(connection), load.jobs_to_relist(connection))


def _count_skipped(counts: RunCounts, select: ActiveSelection) -> None:
    """Jobs carried over were listed too: they count as seen, and as skipped."""
    counts.jobs_skipped = len(select.skipped)
    counts.jobs_seen += counts.jobs_skipped
    log.info("%d jobs carried over without listing their tasks", counts.jobs_skipped)


def _add_listing(state: _State, listing: JobListing) -> None:
    """Type one job into the batch and prepare its tasks; note what makes it incomplete."""
    job = job_to_row(listing.job)
    if isinstance(job, Reject):
        state.batch.rejects.append(job)
        if job.source_id:
            state.seen_jobs.add(job.source_id)
        # A job we cannot identify may be one we hold: deleting by absence would be a guess.
        state.complete = False
        return
    state.seen_jobs.add(job["job_id"])
    state.batch.jobs.append(job)
    # Hashing here, while the fetch workers wait on the network, keeps the writer short.
    ahead = job["job_id"] if state.type_ahead else None
    state.untyped.append((job["job_id"], [prepare_task(raw, ahead) for raw in listing.tasks]))
    state.untyped_tasks += len(listing.tasks)
    state.progress += [progress_to_row(key, raw) for key, raw in listing.details.items()]
    state.progress_failed += listing.details_failed


def _take(state: _State) -> _Pending:
    """Hand the batch so far to the writer and start a new one."""
    pending = _Pending(state.batch, state.untyped, state.progress, state.deletes)
    state.batch, state.untyped, state.untyped_tasks, state.progress = Batch(), [], 0, []
    return pending


def _check(
    state: _State,
    counts: RunCounts,
    written: RunCounts | None,
    options: SyncOptions,
    run_id: int,
) -> None:
    """Add a committed batch's counts, then check the reject budget."""
    if written is None:
        return
    log.info("batch written: %s", _figures(written, jobs=False))
    counts.add(written)
    state.type_ahead = written.tasks_changed * 2 > written.tasks_seen
    if counts.rejects > options.max_rejects:
        raise ContractError(
            f"{counts.rejects} records rejected, more than --max-rejects {options.max_rejects}: "
            f"the upstream data does not look like Qianfan's. See etl_rejects for run {run_id}."
        )


class _Writer:
    """Writes and commits one batch at a time on a background thread, so the database's work
    overlaps fetching and hashing the next batch, and no transaction stays open while the run
    waits on the API. A batch commits only while the run holds its lock and is not stopping,
    so a signal rolls back the batch in progress instead of racing its commit."""

    def __init__(self, connection: Connection, run: _Run, dry_run: bool) -> None:
        self._connection = connection
        self._run = run
        self._dry_run = dry_run
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qianfan-writer")
        self._pending: Future[RunCounts] | None = None

    def submit(self, pending: _Pending) -> RunCounts | None:
        """Wait for the batch in progress (returning its counts), then start writing this one."""
        written = self.finish()
        if pending.batch.jobs or pending.batch.rejects:
            self._pending = self._pool.submit(self._write, pending)
        return written

    def finish(self) -> RunCounts | None:
        """Wait for the batch in progress to commit; its counts, or None if there was none."""
        if self._pending is None:
            return None
        future, self._pending = self._pending, None
        return future.result()

    def abandon(self) -> None:
        """After a failure: let the batch in progress end (a stopping run rolls it back), stop
        the thread."""
        future, self._pending = self._pending, None
        # An error of the writer's own was rolled back in the writer; the first one raised wins.
        with suppress(Exception):
            if future is not None:
                future.result()
        self._pool.shutdown(wait=True)

    def _write(self, pending: _Pending) -> RunCounts:
        """In the writer thread: type what changed, write it and commit."""
        connection = self._connection
        with _transaction(connection, self._dry_run):
            ids = [t.task_id for _, tasks in pending.untyped for t in tasks if t.task_id]
            stored = load.stored_tasks(connection, ids)
            _type_tasks(pending, {key: row.content_hash for key, row in stored.items()})
            counts = load.write_batch(connection, pending.batch, self._run.run_id, stored)
            counts.rows_written += load.save_progress(connection, pending.progress)
            if not self._dry_run:
                self._before_commit()
        if not self._dry_run:
            fault_point("after_commit")
        return counts

    def _before_commit(self) -> None:
        """Refuse to commit once the run is stopping or has lost its lock."""
        fault_point("before_commit")
        if stopping.requested():
            raise stopping.Stopped("the run is stopping: the batch in progress is rolled back")
        self._run.lock.check(self._connection)


def _type_tasks(pending: _Pending, known: dict[str, str]) -> None:
    """Type the batch's tasks, skipping those whose stored hash matches."""
    for job_id, tasks in pending.untyped:
        rows, rejects = tasks_to_rows(tasks, job_id, known)
        pending.batch.tasks.extend(rows)
        pending.batch.rejects.extend(rejects)
        if pending.deletes and all(reject.source_id for reject in rejects):
            pending.batch.listed_jobs.append(job_id)


def _record_failure(
    connection: Connection, run_id: int, counts: RunCounts, exc: BaseException, dry_run: bool
) -> None:
    """Mark the run failed; if the database is gone too, the next run marks it abandoned."""
    if connection.in_transaction() and not dry_run:
        connection.rollback()
    try:
        with _transaction(connection, dry_run):
            load.finish_run(connection, run_id, counts, error=_describe(exc))
    except SQLAlchemyError as secondary:
        log.warning("could not record run %s as failed: %s", run_id, type(secondary).__name__)


def _figures(counts: RunCounts, jobs: bool = True) -> str:
    """Counts for a log line (a batch's have no jobs: those are counted as they are listed)."""
    seen = f"{counts.jobs_seen} jobs, " if jobs else ""
    return (
        f"{seen}{counts.tasks_seen} tasks ({counts.tasks_changed} changed), "
        f"{counts.rows_written} rows, {counts.rejects} rejects"
    )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SystemExit | KeyboardInterrupt):
        return f"interrupted ({type(exc).__name__} {getattr(exc, 'code', '')})".strip()
    return redact.describe(exc)
