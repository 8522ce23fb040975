"""The run record is true at every moment: after a run is interrupted, killed or stopped at a
fault point, etl_runs' counts are what the content tables hold, and a signal says on stderr
what was committed. Through the CLI in a subprocess (real signals), on Postgres and SQLite.
"""

import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from etl import schema
from etl.simulator import Simulator, SimulatorConfig
from tests.harness import CAPTURED, Etl, etl_command, row_counts, scalar, wait_for

runs = schema.etl_runs
COUNTED = ("jobs_seen", "tasks_seen", "tasks_changed", "rows_written")


@pytest.fixture
def sim() -> Simulator:
    """4 jobs x 12 tasks: with batches of 10 tasks, each job is a batch (and a commit)."""
    return Simulator(SimulatorConfig(jobs=4, tasks_per_job=12, checkpoints=2, seed=5))


def recorded(etl: Etl, run_id: int = 1) -> dict[str, Any]:
    """The counts etl_runs holds for a run."""
    with etl.engine.connect() as connection:
        row = connection.execute(sa.select(runs).where(runs.c.run_id == run_id)).one()
    return {name: getattr(row, name) for name in COUNTED}


def held(etl: Etl, run_id: int = 1) -> dict[str, Any]:
    """What the content tables hold of a first run: every stored row is that run's."""
    history = scalar(
        etl.engine,
        "SELECT count(*) FROM finetune_task_status_history WHERE run_id = :run",
        run=run_id,
    )
    # a Running task's stored progress is one more row written: an UPDATE of its task row
    progress = scalar(
        etl.engine, "SELECT count(*) FROM finetune_tasks WHERE progress_at IS NOT NULL"
    )
    counts = row_counts(etl.engine)
    return {
        "jobs_seen": counts["finetune_jobs"],
        "tasks_seen": counts["finetune_tasks"],
        "tasks_changed": history,
        "rows_written": sum(counts.values()) + progress,
    }


def interrupt_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "interrupted" in line]


@pytest.mark.parametrize(
    ("plan", "code"),
    [
        # the writer committed batch 2 as the signal came: the main thread never heard of it
        ("after_commit:2:sigint", 130),
        ("before_commit:3:sigterm", 143),
        ("after_commit:2:sigkill", -signal.SIGKILL),
    ],
)
def test_a_stopped_run_records_exactly_what_it_committed(plan: str, code: int, etl: Etl) -> None:
    stopped = etl.run(QIANFAN_ETL_FAULT=plan)
    assert stopped.returncode == code, stopped.stderr
    assert 0 < held(etl)["jobs_seen"] < len(etl.sim.jobs())
    assert recorded(etl) == held(etl)
    if code < 0:
        return
    lines = interrupt_lines(stopped.stderr)
    assert len(lines) == 1, stopped.stderr
    figures = held(etl)
    assert f"{figures['jobs_seen']} jobs, {figures['tasks_seen']} tasks" in lines[0]
    assert f"{figures['rows_written']} rows" in lines[0]
    assert signal.Signals(code - 128).name in lines[0]
    assert "rolled back" in lines[0]


def test_a_real_sigint_mid_batch_rolls_it_back_and_says_what_was_committed(
    etl: Etl, tmp_path: Path
) -> None:
    pause = tmp_path / "pause"
    env = etl.env(QIANFAN_ETL_FAULT=f"before_commit:2:pause:{pause}")
    process = subprocess.Popen(
        [*etl_command(env), "sync"],
        env=env,
        cwd=etl.cwd,
        # a child of a background job inherits an ignored SIGINT: this one must feel it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        **CAPTURED,
    )
    wait_for(Path(f"{pause}.reached"), process)
    process.send_signal(signal.SIGINT)
    Path(f"{pause}.release").touch()
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130, stderr
    assert held(etl)["jobs_seen"] == 1, "batch 1 committed, batch 2 rolled back"
    assert recorded(etl) == held(etl)
    lines = interrupt_lines(stderr)
    assert len(lines) == 1, stderr
    assert "SIGINT" in lines[0] and "rolled back" in lines[0]
