"""Every fault stays in its scope, and says so (issue 16, findings 1-5): refused records and
records without a readable id, end to end through the CLI, the simulator over HTTP, Postgres and
SQLite."""

import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine

from etl import db, schema
from etl.canonical import content_hash
from etl.load import now, reject_key
from etl.simulator import Simulator
from etl.transform import Reject, task_to_rows
from tests.harness import Etl, held_back_rows, invoke_cli, is_live, scalar, seeded

NUMERIC_JOB = 31337


def test_a_refused_job_with_a_readable_id_keeps_job_deletes_on(etl: Etl) -> None:
    sim, engine = etl.sim, etl.engine
    ids = seeded(etl)
    sim.put_job({"jobId": "j" * 3000, "name": "an id no index takes"})
    sim.delete_job(ids[1])
    run = etl.invoke()
    assert run.returncode == 0, run.stderr
    assert "1 rejects" in run.stdout
    assert not is_live(engine, schema.finetune_jobs, ids[1])  # the account's deletes went on
    assert held_back_rows(engine) == []


def test_a_job_without_a_readable_id_holds_back_the_account_and_says_so(etl: Etl) -> None:
    sim, engine = etl.sim, etl.engine
    ids = seeded(etl)
    gone_task = sim.tasks(ids[2])[0]["taskId"]
    sim.put_job({"jobId": NUMERIC_JOB, "name": "a numeric id"})
    sim.delete_job(ids[1])
    sim.delete_task(gone_task)
    metrics = etl.cwd / "etl.prom"
    run = etl.invoke("--metrics-file", str(metrics))
    assert run.returncode == 65, run.stderr
    assert "partial (exit 65)" in run.stdout and "account kept 1" in run.stdout
    assert is_live(engine, schema.finetune_jobs, ids[1])  # held back: it may be the numeric one
    assert not is_live(engine, schema.finetune_tasks, gone_task)  # job scopes still delete
    assert held_back_rows(engine) == [(2, "account", "", 1)]
    assert 'qianfan_etl_last_run_held_back_rows{scope_id="",scope_kind="account"} 1.0' in (
        metrics.read_text()
    )
    _assert_status_names_it(etl)
    for restricted in (("--active-only", "--full-every", "24h"), ("--job-id", ids[0])):
        quiet = etl.invoke(*restricted)
        assert quiet.returncode == 0, quiet.stderr  # they delete only within what they list
    assert len(held_back_rows(engine)) == 1
    sim.remove_added(lambda raw: raw.get("jobId") == NUMERIC_JOB)
    fixed = etl.invoke()
    assert fixed.returncode == 0, fixed.stderr
    assert not is_live(engine, schema.finetune_jobs, ids[1])


def _assert_status_names_it(etl: Etl) -> None:
    env, tmp_path = etl.env(), etl.cwd
    as_json = json.loads(invoke_cli(["status", "--json"], env, cwd=tmp_path).stdout)
    assert as_json["runs"][0]["status"] == "partial"
    assert as_json["runs"][0]["held_back"] == [
        {
            "scope_kind": "account",
            "scope_id": "",
            "held_back": 1,
            "reason": "1 job(s) listed without a readable jobId",
        }
    ]
    text = invoke_cli(["status"], env, cwd=tmp_path).stdout
    assert "run 2: 1 scopes held back deletes: account kept 1" in text
    fresh = invoke_cli(["status", "--max-age", "1h"], env, cwd=tmp_path)
    assert fresh.returncode == 69 and "partial: run 2" in fresh.stderr


def test_a_task_without_a_readable_id_holds_back_only_its_job(etl: Etl) -> None:
    sim, engine = etl.sim, etl.engine
    ids = seeded(etl)
    kept, gone = sim.tasks(ids[0])[0]["taskId"], sim.tasks(ids[1])[0]["taskId"]
    sim.put_task(ids[0], {"jobId": ids[0], "runStatus": "Done"})  # no taskId at all
    sim.delete_task(kept)
    sim.delete_task(gone)
    run = etl.invoke()
    assert run.returncode == 65, run.stderr
    assert f"job {ids[0]} kept 1 (1 task(s) listed without a readable taskId)" in run.stdout
    assert is_live(engine, schema.finetune_tasks, kept)
    assert not is_live(engine, schema.finetune_tasks, gone)
    assert held_back_rows(engine) == [(2, "job", ids[0], 1)]
    again = etl.invoke()
    assert again.returncode == 65  # loud every run until upstream fixes it
    assert scalar(engine, "SELECT count(*) FROM etl_rejects") == 1  # stored once, by scope+raw


def test_a_set_aside_record_never_deletes_its_own_stored_row(etl: Etl) -> None:
    sim, engine = etl.sim, etl.engine
    job_id = sim.jobs()[0]["jobId"]
    task = sim.tasks(job_id)[0]
    long_id = "t" * 305
    sim.put_task(job_id, {**task, "taskId": long_id})
    seeded(etl)
    assert is_live(engine, schema.finetune_tasks, long_id)
    sim.put_task(job_id, {**task, "taskId": long_id, "checkpointList": "broken"})
    run = etl.invoke()
    assert run.returncode == 0, run.stderr
    assert "1 rejects" in run.stdout
    assert is_live(engine, schema.finetune_tasks, long_id)
    assert scalar(engine, "SELECT source_id FROM etl_rejects") == long_id


def test_a_set_aside_record_leaves_its_stored_rows_progress_alone(etl: Etl) -> None:
    sim, engine = etl.sim, etl.engine
    job_id = sim.jobs()[0]["jobId"]
    task = {"taskId": "task-live", "jobId": job_id, "runStatus": "Running", "checkpointList": []}
    sim.put_task(job_id, task)
    seeded(etl)
    before = scalar(engine, "SELECT run_progress FROM finetune_tasks WHERE task_id = 'task-live'")
    # still Running upstream, its record now one the transformer sets aside, its progress on
    sim.put_task(job_id, {**task, "checkpointList": "broken"})
    sim.set_progress("task-live", "42%")
    run = etl.invoke()
    assert run.returncode == 0, run.stderr
    assert "1 rejects" in run.stdout
    # as a full run from scratch would leave it: the stored row stays as it was, progress too
    after = scalar(engine, "SELECT run_progress FROM finetune_tasks WHERE task_id = 'task-live'")
    assert (before, after) == (0.0, 0.0)


def _flood(sim: Simulator, count: int) -> str:
    """`count` untypable tasks (readable ids) in the account's first job."""
    job_id = sim.jobs()[0]["jobId"]
    for n in range(count):
        sim.put_task(job_id, {"taskId": f"task-bad-{n:03d}", "jobId": job_id, "metrics": ["x"]})
    return job_id


def test_max_rejects_caps_what_a_run_records_never_what_it_loads(etl: Etl) -> None:
    sim, engine = etl.sim, etl.engine
    _flood(sim, 150)
    args = ("--max-rejects", "100", "--concurrency", "1", "--batch-tasks", "20")
    for recorded in (100, 150, 150):
        run = etl.invoke(*args)
        assert run.returncode == 65, run.stderr
        assert "150 records rejected, more than --max-rejects 100" in run.stderr
        assert scalar(engine, "SELECT count(*) FROM finetune_tasks") == 78  # every good one
        assert scalar(engine, "SELECT count(*) FROM etl_rejects") == recorded


def _rejects(engine: Engine) -> dict[str, tuple[Any, ...]]:
    table = schema.etl_rejects
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(
                table.c.source_id,
                table.c.run_id,
                table.c.reason,
                table.c.resolved_run_id,
                table.c.resolved_at.is_not(None),
            )
        ).all()
    return {row[0]: tuple(row[1:]) for row in rows}


def test_a_reject_is_stored_once_and_resolved_once_gone(etl: Etl) -> None:
    sim, engine = etl.sim, etl.engine
    job_id = _flood(sim, 150)
    for run_number in (1, 2, 3):
        run = etl.invoke("--max-rejects", "1000")
        assert run.returncode == 0, run.stderr
        assert "150 rejects" in run.stdout
        assert scalar(engine, "SELECT count(*) FROM etl_rejects") == 150
        if run_number > 1:
            assert "(0 changed), wrote 0 rows" in run.stdout  # nothing new upstream
    good = sim.tasks(job_id)[0]
    for n in range(10):
        sim.put_task(job_id, {**good, "taskId": f"task-bad-{n:03d}"})  # fixed upstream
    for n in range(10, 15):
        sim.delete_task(f"task-bad-{n:03d}")
    sim.put_task(job_id, {"taskId": "task-bad-149", "jobId": job_id, "metrics": "text"})
    before = _rejects(engine)["task-bad-149"]
    run = etl.invoke("--max-rejects", "1000")
    assert run.returncode == 0, run.stderr
    rejects = _rejects(engine)
    assert len(rejects) == 150  # none stored again
    resolved = {source for source, row in rejects.items() if row[3]}
    assert resolved == {f"task-bad-{n:03d}" for n in range(15)}
    assert all(rejects[source][2:] == (4, True) for source in resolved)
    assert rejects["task-bad-149"][0] == 1 and rejects["task-bad-149"][1] != before[1]
    assert rejects["task-bad-100"] == (1, before[1], None, False)  # untouched


def test_revision_0007_keeps_open_only_the_latest_reject_a_run_can_match(etl: Etl) -> None:
    sim, engine = etl.sim, etl.engine
    job_id = sim.jobs()[0]["jobId"]
    bad = {"taskId": "task-bad-000", "jobId": job_id, "metrics": ["x"]}
    reject = task_to_rows(bad, job_id)
    assert isinstance(reject, Reject)
    db.downgrade(engine, "0006")
    stored = [  # run, source_id, raw, reason, as releases before 0007 stored them
        (1, "task-bad-000", bad, reject.reason),  # an older copy of the one below
        (2, "task-bad-000", bad, reject.reason),
        (2, None, {"jobId": job_id}, "taskId is missing"),  # no identity a run can match
        (2, "t" * 200 + "...", {"taskId": "t" * 3000}, "taskId is 3000 bytes long"),  # cut
    ]
    with engine.begin() as connection:
        for _ in (1, 2):
            connection.execute(
                schema.etl_runs.insert().values(started_at=now(), status="succeeded")
            )
        for run_id, source_id, raw, reason in stored:
            connection.execute(
                sa.text(
                    "INSERT INTO etl_rejects (run_id, entity, source_id, reason, raw, rejected_at) "
                    "VALUES (:run, 'task', :source, :reason, :raw, :at)"
                ).bindparams(sa.bindparam("raw", type_=schema.etl_rejects.c.raw.type)),
                {"run": run_id, "source": source_id, "reason": reason, "raw": raw, "at": now()},
            )
    db.upgrade(engine)
    table = schema.etl_rejects
    with engine.connect() as connection:
        still_open = connection.execute(
            sa.select(
                table.c.reject_id, table.c.reject_key, table.c.scope_id, table.c.raw_hash
            ).where(table.c.resolved_at.is_(None))
        ).all()
    key = reject_key("task", "task-bad-000", None, "")  # what a run computes for it
    assert [tuple(row) for row in still_open] == [(2, key, job_id, content_hash(bad))]
    sim.put_task(job_id, bad)
    run = etl.invoke()
    assert run.returncode == 0, run.stderr
    assert scalar(engine, "SELECT count(*) FROM etl_rejects") == 4  # matched, not stored again
