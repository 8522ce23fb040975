"""One run of the main job: lock, run record, extract → transform → load, soft deletes."""

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from etl import db, load
from etl.errors import ContractError
from etl.extract import JobListing, fetch_account
from etl.faults import fault_point
from etl.load import Batch, RunCounts
from etl.qianfan import QianfanClient
from etl.transform import PreparedTask, Reject, job_to_row, prepare_task, tasks_to_rows

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


@dataclass
class SyncResult:
    """What a run did, for the summary line."""

    run_id: int
    counts: RunCounts
    seconds: float
    dry_run: bool
    deleted: int = 0


@dataclass
class _State:
    batch: Batch = field(default_factory=Batch)
    # Listed jobs whose raw tasks are typed at flush time, once stored hashes are known.
    untyped: list[tuple[str, list[PreparedTask]]] = field(default_factory=list)
    untyped_tasks: int = 0
    seen_jobs: set[str] = field(default_factory=set)
    complete: bool = True


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
        with load.run_lock(engine, options.lock_wait), engine.connect() as connection:
            outer = connection.begin() if options.dry_run else None
            with _transaction(connection, options.dry_run):
                run_id = load.start_run(connection)
            counts = RunCounts()
            try:
                deleted = _copy_account(connection, client, options, run_id, counts, progress)
            except BaseException as exc:
                counts.api_calls = client.api_calls
                _record_failure(connection, run_id, counts, exc, options.dry_run)
                raise
            counts.api_calls = client.api_calls
            with _transaction(connection, options.dry_run):
                load.finish_run(connection, run_id, counts)
            if outer is not None:
                outer.rollback()
    return SyncResult(run_id, counts, time.monotonic() - started, options.dry_run, deleted)


@contextmanager
def _transaction(connection: Connection, dry_run: bool) -> Iterator[None]:
    """A transaction of its own; in a dry run, part of the outer one that is rolled back."""
    if dry_run:
        yield
        return
    with connection.begin():
        yield


def _copy_account(
    connection: Connection,
    client: QianfanClient,
    options: SyncOptions,
    run_id: int,
    counts: RunCounts,
    progress: Callable[[RunCounts], None] | None,
) -> int:
    state = _State(complete=not options.job_ids)
    listings = fetch_account(
        client, job_ids=options.job_ids or None, concurrency=options.concurrency
    )
    for listing in listings:
        fault_point("after_fetch")
        _add_listing(state, listing)
        counts.jobs_seen += 1
        if state.untyped_tasks >= options.batch_tasks:
            _flush(connection, state, run_id, counts, options)
        if progress:
            counts.api_calls = client.api_calls
            progress(counts)
    _flush(connection, state, run_id, counts, options)
    if not state.complete:
        return 0
    with _transaction(connection, options.dry_run):
        deleted = load.delete_absent_jobs(connection, state.seen_jobs)
    counts.rows_written += deleted
    return deleted


def _add_listing(state: _State, listing: JobListing) -> None:
    """Type one job and its tasks into the batch; note what makes the listing incomplete."""
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
    # Hashing now, while the fetch workers wait on the network, keeps the flush short.
    state.untyped.append((job["job_id"], [prepare_task(raw) for raw in listing.tasks]))
    state.untyped_tasks += len(listing.tasks)


def _type_tasks(state: _State, known: dict[str, str]) -> None:
    """Type the batch's tasks, skipping those whose stored hash matches."""
    for job_id, raws in state.untyped:
        rows, rejects = tasks_to_rows(raws, job_id, known)
        state.batch.tasks.extend(rows)
        state.batch.rejects.extend(rejects)
        if all(reject.source_id for reject in rejects):
            state.batch.listed_jobs.append(job_id)


def _flush(
    connection: Connection, state: _State, run_id: int, counts: RunCounts, options: SyncOptions
) -> None:
    """Write the batch in one transaction, then check the reject budget."""
    if not state.batch.jobs and not state.batch.rejects:
        return
    with _transaction(connection, options.dry_run):
        ids = [task.task_id for _, tasks in state.untyped for task in tasks if task.task_id]
        stored = load.stored_tasks(connection, ids)
        _type_tasks(state, {key: row.content_hash for key, row in stored.items()})
        counts.add(load.write_batch(connection, state.batch, run_id, stored))
        fault_point("before_commit")
    fault_point("after_commit")
    state.batch, state.untyped, state.untyped_tasks = Batch(), [], 0
    if counts.rejects > options.max_rejects:
        raise ContractError(
            f"{counts.rejects} records rejected, more than --max-rejects {options.max_rejects}: "
            f"the upstream data does not look like Qianfan's. See etl_rejects for run {run_id}."
        )


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


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SystemExit | KeyboardInterrupt):
        return f"interrupted ({type(exc).__name__} {getattr(exc, 'code', '')})".strip()
    return str(exc) or type(exc).__name__
