"""Walk every job of the account: job pages, task pages and detail calls, in one pool.

Every API call is a unit of work of its own: a page of the job list, a page of one job's tasks,
the detail (DescribeFineTuningTask) of one Running or lean task. `concurrency` worker threads
take units from one queue, so that many calls stay in flight whatever the consumer (the run's
writer) is doing; a unit that finishes a page queues what follows from it (the next page, the
page's detail calls). A job is handed on whole, once its last unit is done, so its tasks still
commit together; at most OPEN_JOBS_PER_WORKER x concurrency jobs are open at once (started, or
done and not yet taken), which bounds memory while the consumer is busy. What is listed, by which
action and id, is declared in etl.resources; a further resource the account lists
(`listed`) is a page unit at a time of the same pool, handed on whole once its last page is in.

A job whose task listing fails with one of JOB_LEVEL_ERRORS (retries exhausted, broken
pagination, a 4xx such as 404 for a job deleted mid-listing) comes back with its error and no
tasks; the walk goes on. Any other error (auth, configuration), a failing job list, or an API
failing job after job (the circuit breaker) ends the walk.
"""

import errno
import logging
import os
import pickle
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from types import TracebackType
from typing import Any, Self

from etl import stopping
from etl.canonical import lean_hash
from etl.errors import (
    EXIT_TEMPFAIL,
    JOB_LEVEL_ERRORS,
    ConfigError,
    DiskFullError,
    EtlError,
    TransientError,
)
from etl.qianfan import QianfanClient, fetch_pages
from etl.qianfan.pagination import MarkerPaginator, id_of
from etl.resources import JOBS, TASK_DETAIL, TASKS, Resource
from etl.transform import TERMINAL_STATUSES, enriched, is_lean

log = logging.getLogger("etl.extract")

# Jobs whose listing failed with a transient error in a row, with no listing succeeding in
# between, before the walk stops with 75: the API is down, and every further job would only
# spend its own retry budget. Broken listings (65) neither count nor reset the streak.
BREAKER_FAILURES = 5

# Jobs open at once per worker: started, or done and waiting for the consumer; the bound keeps
# a slow consumer from letting the walk hold the whole account in memory. Measured at size M
# (README, Performance): 16 peaked at 164 MB and 4 at 136 MB, with the same wall time at 0 and
# at 50 ms a call (the consumer keeps up, so a lead of 32 jobs at concurrency 8 is enough).
OPEN_JOBS_PER_WORKER = 4
# The next page of the job list is fetched while fewer jobs than this wait to be started.
JOB_BACKLOG = 100
# How long the consumer waits at a time, so a signal is handled promptly.
WAIT_SLICE = 0.5
# A job's tasks are held as they come until it lists more than this many; from then on its
# pages wait in a temporary file, so that a job of any size holds a page in memory, not itself.
SPOOL_AFTER = 2000


class Spool:
    """A big job's raw tasks, a pickle per page in an unlinked temporary file (gone when the
    spool is): iterable any number of times, each page read at its own offset, with the lean
    tasks' enrichments laid over. Pickle, since it gives back exactly what the client parsed
    (any integer, any float); the file is this process's own."""

    def __init__(self, tasks: list[Any]) -> None:
        # no context manager: the file lives as long as the spool, and is unlinked already
        self._file = tempfile.TemporaryFile(prefix="qianfan-etl-job-")  # noqa: SIM115
        self._pages: list[tuple[int, int]] = []
        self._count = 0
        self.enriched: dict[str, Any] = {}
        self.add(tasks)

    def add(self, tasks: list[Any]) -> None:
        """Append a page of raw tasks; a full disk ends the run (74), saying where."""
        data = pickle.dumps(tasks, pickle.HIGHEST_PROTOCOL)
        offset = self._pages[-1][0] + self._pages[-1][1] if self._pages else 0
        try:
            self._file.write(data)
            self._file.flush()
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise DiskFullError(
                f"the temporary directory {tempfile.gettempdir()} is full: a job of more than "
                f"{SPOOL_AFTER} tasks waits there while it is listed (about 1.5 KB a task). "
                "Nothing of that job was written. Free space there, or point TMPDIR at a disk "
                "with room, and run again."
            ) from None
        self._pages.append((offset, len(data)))
        self._count += len(tasks)

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Any]:
        fd, enriched = self._file.fileno(), self.enriched
        for offset, size in self._pages:
            for task in pickle.loads(os.pread(fd, size, offset)):
                yield enriched.get(id_of(task, TASKS.id_field) or "", task) if enriched else task


def _kept(tasks: "list[Any] | Spool", page: list[Any]) -> "list[Any] | Spool":
    """A job's tasks with a page more: in memory up to SPOOL_AFTER, then spooled."""
    if isinstance(tasks, list) and len(tasks) + len(page) <= SPOOL_AFTER:
        tasks.extend(page)
        return tasks
    if isinstance(tasks, list):
        return Spool(tasks + page)
    tasks.add(page)
    return tasks


@dataclass(frozen=True)
class JobFailure:
    """Why one job's task listing failed: the error's class name, exit code and message."""

    job_id: str
    error_class: str
    exit_code: int
    message: str


@dataclass
class JobListing:
    """One listed job, raw, with every raw task of it (or the failure that left it without)."""

    job: Any
    tasks: "list[Any] | Spool"
    # The raw detail of each Running task, by taskId; details that could not be fetched.
    details: dict[str, Any] = field(default_factory=dict)
    details_failed: int = 0
    failure: JobFailure | None = None
    warnings: int = 0
    # lean tasks: the content hash each stands for, by taskId; enrichments that failed
    digests: dict[str, str] = field(default_factory=dict)
    enrichment_failed: int = 0


@dataclass
class Listed:
    """Every raw record of a resource the account lists beside its jobs (SyncOptions.listed)."""

    resource: Resource
    records: list[Any] = field(default_factory=list)


# The content hashes stored for some task ids (a lean listing's enrichment asks for them).
StoredHashes = Callable[[list[str]], dict[str, str]]


@dataclass
class _Enrichment:
    """Lean tasks enriched by taskId, the content hash some stand for, the calls that failed."""

    merged: dict[str, Any] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)
    failed: int = 0

    def keep_stored(self, task_id: str, stored: dict[str, str]) -> None:
        """A task left without its children stands for its stored hash: kept as stored."""
        if task_id in stored:
            self.digests[task_id] = stored[task_id]


@dataclass
class WalkStats:
    """What the walk noticed beside the listings: warnings of the job list and of task pages."""

    job_list_warnings: int = 0
    task_warnings: int = 0
    # For the progress display: jobs in the job list so far (all of it once its last page
    # came), those of them passed over (not wanted, or carried over) and tasks fetched so far.
    jobs_listed: int = 0
    job_list_done: bool = False
    jobs_passed: int = 0
    tasks_listed: int = 0

    @property
    def listing_warnings(self) -> int:
        """Pages longer than asked and items listed twice, in the job list and task lists."""
        return self.job_list_warnings + self.task_warnings


@dataclass
class ActiveSelection:
    """Which listed jobs an --active-only run lists the tasks of: those not stored (new, or
    soft-deleted and back) and those to list again; the rest are carried over untouched."""

    stored: set[str]
    relist: set[str]
    skipped: set[str] = field(default_factory=set)

    def __call__(self, job_id: str) -> bool:
        """Whether to list this job's tasks; notes the jobs carried over."""
        if job_id in self.stored and job_id not in self.relist:
            self.skipped.add(job_id)
            return False
        return True


def fetch_account(
    client: QianfanClient,
    *,
    job_ids: Collection[str] | None = None,
    concurrency: int,
    select: Callable[[str], bool] | None = None,
    stats: WalkStats | None = None,
    task_details: bool = True,
    stored_hashes: StoredHashes | None = None,
    listed: tuple[Resource, ...] = (),
) -> Iterator[JobListing | Listed]:
    """Yield each wanted job with its tasks and details, in completion order, and each
    resource of `listed` once listed whole.

    `select`, if given, says which identified jobs to list the tasks of; the others are left out.
    `stored_hashes` tells which lean tasks are stored as enriched already (none, if not given).
    """
    stats = stats if stats is not None else WalkStats()
    pages = _job_list_pages(client, stats)
    if job_ids is not None:
        chosen = _wanted_jobs((job for page in pages for job in page), frozenset(job_ids))
        stats.jobs_passed = stats.jobs_listed - len(chosen)
        pages = iter([chosen])
    settings = _Settings(
        concurrency, select, stats, task_details, stored_hashes or _none_stored, listed
    )
    with _Walk(client, pages, settings) as walk:
        yield from walk.listings()


def _none_stored(_ids: list[str]) -> dict[str, str]:
    """No lean task is stored as enriched."""
    return {}


def _job_list_pages(client: QianfanClient, stats: WalkStats) -> Iterator[list[Any]]:
    """Every raw job, a page at a time."""
    paginator, pages = listing_pages(client, JOBS)
    listed = 0
    for page in pages:
        stats.job_list_warnings = paginator.warnings
        listed += len(page)
        stats.jobs_listed = listed
        stats.job_list_done = not paginator.has_next_page
        yield page
    log.info("listed %d jobs", listed)


@dataclass(frozen=True)
class _Settings:
    """What the walk lists and asks for."""

    concurrency: int
    select: Callable[[str], bool] | None
    stats: WalkStats
    task_details: bool
    stored_hashes: StoredHashes
    listed: tuple[Resource, ...] = ()


@dataclass
class _LeanPlan:
    """A listed job's lean tasks by taskId, their stored hashes, the hash each finished one
    stands for, and the finished ones that need a call of their own."""

    tasks: dict[str, Any]
    stored: dict[str, str]
    digests: dict[str, str] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)


@dataclass
class _Job:
    """One job being walked: its pages so far, the details asked for and got, its open units."""

    raw: Any
    job_id: str
    paginator: MarkerPaginator
    pages: Iterator[list[Any]]
    tasks: list[Any] | Spool = field(default_factory=list)
    asked: set[str] = field(default_factory=set)
    details: dict[str, Any] = field(default_factory=dict)
    details_failed: int = 0
    # finished lean tasks' details, None where the call failed
    children: dict[str, Any] = field(default_factory=dict)
    lean: _LeanPlan | None = None
    units: int = 1
    failure: JobFailure | None = None

    def listing(self, task_details: bool) -> JobListing:
        """The whole listing, once every unit of the job is done."""
        warnings = self.paginator.warnings
        if self.failure is not None:
            return JobListing(self.raw, [], failure=self.failure, warnings=warnings)
        tasks, lean = _enrich(self.tasks, self.lean, self.details, self.children, task_details)
        return JobListing(
            self.raw,
            tasks,
            self.details,
            self.details_failed,
            warnings=warnings,
            digests=lean.digests,
            enrichment_failed=lean.failed,
        )


Unit = Callable[[], None]


class _Walk:
    """The pool: worker threads taking units (one API call each) from one queue; the jobs they
    complete wait in `_done` for the consumer. One lock guards all of the state; workers and
    the consumer wait on conditions of their own, each woken only as far as there is work."""

    def __init__(self, client: QianfanClient, pages: Iterator[list[Any]], settings: _Settings):
        self._client, self._settings = client, settings
        self._max_open = OPEN_JOBS_PER_WORKER * settings.concurrency
        lock = threading.Lock()
        self._cond = threading.Condition(lock)  # the workers wait on it for units
        self._handed = threading.Condition(lock)  # the consumer waits on it for jobs
        self._job_pages: Iterator[list[Any]] | None = pages
        self._listing_jobs = False  # a page of the job list is being fetched
        self._unstarted: deque[Any] = deque()
        self._ready: deque[Unit] = deque()
        self._open = 0
        self._done: deque[JobListing | Listed] = deque()
        self._error: BaseException | None = None
        self._closed = False
        self._breaker = _Breaker()
        self._held_up = 0.0  # worker seconds spent waiting for the consumer to take jobs
        for resource in settings.listed:
            self._open += 1
            pages = listing_pages(client, resource)[1]
            self._ready.append(partial(self._resource_page, Listed(resource), pages))
        self._threads = [
            threading.Thread(target=self._work, name=f"qianfan-calls-{n}", daemon=True)
            for n in range(settings.concurrency)
        ]

    def __enter__(self) -> Self:
        """Start the workers."""
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop the workers after their current call; a stopping run does not wait for them."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            self._handed.notify_all()
        if not stopping.requested():
            for thread in self._threads:
                thread.join()
        log.debug("walk: workers waited %.2f s in all for the consumer", self._held_up)

    def listings(self) -> Iterator[JobListing | Listed]:
        """The completed jobs (and listed resources) as they come; an error that ended the walk
        is raised only after the jobs completed before it: the run commits all it fetched."""
        stats = self._settings.stats
        while batch := self._collect():
            for listing in batch:
                if isinstance(listing, JobListing):
                    stats.task_warnings += listing.warnings
                    stats.tasks_listed += len(listing.tasks)
                yield listing

    def _collect(self) -> list[JobListing | Listed]:
        """The jobs completed so far (waiting for one), [] at the end; raise the walk's error."""
        with self._cond:
            while not self._done and self._error is None and not self._finished():
                self._handed.wait(WAIT_SLICE)
            if self._done:
                batch = list(self._done)
                self._done.clear()
                self._open -= len(batch)
                self._cond.notify(len(batch))  # room for as many new jobs
                return batch
            if self._error is not None:
                raise self._error
            return []

    def _finished(self) -> bool:
        """Whether every job was listed and handed on."""
        return self._job_pages is None and not (self._listing_jobs or self._unstarted or self._open)

    def _work(self) -> None:
        """A worker: run units until the walk ends; an error ends the walk."""
        while (unit := self._next_unit()) is not None:
            try:
                unit()
            except BaseException as exc:  # handed to the consumer, which raises it
                self._fail(exc)

    def _next_unit(self) -> Unit | None:
        """The next unit to run, waiting for one; None once the walk is over."""
        with self._cond:
            while not self._closed and self._error is None:
                unit = self._take()
                if unit is not None:
                    return unit
                waited = time.monotonic()
                self._cond.wait()
                if self._unstarted:
                    self._held_up += time.monotonic() - waited
            return None

    def _take(self) -> Unit | None:
        """The job list's next page while few jobs wait to start, else the open jobs' units,
        else a new job, while not too many are open."""
        backlog = len(self._unstarted)
        if self._job_pages is not None and not self._listing_jobs and backlog < JOB_BACKLOG:
            self._listing_jobs = True
            return self._list_jobs
        if self._ready:
            return self._ready.popleft()
        if self._unstarted and self._open < self._max_open:
            return self._start(self._unstarted.popleft())
        return None

    def _list_jobs(self) -> None:
        """Unit: one page of the job list; its identified, wanted jobs wait to be started."""
        assert self._job_pages is not None
        page = next(self._job_pages, None)
        with self._cond:
            self._listing_jobs = False
            if page is None:
                self._job_pages = None
            for job in page or []:
                self._admit(job)
            self._cond.notify_all()
            self._handed.notify_all()

    def _admit(self, job: Any) -> None:
        """A listed job: handed on at once without a usable id (to be rejected), passed over if
        not selected, else queued to be started."""
        job_id = id_of(job, JOBS.id_field) or None  # "" is no id either: the job is rejected
        select = self._settings.select
        if job_id is None:
            self._open += 1
            self._done.append(JobListing(job, []))
        elif select is not None and not select(job_id):
            self._settings.stats.jobs_passed += 1
        else:
            self._unstarted.append(job)

    def _start(self, raw: Any) -> Unit:
        """Open a job: its first task page is its first unit."""
        job_id = id_of(raw, JOBS.id_field)
        assert job_id is not None
        paginator, pages = listing_pages(self._client, TASKS, job_id)
        self._open += 1
        return partial(self._task_page, _Job(raw, job_id, paginator, pages))

    def _task_page(self, job: _Job) -> None:
        """Unit: one page of a job's tasks; queues its Running tasks' details, then the next
        page, or once the last page is in, the calls its lean tasks need."""
        try:
            page = next(job.pages)
        except JOB_LEVEL_ERRORS as exc:
            job.failure = _failure(job.job_id, exc)
            return self._unit_done(job)
        job.tasks = _kept(job.tasks, page)  # only this job's page unit touches its tasks
        running = running_task_ids(page) if self._settings.task_details else []
        last = not job.paginator.has_next_page
        plan = _plan_lean(job.tasks, self._settings.stored_hashes) if last else None
        with self._cond:
            new = [task_id for task_id in running if task_id not in job.asked]
            job.asked.update(new)
            units: list[Unit] = [partial(self._detail, job, task_id) for task_id in new]
            if not last:
                units.append(partial(self._task_page, job))
            elif plan is not None:
                job.lean = plan
                units += [partial(self._children, job, task_id) for task_id in plan.calls]
            self._queue(job, units)
        self._unit_done(job)

    def _detail(self, job: _Job, task_id: str) -> None:
        """Unit: a Running task's detail, for its live progress (a failure costs only that)."""
        detail = _progress_detail(self._client, task_id)
        with self._cond:
            if detail is None:
                job.details_failed += 1
            else:
                job.details[task_id] = detail
        self._unit_done(job)

    def _children(self, job: _Job, task_id: str) -> None:
        """Unit: a finished lean task's detail, for its metrics and checkpoints."""
        detail = _children_detail(self._client, task_id)
        with self._cond:
            job.children[task_id] = detail
        self._unit_done(job)

    def _resource_page(self, listed: Listed, pages: Iterator[list[Any]]) -> None:
        """Unit: one page of a resource the account lists; the next page follows, and the
        listing is handed on whole once its last page is in."""
        page = next(pages, None)
        with self._cond:
            if page is not None:
                listed.records += page
                self._ready.append(partial(self._resource_page, listed, pages))
                self._cond.notify()
            elif self._error is None and not self._closed:
                self._done.append(listed)
                self._handed.notify()

    def _queue(self, job: _Job, units: list[Unit]) -> None:
        """Queue a job's follow-up units (the lock is held)."""
        job.units += len(units)
        self._ready.extend(units)
        self._cond.notify(len(units))

    def _unit_done(self, job: _Job) -> None:
        """One unit of a job ended; the last one hands the whole job on."""
        with self._cond:
            job.units -= 1
            if job.units:
                return
        listing = job.listing(self._settings.task_details)
        with self._cond:
            if self._error is not None or self._closed:
                return
            self._done.append(listing)
            try:
                self._breaker.note(listing.failure)
            except TransientError as exc:
                self._error = exc
                self._cond.notify_all()
            self._handed.notify()

    def _fail(self, exc: BaseException) -> None:
        """End the walk with this error (the first one wins)."""
        with self._cond:
            if self._error is None:
                self._error = exc
            self._cond.notify_all()
            self._handed.notify_all()


def listing_pages(
    client: QianfanClient, resource: Resource, parent_id: str = ""
) -> tuple[MarkerPaginator, Iterator[list[Any]]]:
    """The pages of a resource's listing, for the account or (with a parent) one parent
    record, whose id the request carries under the parent's id field; and their paginator."""
    where, body = resource.action, {}
    if resource.parent is not None:
        where, body = f"{resource.action} {parent_id}", {resource.parent.id_field: parent_id}
    paginator = MarkerPaginator(where, resource.id_field)
    return paginator, fetch_pages(client, resource.action, body, resource.list_key, paginator)


def _failure(job_id: str, exc: EtlError) -> JobFailure:
    """A job whose own listing failed: warned, and kept as stored."""
    message = str(exc) if job_id in str(exc) else f"job {job_id}: {exc}"
    log.warning("%s; the job's stored rows stay as they are", message)
    return JobFailure(job_id, type(exc).__name__, exc.exit_code, message)


def _plan_lean(tasks: Iterable[Any], stored_hashes: StoredHashes) -> _LeanPlan | None:
    """What a listed job's lean tasks need (README, "Lean listings"): a finished one a call
    of its own unless it is stored as enriched from this very listing; None without any."""
    lean = {key: task for task in tasks if is_lean(task) and (key := id_of(task, TASKS.id_field))}
    if not lean:
        return None
    plan = _LeanPlan(lean, stored_hashes(list(lean)))
    for task_id, task in lean.items():
        if task.get("runStatus") not in TERMINAL_STATUSES:
            continue
        digest = lean_hash(task)
        if digest is None:
            continue  # it cannot be hashed: it is set aside when typed
        plan.digests[task_id] = digest
        if plan.stored.get(task_id) != digest:
            plan.calls.append(task_id)
    return plan


def _enrich(
    tasks: list[Any] | Spool,
    plan: _LeanPlan | None,
    details: dict[str, Any],
    children: dict[str, Any],
    task_details: bool,
) -> tuple[list[Any] | Spool, _Enrichment]:
    """Give lean tasks the children of their detail: a Running one from its progress call, a
    finished one from its own call. One left without (its call failed) stands for its stored
    hash, so it stays as stored this run and the next run tries again."""
    result = _Enrichment()
    if plan is None:
        return tasks, result
    for task_id, task in plan.tasks.items():
        status = task.get("runStatus")
        if status in TERMINAL_STATUSES:
            _enrich_finished(task_id, task, plan, children, result)
        elif status == "Running" and task_id in details:
            result.merged[task_id] = enriched(task, details[task_id])
        elif status == "Running":
            result.failed += task_details  # its progress call failed (or was turned off)
            result.keep_stored(task_id, plan.stored)
    merged = result.merged
    if isinstance(tasks, Spool):
        tasks.enriched = merged
        return tasks, result
    return [merged.get(id_of(task, TASKS.id_field) or "", task) for task in tasks], result


def _enrich_finished(
    task_id: str,
    task: dict[str, Any],
    plan: _LeanPlan,
    children: dict[str, Any],
    result: _Enrichment,
) -> None:
    """A finished lean task, stored under its lean hash once a call succeeded, so that an
    unchanged listing needs no call again (`children` holds the calls made, None if failed)."""
    digest = plan.digests.get(task_id)
    if digest is None:
        return
    if task_id in children:
        if children[task_id] is None:
            result.failed += 1
            result.keep_stored(task_id, plan.stored)
            return
        result.merged[task_id] = enriched(task, children[task_id])
    result.digests[task_id] = digest


def _children_detail(client: QianfanClient, task_id: str) -> Any:
    """A finished lean task's detail, for its metrics and checkpoints; None if the call failed
    (warned: the task is kept as stored, and the next run tries again)."""
    try:
        return client.call(TASK_DETAIL.action, {TASK_DETAIL.id_field: task_id})
    except EtlError as exc:
        log.warning(
            "no metrics or checkpoints for task %s this run (its listing is lean; kept as "
            "stored, the next run tries again): %s",
            task_id,
            exc,
        )
        return None


def _progress_detail(client: QianfanClient, task_id: str) -> Any:
    """A Running task's DescribeFineTuningTask result; None if the call failed, which costs
    only that task's progress (warned and counted), never the run."""
    try:
        return client.call(TASK_DETAIL.action, {TASK_DETAIL.id_field: task_id})
    except EtlError as exc:
        log.warning("no live progress for task %s this run (kept as it was): %s", task_id, exc)
        return None


def running_task_ids(tasks: Iterable[Any]) -> list[str]:
    """The taskIds of the listed tasks in `Running` state, each once."""
    ids = (
        task.get(TASKS.id_field)
        for task in tasks
        if isinstance(task, dict) and task.get("runStatus") == "Running"
    )
    return list(dict.fromkeys(i for i in ids if isinstance(i, str) and i))


class _Breaker:
    """Counts transient job failures in a row; trips after BREAKER_FAILURES of them."""

    def __init__(self) -> None:
        self.streak: list[JobFailure] = []

    def note(self, failure: JobFailure | None) -> None:
        """Record one finished listing; raise TransientError once the streak is long enough."""
        if failure is None:
            self.streak = []
            return
        if failure.exit_code != EXIT_TEMPFAIL:
            return
        self.streak.append(failure)
        if len(self.streak) >= BREAKER_FAILURES:
            jobs = ", ".join(f.job_id for f in self.streak)
            raise TransientError(
                f"the task listing failed for {len(self.streak)} jobs in a row ({jobs}), none "
                f"succeeding in between: the API looks unavailable, so the run stops here "
                f"instead of spending every job's retries. Last error: {failure.message}"
            )


def _wanted_jobs(jobs: Iterable[Any], wanted: frozenset[str]) -> list[Any]:
    """The listed jobs --job-id asks for, once the whole job list is read (only those are kept):
    an id it does not hold is a ConfigError before any task is listed or row written (README,
    "Exit codes")."""
    chosen = [job for job in jobs if id_of(job, JOBS.id_field) in wanted]
    missing = sorted(wanted - {id_of(job, JOBS.id_field) for job in chosen})
    if missing:
        raise ConfigError(
            f"--job-id {', '.join(missing)}: not in the account's job list (a typo, another "
            "account, or a job deleted upstream), so no task was listed and no row changed: "
            "check the id in the Qianfan console or in finetune_jobs, and run again"
        )
    return chosen
