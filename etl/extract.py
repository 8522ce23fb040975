"""Walk every job of the account and fetch each job's tasks concurrently.

A job whose task listing fails with one of JOB_LEVEL_ERRORS (retries exhausted, broken
pagination, a 4xx such as 404 for a job deleted mid-listing) comes back with its error and no
tasks; the walk goes on. Any other error (auth, configuration), a failing job list, or an API
failing job after job (the circuit breaker) ends the walk.
"""

import logging
from collections.abc import Callable, Collection, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from etl import stopping
from etl.canonical import lean_hash
from etl.errors import (
    EXIT_TEMPFAIL,
    JOB_LEVEL_ERRORS,
    ConfigError,
    EtlError,
    TransientError,
)
from etl.qianfan import QianfanClient, fetch_job_pages, fetch_tasks
from etl.qianfan.pagination import id_of, job_paginator, task_paginator
from etl.transform import TERMINAL_STATUSES, enriched, is_lean

log = logging.getLogger("etl.extract")

DETAIL_ACTION = "DescribeFineTuningTask"

# Jobs whose listing failed with a transient error in a row, with no listing succeeding in
# between, before the walk stops with 75: the API is down, and every further job would only
# spend its own retry budget. Broken listings (65) neither count nor reset the streak.
BREAKER_FAILURES = 5


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
    tasks: list[Any]
    # The raw detail of each Running task, by taskId; details that could not be fetched.
    details: dict[str, Any] = field(default_factory=dict)
    details_failed: int = 0
    failure: JobFailure | None = None
    warnings: int = 0
    # lean tasks: the content hash each stands for, by taskId; enrichments that failed
    digests: dict[str, str] = field(default_factory=dict)
    enrichment_failed: int = 0


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
) -> Iterator[JobListing]:
    """Yield each wanted job with its tasks, in completion order, 2x workers in flight at most.

    `select`, if given, says which identified jobs to list the tasks of; the others are left out.
    `stored_hashes` tells which lean tasks are stored as enriched already (none, if not given).
    """
    stored = stored_hashes or (lambda _ids: {})
    stats = stats if stats is not None else WalkStats()
    jobs: Iterable[Any] = _listed_jobs(client, stats)
    if job_ids is not None:
        chosen = _wanted_jobs(jobs, frozenset(job_ids))
        stats.jobs_passed = stats.jobs_listed - len(chosen)
        jobs = chosen
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="qianfan-tasks")
    pending: set[Future[JobListing]] = set()
    breaker = _Breaker()
    try:
        for job in jobs:
            job_id = id_of(job, "jobId") or None  # "" is no id either: the job is rejected
            if job_id is None:
                yield JobListing(job, [])
                continue
            if select is not None and not select(job_id):
                stats.jobs_passed += 1
                continue
            pending.add(pool.submit(_fetch_listing, client, job, job_id, task_details, stored))
            full = len(pending) >= 2 * concurrency
            yield from _completed(pending, full, stats, breaker)
        while pending:
            yield from _completed(pending, True, stats, breaker)
    finally:
        # A run that is stopping does not wait for a worker blocked in a slow read.
        pool.shutdown(wait=not stopping.requested(), cancel_futures=True)


def _listed_jobs(client: QianfanClient, stats: WalkStats) -> Iterator[Any]:
    """Every raw job, one at a time."""
    paginator = job_paginator()
    listed = 0
    for page in fetch_job_pages(client, paginator):
        stats.job_list_warnings = paginator.warnings
        listed += len(page)
        stats.jobs_listed = listed
        stats.job_list_done = not paginator.has_next_page
        yield from page
    log.info("listed %d jobs", listed)


def _fetch_listing(
    client: QianfanClient, job: Any, job_id: str, task_details: bool, stored: StoredHashes
) -> JobListing:
    """Fetch one job's tasks, the detail of its Running ones and of lean ones (runs in a worker
    thread); a failure of the job's own listing is returned, not raised."""
    paginator = task_paginator(job_id)
    try:
        tasks = fetch_tasks(client, job_id, paginator)
    except JOB_LEVEL_ERRORS as exc:
        message = str(exc) if job_id in str(exc) else f"job {job_id}: {exc}"
        log.warning("%s; the job's stored rows stay as they are", message)
        failure = JobFailure(job_id, type(exc).__name__, exc.exit_code, message)
        return JobListing(job, [], failure=failure, warnings=paginator.warnings)
    log.debug("job %s: %d tasks", job_id, len(tasks))
    running = running_task_ids(tasks) if task_details else []
    details, failed = fetch_details(client, running)
    tasks, lean = enrich_lean(client, tasks, details, stored, task_details)
    return JobListing(
        job,
        tasks,
        details,
        failed,
        warnings=paginator.warnings,
        digests=lean.digests,
        enrichment_failed=lean.failed,
    )


def enrich_lean(
    client: QianfanClient,
    tasks: list[Any],
    details: dict[str, Any],
    stored_hashes: StoredHashes,
    task_details: bool = True,
) -> tuple[list[Any], _Enrichment]:
    """Give lean tasks (README, "Lean listings") the children of their detail: a
    Running one from its progress call, a finished one by a call of its own unless it is
    stored as enriched from this very listing. One left without (its call failed) stands for
    its stored hash, so it stays as stored this run and the next run tries again."""
    lean = {key: task for task in tasks if is_lean(task) and (key := id_of(task, "taskId"))}
    result = _Enrichment()
    if not lean:
        return tasks, result
    stored = stored_hashes(list(lean))
    for task_id, task in lean.items():
        status = task.get("runStatus")
        if status in TERMINAL_STATUSES:
            _enrich_finished(client, task_id, task, stored, result)
        elif status == "Running" and task_id in details:
            result.merged[task_id] = enriched(task, details[task_id])
        elif status == "Running":
            result.failed += task_details  # its progress call failed (or was turned off)
            result.keep_stored(task_id, stored)
    merged = result.merged
    return [merged.get(id_of(task, "taskId") or "", task) for task in tasks], result


def _enrich_finished(
    client: QianfanClient,
    task_id: str,
    task: dict[str, Any],
    stored: dict[str, str],
    result: _Enrichment,
) -> None:
    """A finished lean task: stored under its lean hash once a call succeeded, so that an
    unchanged listing needs no call again."""
    digest = lean_hash(task)
    if digest is None:
        return  # it cannot be hashed: it is set aside when typed
    if stored.get(task_id) != digest:
        detail = _children_detail(client, task_id)
        if detail is None:
            result.failed += 1
            result.keep_stored(task_id, stored)
            return
        result.merged[task_id] = enriched(task, detail)
    result.digests[task_id] = digest


def _children_detail(client: QianfanClient, task_id: str) -> Any:
    """A finished lean task's detail, for its metrics and checkpoints; None if the call failed
    (warned: the task is kept as stored, and the next run tries again)."""
    try:
        return client.call(DETAIL_ACTION, {"taskId": task_id})
    except EtlError as exc:
        log.warning(
            "no metrics or checkpoints for task %s this run (its listing is lean; kept as "
            "stored, the next run tries again): %s",
            task_id,
            exc,
        )
        return None


def running_task_ids(tasks: Iterable[Any]) -> list[str]:
    """The taskIds of the listed tasks in `Running` state, each once."""
    ids = (
        task.get("taskId")
        for task in tasks
        if isinstance(task, dict) and task.get("runStatus") == "Running"
    )
    return list(dict.fromkeys(i for i in ids if isinstance(i, str) and i))


def fetch_details(client: QianfanClient, task_ids: Iterable[str]) -> tuple[dict[str, Any], int]:
    """Each task's DescribeFineTuningTask result; a call that fails costs only that task's
    progress (warned and counted), never the run."""
    details: dict[str, Any] = {}
    failed = 0
    for task_id in task_ids:
        try:
            details[task_id] = client.call(DETAIL_ACTION, {"taskId": task_id})
        except EtlError as exc:
            failed += 1
            log.warning("no live progress for task %s this run (kept as it was): %s", task_id, exc)
    return details, failed


def _completed(
    pending: set[Future[JobListing]], block: bool, stats: WalkStats, breaker: "_Breaker"
) -> Iterator[JobListing]:
    """Yield the finished futures' listings (waiting for one if asked), raising any error
    only after the listings that finished beside it: the run commits everything it fetched."""
    done = wait(pending, return_when=FIRST_COMPLETED)[0] if block else _done(pending)
    for future in sorted(done, key=lambda future: future.exception() is not None):
        pending.discard(future)
        listing = future.result()
        stats.task_warnings += listing.warnings
        stats.tasks_listed += len(listing.tasks)
        yield listing
        breaker.note(listing.failure)


def _done(pending: set[Future[JobListing]]) -> set[Future[JobListing]]:
    """The futures that have already finished."""
    return {future for future in pending if future.done()}


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
    chosen = [job for job in jobs if id_of(job, "jobId") in wanted]
    missing = sorted(wanted - {id_of(job, "jobId") for job in chosen})
    if missing:
        raise ConfigError(
            f"--job-id {', '.join(missing)}: not in the account's job list (a typo, another "
            "account, or a job deleted upstream), so no task was listed and no row changed: "
            "check the id in the Qianfan console or in finetune_jobs, and run again"
        )
    return chosen
