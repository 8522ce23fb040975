"""`sync --active-only`, `--full-every` and live progress, end to end through the CLI.

The account has 8 jobs of 4 tasks; jobs 3 and 7 have a Running first task (the simulator's
`running_jobs` steady state), the other six only finished tasks. Every run is the CLI, in this
process with click's CliRunner, against the simulator over HTTP, on Postgres and on SQLite.
"""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from etl import db, schema
from etl.simulator import Fault, Simulator, SimulatorConfig
from tests.harness import (
    Etl,
    scratch_database,
    snapshot,
    summary_disagreements,
)

TASK = "DescribeFineTuningTask"
tasks, jobs, runs = schema.finetune_tasks, schema.finetune_jobs, schema.etl_runs


@pytest.fixture
def sim() -> Simulator:
    """8 jobs x 4 tasks; jobs 3 and 7 have a Running first task, the rest are finished."""
    config = SimulatorConfig(jobs=8, tasks_per_job=4, checkpoints=3, seed=11, running_jobs=0.25)
    return Simulator(config)


def stored_task(etl: Etl, task_id: str) -> Any:
    with etl.engine.connect() as connection:
        return connection.execute(sa.select(tasks).where(tasks.c.task_id == task_id)).first()


def stored_job(etl: Etl, job_id: str) -> Any:
    with etl.engine.connect() as connection:
        return connection.execute(sa.select(jobs).where(jobs.c.job_id == job_id)).first()


def soft_deleted(etl: Etl) -> int:
    """Soft-deleted jobs and tasks."""
    with etl.engine.connect() as connection:
        return sum(
            connection.execute(
                sa.select(sa.func.count()).where(table.c.deleted_at.is_not(None))
            ).scalar_one()
            for table in (jobs, tasks)
        )


def history(etl: Etl, task_id: str) -> list[str]:
    table = schema.finetune_task_status_history
    with etl.engine.connect() as connection:
        query = sa.select(table.c.run_status).where(table.c.task_id == task_id)
        return list(connection.execute(query.order_by(table.c.run_id)).scalars())


def age_full_runs(etl: Etl, hours: float) -> None:
    """Move the recorded full runs back in time, as if they finished `hours` earlier."""
    with etl.engine.begin() as connection:
        full = connection.execute(sa.select(runs).where(runs.c.mode == "full")).all()
        for run in full:  # in Python: SQLite has no interval arithmetic
            earlier = run.finished_at - timedelta(hours=hours)
            connection.execute(
                runs.update().where(runs.c.run_id == run.run_id).values(finished_at=earlier)
            )


def running_task(sim: Simulator, job_id: str) -> str:
    """The Running first task of an active job."""
    first = sim.tasks(job_id)[0]
    assert first["runStatus"] == "Running"
    return str(first["taskId"])


def listed_running(sim: Simulator, job_ids: list[str]) -> int:
    """Running tasks listed under these jobs now: one detail call each."""
    return sum(t["runStatus"] == "Running" for j in job_ids for t in sim.tasks(j))


def new_job(sim: Simulator, job_id: str) -> str:
    """Add a job with one Running task upstream; returns the task id."""
    sim.put_job({"jobId": job_id, "name": "fresh", "trainMode": "SFT", "model": "ERNIE-Speed-8K"})
    task_id = f"task-{job_id}"
    sim.put_task(job_id, {"taskId": task_id, "jobId": job_id, "runStatus": "Running"})
    return task_id


def test_active_only_run_captures_unfinished_and_new_jobs_and_deletes_nothing(etl: Etl) -> None:
    sim = etl.sim
    ids = [job["jobId"] for job in sim.jobs()]
    finishing, progressing = running_task(sim, ids[3]), running_task(sim, ids[7])
    assert etl.summary()["mode"] == "full"
    sim.finish_task(finishing)
    sim.set_progress(progressing, "40%")
    fresh = new_job(sim, "job-fresh")
    sim.set_progress(fresh, "10%")
    late = {"taskId": "task-late", "jobId": ids[0], "runStatus": "Running"}
    sim.put_task(ids[0], late)  # a new task in a finished job
    sim.delete_job(ids[1])
    sim.delete_task(sim.tasks(ids[7])[1]["taskId"])  # in a job the run lists again
    sim.requests.clear()

    summary = etl.summary("--active-only")

    assert (summary["mode"], summary["jobs_skipped"], summary["jobs_seen"]) == ("active", 5, 8)
    listed = [ids[3], ids[7], "job-fresh"]
    assert summary["api_calls"] == 1 + len(listed) + listed_running(sim, listed)
    assert sorted(
        r.body.get("jobId") for r in sim.requests if r.action.endswith("Tasks")
    ) == sorted(listed)
    assert stored_task(etl, finishing).run_status == "Done"
    assert (stored_task(etl, progressing).run_progress, stored_task(etl, fresh).run_progress) == (
        40.0,
        10.0,
    )
    assert stored_task(etl, progressing).vdl_link.endswith(progressing)
    assert stored_job(etl, "job-fresh") is not None
    assert stored_task(etl, "task-late") is None, "a finished job's tasks are carried over"
    assert soft_deleted(etl) == 0, "an active-only run soft-deletes nothing"
    with etl.engine.connect() as connection:
        run = connection.execute(sa.select(runs).order_by(runs.c.run_id.desc())).first()
    assert run is not None and (run.mode, run.jobs_skipped, run.status) == (
        "active",
        5,
        "succeeded",
    )


def test_a_job_without_tasks_is_listed_again_for_its_first_task(etl: Etl) -> None:
    sim = etl.sim
    sim.put_job({"jobId": "job-empty", "name": "just created", "trainMode": "SFT"})
    etl.summary()
    assert stored_job(etl, "job-empty") is not None
    sim.put_task(
        "job-empty", {"taskId": "task-first", "jobId": "job-empty", "runStatus": "Waiting"}
    )

    summary = etl.summary("--active-only")

    assert (summary["mode"], summary["jobs_skipped"]) == ("active", 6)
    assert stored_task(etl, "task-first").run_status == "Waiting"


def task_listings_of(sim: Simulator, job_id: str) -> int:
    """The task-listing calls the simulator received for one job."""
    return sum(
        r.action == "DescribeFineTuningTasks" and r.body.get("jobId") == job_id
        for r in sim.requests
    )


def test_an_empty_job_is_listed_again_only_while_younger_than_full_every(etl: Etl) -> None:
    sim, now = etl.sim, datetime.now(UTC)
    created = {
        "job-young": now - timedelta(hours=1),
        "job-old": now - timedelta(days=3),
        "job-undated": None,  # no createTime: its age is its first_seen_at's
    }
    for job_id, moment in created.items():
        stamp = {"createTime": moment.strftime("%Y-%m-%dT%H:%M:%SZ")} if moment else {}
        sim.put_job({"jobId": job_id, "name": job_id, "trainMode": "SFT", **stamp})
    etl.summary()
    sim.requests.clear()

    assert etl.summary("--active-only", "--full-every", "24h")["mode"] == "active"
    calls = {job_id: task_listings_of(sim, job_id) for job_id in created}
    assert calls == {"job-young": 1, "job-old": 0, "job-undated": 1}

    with etl.engine.begin() as connection:
        connection.execute(
            jobs.update()
            .where(jobs.c.job_id == "job-undated")
            .values(first_seen_at=now - timedelta(hours=25))
        )
    sim.requests.clear()
    assert etl.summary("--active-only", "--full-every", "24h")["mode"] == "active"
    assert task_listings_of(sim, "job-undated") == 0, "it waits for the next full run"
    assert task_listings_of(sim, "job-young") == 1


def test_full_every_elapsed_makes_the_run_full_and_it_catches_up(etl: Etl) -> None:
    sim = etl.sim
    ids = [job["jobId"] for job in sim.jobs()]
    etl.summary()
    sim.put_task(ids[0], {"taskId": "task-late", "jobId": ids[0], "runStatus": "Done"})
    sim.delete_job(ids[1])
    assert etl.summary("--active-only")["mode"] == "active"
    assert stored_task(etl, "task-late") is None and soft_deleted(etl) == 0

    age_full_runs(etl, hours=2)
    assert etl.summary("--active-only", QIANFAN_ETL_FULL_EVERY="3h")["mode"] == "active"
    summary = etl.summary("--active-only", "--full-every", "90m")

    assert (summary["mode"], summary["jobs_skipped"]) == ("full", 0)
    assert stored_task(etl, "task-late") is not None
    assert stored_job(etl, ids[1]).deleted_at is not None
    assert summary["soft_deleted"] == 1 + sim.config.tasks_per_job  # the job and its tasks


def test_active_only_without_any_full_run_is_full(etl: Etl) -> None:
    assert etl.summary("--active-only")["mode"] == "full"
    assert etl.summary("--active-only")["mode"] == "active"


def test_active_only_run_after_a_partial_run_relists_the_jobs_that_failed(etl: Etl) -> None:
    sim = etl.sim
    ids = [job["jobId"] for job in sim.jobs()]
    etl.summary()
    sim.put_task(ids[2], {"taskId": "task-missed", "jobId": ids[2], "runStatus": "Done"})
    sim.job_faults[ids[2]] = "500"
    assert etl.summary(exit_code=75)["status"] == "partial"
    sim.put_task(ids[4], {"taskId": "task-later", "jobId": ids[4], "runStatus": "Done"})
    # the job fails again in an active-only run: it stays owed
    assert etl.summary("--active-only", exit_code=75)["mode"] == "active"
    del sim.job_faults[ids[2]]

    summary = etl.summary("--active-only")

    assert (summary["mode"], summary["status"], summary["jobs_skipped"]) == (
        "active",
        "succeeded",
        5,
    )
    assert stored_task(etl, "task-missed") is not None
    assert stored_task(etl, "task-later") is None, "a finished job that listed fine is carried over"
    again = etl.summary("--active-only")
    assert again["jobs_skipped"] == 6, "once listed, the failed job is carried over again"


def test_progress_alone_is_no_change_and_leaves_with_running(etl: Etl) -> None:
    sim = etl.sim
    ids = [job["jobId"] for job in sim.jobs()]
    task_id = running_task(sim, ids[7])
    etl.summary()
    before = stored_task(etl, task_id)
    assert before.run_progress is not None and before.progress_at is not None

    sim.set_progress(task_id, "87.5%")
    summary = etl.summary("--active-only")

    after = stored_task(etl, task_id)
    assert (summary["tasks_changed"], summary["rows_written"]) == (0, 1)
    assert after.run_progress == 87.5 and after.progress_at > before.progress_at
    assert (after.content_hash, after.last_changed_at) == (
        before.content_hash,
        before.last_changed_at,
    )
    assert history(etl, task_id) == ["Running"]
    assert etl.summary("--active-only")["rows_written"] == 0, "unchanged progress is not rewritten"

    sim.set_progress(task_id, "N/A")
    etl.summary("--active-only")
    assert stored_task(etl, task_id).run_progress is None, (
        "a progress that is not a percent is NULL"
    )

    sim.finish_task(task_id)
    etl.summary("--active-only")
    done = stored_task(etl, task_id)
    assert (done.run_status, done.run_progress, done.vdl_link, done.progress_at) == (
        "Done",
        None,
        None,
        None,
    )
    assert history(etl, task_id) == ["Running", "Done"]


def test_a_failed_detail_call_costs_only_that_tasks_progress(etl: Etl) -> None:
    sim = etl.sim
    ids = [job["jobId"] for job in sim.jobs()]
    kept, moved = running_task(sim, ids[3]), running_task(sim, ids[7])
    sim.set_progress(kept, "20%")
    etl.summary()
    sim.set_progress(kept, "30%")
    sim.set_progress(moved, "60%")
    # the first detail call: job 3's first task (one worker lists the jobs in order)
    sim.inject(Fault("status", TASK, status=404, code="ResourceNotFound"))

    summary = etl.summary("--active-only", "--concurrency", "1")

    assert summary["progress_failed"] == 1
    assert f"no live progress for task {kept}" in summary["stderr"]
    assert stored_task(etl, kept).run_progress == 20.0, "kept as it was"
    assert stored_task(etl, moved).run_progress == 60.0


def test_a_full_run_after_active_only_runs_equals_a_lone_full_run(
    etl: Etl, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> None:
    sim = etl.sim
    ids = [job["jobId"] for job in sim.jobs()]
    kind = etl.engine.dialect.name
    with scratch_database(kind, request, tmp_path_factory) as lone_url:
        lone = Etl(sim, etl.server, lone_url, db.create(lone_url), etl.cwd)
        etl.summary()
        lone.summary()
        # each task changes status at most once, so both histories see the same statuses
        sim.finish_task(running_task(sim, ids[3]))
        sim.set_progress(running_task(sim, ids[7]), "40%")
        new_job(sim, "job-fresh")
        sim.put_task(ids[0], {"taskId": "task-late", "jobId": ids[0], "runStatus": "Failed"})
        sim.delete_job(ids[1])
        sim.delete_task(sim.tasks(ids[7])[1]["taskId"])
        etl.summary("--active-only")
        sim.set_progress(running_task(sim, ids[7]), "55%")
        sim.rename_job(ids[4], "renamed")
        sim.delete_task(sim.tasks(ids[5])[0]["taskId"])
        etl.summary("--active-only")
        age_full_runs(etl, hours=25)
        assert etl.summary("--active-only")["mode"] == "full"
        assert lone.summary()["mode"] == "full"
        assert snapshot(etl.engine) == snapshot(lone.engine)
        lone.engine.dispose()


# What can happen upstream between two runs, on a job or task picked by number. Only changes a
# lone full run at the end sees as the other history does: a task changes status at most once
# (a new job's task stays Running), and only jobs no other change has touched are deleted, with
# their tasks (a job that changed and then went is rightly stored as last seen, which the two
# histories saw differently). "refused" gives a stored task a record the database refuses (its
# stored row stays as it was); "idless" adds a task without a taskId (its job holds back its
# deletes, and full runs end 65).
CHANGES = ("finish", "progress", "new_job", "late_task", "delete_job", "delete_task", "rename")
CHANGES += ("refused", "idless")
STEPS = st.lists(st.tuples(st.sampled_from((*CHANGES, "run")), st.integers(0, 99)), max_size=10)


def change_upstream(sim: Simulator, step: int, change: str, pick: int, untouched: set[str]) -> None:
    """Apply one change; a job it touches leaves `untouched`."""
    if change == "new_job":
        new_job(sim, f"job-new-{step}")
        return
    jobs = [job["jobId"] for job in sim.jobs() if not job["jobId"].startswith("job-new-")]
    running = [(j, t["taskId"]) for j in jobs for t in sim.tasks(j) if t["runStatus"] == "Running"]
    quiet = [(j, t["taskId"]) for j in jobs if j in untouched for t in sim.tasks(j)]
    any_job = [(j, "") for j in jobs]
    candidates = {
        "finish": running,
        "progress": running,
        "late_task": any_job,
        "rename": any_job,
        "delete_job": quiet,
        "delete_task": quiet,
        "refused": quiet,
        "idless": any_job,
    }[change]
    if not candidates:
        return
    job_id, task_id = candidates[pick % len(candidates)]
    untouched.discard(job_id)
    if change == "finish":
        sim.finish_task(task_id)
    elif change == "progress":
        sim.set_progress(task_id, f"{pick}%")
    elif change == "late_task":
        sim.put_task(job_id, {"taskId": f"task-late-{step}", "jobId": job_id, "runStatus": "Done"})
    elif change == "rename":
        sim.rename_job(job_id, f"renamed at step {step}")
    elif change == "delete_job":
        sim.delete_job(job_id)
    elif change == "refused":
        sim.put_task(job_id, {**_listed(sim, job_id, task_id), "checkpointList": "broken"})
    elif change == "idless":
        sim.put_task(job_id, {"jobId": job_id, "runStatus": "Done", "step": step})
    else:
        sim.delete_task(task_id)


def _listed(sim: Simulator, job_id: str, task_id: str) -> dict[str, Any]:
    return next(task for task in sim.tasks(job_id) if task.get("taskId") == task_id)


def _full_run_exit(sim: Simulator) -> int:
    """65 while some listed task has no readable taskId (its job holds back), else 0."""
    jobs = [job["jobId"] for job in sim.jobs()]
    idless = any(not task.get("taskId") for job_id in jobs for task in sim.tasks(job_id))
    return 65 if idless else 0


@pytest.mark.parametrize("kind", ["postgresql", "sqlite"])
@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=STEPS)
# found by this property: a Running task whose record is set aside had its live progress
# stored by an active-only run, then finished upstream (still set aside): a lone full run
# never stored that progress
@example(
    steps=[
        *[("idless", 0), ("new_job", 0), ("run", 0), ("refused", 81), ("finish", 23)],
        *[("finish", 0), ("refused", 0), ("idless", 0), ("run", 0), ("finish", 0)],
    ]
)
def test_any_sequence_of_active_only_runs_then_a_full_run_equals_a_lone_full_run(
    kind: str,
    steps: list[tuple[str, int]],
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    sim = Simulator(
        SimulatorConfig(jobs=6, tasks_per_job=3, checkpoints=2, seed=5, running_jobs=0.5)
    )
    cwd = tmp_path_factory.mktemp("cwd")
    with (
        sim.serve() as server,
        scratch_database(kind, request, tmp_path_factory) as etl_url,
        scratch_database(kind, request, tmp_path_factory) as lone_url,
    ):
        etl = Etl(sim, server, etl_url, db.create(etl_url), cwd)
        lone = Etl(sim, server, lone_url, db.create(lone_url), cwd)
        etl.summary()
        lone.summary()
        untouched = {job["jobId"] for job in sim.jobs()}
        for step, (change, pick) in enumerate(steps):
            if change == "run":
                assert etl.summary("--active-only")["mode"] == "active"
                assert summary_disagreements(etl.engine) == []  # kept with the children
            else:
                change_upstream(sim, step, change, pick, untouched)
        age_full_runs(etl, hours=25)
        everything = ("--max-delete-fraction", "1")  # a small account: the guard is not tested here
        code = _full_run_exit(sim)
        assert etl.summary("--active-only", *everything, exit_code=code)["mode"] == "full"
        assert lone.summary(*everything, exit_code=code)["mode"] == "full"
        assert snapshot(etl.engine) == snapshot(lone.engine)
        etl.engine.dispose()
        lone.engine.dispose()


def test_no_task_details_lists_tasks_only_and_leaves_progress_alone(etl: Etl) -> None:
    sim = etl.sim
    ids = [job["jobId"] for job in sim.jobs()]
    progressing = running_task(sim, ids[7])
    sim.set_progress(progressing, "40%")

    summary = etl.summary("--no-task-details")

    assert summary["api_calls"] == 1 + len(ids), "one job page and one task page per job"
    assert not [r for r in sim.requests if r.action == TASK]
    assert stored_task(etl, progressing).run_progress is None
    sim.requests.clear()
    summary = etl.summary(QIANFAN_ETL_TASK_DETAILS="true")
    assert summary["api_calls"] == 1 + len(ids) + listed_running(sim, ids)
    assert stored_task(etl, progressing).run_progress == 40.0
