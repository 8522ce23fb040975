"""Walk every job of the account and fetch each job's tasks concurrently."""

import logging
from collections.abc import Callable, Collection, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from etl import stopping
from etl.errors import EtlError
from etl.qianfan import QianfanClient, fetch_job_pages, fetch_tasks

log = logging.getLogger("etl.extract")

DETAIL_ACTION = "DescribeFineTuningTask"


@dataclass
class JobListing:
    """One listed job, raw, with every raw task of it."""

    job: Any
    tasks: list[Any]
    # The raw detail of each Running task, by taskId; details that could not be fetched.
    details: dict[str, Any] = field(default_factory=dict)
    details_failed: int = 0


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


def job_id_of(job: Any) -> str | None:
    """The job's jobId if it is a non-empty string, else None."""
    job_id = job.get("jobId") if isinstance(job, dict) else None
    return job_id if isinstance(job_id, str) and job_id else None


def fetch_account(
    client: QianfanClient,
    *,
    job_ids: Collection[str] | None = None,
    concurrency: int = 8,
    select: Callable[[str], bool] | None = None,
) -> Iterator[JobListing]:
    """Yield each wanted job with its tasks, in completion order, 2x workers in flight at most.

    `select`, if given, says which identified jobs to list the tasks of; the others are left out.
    """
    wanted = None if job_ids is None else frozenset(job_ids)
    found: set[str] = set()
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="qianfan-tasks")
    pending: set[Future[JobListing]] = set()
    try:
        for job in _listed_jobs(client):
            job_id = job_id_of(job)
            if wanted is not None and job_id not in wanted:
                continue
            if job_id is None:
                yield JobListing(job, [])
                continue
            if select is not None and not select(job_id):
                continue
            found.add(job_id)
            pending.add(pool.submit(_fetch_listing, client, job, job_id))
            yield from _completed(pending, block=len(pending) >= 2 * concurrency)
        while pending:
            yield from _completed(pending, block=True)
    finally:
        # A run that is stopping does not wait for a worker blocked in a slow read.
        pool.shutdown(wait=not stopping.requested(), cancel_futures=True)
    _warn_missing(wanted, found)


def _listed_jobs(client: QianfanClient) -> Iterator[Any]:
    """Every raw job, one at a time."""
    listed = 0
    for page in fetch_job_pages(client):
        listed += len(page)
        yield from page
    log.info("listed %d jobs", listed)


def _fetch_listing(client: QianfanClient, job: Any, job_id: str) -> JobListing:
    """Fetch one job's tasks, and the detail of its Running ones (runs in a worker thread)."""
    tasks = fetch_tasks(client, job_id)
    log.debug("job %s: %d tasks", job_id, len(tasks))
    details, failed = fetch_details(client, running_task_ids(tasks))
    return JobListing(job, tasks, details, failed)


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


def _completed(pending: set[Future[JobListing]], block: bool) -> Iterator[JobListing]:
    """Yield the finished futures' listings (waiting for one if asked), raising any error."""
    done = wait(pending, return_when=FIRST_COMPLETED)[0] if block else _done(pending)
    for future in done:
        pending.discard(future)
        yield future.result()


def _done(pending: set[Future[JobListing]]) -> set[Future[JobListing]]:
    """The futures that have already finished."""
    return {future for future in pending if future.done()}


def _warn_missing(wanted: frozenset[str] | None, found: set[str]) -> None:
    """Log job ids that were asked for but not listed."""
    missing = sorted((wanted or frozenset()) - found)
    if missing:
        log.warning("job ids not found in the listing: %s", ", ".join(missing))
