"""End to end: the CLI in this process (click's CliRunner), the simulator over HTTP, Postgres
and SQLite; the console script in a subprocess where it alone does the work (`demo`, `.env`)."""

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from filelock import FileLock
from sqlalchemy import Engine
from sqlalchemy.engine import URL

from etl import schema
from etl.load import ADVISORY_LOCK_KEY
from etl.simulator import Simulator, SimulatorConfig, SimulatorServer
from tests.harness import (
    cli_env,
    invoke_cli,
    row_counts,
    run_cli,
    scalar,
    sync,
    writes_on_postgres,
)


def _time(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        if value.startswith("0000"):
            return None
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def expected_tables(sim: Simulator) -> dict[str, set[tuple[Any, ...]]]:
    """What the simulator serves, read independently of etl.transform."""
    jobs, tasks, metrics, checkpoints = set(), set(), set(), set()
    for job in sim.jobs():
        created = job.get("createTime", job.get("createDate"))
        jobs.add((job["jobId"], job["name"], job["description"], job["model"], _time(created)))
        for task in sim.tasks(job["jobId"]):
            finished = task.get("finishTime", task.get("finishDate"))
            tasks.add(
                (
                    task["taskId"],
                    job["jobId"],
                    task["jobName"],
                    task["runStatus"],
                    task["parameterScale"],
                    _time(finished),
                    task.get("errorCode"),
                )
            )
            for name, value in (task.get("metrics") or {}).items():
                metrics.add((task["taskId"], name, float(value.rstrip("%")), value))
            for point in task.get("checkpointList") or []:
                checkpoints.add(
                    (task["taskId"], point["step"], point["trainingLoss"], point["perplexity"])
                )
    return {"jobs": jobs, "tasks": tasks, "metrics": metrics, "checkpoints": checkpoints}


def live_tables(engine: Engine) -> dict[str, set[tuple[Any, ...]]]:
    """The same shape, read from the database (live rows only)."""
    jobs, tasks = schema.finetune_jobs, schema.finetune_tasks
    metrics, points = schema.finetune_task_metrics, schema.finetune_task_checkpoints
    live_task = tasks.c.deleted_at.is_(None)
    queries = {
        "jobs": sa.select(
            jobs.c.job_id, jobs.c.name, jobs.c.description, jobs.c.model, jobs.c.create_time
        ).where(jobs.c.deleted_at.is_(None)),
        "tasks": sa.select(
            tasks.c.task_id,
            tasks.c.job_id,
            tasks.c.job_name,
            tasks.c.run_status,
            tasks.c.parameter_scale,
            tasks.c.finish_time,
            tasks.c.error_code,
        ).where(live_task),
        "metrics": sa.select(
            metrics.c.task_id, metrics.c.metric_name, metrics.c.value_percent, metrics.c.value_raw
        )
        .join_from(metrics, tasks, metrics.c.task_id == tasks.c.task_id)
        .where(live_task),
        "checkpoints": sa.select(
            points.c.task_id, points.c.step, points.c.training_loss, points.c.perplexity
        )
        .join_from(points, tasks, points.c.task_id == tasks.c.task_id)
        .where(live_task),
    }
    with engine.connect() as connection:
        return {
            name: {
                tuple(_time(v) if isinstance(v, datetime) else v for v in row)
                for row in connection.execute(query)
            }
            for name, query in queries.items()
        }


def assert_no_orphans(engine: Engine) -> None:
    """Every child row has its task: the loader's guarantee, since no foreign key checks it."""
    for child in (
        "finetune_task_metrics",
        "finetune_task_checkpoints",
        "finetune_task_status_history",
    ):
        orphans = scalar(
            engine,
            f"SELECT count(*) FROM {child} c LEFT JOIN finetune_tasks t ON t.task_id = c.task_id "
            "WHERE t.task_id IS NULL",
        )
        assert orphans == 0, child


def test_full_sync_loads_exactly_the_simulators_data(
    sim: Simulator, server: SimulatorServer, db_url: URL, engine: Engine, tmp_path: Path
) -> None:
    result = sync(sim, server, db_url, tmp_path)
    assert result.returncode == 0, result.stderr
    assert live_tables(engine) == expected_tables(sim)
    tasks = sum(len(sim.tasks(job["jobId"])) for job in sim.jobs())
    assert f"{len(sim.jobs())} jobs, {tasks} tasks ({tasks} changed)" in result.stdout
    with engine.connect() as connection:
        run = connection.execute(sa.text("SELECT * FROM etl_runs")).mappings().one()
    assert run["status"] == "succeeded" and run["tasks_seen"] == tasks
    assert run["api_calls"] == sim.api_calls
    history = scalar(engine, "SELECT count(*) FROM finetune_task_status_history")
    assert history == tasks
    raws = {t["taskId"]: t for job in sim.jobs() for t in sim.tasks(job["jobId"])}
    with engine.connect() as connection:
        stored = connection.execute(
            sa.select(schema.finetune_tasks.c.task_id, schema.finetune_tasks.c.raw)
        ).all()
    assert dict(stored) == raws  # the task exactly as received
    assert_no_orphans(engine)


def test_second_run_writes_no_rows(
    sim: Simulator, server: SimulatorServer, db_url: URL, engine: Engine, tmp_path: Path
) -> None:
    assert sync(sim, server, db_url, tmp_path).returncode == 0
    before = row_counts(engine)
    pg_writes = writes_on_postgres(engine) if engine.dialect.name == "postgresql" else None
    result = sync(sim, server, db_url, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "(0 changed), wrote 0 rows" in result.stdout
    assert row_counts(engine) == before
    if pg_writes is not None:
        assert writes_on_postgres(engine) == pg_writes
    assert scalar(engine, "SELECT rows_written FROM etl_runs WHERE run_id = 2") == 0


def test_upstream_changes_are_reflected_on_the_next_run(
    sim: Simulator, server: SimulatorServer, db_url: URL, engine: Engine, tmp_path: Path
) -> None:
    assert sync(sim, server, db_url, tmp_path).returncode == 0
    jobs = [job["jobId"] for job in sim.jobs()]
    unfinished = next(
        t for j in jobs[4:] for t in sim.tasks(j) if t["runStatus"] in ("Running", "Waiting")
    )
    gone_task = sim.tasks(jobs[1])[0]["taskId"]
    sim.finish_task(unfinished["taskId"])
    sim.delete_task(gone_task)
    sim.delete_job(jobs[2])
    sim.rename_job(jobs[3], "renamed job")

    result = sync(sim, server, db_url, tmp_path)
    assert result.returncode == 0, result.stderr
    assert live_tables(engine) == expected_tables(sim)
    assert_no_orphans(engine)
    deleted = "SELECT count(*) FROM {} WHERE deleted_at IS NOT NULL"
    assert scalar(engine, deleted.format("finetune_jobs")) == 1
    # the deleted task, plus every task of the deleted job
    assert scalar(engine, deleted.format("finetune_tasks")) == 1 + 13
    statuses = scalar(
        engine,
        "SELECT count(*) FROM finetune_task_status_history WHERE task_id = :t",
        t=unfinished["taskId"],
    )
    assert statuses == 2


def test_a_job_that_comes_back_is_undeleted(
    sim: Simulator, server: SimulatorServer, db_url: URL, engine: Engine, tmp_path: Path
) -> None:
    job = sim.jobs()[0]
    tasks = sim.tasks(job["jobId"])
    assert sync(sim, server, db_url, tmp_path).returncode == 0
    sim.delete_job(job["jobId"])
    assert sync(sim, server, db_url, tmp_path).returncode == 0
    sim.put_job(job)
    for task in tasks:
        sim.put_task(job["jobId"], task)
    assert sync(sim, server, db_url, tmp_path).returncode == 0
    assert scalar(engine, "SELECT count(*) FROM finetune_tasks WHERE deleted_at IS NOT NULL") == 0
    assert live_tables(engine) == expected_tables(sim)


def test_wrong_secret_exits_77_and_writes_nothing(
    sim: Simulator, server: SimulatorServer, db_url: URL, engine: Engine, tmp_path: Path
) -> None:
    result = sync(sim, server, db_url, tmp_path, QIANFAN_SECRET_KEY="not-the-secret-4f1a")
    assert result.returncode == 77
    assert "QIANFAN_SECRET_KEY" in result.stderr and "not-the-secret-4f1a" not in result.stderr
    assert sim.api_calls == 1, "auth errors are never retried"
    assert sum(row_counts(engine).values()) == 0
    assert scalar(engine, "SELECT status FROM etl_runs") == "failed"


@pytest.mark.parametrize("fault", ["missing_next_marker", "repeat_marker"])
def test_broken_pagination_exits_65_and_deletes_nothing(
    fault: str, db_url: URL, engine: Engine, tmp_path: Path
) -> None:
    sim = Simulator(SimulatorConfig(jobs=2, tasks_per_job=150, checkpoints=1))
    with sim.serve() as server:
        assert sync(sim, server, db_url, tmp_path).returncode == 0
        sim.pagination_fault = fault
        sim.pagination_fault_action = "DescribeFineTuningTasks"
        result = sync(sim, server, db_url, tmp_path)
    assert result.returncode == 65, result.stderr
    assert "pagination contract" in result.stderr
    assert scalar(engine, "SELECT count(*) FROM finetune_tasks WHERE deleted_at IS NOT NULL") == 0
    assert scalar(engine, "SELECT status FROM etl_runs WHERE run_id = 2") == "partial"
    assert scalar(engine, "SELECT count(*) FROM etl_failed_jobs WHERE run_id = 2") == 2


def test_overlapping_run_exits_75_without_calling_the_api(
    sim: Simulator, server: SimulatorServer, db_url: URL, engine: Engine, tmp_path: Path
) -> None:
    if engine.dialect.name == "postgresql":
        holder = engine.connect()
        holder.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": ADVISORY_LOCK_KEY})

        def release() -> None:
            holder.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": ADVISORY_LOCK_KEY})
            holder.close()
    else:
        lock = FileLock(str(Path(str(db_url.database)).resolve()) + ".lock")
        lock.acquire()
        release = lock.release
    try:
        result = sync(sim, server, db_url, tmp_path, "--lock-wait", "0.3")
    finally:
        release()
    assert result.returncode == 75
    assert "another qianfan-etl run holds the lock" in result.stderr
    assert sim.api_calls == 0
    assert scalar(engine, "SELECT count(*) FROM etl_runs") == 0
    assert sync(sim, server, db_url, tmp_path).returncode == 0


def test_schema_not_at_head_exits_78_before_any_api_call(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    url = sa.engine.make_url(f"sqlite:///{tmp_path / 'empty.db'}")
    result = sync(sim, server, url, tmp_path)
    assert result.returncode == 78
    assert "qianfan-etl db upgrade" in result.stderr
    assert sim.api_calls == 0


def test_missing_credentials_exit_78(
    sim: Simulator, server: SimulatorServer, sqlite_url: URL, tmp_path: Path
) -> None:
    result = sync(sim, server, sqlite_url, tmp_path, QIANFAN_SECRET_KEY="")
    assert result.returncode == 78
    assert "QIANFAN_SECRET_KEY not set" in result.stderr


def test_job_id_restricts_the_run_and_deletes_nothing_else(
    sim: Simulator, server: SimulatorServer, db_url: URL, engine: Engine, tmp_path: Path
) -> None:
    assert sync(sim, server, db_url, tmp_path).returncode == 0
    first, second = (job["jobId"] for job in sim.jobs()[:2])
    sim.delete_job(second)
    sim.delete_task(sim.tasks(first)[0]["taskId"])
    result = sync(sim, server, db_url, tmp_path, "--job-id", first)
    assert result.returncode == 0, result.stderr
    assert "1 jobs, 12 tasks" in result.stdout
    assert scalar(engine, "SELECT count(*) FROM finetune_jobs WHERE deleted_at IS NOT NULL") == 0
    # the listed job was fully listed, so its vanished task is marked
    assert scalar(engine, "SELECT count(*) FROM finetune_tasks WHERE deleted_at IS NOT NULL") == 1


def test_dry_run_reports_and_writes_nothing(
    sim: Simulator, server: SimulatorServer, db_url: URL, engine: Engine, tmp_path: Path
) -> None:
    result = sync(sim, server, db_url, tmp_path, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "dry run" in result.stdout and "(78 changed), would write" in result.stdout
    assert sum(row_counts(engine).values()) == 0
    assert scalar(engine, "SELECT count(*) FROM etl_runs") == 0


def test_bad_records_are_set_aside_and_good_ones_load(
    sim: Simulator, server: SimulatorServer, db_url: URL, engine: Engine, tmp_path: Path
) -> None:
    job_id = sim.jobs()[0]["jobId"]
    sim.put_task(job_id, {"taskId": "task-bad-metrics", "metrics": ["17%"]})
    readable = sync(sim, server, db_url, tmp_path)
    assert readable.returncode == 0, readable.stderr  # its id is seen: nothing held back
    sim.put_task(job_id, {"jobId": job_id, "runStatus": "Done"})
    result = sync(sim, server, db_url, tmp_path)
    assert result.returncode == 65, result.stderr  # its job's deletes are held back, loudly
    assert "2 rejects" in result.stdout and f"job {job_id} kept 0" in result.stderr
    rejects = scalar(engine, "SELECT count(*) FROM etl_rejects WHERE entity = 'task'")
    assert rejects == 2
    assert scalar(engine, "SELECT count(*) FROM finetune_tasks") == 78

    over = sync(sim, server, db_url, tmp_path, "--max-rejects", "1")
    assert over.returncode == 65
    assert "--max-rejects 1" in over.stderr


def test_status_reports_runs_and_counts(
    sim: Simulator, server: SimulatorServer, sqlite_url: URL, tmp_path: Path
) -> None:
    assert sync(sim, server, sqlite_url, tmp_path).returncode == 0
    env = cli_env(sim, server, sqlite_url)
    text = invoke_cli(["status"], env, cwd=tmp_path)
    assert text.returncode == 0 and "succeeded" in text.stdout
    as_json = invoke_cli(["status", "--json"], env, cwd=tmp_path)
    status = json.loads(as_json.stdout)
    assert status["tables"]["finetune_tasks"] == {"rows": 78, "deleted": 0}
    assert status["runs"][0]["status"] == "succeeded"


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    result = run_cli(["demo"], {"PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "sync run 1: 20 jobs, 200 tasks" in result.stdout
    assert (tmp_path / "qianfan_demo.db").exists()


def test_dotenv_in_the_working_directory_is_honoured(
    sim: Simulator, server: SimulatorServer, sqlite_url: URL, tmp_path: Path
) -> None:
    env = cli_env(sim, server, sqlite_url)
    secret = env.pop("QIANFAN_SECRET_KEY")
    access = env.pop("QIANFAN_ACCESS_KEY")
    (tmp_path / ".env").write_text(f"QIANFAN_ACCESS_KEY={access}\nQIANFAN_SECRET_KEY={secret}\n")
    result = run_cli(["sync"], env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "6 jobs, 78 tasks" in result.stdout


def test_json_log_format_gives_one_summary_object(
    sim: Simulator, server: SimulatorServer, sqlite_url: URL, tmp_path: Path
) -> None:
    result = sync(sim, server, sqlite_url, tmp_path, "--log-format", "json")
    assert result.returncode == 0, result.stderr
    [line] = result.stdout.splitlines()
    summary = json.loads(line)
    assert summary["event"] == "sync_finished"
    running = sum(t["runStatus"] == "Running" for j in sim.jobs() for t in sim.tasks(j["jobId"]))
    # one page of jobs, one of tasks per job, one detail call per Running task
    assert (summary["jobs_seen"], summary["tasks_seen"]) == (6, 78)
    assert (summary["api_calls"], summary["mode"]) == (1 + 6 + running, "full")
    failed = sync(
        sim, server, sqlite_url, tmp_path, "--log-format", "json", QIANFAN_SECRET_KEY="wrong"
    )
    record = json.loads(failed.stderr.splitlines()[-1])
    assert record["level"] == "error" and "QIANFAN_SECRET_KEY" in record["message"]
