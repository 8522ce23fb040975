"""One run of the main job: lock, run record, extract → transform → load, soft deletes.

A job whose task listing fails is recorded in etl_failed_jobs and left as stored; the run goes
on and ends `partial` (65 if some listing broke its contract, else 75; 65 wins when both
occur, since a person must look). An error that ends the walk (auth, the job list, the
circuit breaker) commits what was fetched, deletes nothing and fails the run with its code.
Soft deletes wait for the end of the run, where the scope ledger (etl.scopes) says what a
complete listing lets go and what scopes held back (65), and the mass-delete guard can refuse
them all. Rejects never stop the run: more than --max-rejects are seen, and it ends 65.
"""

import logging
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import timedelta
from functools import partial
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from etl import db, load, redact, stopping
from etl.errors import (
    EXIT_DATA,
    EXIT_OK,
    EXIT_SIGINT,
    EXIT_TEMPFAIL,
    EtlError,
    exit_code_of,
)
from etl.extract import (
    ActiveSelection,
    JobFailure,
    JobListing,
    Listed,
    Spool,
    WalkStats,
    fetch_account,
)
from etl.faults import fault_point
from etl.load import Batch, RunCounts, Written
from etl.ownership import Claims, JobTasks, owned
from etl.qianfan import QianfanClient
from etl.qianfan.pagination import id_of
from etl.resources import BUILT_IN, JOBS, LISTED, SOFT_DELETE, TASKS, Resource
from etl.scopes import ACCOUNT, ACCOUNT_KIND, JOB_KIND, HeldBack, Ledger, Scope, job_scope
from etl.transform import (
    PreparedTask,
    Reject,
    job_to_row,
    prepare_task,
    progress_to_row,
    readable_id,
    record_to_row,
    tasks_to_rows,
    typed_ahead,
)

# Failed jobs named in a run's message and summary line; etl_failed_jobs has them all.
NAMED_FAILURES = 5

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
    # Refuse every soft delete of a run that would delete more than this share of the live
    # jobs or tasks (1: never refuse).
    max_delete_fraction: float = 0.5
    active_only: bool = False
    # seconds: an --active-only run is full when the last full run is older than this
    full_every: float = 86400.0
    # one DescribeFineTuningTask call per Running task, for its live progress
    task_details: bool = True
    # resources the account lists beside its jobs (etl.resources.LISTED)
    listed: tuple[Resource, ...] = LISTED


@dataclass(kw_only=True)
class SyncResult:
    """What a run did, for the summary line."""

    run_id: int
    counts: RunCounts
    seconds: float
    dry_run: bool
    deleted: int = 0
    mode: str = "full"
    progress_failed: int = 0
    status: str = "succeeded"
    exit_code: int = EXIT_OK
    message: str | None = None
    failed_jobs: list[JobFailure] = field(default_factory=list)
    listing_warnings: int = 0
    # lean-listed tasks whose metrics and checkpoints could not be fetched this run
    enrichment_failed: int = 0
    held_back: list[HeldBack] = field(default_factory=list)


@dataclass
class _State:
    batch: Batch = field(default_factory=Batch)
    # Listed jobs whose tasks the writer types, once it knows the stored hashes.
    untyped: list[tuple[str, list[PreparedTask]]] = field(default_factory=list)
    untyped_tasks: int = 0
    # what each scope listed, and so what the run may delete (an --active-only run: nothing)
    ledger: Ledger = field(default_factory=Ledger)
    # the identity of every reject the run saw
    reject_keys: set[str] = field(default_factory=set)
    progress: list[dict[str, Any]] = field(default_factory=list)
    progress_failed: int = 0
    enrichment_failed: int = 0
    # Type tasks as they arrive on a first load, or when most of the last batch changed, so the
    # writer only writes; leave typing to the writer when most were unchanged (a no-op run).
    type_ahead: bool = True
    failed: list[JobFailure] = field(default_factory=list)
    # the error that ended the walk early: raised once what was fetched is committed
    stopped: EtlError | None = None
    # tasks held back by the ownership rule
    claims: Claims = field(default_factory=Claims)
    # the job bigger than a batch that is the batch
    big: "tuple[str, _BigJob] | None" = None


@dataclass
class _Outcome:
    """How a run that went through ended."""

    deleted: int
    status: str
    exit_code: int
    message: str | None
    held_back: list[HeldBack] = field(default_factory=list)


@dataclass
class _Pending:
    """A batch of whole jobs: job rows and rejects typed, tasks prepared but not yet typed."""

    batch: Batch
    untyped: list[tuple[str, list[PreparedTask]]]
    progress: list[dict[str, Any]]
    deletes: bool
    jobs: int

    # a job of more than a batch's tasks, alone in its batch, prepared as the writer goes
    big: "tuple[str, _BigJob] | None" = None

    def task_ids(self) -> list[str]:
        """The readable ids of the batch's tasks, to read what is stored of them."""
        if self.big is not None:
            return [task_id for task_id in self.big[1].ids if task_id]
        return [t.task_id for _, tasks in self.untyped for t in tasks if t.task_id]

    def pieces(self, size: int) -> Iterator["_Pending"]:
        """The batch in pieces to type and write one after another in its transaction: a big
        job in pieces of `size` tasks, so that memory holds one piece's rows, not the whole
        job's. The first piece has the job's row and says what the job listed, for its
        absent tasks."""
        if self.big is None:
            if self.deletes:
                self.batch.listed = {
                    job: {t.task_id for t in tasks if t.task_id} for job, tasks in self.untyped
                }
            yield self
            return
        job_id, big = self.big
        if self.deletes:
            self.batch.listed = {job_id: {task_id for task_id in big.ids if task_id}}
        batch = self.batch
        for tasks in big.pieces(size):
            yield _Pending(batch, [(job_id, tasks)], [], False, 0)
            batch = Batch()


@dataclass(frozen=True)
class _BigJob:
    """A big job's raw tasks (in memory, or spooled by the walk), the hash its lean tasks
    stand for, and the readable id of each, in listing order."""

    raws: list[Any] | Spool
    digests: dict[str, str]
    ids: list[str | None]

    def pieces(self, size: int) -> Iterator[list[PreparedTask]]:
        """The tasks prepared, `size` at a time; of a task id listed twice, the last copy
        (pieces are written one after another: one id must not be in two)."""
        last = {task_id: n for n, task_id in enumerate(self.ids) if task_id}
        piece: list[PreparedTask] = []
        for n, raw in enumerate(self.raws):
            task_id = self.ids[n]
            if task_id is not None and last[task_id] != n:
                continue
            piece.append(prepare_task(raw, _lean_digest(self.digests, raw)))
            if len(piece) == size:
                yield piece
                piece = []
        if piece:
            yield piece


def sync(
    engine: Engine,
    client: QianfanClient,
    options: SyncOptions,
    progress: Callable[[RunCounts, WalkStats], None] | None = None,
) -> SyncResult:
    """Copy every job and task the account lists into the database."""
    started = time.monotonic()
    with db.translated_errors(engine.url):
        db.require_head(engine)
        with load.run_lock(engine, options.lock_wait) as lock, engine.connect() as connection:
            outer = connection.begin() if options.dry_run else None
            mode, run_id = _start(connection, options)
            counts, stats = RunCounts(), WalkStats()
            resources = (*BUILT_IN, *options.listed)
            state = _State(ledger=Ledger(deletes=mode != "active", resources=resources))
            run = _Run(run_id, lock, RunCounts(), lambda: client.api_calls)
            copy = partial(
                _copy_account, connection, client, options, run, counts, progress, state, stats
            )
            outcome = _recorded(connection, run, counts, options.dry_run, copy)
            if outer is not None:
                outer.rollback()
    log.info("run %d finished: %s", run_id, _figures(counts))
    return SyncResult(
        run_id=run_id,
        counts=counts,
        seconds=time.monotonic() - started,
        dry_run=options.dry_run,
        deleted=outcome.deleted,
        mode=mode,
        progress_failed=state.progress_failed,
        status=outcome.status,
        exit_code=outcome.exit_code,
        message=outcome.message,
        failed_jobs=state.failed,
        listing_warnings=stats.listing_warnings,
        enrichment_failed=state.enrichment_failed,
        held_back=outcome.held_back,
    )


def _start(connection: Connection, options: SyncOptions) -> tuple[str, int]:
    """The run's mode and its run record, committed before anything is fetched."""
    with _transaction(connection, options.dry_run):
        mode = _mode(connection, options)
        run_id = load.start_run(connection, mode, dry_run=options.dry_run)
    log.info("run %d (%s) started%s", run_id, mode, " (dry run)" if options.dry_run else "")
    return mode, run_id


def _recorded(
    connection: Connection,
    run: "_Run",
    counts: RunCounts,
    dry_run: bool,
    copy: Callable[[], _Outcome],
) -> _Outcome:
    """Copy the account and finish the run record; a run that fails or is interrupted is
    recorded with what its batches committed, and says so on a signal."""
    try:
        # translated here, so that the run is recorded with the error's own exit code
        with db.translated_errors(connection.engine.url):
            outcome = copy()
            counts.api_calls = run.api_calls()
            with _transaction(connection, dry_run, run.lock):
                load.finish_run(
                    connection,
                    run.run_id,
                    counts,
                    outcome.message,
                    status=outcome.status,
                    exit_code=outcome.exit_code,
                )
    except BaseException as exc:
        # what the batches committed, not what was fetched: the rest was rolled back
        run.committed.api_calls = run.api_calls()
        _record_failure(connection, run.run_id, run.committed, exc, dry_run)
        _say_if_interrupted(exc, run)
        raise
    return outcome


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
    """The run's id, the lock it must still hold at each commit, the counts its commits saved
    so far (the writer's), and the API calls made so far."""

    run_id: int
    lock: load.RunLock
    committed: RunCounts
    api_calls: Callable[[], int]


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
    run: "_Run",
    counts: RunCounts,
    progress: Callable[[RunCounts, WalkStats], None] | None,
    state: _State,
    stats: WalkStats,
) -> _Outcome:
    with _transaction(connection, options.dry_run):
        state.type_ahead = not load.has_tasks(connection)
        select = None if state.ledger.deletes else _active_selection(connection, options.full_every)
    writer = _Writer(connection, run, options)
    try:
        listings = _walk(connection, client, options, select, stats)
        for listing in _until_stopped(listings, state):
            if isinstance(listing, Listed):
                _add_listed(state.batch, state.ledger, listing)
                continue
            _add_job(state, counts, writer, listing, options.batch_tasks)
            if progress:
                counts.api_calls = client.api_calls
                progress(counts, stats)
        _check(state, counts, writer.submit(_take(state)))
        _check(state, counts, writer.finish())
    except BaseException:
        writer.abandon()
        raise
    if state.stopped is not None:
        raise state.stopped
    if select is not None:
        _count_skipped(counts, select)
    return _settle(connection, options, run, counts, state, full=select is None)


def _walk(
    connection: Connection,
    client: QianfanClient,
    options: SyncOptions,
    select: ActiveSelection | None,
    stats: WalkStats,
) -> Iterator[JobListing | Listed]:
    """The account's listings as the walk completes them (a --job-id run: those jobs only)."""
    return fetch_account(
        client,
        job_ids=options.job_ids or None,
        concurrency=options.concurrency,
        select=select,
        stats=stats,
        task_details=options.task_details,
        stored_hashes=_hash_reader(connection.engine),
        listed=() if options.job_ids else options.listed,
    )


def _add_job(
    state: _State, counts: RunCounts, writer: "_Writer", listing: JobListing, batch_tasks: int
) -> None:
    """One listed job into the batch; a full batch goes to the writer (a job bigger than a
    batch is a batch alone)."""
    fault_point("after_fetch")
    big = len(listing.tasks) > batch_tasks
    if big and state.untyped_tasks:
        _check(state, counts, writer.submit(_take(state)))
    _add_listing(state, listing, big)
    counts.jobs_seen += 1
    if state.untyped_tasks >= batch_tasks:
        _check(state, counts, writer.submit(_take(state)))


def _settle(
    connection: Connection,
    options: SyncOptions,
    run: "_Run",
    counts: RunCounts,
    state: _State,
    full: bool,
) -> _Outcome:
    """The end of a run that went through, in one transaction: deferred owners, what the
    ledger lets go, resolved rejects, held-back scopes; then how the run ended."""
    run_id = run.run_id
    with _transaction(connection, options.dry_run, run.lock):
        counts.add(_write_deferred(connection, state, run_id))
        if full and not options.job_ids:
            _list_account(connection, state.ledger, (JOBS, *options.listed))
        deleted, refusal = _delete_absent(
            connection, state.ledger, options.listed, options.max_delete_fraction
        )
        counts.rows_written += _settle_rejects(connection, state, run_id)
        load.save_held_back(connection, run_id, state.ledger.held_back())
    counts.rows_written += deleted
    if deleted:
        log.info("soft-deleted %d rows no longer listed upstream", deleted)
    return _outcome(state, run_id, deleted, refusal, _too_many_rejects(counts, options, run_id))


def _hash_reader(engine: Engine) -> Callable[[list[str]], dict[str, str]]:
    """Stored task hashes read on a connection of the caller's own (a fetch worker's), apart
    from the writer's; a short read, with no transaction left open."""

    def read(ids: list[str]) -> dict[str, str]:
        with engine.connect() as connection:
            return load.stored_hashes(connection, ids)

    return read


def _until_stopped(
    listings: Iterator[JobListing | Listed], state: _State
) -> Iterator[JobListing | Listed]:
    """The listings until an error ends the walk; the error is kept for after the commit."""
    try:
        yield from listings
    except EtlError as exc:
        state.stopped = exc


def _active_selection(connection: Connection, full_every: float) -> ActiveSelection:
    """The jobs stored, and those of them to list again, as the run starts."""
    relist = load.jobs_to_relist(connection, timedelta(seconds=full_every))
    return ActiveSelection(load.live_job_ids(connection), relist)


def _count_skipped(counts: RunCounts, select: ActiveSelection) -> None:
    """Jobs carried over were listed too: they count as seen, and as skipped."""
    counts.jobs_skipped = len(select.skipped)
    counts.jobs_seen += counts.jobs_skipped
    log.info("%d jobs carried over without listing their tasks", counts.jobs_skipped)


def _add_listing(state: _State, listing: JobListing, big: bool) -> None:
    """Type one job into the batch and prepare its tasks; note in the ledger what each scope
    listed, readable or not. A big job's tasks are left to the writer to type a piece at a
    time."""
    if listing.failure is not None:
        _add_failure(state, listing.failure)
        return
    job = job_to_row(listing.job)
    if isinstance(job, Reject):
        state.batch.rejects.append(job)
        # A job we cannot identify may be one we hold: deleting by absence would be a guess.
        _note_ids(state.ledger, ACCOUNT, [job.source_id])
        return
    job_id = job["job_id"]
    state.ledger.saw(ACCOUNT, [job_id])
    state.batch.jobs.append(job)
    if big:
        ids = [readable_id(raw, TASKS.id_field) for raw in listing.tasks]
        state.big = (job_id, _BigJob(listing.tasks, listing.digests, ids))
    else:
        # Hashing here, while the fetch workers wait on the network, keeps the writer short.
        tasks = _prepared(listing, job_id if state.type_ahead else None)
        ids = [task.task_id for task in tasks]
        state.untyped.append((job_id, tasks))
    _note_ids(state.ledger, job_scope(job_id), ids)
    state.untyped_tasks += len(listing.tasks)
    state.progress += [progress_to_row(key, raw) for key, raw in listing.details.items()]
    state.progress_failed += listing.details_failed
    state.enrichment_failed += listing.enrichment_failed


def _add_listed(batch: Batch, ledger: Ledger, listed: Listed) -> None:
    """Type a listed resource's records into the batch, and tell the ledger what its scope
    listed; a record it cannot type is set aside, seen by its id where readable."""
    resource = listed.resource
    typed = [record_to_row(resource, raw) for raw in listed.records]
    rows = [row for row in typed if not isinstance(row, Reject)]
    rejects = [row for row in typed if isinstance(row, Reject)]
    batch.records.append((resource, rows))
    batch.rejects += rejects
    ids = [row[resource.key] for row in rows] + [reject.source_id for reject in rejects]
    _note_ids(ledger, Scope(resource.scope_kind), ids)


def _prepared(listing: JobListing, ahead: str | None) -> list[PreparedTask]:
    """The listing's tasks prepared, each lean one under the hash its enrichment decided, and
    typed now as listed by job `ahead`, if given."""
    tasks = [prepare_task(raw, _lean_digest(listing.digests, raw)) for raw in listing.tasks]
    if ahead is None:
        return tasks
    return [typed_ahead(task, ahead) for task in tasks]


def _lean_digest(digests: dict[str, str], raw: Any) -> str | None:
    """The hash a lean task stands for, decided by its enrichment (most listings have none)."""
    return digests.get(id_of(raw, TASKS.id_field) or "") if digests else None


def _add_failure(state: _State, failure: JobFailure) -> None:
    """A job that could not be listed: recorded, kept as stored, never taken as absent."""
    state.ledger.saw(ACCOUNT, [failure.job_id])
    state.failed.append(failure)
    state.batch.failed_jobs.append(
        {
            "job_id": failure.job_id,
            "error_class": failure.error_class,
            "exit_code": failure.exit_code,
            "message": failure.message,
        }
    )


def _note_ids(ledger: Ledger, scope: Scope, ids: list[str | None]) -> None:
    """Tell the ledger the ids a scope listed: the readable ones, and how many were not."""
    ledger.saw(scope, [record_id for record_id in ids if record_id])
    unreadable = sum(1 for record_id in ids if not record_id)
    if unreadable:
        ledger.unreadable(scope, unreadable)


def _take(state: _State) -> _Pending:
    """Hand the batch so far to the writer and start a new one."""
    batch = state.batch
    # each listed job is a job row, a job reject or a failed job, until the writer adds tasks'
    job_rejects = sum(1 for reject in batch.rejects if reject.entity == JOBS.entity)
    jobs = len(batch.jobs) + job_rejects + len(batch.failed_jobs)
    pending = _Pending(batch, state.untyped, state.progress, state.ledger.deletes, jobs, state.big)
    state.batch, state.untyped, state.untyped_tasks, state.progress = Batch(), [], 0, []
    state.big = None
    return pending


def _check(state: _State, counts: RunCounts, written: Written | None) -> None:
    """Add a committed batch's counts and what it leaves to settle."""
    if written is None:
        return
    log.info("batch written: %s", _figures(written.counts, jobs=False))
    counts.add(written.counts)
    _note_pending_work(state, written)
    state.type_ahead = _worth_typing_ahead(written.counts)


def _note_pending_work(state: _State, written: Written) -> None:
    """Keep what a batch leaves for the end of the run: what its listed jobs lacked, the
    rejects it saw and deferred owners."""
    for job_id, lacked in written.absent.items():
        state.ledger.listed(job_scope(job_id), lacked)
    state.reject_keys |= written.reject_keys
    state.claims.note(written.seen, written.deferred)


def _write_deferred(connection: Connection, state: _State, run_id: int) -> RunCounts:
    """Write the held-back tasks whose stored job turned out not to list them any more."""
    winners = state.claims.winners(state.ledger)
    if not winners:
        return RunCounts()
    ids = [rows.task_id for rows in winners]
    batch = Batch(tasks=winners, owners_settled=True)
    return load.write_batch(connection, batch, run_id, load.stored_tasks(connection, ids)).counts


def _list_account(connection: Connection, ledger: Ledger, resources: tuple[Resource, ...]) -> None:
    """The account's listings were read to their end: tell the ledger, for each resource,
    which of its stored live rows its listing lacked (none, for one whose absence keeps)."""
    for resource in resources:
        scope = Scope(resource.scope_kind)
        stored = load.live_ids(connection, resource.table) if resource.absent == SOFT_DELETE else ()
        ledger.listed(scope, [key for key in stored if not ledger.seen(scope, key)])


def _delete_absent(
    connection: Connection, ledger: Ledger, listed: tuple[Resource, ...], max_fraction: float
) -> tuple[int, str | None]:
    """Soft-delete what the run found gone, unless it is more than the guard allows."""
    gone_jobs, absent = ledger.deletable(ACCOUNT_KIND), ledger.deletable(JOB_KIND)
    gone = {resource: ledger.deletable(resource.scope_kind) for resource in listed}
    if not (gone_jobs or absent or any(gone.values())):
        return 0, None
    shares = [
        ("jobs", len(gone_jobs), load.live_count(connection, JOBS.table)),
        (
            "tasks",
            len(absent) + load.live_tasks_of(connection, gone_jobs),
            load.live_count(connection, TASKS.table),
        ),
    ]
    shares += [
        (f"{r.entity}s", len(ids), load.live_count(connection, r.table))
        for r, ids in gone.items()
        if ids
    ]
    refusal = _refusal(shares, max_fraction)
    if refusal is not None:
        return 0, refusal
    deleted = load.delete_records(connection, TASKS.table, absent)
    deleted += sum(load.delete_records(connection, r.table, ids) for r, ids in gone.items())
    return deleted + load.delete_jobs(connection, gone_jobs), None


def _refusal(shares: list[tuple[str, int, int]], max_fraction: float) -> str | None:
    """Why the run's soft deletes are refused, or None when they are within the guard:
    `shares` are (what, rows to delete, live rows)."""
    if max_fraction >= 1 or all(gone <= max_fraction * live for _, gone, live in shares):
        return None
    named = " and ".join(f"{gone} of {live} live {what}" for what, gone, live in shares)
    return (
        f"refused to soft-delete {named}: more than --max-delete-fraction {max_fraction:g} of "
        "them, as when an upstream listing comes back empty or collapsed. Nothing was deleted; "
        "everything else was loaded. If the deletions are real, run once with "
        "--max-delete-fraction 1 (or QIANFAN_ETL_MAX_DELETE_FRACTION=1)."
    )


def _settle_rejects(connection: Connection, state: _State, run_id: int) -> int:
    """Resolve the stored rejects a complete listing of their scope no longer has."""
    ledger = state.ledger

    def covered(entity: str, scope_id: str | None) -> bool:
        scope = ledger.scope_of(entity, scope_id)
        return scope is not None and ledger.covers(scope)

    return load.resolve_rejects(connection, run_id, state.reject_keys, covered)


def _too_many_rejects(counts: RunCounts, options: SyncOptions, run_id: int) -> str | None:
    """Why the run's rejects make it partial, or None."""
    if counts.rejects <= options.max_rejects:
        return None
    return (
        f"{counts.rejects} records rejected, more than --max-rejects {options.max_rejects}: "
        "the upstream data does not look like Qianfan's. Every good record loaded; at most "
        f"{options.max_rejects} new or changed rejects were recorded (see etl_rejects, run "
        f"{run_id}). Report it upstream, or raise --max-rejects if this is expected."
    )


def _outcome(
    state: _State, run_id: int, deleted: int, refusal: str | None, rejects: str | None
) -> _Outcome:
    """Status, exit code and message of a run that went through: 65 when a person must look
    (a broken listing, deletes held back or refused, a flood of rejects), else 75 while a job
    still fails or a lean task's enrichment is still missing, else 0."""
    held = state.ledger.held_back()
    codes = {failure.exit_code for failure in state.failed}
    if refusal is not None or held or rejects is not None:
        codes.add(EXIT_DATA)
    if state.enrichment_failed:
        codes.add(EXIT_TEMPFAIL)
    if not codes:
        return _Outcome(deleted, "succeeded", EXIT_OK, None)
    exit_code = EXIT_DATA if EXIT_DATA in codes else EXIT_TEMPFAIL
    parts = [_failures_text(state.failed, run_id)] if state.failed else []
    parts += [_held_back_text(held, run_id)] if held else []
    parts += [_unenriched_text(state.enrichment_failed)] if state.enrichment_failed else []
    parts += [text for text in (rejects, refusal) if text]
    return _Outcome(deleted, "partial", exit_code, " ".join(parts), held)


def _unenriched_text(count: int) -> str:
    """One sentence on the lean-listed tasks whose detail call failed: withheld, so not 0."""
    return (
        f"{count} lean-listed tasks could not be enriched from DescribeFineTuningTask: their "
        "metrics and checkpoints are not stored yet, and the next run retries them."
    )


def _held_back_text(held: list[HeldBack], run_id: int) -> str:
    """One sentence on the scopes whose deletes were held back, and what to do."""
    named = ", ".join(f"{h.scope} kept {h.count} ({h.reason})" for h in held[:NAMED_FAILURES])
    more = f" and {len(held) - NAMED_FAILURES} more" if len(held) > NAMED_FAILURES else ""
    return (
        f"{len(held)} scopes held back their soft deletes, as records without a readable id "
        f"may be any stored row: {named}{more}. Rows gone upstream stay live there until "
        f"upstream fixes those records (see etl_rejects and etl_held_back_scopes, run {run_id})."
    )


def _failures_text(failed: list[JobFailure], run_id: int) -> str:
    """One sentence on the jobs that could not be listed, and what to do."""
    named = ", ".join(f"{f.job_id} ({f.error_class})" for f in failed[:NAMED_FAILURES])
    more = f" and {len(failed) - NAMED_FAILURES} more" if len(failed) > NAMED_FAILURES else ""
    advice = (
        "a broken listing needs a look: re-run later and report it upstream if it persists"
        if any(f.exit_code == EXIT_DATA for f in failed)
        else "the next run retries them"
    )
    return (
        f"{len(failed)} jobs could not be listed: {named}{more}; their stored rows were left "
        f"as they were and every other job loaded ({advice}; see etl_failed_jobs for run "
        f"{run_id}). First error: {failed[0].message}"
    )


class _Writer:
    """Writes and commits one batch at a time on a background thread, so the database's work
    overlaps fetching and hashing the next batch, and no transaction stays open while the run
    waits on the API. A batch commits only while the run holds its lock and is not stopping,
    so a signal rolls back the batch in progress instead of racing its commit."""

    def __init__(self, connection: Connection, run: _Run, options: SyncOptions) -> None:
        self._connection = connection
        self._run = run
        self._dry_run = options.dry_run
        self._reject_room = options.max_rejects
        self._piece_tasks = options.batch_tasks
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qianfan-writer")
        self._pending: Future[Written] | None = None

    def submit(self, pending: _Pending) -> Written | None:
        """Wait for the batch in progress (returning what it wrote), then start writing this one."""
        written = self.finish()
        batch = pending.batch
        if batch.jobs or batch.rejects or batch.failed_jobs or batch.records:
            self._pending = self._pool.submit(self._write, pending)
        return written

    def finish(self) -> Written | None:
        """Wait for the batch in progress to commit; what it wrote, or None if there was none."""
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

    def _write(self, pending: _Pending) -> Written:
        """In the writer thread: type what changed, write it and commit."""
        connection = self._connection
        with _transaction(connection, self._dry_run):
            stored = load.stored_tasks(connection, pending.task_ids())
            written, refused = self._write_pieces(pending, stored)
            progress = [row for row in pending.progress if row["task_id"] not in refused]
            written.counts.rows_written += load.save_progress(connection, progress)
            batch = RunCounts(jobs_seen=pending.jobs)
            batch.add(written.counts)
            self._record(batch)
            if not self._dry_run:
                self._before_commit()
        if not self._dry_run:  # a dry run commits nothing
            self._run.committed.add(batch)
            fault_point("after_commit")
        return written

    def _write_pieces(self, pending: _Pending, stored: dict[str, Any]) -> tuple[Written, set[str]]:
        """Type and write the batch a piece at a time; what it wrote, and the ids of the
        tasks set aside (their stored rows keep their progress, as a run from scratch would
        leave them)."""
        written, refused = Written(counts=RunCounts()), set[str]()
        for piece in pending.pieces(self._piece_tasks):
            _type_tasks(piece, stored)
            done = load.write_batch(
                self._connection, piece.batch, self._run.run_id, stored, self._reject_room
            )
            self._reject_room -= done.rejects_recorded
            written.add(done)
            refused |= {r.source_id or "" for r in piece.batch.rejects if r.entity == TASKS.entity}
            fault_point("after_piece")
        return written, refused

    def _record(self, batch: RunCounts) -> None:
        """Record the run's counts as they are once this batch commits, in its transaction."""
        batch.api_calls = self._run.api_calls() - self._run.committed.api_calls
        totals = RunCounts()
        totals.add(self._run.committed)
        totals.add(batch)
        load.record_counts(self._connection, self._run.run_id, totals)

    def _before_commit(self) -> None:
        """Refuse to commit once the run is stopping or has lost its lock."""
        fault_point("before_commit")
        if stopping.requested():
            raise stopping.Stopped("the run is stopping: the batch in progress is rolled back")
        self._run.lock.check(self._connection)


def _worth_typing_ahead(counts: RunCounts) -> bool:
    """Type the next batch's tasks while they are fetched, before the stored hashes are known,
    when most of this batch changed: typing then overlaps the writer's database time, and
    little of it is thrown away (README, Performance)."""
    return counts.tasks_changed * 2 > counts.tasks_seen


def _type_tasks(pending: _Pending, stored: dict[str, Any]) -> None:
    """Type the batch's tasks, skipping those whose stored hash (and job) matches; a task
    listed by two of the batch's jobs goes to the smaller job id."""
    known = {key: row.content_hash for key, row in stored.items()}
    claims: list[JobTasks] = []
    for job_id, tasks in pending.untyped:
        moved = {
            t.task_id for t in tasks if t.task_id in stored and stored[t.task_id].job_id != job_id
        }
        here = {k: v for k, v in known.items() if k not in moved} if moved else known
        rows, rejects = tasks_to_rows(tasks, job_id, here)
        claims.append((job_id, rows))
        pending.batch.rejects.extend(replace(reject, scope=job_id) for reject in rejects)
    pending.batch.tasks.extend(owned(claims))


def _record_failure(
    connection: Connection, run_id: int, counts: RunCounts, exc: BaseException, dry_run: bool
) -> None:
    """Mark the run failed; if the database is gone too, the next run marks it abandoned."""
    if connection.in_transaction() and not dry_run:
        connection.rollback()
    try:
        with _transaction(connection, dry_run):
            error, code = _describe(exc), exit_code_of(exc)
            load.finish_run(connection, run_id, counts, error, status="failed", exit_code=code)
    except SQLAlchemyError as secondary:
        log.warning("could not record run %s as failed: %s", run_id, type(secondary).__name__)


def _figures(counts: RunCounts, jobs: bool = True) -> str:
    """Counts for a log line (a batch's have no jobs: those are counted as they are listed)."""
    seen = f"{counts.jobs_seen} jobs, " if jobs else ""
    return (
        f"{seen}{counts.tasks_seen} tasks ({counts.tasks_changed} changed), "
        f"{counts.rows_written} rows, {counts.rejects} rejects"
    )


def _say_if_interrupted(exc: BaseException, run: _Run) -> None:
    """One line on stderr for a signal: what the run committed, and what it rolled back."""
    if not isinstance(exc, SystemExit | KeyboardInterrupt):
        return
    code = exc.code if isinstance(exc, SystemExit) else EXIT_SIGINT
    names = {128 + signum: signum.name for signum in (signal.SIGINT, signal.SIGTERM)}
    log.error(
        "interrupted by %s: run %d committed %s; the batch in flight, if any, was rolled back "
        "and the next run fetches it again",
        names.get(code, "a signal") if isinstance(code, int) else "a signal",
        run.run_id,
        _figures(run.committed),
    )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SystemExit | KeyboardInterrupt):
        return f"interrupted ({type(exc).__name__} {getattr(exc, 'code', '')})".strip()
    return redact.describe(exc)
