"""A job bigger than a batch (`--batch-tasks`, 10 in the tests' fast settings): a batch of its
own, typed and written a piece at a time in one transaction, so memory holds one piece's rows
and never the whole job's (README, Performance). It loads what a run in one piece loads,
through the CLI against the simulator over HTTP, on Postgres and SQLite."""

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.engine import URL

from etl import extract
from etl.extract import SPOOL_AFTER
from etl.simulator import Simulator, SimulatorConfig
from tests.harness import Etl, Snapshot, assert_whole_jobs, etl_for, scalar, snapshot

CHECKPOINTS = "finetune_task_checkpoints"


@pytest.fixture
def sim() -> Simulator:
    """Two jobs of 150 tasks, two pages each: 15 pieces a job."""
    return Simulator(SimulatorConfig(jobs=2, tasks_per_job=150, checkpoints=3, seed=3))


def _uneven(sim: Simulator) -> str:
    """The first job's second page repeats the first page's last task (so one task id falls in
    two pieces), and one of its tasks cannot be typed."""
    job_id = sim.jobs()[0]["jobId"]
    sim.job_faults[job_id] = "duplicate_across_pages"
    broken = sim.tasks(job_id)[120]
    sim.put_task(job_id, {**broken, "checkpointList": "broken"})
    return job_id


def test_a_big_job_loads_in_pieces_what_one_piece_loads(
    etl: Etl, golden: Callable[[Etl], Snapshot]
) -> None:
    job_id = _uneven(etl.sim)
    expected = golden(etl)  # a sync in one piece (SyncOptions' 2,000 tasks a batch)
    first = etl.invoke()
    assert first.returncode == 0, first.stderr
    assert snapshot(etl.engine) == expected
    assert scalar(etl.engine, "SELECT COUNT(*) FROM etl_rejects") == 1
    tasks = etl.sim.tasks(job_id)
    etl.sim.delete_task(tasks[149]["taskId"])  # absent from the last piece
    etl.sim.put_task(job_id, {**tasks[0], "runStatus": "Failed"})  # changed in the first
    second = etl.invoke()
    assert second.returncode == 0, second.stderr
    gone = tasks[149]["taskId"]
    now, fresh = snapshot(etl.engine), golden(etl)  # golden: a first load of today's listing
    for table in ("finetune_jobs", "finetune_tasks", "finetune_task_metrics", CHECKPOINTS):
        assert [row for row in now[table] if row.get("task_id") != gone] == fresh[table], table
    assert [row["task_id"] for row in now["finetune_tasks"] if row["deleted_at"]] == [gone]
    history = {(row["task_id"], row["run_status"]) for row in now["finetune_task_status_history"]}
    assert (tasks[0]["taskId"], "Failed") in history
    assert etl.invoke().returncode == 0
    assert scalar(etl.engine, "SELECT rows_written FROM etl_runs ORDER BY run_id DESC") == 0
    assert snapshot(etl.engine) == now


@pytest.mark.parametrize("plan", ["after_piece:3:sigkill", "after_piece:14:sigterm"])
def test_a_big_job_commits_whole_or_not_at_all(
    etl: Etl, golden: Callable[[Etl], Snapshot], plan: str
) -> None:
    _uneven(etl.sim)
    expected = golden(etl)
    stopped = etl.run(QIANFAN_ETL_FAULT=plan)
    code: Any = -signal.SIGKILL if plan.endswith("sigkill") else 128 + signal.SIGTERM
    assert stopped.returncode == code, stopped.stderr
    assert assert_whole_jobs(etl.engine, expected) == set()  # no piece of it committed
    assert scalar(etl.engine, "SELECT COUNT(*) FROM finetune_tasks") == 0
    etl.assert_converges(expected)


@pytest.mark.parametrize("lean", [False, True], ids=["full-listing", "lean-listing"])
def test_a_spooled_job_loads_what_a_job_held_in_memory_loads(
    lean: bool,
    db_url: URL,
    engine: Engine,
    tmp_path: Path,
    golden: Callable[[Etl], Snapshot],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past SPOOL_AFTER tasks the walk keeps a job's pages in a temporary file (lean tasks'
    enrichments laid over them); the reference run holds the job in memory."""
    config = SimulatorConfig(
        jobs=1, tasks_per_job=SPOOL_AFTER + 150, checkpoints=2, seed=9 + lean, lean_listings=lean
    )
    with etl_for(config, db_url, engine, tmp_path) as etl:
        job_id = etl.sim.jobs()[0]["jobId"]
        etl.sim.job_faults[job_id] = "duplicate_across_pages"
        with monkeypatch.context() as patch:
            patch.setattr(extract, "SPOOL_AFTER", 10**9)
            expected = golden(etl)
        result = etl.invoke("--batch-tasks", "700")
        assert result.returncode == 0, result.stderr
        assert snapshot(etl.engine) == expected
        assert len(expected[CHECKPOINTS]) > SPOOL_AFTER
