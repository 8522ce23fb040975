"""Lean listings: tasks listed without `metrics` and `checkpointList` are enriched from
`DescribeFineTuningTask` (README, "Lean listings"). Through the CLI in this process,
against the simulator over HTTP, on Postgres and on SQLite.
"""

from typing import Any

import pytest
import sqlalchemy as sa

from etl import db, schema
from etl.canonical import content_hash
from etl.simulator import Fault, Simulator, SimulatorConfig
from tests.harness import Etl, scratch_database

TASK = "DescribeFineTuningTask"
CONFIG = SimulatorConfig(jobs=5, tasks_per_job=6, checkpoints=4, seed=3, running_jobs=0.4)
metrics, checkpoints = schema.finetune_task_metrics, schema.finetune_task_checkpoints
tasks = schema.finetune_tasks


@pytest.fixture
def sim() -> Simulator:
    """5 jobs x 6 tasks, listed lean; jobs 2 and 4 have a Running first task."""
    return Simulator(SimulatorConfig(**{**CONFIG.__dict__, "lean_listings": True}))


def sync(etl: Etl, *args: str, expect: int = 0) -> dict[str, Any]:
    """One run's JSON summary; the simulator's requests are then that run's."""
    etl.sim.requests.clear()
    return etl.summary(*args, exit_code=expect)


def rows(etl: Etl, table: sa.Table) -> list[tuple[Any, ...]]:
    with etl.engine.connect() as connection:
        return sorted(tuple(row) for row in connection.execute(sa.select(table)))


def children(etl: Etl, task_id: str) -> tuple[int, int]:
    """The metric and checkpoint rows stored for one task."""
    return tuple(  # type: ignore[return-value]
        sum(row[0] == task_id for row in rows(etl, table)) for table in (metrics, checkpoints)
    )


def detail_calls(etl: Etl) -> list[str]:
    """The taskId of each DescribeFineTuningTask call of the last run."""
    return [r.body["taskId"] for r in etl.sim.requests if r.action == TASK]


def all_tasks(sim: Simulator) -> list[dict[str, Any]]:
    return [task for job in sim.jobs() for task in sim.tasks(job["jobId"])]


def finished(sim: Simulator) -> list[str]:
    return [t["taskId"] for t in all_tasks(sim) if t["runStatus"] in ("Done", "Failed", "Stopped")]


def test_lean_listings_yield_the_same_metrics_and_checkpoints_as_full_ones(
    etl: Etl, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> None:
    listed = sync(etl)
    calls = detail_calls(etl)
    full_sim = Simulator(CONFIG)
    with (
        scratch_database(etl.engine.dialect.name, request, tmp_path_factory) as full_url,
        full_sim.serve() as full_server,
    ):
        full = Etl(full_sim, full_server, full_url, db.create(full_url), etl.cwd)
        sync(full)
        assert rows(full, checkpoints) and rows(full, metrics)
        assert rows(etl, checkpoints) == rows(full, checkpoints)
        assert rows(etl, metrics) == rows(full, metrics)
        full.engine.dispose()
    assert sorted(calls) == sorted(t["taskId"] for t in all_tasks(etl.sim)), "one call each"
    assert listed["enrichment_failed"] == 0


def test_a_finished_lean_task_is_enriched_until_a_call_succeeds_then_not_again(
    etl: Etl,
) -> None:
    sim = etl.sim
    running = [t["taskId"] for t in all_tasks(sim) if t["runStatus"] == "Running"]
    # one worker: the first detail call is the first job's first lean task, refused
    sim.inject(Fault("status", TASK, status=404, code="ResourceNotFound"))
    # withheld children are not a success: partial, 75, since the next run retries them
    first = sync(etl, "--concurrency", "1", expect=75)
    missed = detail_calls(etl)[0]
    assert missed in finished(sim)
    assert first["enrichment_failed"] == 1
    assert first["status"] == "partial"
    assert f"task {missed}" in first["stderr"] and "next run" in first["stderr"]
    assert children(etl, missed) == (0, 0)

    second = sync(etl)
    assert sorted(detail_calls(etl)) == sorted([missed, *running]), "only it, and progress"
    assert second["enrichment_failed"] == 0
    full = {t["taskId"]: t for t in all_tasks(sim)}[missed]  # the simulator's own record
    assert children(etl, missed) == (len(full.get("metrics", {})), len(full["checkpointList"]))

    third = sync(etl)
    assert sorted(detail_calls(etl)) == sorted(running)
    assert (third["tasks_changed"], third["rows_written"]) == (0, 0)


def test_a_lean_task_stored_by_an_earlier_release_is_enriched(etl: Etl) -> None:
    sim = etl.sim
    sync(etl)
    done = next(t for t in all_tasks(sim) if t["runStatus"] == "Done" and t["checkpointList"])
    lean = {k: v for k, v in done.items() if k not in ("metrics", "checkpointList")}
    with etl.engine.begin() as connection:  # what 2f23d71 left: the lean hash, no children
        for table in (metrics, checkpoints):
            connection.execute(table.delete().where(table.c.task_id == done["taskId"]))
        connection.execute(
            tasks.update()
            .where(tasks.c.task_id == done["taskId"])
            .values(content_hash=content_hash(lean))
        )

    sync(etl)

    assert done["taskId"] in detail_calls(etl)
    assert children(etl, done["taskId"]) == (
        len(done.get("metrics", {})),
        len(done["checkpointList"]),
    )


def test_a_running_lean_task_gets_its_children_from_its_progress_call(etl: Etl) -> None:
    sim = etl.sim
    sync(etl)
    task = next(t for t in all_tasks(sim) if t["runStatus"] == "Running")
    grown = [*task["checkpointList"], {"step": 999, "trainingLoss": 0.5, "perplexity": 1.6}]
    sim.put_task(task["jobId"], {**task, "checkpointList": grown})

    summary = sync(etl)

    assert summary["tasks_changed"] == 1
    assert children(etl, task["taskId"])[1] == len(grown)
    with etl.engine.connect() as connection:
        steps = connection.execute(
            sa.select(checkpoints.c.step).where(checkpoints.c.task_id == task["taskId"])
        ).scalars()
        assert 999 in set(steps)
