"""Walk every job of the account and fetch each job's tasks concurrently."""

import logging
from collections.abc import Collection, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from etl.qianfan import QianfanClient, fetch_job_pages, fetch_tasks

log = logging.getLogger("etl.extract")


@dataclass
class JobListing:
    """One listed job, raw, with every raw task of it."""

    job: Any
    tasks: list[Any]


def job_id_of(job: Any) -> str | None:
    """The job's jobId if it is a non-empty string, else None."""
    job_id = job.get("jobId") if isinstance(job, dict) else None
    return job_id if isinstance(job_id, str) and job_id else None


def fetch_account(
    client: QianfanClient, *, job_ids: Collection[str] | None = None, concurrency: int = 8
) -> Iterator[JobListing]:
    """Yield each wanted job with its tasks, in completion order, 2x workers in flight at most."""
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
            found.add(job_id)
            pending.add(pool.submit(_fetch_listing, client, job, job_id))
            yield from _completed(pending, block=len(pending) >= 2 * concurrency)
        while pending:
            yield from _completed(pending, block=True)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    _warn_missing(wanted, found)


def _listed_jobs(client: QianfanClient) -> Iterator[Any]:
    """Every raw job, one at a time."""
    listed = 0
    for page in fetch_job_pages(client):
        listed += len(page)
        yield from page
    log.info("listed %d jobs", listed)


def _fetch_listing(client: QianfanClient, job: Any, job_id: str) -> JobListing:
    """Fetch one job's tasks (runs in a worker thread)."""
    tasks = fetch_tasks(client, job_id)
    log.debug("job %s: %d tasks", job_id, len(tasks))
    return JobListing(job, tasks)


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
