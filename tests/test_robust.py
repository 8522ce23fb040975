"""Records the database would refuse, the switch from the legacy content hash: end to end
through the CLI, the simulator over HTTP, Postgres and SQLite."""

import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine
from sqlalchemy.engine import URL

from etl import schema
from etl.simulator import Simulator, SimulatorServer
from etl.transform import HASH_PREFIX, MAX_DEPTH, legacy_hash
from tests.test_sync import row_counts, scalar, sync, writes_on_postgres


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def test_records_the_database_would_refuse_are_rejected_and_the_rest_loads(
    sim: Simulator, server: SimulatorServer, db_url: URL, engine: Engine, tmp_path: Path
) -> None:
    job_id = sim.jobs()[0]["jobId"]
    task = sim.tasks(job_id)[0]
    sim.put_task(job_id, {**task, "taskId": "t" * 3000})
    sim.put_task(job_id, {**task, "taskId": "task-long-metric", "metrics": {"m" * 3000: "1%"}})
    sim.put_task(job_id, {**task, "taskId": "task-deep", "unknown": {"x": _nested(600)}})
    sim.put_job({"jobId": "j" * 3000, "name": "a job whose id no index takes"})
    first = sync(sim, server, db_url, tmp_path)
    assert first.returncode == 0, first.stderr
    assert "4 rejects" in first.stdout
    with engine.connect() as connection:
        rejects = connection.execute(
            sa.select(schema.etl_rejects.c.source_id, schema.etl_rejects.c.reason)
        ).all()
    reasons = {source[:20]: reason for source, reason in rejects}
    assert reasons["t" * 20].startswith("taskId is 3000 bytes long")
    assert reasons["j" * 20].startswith("jobId is 3000 bytes long")
    assert reasons["task-long-metric"].startswith("metric name is 3000 bytes long")
    assert reasons["task-deep"] == f"nested deeper than {MAX_DEPTH} levels of objects and arrays"
    rejects_table = schema.etl_rejects
    with engine.connect() as connection:
        raw = connection.execute(
            sa.select(rejects_table.c.raw).where(rejects_table.c.source_id == "task-deep")
        ).scalar_one()
    assert isinstance(raw, str) and raw.startswith('{"taskId":"task-deep"')  # an excerpt
    assert scalar(engine, "SELECT count(*) FROM finetune_tasks") == 6 * 13
    before = row_counts(engine)
    second = sync(sim, server, db_url, tmp_path)
    assert second.returncode == 0, second.stderr
    assert "(0 changed), wrote 4 rows, 4 rejects" in second.stdout  # the rejects alone
    assert row_counts(engine) == before


def _store_legacy_hashes(engine: Engine, sim: Simulator) -> None:
    """Make the database one the previous release loaded: its hashes were marshal's."""
    jobs, tasks = schema.finetune_jobs, schema.finetune_tasks
    with engine.begin() as connection:
        for job in sim.jobs():
            connection.execute(
                jobs.update()
                .where(jobs.c.job_id == job["jobId"])
                .values(content_hash=legacy_hash(job))
            )
            for task in sim.tasks(job["jobId"]):
                connection.execute(
                    tasks.update()
                    .where(tasks.c.task_id == task["taskId"])
                    .values(content_hash=legacy_hash(task))
                )


def _settled_writes(engine: Engine) -> dict[str, int]:
    """writes_on_postgres once our own updates reached the statistics (flushed as the
    sessions end)."""
    engine.dispose()
    deadline = time.monotonic() + 10
    writes = writes_on_postgres(engine)
    while writes["finetune_tasks"] < 2 * 78 and time.monotonic() < deadline:
        time.sleep(0.05)
        writes = writes_on_postgres(engine)
    return writes


def _hashes_and_stamps(engine: Engine) -> set[tuple[Any, ...]]:
    jobs, tasks = schema.finetune_jobs, schema.finetune_tasks
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(jobs.c.job_id, jobs.c.content_hash, jobs.c.last_changed_at)
        ).all()
        rows += connection.execute(
            sa.select(tasks.c.task_id, tasks.c.content_hash, tasks.c.last_changed_at)
        ).all()
    return {tuple(row) for row in rows}


def test_a_database_with_legacy_hashes_is_not_rewritten(
    sim: Simulator, server: SimulatorServer, db_url: URL, engine: Engine, tmp_path: Path
) -> None:
    assert sync(sim, server, db_url, tmp_path).returncode == 0
    _store_legacy_hashes(engine, sim)
    before = _hashes_and_stamps(engine)
    assert not any(digest.startswith(HASH_PREFIX) for _, digest, _ in before)
    pg_writes = _settled_writes(engine) if engine.dialect.name == "postgresql" else None
    result = sync(sim, server, db_url, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "(0 changed), wrote 0 rows" in result.stdout
    assert _hashes_and_stamps(engine) == before
    if pg_writes is not None:
        assert writes_on_postgres(engine) == pg_writes
    job_id = sim.jobs()[0]["jobId"]
    changed = sim.tasks(job_id)[0]["taskId"]
    sim.rename_job(job_id, "renamed")  # the job and every task of it change
    assert sync(sim, server, db_url, tmp_path).returncode == 0
    new = {key for key, digest, _ in _hashes_and_stamps(engine) if digest.startswith(HASH_PREFIX)}
    assert changed in new and job_id in new
    assert len(new) == 1 + len(sim.tasks(job_id))
