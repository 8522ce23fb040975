"""One bad job never holds back the others, end to end through the CLI on Postgres and SQLite.

Each test drives a database through a faulty run and keeps a control database, on the same
simulator and backend, that only ever sees clean runs of the same upstream history: after the
fault clears, a clean run must make the tables equal the control's, and the next run must
write no rows (the fault suite's convergence oracle).
"""

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine
from sqlalchemy.engine import URL

from etl import db, schema
from etl.extract import BREAKER_FAILURES
from etl.simulator import Simulator, SimulatorConfig
from tests.harness import Etl, Snapshot, invoke_cli, scratch_database, snapshot, whole_jobs_of


@pytest.fixture
def pair(
    db_url: URL,
    engine: Engine,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
) -> Any:
    """pair(config): (etl, control) on one simulator; control's database sees clean runs only."""

    @contextmanager
    def make(config: SimulatorConfig, loaded: bool = False) -> Iterator[tuple[Etl, Etl]]:
        """`loaded`: both databases start from a clean sync of the initial data."""
        sim = Simulator(config)
        kind = engine.dialect.name
        with sim.serve() as server, scratch_database(kind, request, tmp_path_factory) as url:
            control = Etl(sim, server, url, db.create(url), tmp_path)
            etl = Etl(sim, server, db_url, engine, tmp_path)
            try:
                if loaded:
                    etl.sync_here()
                    control.sync_here()
                yield etl, control
            finally:
                control.engine.dispose()

    return make


def clean_sync(etl: Etl, **options: Any) -> Any:
    """A sync with every per-job fault switched off for its duration."""
    faults, etl.sim.job_faults = etl.sim.job_faults, {}
    try:
        return etl.sync_here(**options)
    finally:
        etl.sim.job_faults = faults


STORED = (
    schema.finetune_jobs,
    schema.finetune_tasks,
    schema.finetune_task_metrics,
    schema.finetune_task_checkpoints,
    schema.finetune_task_status_history,
)


def stored_rows(engine: Engine, job_ids: set[str]) -> dict[str, list[tuple[Any, ...]]]:
    """Every column of every row these jobs own, load timestamps included."""
    tasks = schema.finetune_tasks
    with engine.connect() as connection:
        task_ids = list(
            connection.execute(sa.select(tasks.c.task_id).where(tasks.c.job_id.in_(job_ids)))
            .scalars()
            .all()
        )
        out = {}
        for table in STORED:
            key = table.c.job_id if "job_id" in table.c else table.c.task_id
            wanted = job_ids if key.name == "job_id" else task_ids
            rows = connection.execute(sa.select(table).where(key.in_(wanted))).all()
            out[table.name] = sorted((tuple(row) for row in rows), key=repr)
    return out


def others(snap: Snapshot, excluded: set[str]) -> Snapshot:
    """A snapshot without the rows of some jobs."""
    every = {r["job_id"] for r in snap["finetune_jobs"]}
    return whole_jobs_of(snap, every - excluded)


def run_row(engine: Engine, run_id: int) -> dict[str, Any]:
    with engine.connect() as connection:
        row = connection.execute(
            sa.select(schema.etl_runs).where(schema.etl_runs.c.run_id == run_id)
        ).mappings()
        return dict(row.one())


def failed_jobs(engine: Engine, run_id: int) -> dict[str, tuple[str, int]]:
    table = schema.etl_failed_jobs
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(table.c.job_id, table.c.error_class, table.c.exit_code).where(
                table.c.run_id == run_id
            )
        )
        return {row.job_id: (row.error_class, row.exit_code) for row in rows}


def change_upstream(sim: Simulator, job_ids: list[str]) -> None:
    """Renames (every task of the job changes), a deleted task, a deleted job, a new job."""
    sim.rename_job(job_ids[0], "renamed upstream")
    sim.delete_task(sim.tasks(job_ids[1])[0]["taskId"])
    sim.delete_job(job_ids[2])
    sim.put_job({**sim.jobs()[3], "jobId": "job-new", "name": "new upstream"})
    sim.put_task("job-new", {**sim.tasks(job_ids[3])[0], "taskId": "task-new", "jobId": "job-new"})


# -- the first "Done when" of issue 8 ------------------------------------------------------


def test_one_broken_and_one_failing_job_among_300(pair: Any) -> None:
    config = SimulatorConfig(jobs=300, tasks_per_job=2, checkpoints=2, seed=8)
    with pair(config, loaded=True) as (etl, control):
        ids = [job["jobId"] for job in etl.sim.jobs()]
        broken, failing = ids[40], ids[150]
        change_upstream(etl.sim, ids[10:14])
        for job_id in (broken, failing):  # changes that must not reach the database yet
            etl.sim.rename_job(job_id, "renamed while failing")
        control.sync_here()
        expected = snapshot(control.engine)
        before = stored_rows(etl.engine, {broken, failing})

        etl.sim.job_faults = {broken: "missing_next_marker", failing: "500"}
        result = etl.invoke("--log-format", "json")
        assert result.returncode == 65, result.stderr
        # first what the issue saw fail (0 of 300 jobs loaded), then how the run reports it
        assert others(snapshot(etl.engine), {broken, failing}) == others(
            expected, {broken, failing}
        )
        assert stored_rows(etl.engine, {broken, failing}) == before
        summary = json.loads(result.stdout)
        assert summary["status"] == "partial" and summary["jobs_failed"] == 2
        assert {f["job_id"]: f["error_class"] for f in summary["failed_jobs"]} == {
            broken: "ContractError",
            failing: "TransientError",
        }
        assert broken in result.stderr and failing in result.stderr
        assert "etl_failed_jobs" in result.stderr
        run = run_row(etl.engine, 2)
        assert (run["status"], run["exit_code"], run["jobs_failed"], run["mode"]) == (
            "partial",
            65,
            2,
            "full",
        )
        assert failed_jobs(etl.engine, 2) == {
            broken: ("ContractError", 65),
            failing: ("TransientError", 75),
        }

        etl.sim.job_faults = {}
        etl.assert_converges(expected, cli=True)
        assert run_row(etl.engine, 3)["status"] == "succeeded"


# -- each per-job fault -----------------------------------------------------------------------

PAGED = SimulatorConfig(jobs=4, tasks_per_job=120, checkpoints=1, seed=3)  # 2 pages a job


@pytest.mark.parametrize(
    ("fault", "code", "error_class"),
    [
        ("500", 75, "TransientError"),
        ("repeat_marker", 65, "ContractError"),
        ("empty_truncated_page", 65, "ContractError"),
        ("deleted_mid_listing", 65, "ContractError"),
        ("slow:4", 75, "TransientError"),  # slower than --api-deadline 1.5
    ],
)
def test_a_failing_job_is_kept_and_recorded_and_the_rest_load(
    fault: str, code: int, error_class: str, pair: Any
) -> None:
    with pair(PAGED, loaded=True) as (etl, control):
        ids = [job["jobId"] for job in etl.sim.jobs()]
        bad = ids[1]
        etl.sim.rename_job(ids[3], "renamed upstream")
        etl.sim.delete_task(etl.sim.tasks(bad)[5]["taskId"])  # a partial listing would lack it
        before = stored_rows(etl.engine, {bad})
        etl.sim.job_faults = {bad: fault}
        # a subprocess: here the run would share the simulator's interpreter lock, and on a
        # busy machine a good page could miss the deadline
        result = etl.run("--api-deadline", "1.5")
        assert result.returncode == code, result.stderr
        assert stored_rows(etl.engine, {bad}) == before
        loaded = snapshot(etl.engine)
        etl.sim.job_faults = {}
        control.sync_here()  # deleted_mid_listing really deleted the job upstream
        expected = snapshot(control.engine)
        assert others(loaded, {bad}) == others(expected, {bad})
        assert f"1 jobs failed: {bad} ({error_class}:" in result.stdout
        assert failed_jobs(etl.engine, 2) == {bad: (error_class, code)}
        assert run_row(etl.engine, 2)["status"] == "partial"
        etl.assert_converges(expected)


def test_a_slow_job_and_an_oversized_page_load(pair: Any) -> None:
    config = SimulatorConfig(jobs=3, tasks_per_job=160, checkpoints=1, seed=4)
    with pair(config) as (etl, control):
        ids = [job["jobId"] for job in etl.sim.jobs()]
        etl.sim.job_faults = {ids[0]: "slow:0.3", ids[2]: "oversized_page"}
        result = etl.invoke("--api-deadline", "5")
        assert result.returncode == 0, result.stderr
        assert "3 jobs, 480 tasks (480 changed)" in result.stdout
        assert "1 listing warnings" in result.stdout and "page of 151 items" in result.stderr
        clean_sync(control)
        expected = snapshot(control.engine)
        assert snapshot(etl.engine) == expected
        etl.assert_idle(expected)


# -- errors that still stop the run ----------------------------------------------------------

LONG = SimulatorConfig(jobs=30, tasks_per_job=3, checkpoints=1, seed=6)


@pytest.mark.parametrize(("fault", "code"), [("500", 75), ("403", 77)])
def test_a_run_stopped_early_commits_what_it_fetched(fault: str, code: int, pair: Any) -> None:
    """One worker, so the order is the listing's: jobs 0-9 load, then job after job fails
    (the breaker stops the run at 75) or the API refuses a job (77 at once); the batch in
    progress holds jobs 0-9 and is committed, not rolled back; nothing is deleted."""
    with pair(LONG, loaded=True) as (etl, control):
        ids = [job["jobId"] for job in etl.sim.jobs()]
        etl.sim.delete_job(ids[29])
        for job_id in ids[:10]:
            etl.sim.rename_job(job_id, "renamed upstream")
        etl.sim.job_faults = dict.fromkeys(ids[10:], fault)
        before = stored_rows(etl.engine, set(ids[10:]))
        etl.sim.requests.clear()
        result = etl.invoke("--concurrency", "1", "--batch-tasks", "2000")
        assert result.returncode == code, result.stderr
        names = {job["job_id"]: job["name"] for job in snapshot(etl.engine)["finetune_jobs"]}
        assert [names[job_id] for job_id in ids[:10]] == ["renamed upstream"] * 10
        assert stored_rows(etl.engine, set(ids[10:])) == before  # job 29 not deleted either
        run = run_row(etl.engine, 2)
        failed = BREAKER_FAILURES if code == 75 else 0
        assert (run["status"], run["exit_code"], run["jobs_failed"]) == ("failed", code, failed)
        if code == 75:
            assert f"{BREAKER_FAILURES} jobs in a row" in result.stderr
            assert len({r.body["jobId"] for r in etl.sim.requests if "jobId" in r.body}) < 20
        etl.sim.job_faults = {}
        control.sync_here()
        etl.assert_converges(snapshot(control.engine))


# -- the mass-delete guard -----------------------------------------------------------------


def test_a_collapsed_listing_deletes_nothing_and_exits_65(pair: Any) -> None:
    config = SimulatorConfig(jobs=6, tasks_per_job=4, checkpoints=1, seed=9)
    with pair(config, loaded=True) as (etl, control):
        ids = [job["jobId"] for job in etl.sim.jobs()]
        for job_id in ids[:4]:
            etl.sim.delete_job(job_id)
        etl.sim.rename_job(ids[5], "renamed upstream")
        before = snapshot(etl.engine)
        result = etl.invoke()
        assert result.returncode == 65, result.stderr
        assert "refused to soft-delete 4 of 6 live jobs and 16 of 24 live tasks" in result.stderr
        assert "--max-delete-fraction 1" in result.stderr
        after = snapshot(etl.engine)
        assert not any(row["deleted_at"] for row in after["finetune_tasks"])
        renamed = {r["job_id"]: r["name"] for r in after["finetune_jobs"]}[ids[5]]
        assert renamed == "renamed upstream", "the rest of the run's writes commit"
        assert after != before
        run = run_row(etl.engine, 2)
        assert (run["status"], run["exit_code"]) == ("partial", 65)
        assert "refused to soft-delete" in run["error"]

        allowed = etl.invoke("--max-delete-fraction", "1")
        assert allowed.returncode == 0, allowed.stderr
        control.sync_here(max_delete_fraction=1.0)
        etl.assert_idle(snapshot(control.engine))


def delete_every_job(sim: Simulator) -> None:
    for job in sim.jobs():
        sim.delete_job(job["jobId"])


def delete_most_tasks(sim: Simulator) -> None:
    for job in sim.jobs():
        for task in sim.tasks(job["jobId"])[:3]:
            sim.delete_task(task["taskId"])


@pytest.mark.parametrize(
    ("collapse", "fraction", "message"),
    [
        (delete_every_job, "0.99", "3 of 3 live jobs and 12 of 12 live tasks"),
        (delete_most_tasks, "0.5", "0 of 3 live jobs and 9 of 12 live tasks"),
    ],
)
def test_an_empty_listing_or_a_collapse_of_tasks_deletes_nothing(
    collapse: Any, fraction: str, message: str, pair: Any
) -> None:
    config = SimulatorConfig(jobs=3, tasks_per_job=4, checkpoints=1, seed=9)
    with pair(config) as (etl, _):
        etl.sync_here()
        before = snapshot(etl.engine)
        collapse(etl.sim)
        result = etl.invoke(QIANFAN_ETL_MAX_DELETE_FRACTION=fraction)
        assert result.returncode == 65, result.stderr
        assert message in result.stderr
        assert snapshot(etl.engine) == before


# -- ownership of a task listed under two jobs -----------------------------------------------


def test_a_task_under_two_jobs_is_stored_once_and_does_not_flap(pair: Any) -> None:
    """Of the jobs listing a task, the smallest job id wins, whatever order they arrive in."""
    config = SimulatorConfig(jobs=4, tasks_per_job=3, checkpoints=1, seed=12)
    with pair(config) as (etl, _):
        low, high = sorted(job["jobId"] for job in etl.sim.jobs())[:2]
        shared = etl.sim.tasks(high)[0]
        etl.sim.put_task(low, {**shared, "runStatus": "Stopped", "note": "listed twice"})
        etl.sim.put_task(high, {**shared, "note": "a second body"})
        for concurrency in ("1", "4", "1", "4"):
            result = etl.invoke("--concurrency", concurrency, "--batch-tasks", "1")
            assert result.returncode == 0, result.stderr
        for concurrency in (1, 4):
            assert etl.sync_here(concurrency=concurrency, batch_tasks=1).counts.rows_written == 0
        tasks = schema.finetune_tasks
        with etl.engine.connect() as connection:
            row = connection.execute(
                sa.select(tasks.c.job_id, tasks.c.raw).where(tasks.c.task_id == shared["taskId"])
            ).one()
        assert row.job_id == low and row.raw["note"] == "listed twice"


@pytest.mark.parametrize("direction", ["to_a_larger_job_id", "to_a_smaller_job_id"])
def test_a_task_that_moves_job_with_an_unchanged_body_follows_it(direction: str, pair: Any) -> None:
    config = SimulatorConfig(jobs=4, tasks_per_job=3, checkpoints=1, seed=12)
    with pair(config) as (etl, control):
        low, high = sorted(job["jobId"] for job in etl.sim.jobs())[:2]
        source, target = (low, high) if direction == "to_a_larger_job_id" else (high, low)
        moved = etl.sim.tasks(source)[0]
        etl.sim.delete_task(moved["taskId"])
        etl.sim.put_task(source, moved)  # now an added task of the source job
        etl.sync_here()
        etl.sim.delete_task(moved["taskId"])
        etl.sim.put_task(target, moved)  # the very same body, listed under another job
        result = etl.invoke("--batch-tasks", "1")
        assert result.returncode == 0, result.stderr
        tasks = schema.finetune_tasks
        with etl.engine.connect() as connection:
            row = connection.execute(
                sa.select(tasks.c.job_id, tasks.c.deleted_at).where(
                    tasks.c.task_id == moved["taskId"]
                )
            ).one()
        assert (row.job_id, row.deleted_at) == (target, None)
        control.sync_here()
        etl.assert_idle(snapshot(control.engine))


# -- what the run records and shows --------------------------------------------------------


def test_status_shows_failed_jobs_and_runs_record_mode_and_exit_code(pair: Any) -> None:
    config = SimulatorConfig(jobs=3, tasks_per_job=2, checkpoints=1, seed=2)
    with pair(config) as (etl, _):
        ids = [job["jobId"] for job in etl.sim.jobs()]
        assert etl.invoke("--job-id", ids[0]).returncode == 0
        etl.sim.job_faults = {ids[1]: "500"}
        assert etl.invoke().returncode == 75
        env = etl.env()
        text = invoke_cli(["status"], env, cwd=etl.cwd)
        assert text.returncode == 0, text.stderr
        assert "partial" in text.stdout and f"run 2: 1 jobs failed: {ids[1]} (TransientError:" in (
            text.stdout
        )
        status = json.loads(invoke_cli(["status", "--json"], env, cwd=etl.cwd).stdout)
        latest, first = status["runs"]
        assert (latest["status"], latest["exit_code"], latest["mode"]) == ("partial", 75, "full")
        assert [f["job_id"] for f in latest["failed_jobs"]] == [ids[1]]
        assert latest["failed_jobs"][0]["error_class"] == "TransientError"
        assert "HTTP 500" in latest["failed_jobs"][0]["message"]
        assert (first["status"], first["exit_code"], first["mode"]) == ("succeeded", 0, "selected")
        assert first["failed_jobs"] == []
