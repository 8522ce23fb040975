"""fetch_account: every job with all its tasks, concurrently, against the simulator."""

import time
from collections.abc import Iterator
from typing import Any, cast

import pytest
import requests

from etl.errors import AuthError, ConfigError, TransientError
from etl.extract import (
    BREAKER_FAILURES,
    OPEN_JOBS_PER_WORKER,
    JobListing,
    WalkStats,
    _none_stored,
    _Settings,
    _Walk,
    fetch_account,
)
from etl.qianfan import QianfanClient, RetryPolicy
from etl.simulator import STATS_PATH, Fault, Simulator, SimulatorConfig

TASKS = "DescribeFineTuningTasks"
DETAIL = "DescribeFineTuningTask"


@pytest.fixture
def sim() -> Simulator:
    """Twelve jobs, one of them with more than a page of tasks."""
    sim = Simulator(SimulatorConfig(jobs=12, tasks_per_job=5, checkpoints=2))
    big = sim.jobs()[3]["jobId"]
    for n in range(120):
        sim.put_task(big, {**sim.tasks(big)[0], "taskId": f"task-extra-{n:03d}"})
    return sim


@pytest.fixture
def client(sim: Simulator) -> Iterator[QianfanClient]:
    """A client on the served simulator, with zero backoff."""
    retry = RetryPolicy(max_attempts=3, base_wait=0.0)
    with (
        sim.serve() as server,
        QianfanClient(
            server.url, "sim-access-key", "sim-secret-key", retry=retry, sleep=lambda _: None
        ) as client,
    ):
        yield client


def by_job(listings: list[JobListing]) -> dict[str, list[Any]]:
    """Tasks keyed by job id, checking no job came twice."""
    result = {listing.job["jobId"]: listing.tasks for listing in listings}
    assert len(result) == len(listings)
    return result


def oracle(sim: Simulator) -> dict[str, list[Any]]:
    """What the simulator serves: every job's tasks."""
    return {job["jobId"]: sim.tasks(job["jobId"]) for job in sim.jobs()}


@pytest.mark.parametrize("concurrency", [1, 4])
def test_every_job_and_task_equals_the_oracle(
    sim: Simulator, client: QianfanClient, concurrency: int
) -> None:
    """All jobs, each with all its tasks (multi-page job included), whatever the concurrency."""
    listings = list(fetch_account(client, concurrency=concurrency))
    assert by_job(listings) == oracle(sim)
    jobs = sorted((listing.job for listing in listings), key=lambda job: job["jobId"])
    assert jobs == sorted(sim.jobs(), key=lambda job: job["jobId"])
    assert max(len(tasks) for tasks in by_job(listings).values()) > 100
    assert client.api_calls == len(sim.requests)


def test_job_ids_restrict_the_jobs(sim: Simulator, client: QianfanClient) -> None:
    """Only the asked-for jobs are fetched."""
    wanted = [sim.jobs()[1]["jobId"], sim.jobs()[7]["jobId"]]
    listings = list(fetch_account(client, job_ids=wanted, concurrency=2))
    assert by_job(listings) == {job_id: sim.tasks(job_id) for job_id in wanted}
    asked = {r.body.get("jobId") for r in sim.requests if r.action == TASKS}
    assert asked == set(wanted)


def test_a_job_id_not_listed_stops_the_walk_before_any_task_listing(
    sim: Simulator, client: QianfanClient
) -> None:
    wanted = [sim.jobs()[1]["jobId"], "job-nope"]
    with pytest.raises(ConfigError, match="--job-id job-nope: not in the account's job list"):
        list(fetch_account(client, job_ids=wanted, concurrency=2))
    assert [r.action for r in sim.requests if r.action == TASKS] == []


def test_jobs_without_a_string_id_come_with_no_tasks(sim: Simulator, client: QianfanClient) -> None:
    """Hostile job entries are passed on (tasks=[]) for the transformer to reject."""
    for raw in (42, None, {"name": "no id"}, {"jobId": 7}, {"jobId": ""}):
        sim.put_job(raw)
    listings = list(fetch_account(client, concurrency=3))
    hostile = [listing for listing in listings if listing.job not in sim.jobs()[:12]]
    assert sorted(map(repr, (listing.job for listing in hostile))) == sorted(
        map(repr, [42, None, {"name": "no id"}, {"jobId": 7}, {"jobId": ""}])
    )
    assert all(listing.tasks == [] for listing in hostile)
    assert len(listings) == 17


@pytest.mark.parametrize("concurrency", [1, 4])
def test_an_error_in_one_job_propagates(
    sim: Simulator, client: QianfanClient, concurrency: int
) -> None:
    """A non-retriable failure while fetching some job's tasks ends the walk with that error."""
    sim.inject(Fault(kind="status", status=403, code="AccessDenied", action=TASKS))
    with pytest.raises(AuthError):
        list(fetch_account(client, concurrency=concurrency))


def test_a_job_whose_listing_fails_comes_back_with_its_failure(
    sim: Simulator, client: QianfanClient
) -> None:
    """Broken paging on one job, a 500 on another: both come back failed, the rest whole."""
    broken, failing = sim.jobs()[2]["jobId"], sim.jobs()[5]["jobId"]
    sim.job_faults = {broken: "missing_next_marker", failing: "500"}
    listings = list(fetch_account(client, concurrency=4))
    failures = {lst.job["jobId"]: lst.failure for lst in listings if lst.failure}
    assert {job_id: (f.error_class, f.exit_code) for job_id, f in failures.items()} == {
        broken: ("ContractError", 65),
        failing: ("TransientError", 75),
    }
    assert "pagination contract" in failures[broken].message
    assert "HTTP 500" in failures[failing].message and failing in failures[failing].message
    whole = {lst.job["jobId"]: lst.tasks for lst in listings if not lst.failure}
    assert whole == {k: v for k, v in oracle(sim).items() if k not in failures}
    assert all(lst.tasks == [] for lst in listings if lst.failure)


def test_a_job_deleted_mid_listing_fails_with_404(sim: Simulator, client: QianfanClient) -> None:
    """The big job (2 pages of 100) is deleted after its first page: a contract failure, 404."""
    big = sim.jobs()[3]["jobId"]
    sim.job_faults = {big: "deleted_mid_listing"}
    listings = list(fetch_account(client, concurrency=2))
    [failed] = [lst for lst in listings if lst.failure]
    assert failed.job["jobId"] == big and failed.failure is not None
    assert failed.failure.error_class == "ContractError" and "HTTP 404" in failed.failure.message
    assert big not in {job["jobId"] for job in sim.jobs()}


def test_oversized_pages_are_counted_as_warnings(sim: Simulator, client: QianfanClient) -> None:
    big = sim.jobs()[3]["jobId"]
    sim.job_faults = {big: "oversized_page"}
    stats = WalkStats()
    listings = list(fetch_account(client, concurrency=2, stats=stats))
    assert by_job(listings) == oracle(sim)
    assert stats.listing_warnings == 1


@pytest.mark.parametrize("concurrency", [1, 4])
def test_an_api_failing_job_after_job_trips_the_breaker(
    sim: Simulator, client: QianfanClient, concurrency: int
) -> None:
    """Every task listing answers 500: the walk stops with 75 long before the 40th job."""
    for n in range(28):
        sim.put_job({"jobId": f"job-extra-{n:02d}", "name": "extra"})
    for job in sim.jobs():
        sim.job_faults[job["jobId"]] = "500"
    seen: list[JobListing] = []
    with pytest.raises(TransientError, match=f"{BREAKER_FAILURES} jobs in a row") as caught:
        seen.extend(fetch_account(client, concurrency=concurrency))
    assert caught.value.exit_code == 75
    assert len(seen) == BREAKER_FAILURES
    asked = {r.body.get("jobId") for r in sim.requests if r.action == TASKS}
    # the streak, and at most the jobs in flight or queued when it ended
    assert len(asked) <= BREAKER_FAILURES + 3 * concurrency < 40


def test_a_success_between_failures_resets_the_breaker(
    sim: Simulator, client: QianfanClient
) -> None:
    """Every other job fails: never BREAKER_FAILURES in a row, so every job is walked."""
    for job in sim.jobs()[::2]:
        sim.job_faults[job["jobId"]] = "500"
    listings = list(fetch_account(client, concurrency=1))
    assert len(listings) == 12 and sum(1 for lst in listings if lst.failure) == 6


def test_listings_finished_beside_a_fatal_error_are_yielded_before_it() -> None:
    """When many jobs are done and the walk then meets an error that ends it (403 on the job
    list's second page), every listing that was done is yielded first, so the run commits all
    it fetched."""

    def pages() -> Iterator[list[Any]]:
        yield [{"name": f"job {n} without an id"} for n in range(30)]
        raise AuthError("HTTP 403 AccessDenied")

    for _ in range(5):
        settings = _Settings(4, None, WalkStats(), True, _none_stored)
        seen: list[JobListing] = []
        with pytest.raises(AuthError), _Walk(cast(QianfanClient, None), pages(), settings) as walk:
            seen.extend(walk.listings())
        assert len(seen) == 30


def test_one_jobs_detail_calls_run_beside_each_other_in_the_pool() -> None:
    """Task pages and detail calls are units of one pool: the 30 Running tasks of a lone job
    are asked for side by side (as the simulator counts them), not one after another."""
    sim = Simulator(SimulatorConfig(jobs=1, tasks_per_job=30, checkpoints=1, latency_ms=20))
    job_id = sim.jobs()[0]["jobId"]
    for task in sim.tasks(job_id):
        sim.put_task(job_id, {**task, "runStatus": "Running"})
    with (
        sim.serve() as server,
        QianfanClient(server.url, "sim-access-key", "sim-secret-key") as client,
    ):
        [listing] = fetch_account(client, concurrency=4)
        stats = requests.get(server.url + STATS_PATH, timeout=5).json()
    assert len(listing.details) == 30 and listing.details_failed == 0
    assert stats["calls"] == {"DescribeFineTuningJobs": 1, TASKS: 1, DETAIL: 30}
    assert stats["max_in_flight_by_action"][DETAIL] == stats["max_in_flight"] == 4


def test_the_walk_goes_on_while_the_consumer_is_busy_as_far_as_its_bound() -> None:
    """While the consumer holds on to its first listing (the writer committing a batch), the
    workers go on through the next jobs, up to OPEN_JOBS_PER_WORKER per worker and no further:
    calls decoupled from consumption, memory bounded."""
    sim = Simulator(SimulatorConfig(jobs=150, tasks_per_job=1, checkpoints=0, running_jobs=0))
    bound = OPEN_JOBS_PER_WORKER * 2
    with (
        sim.serve() as server,
        QianfanClient(server.url, "sim-access-key", "sim-secret-key") as client,
    ):
        listings = fetch_account(client, concurrency=2)
        next(listings)
        deadline = time.monotonic() + 30
        while task_pages(sim) < bound and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        # the bound, plus the few jobs the consumer took with its first listing
        assert bound <= task_pages(sim) < 2 * bound
        assert len(list(listings)) == 149
    assert task_pages(sim) == 150


def task_pages(sim: Simulator) -> int:
    """Task pages the simulator was asked for so far."""
    return sum(1 for request in list(sim.requests) if request.action == TASKS)
