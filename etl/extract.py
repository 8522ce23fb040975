"""Walk every job of the account and fetch each job's tasks concurrently.

A job whose task listing fails for a reason of its own (retries exhausted, broken pagination,
a 4xx such as 404 for a job deleted mid-listing) comes back with its error and no tasks; the
walk goes on. An auth error, a failing job list, or an API failing job after job (the circuit
breaker) ends the walk.
"""

import logging
from collections.abc import Collection, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from etl.errors import EXIT_TEMPFAIL, ContractError, TransientError
from etl.qianfan import QianfanClient, fetch_job_pages, fetch_tasks
from etl.qianfan.pagination import job_paginator, task_paginator

log = logging.getLogger("etl.extract")

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
    failure: JobFailure | None = None
    warnings: int = 0


@dataclass
class WalkStats:
    """What the walk noticed beside the listings: warnings of the job list and of task pages."""

    job_list_warnings: int = 0
    task_warnings: int = 0

    @property
    def listing_warnings(self) -> int:
        """Pages longer than asked and items listed twice, in the job list and task lists."""
        return self.job_list_warnings + self.task_warnings


def job_id_of(job: Any) -> str | None:
    """The job's jobId if it is a non-empty string, else None."""
    job_id = job.get("jobId") if isinstance(job, dict) else None
    return job_id if isinstance(job_id, str) and job_id else None


def fetch_account(
    client: QianfanClient,
    *,
    job_ids: Collection[str] | None = None,
    concurrency: int = 8,
    stats: WalkStats | None = None,
) -> Iterator[JobListing]:
    """Yield each wanted job with its tasks, in completion order, 2x workers in flight at most."""
    stats = stats if stats is not None else WalkStats()
    wanted = None if job_ids is None else frozenset(job_ids)
    found: set[str] = set()
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="qianfan-tasks")
    pending: set[Future[JobListing]] = set()
    breaker = _Breaker()
    try:
        for job in _listed_jobs(client, stats):
            job_id = job_id_of(job)
            if wanted is not None and job_id not in wanted:
                continue
            if job_id is None:
                yield JobListing(job, [])
                continue
            found.add(job_id)
            pending.add(pool.submit(_fetch_listing, client, job, job_id))
            full = len(pending) >= 2 * concurrency
            yield from _completed(pending, full, stats, breaker)
        while pending:
            yield from _completed(pending, True, stats, breaker)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    _warn_missing(wanted, found)


def _listed_jobs(client: QianfanClient, stats: WalkStats) -> Iterator[Any]:
    """Every raw job, one at a time."""
    paginator = job_paginator()
    for page in fetch_job_pages(client, paginator):
        stats.job_list_warnings = paginator.warnings
        yield from page


def _fetch_listing(client: QianfanClient, job: Any, job_id: str) -> JobListing:
    """Fetch one job's tasks (runs in a worker thread); a failure of its own is returned."""
    paginator = task_paginator(job_id)
    try:
        tasks = fetch_tasks(client, job_id, paginator)
    except (ContractError, TransientError) as exc:
        message = str(exc) if job_id in str(exc) else f"job {job_id}: {exc}"
        log.warning("%s; the job's stored rows stay as they are", message)
        failure = JobFailure(job_id, type(exc).__name__, exc.exit_code, message)
        return JobListing(job, [], failure, paginator.warnings)
    return JobListing(job, tasks, None, paginator.warnings)


def _completed(
    pending: set[Future[JobListing]], block: bool, stats: WalkStats, breaker: "_Breaker"
) -> Iterator[JobListing]:
    """Yield the finished futures' listings (waiting for one if asked), raising any error."""
    done = wait(pending, return_when=FIRST_COMPLETED)[0] if block else _done(pending)
    for future in done:
        pending.discard(future)
        listing = future.result()
        stats.task_warnings += listing.warnings
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


def _warn_missing(wanted: frozenset[str] | None, found: set[str]) -> None:
    """Log job ids that were asked for but not listed."""
    missing = sorted((wanted or frozenset()) - found)
    if missing:
        log.warning("job ids not found in the listing: %s", ", ".join(missing))
