"""Faults end to end: after any fault a clean re-run converges on a fault-free sync of the same
upstream data, with no duplicates, and a further run writes no rows.

The CLI runs against the simulator over HTTP and a fresh database: in this process (click's
CliRunner), or in a subprocess where the fault is a signal, a crash or a second process. The
oracle is `snapshot`, compared with `golden`, a fault-free in-process sync of the same data into
a scratch database of the same backend. Retry waits, deadlines and database timeouts are set to
tenths of a second through the CLI's env vars, so no test sleeps for real beyond that.
"""

import email.utils
import hashlib
import json
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy import Engine
from sqlalchemy.engine import URL, make_url

from etl import db, schema
from etl.simulator import Fault, Simulator, SimulatorConfig, SimulatorServer
from tests.harness import (
    CAPTURED,
    SHORT_DEADLINE,
    Etl,
    admin,
    admin_url,
    assert_whole_jobs,
    bi_session,
    dsn,
    etl_for,
    free_port,
    plain,
    run_status,
    snapshot,
    start_paused,
)

JOBS = "DescribeFineTuningJobs"
TASKS = "DescribeFineTuningTasks"


# -- the dataset ---------------------------------------------------------------------------


@pytest.fixture
def sim() -> Simulator:
    """3 jobs x 12 tasks: one page each, one batch each."""
    return Simulator(SimulatorConfig(jobs=3, tasks_per_job=12, checkpoints=2, seed=11))


# -- API faults ----------------------------------------------------------------------------


def _http_date(offset: float) -> str:
    return email.utils.formatdate(time.time() + offset, usegmt=True)


HTML_502 = b"<html><body><h1>502 Bad Gateway</h1>nginx</body></html>"

TRANSIENT = {
    "429_retry_after_seconds": [Fault("status", JOBS, status=429, headers={"Retry-After": "0"})],
    "429_retry_after_http_date": [
        Fault("status", TASKS, status=429, headers={"Retry-After": _http_date(-5)})
    ],
    "429_without_retry_after": [Fault("status", None, times=3, status=429)],
    "5xx_burst_with_html": [
        Fault("status", TASKS, status=500),
        Fault("status", TASKS, status=502, body=HTML_502, headers={"Content-Type": "text/html"}),
        Fault("status", TASKS, status=503),
    ],
    "connection_reset": [Fault("reset", None, times=3)],
    "never_ending_response": [Fault("slow_body", JOBS, interval=0.05)],
    "malformed_json": [Fault("raw_body", TASKS, body=b'{"result": {"taskList": [')],
    "truncated_json": [Fault("raw_body", JOBS, body=b'{"requestId": "r", "result": {"jobLi')],
    "legacy_error_code_18": [Fault("legacy_error", None, times=3, code=18)],
}


def test_transient_api_faults_are_retried_and_the_run_succeeds(pg_etl: Etl, golden: Any) -> None:
    """Every transient fault at once, one after another (one CLI run keeps the file fast)."""
    expected = golden(pg_etl)
    jobs = pg_etl.sim.jobs()
    running = [t for j in jobs for t in pg_etl.sim.tasks(j["jobId"]) if t["runStatus"] == "Running"]
    clean_calls = 1 + len(jobs) + len(running)  # job page, task pages, detail calls
    faults = [fault for group in TRANSIENT.values() for fault in group]
    for fault in faults:
        pg_etl.sim.inject(fault)
    result = pg_etl.invoke(QIANFAN_ETL_API_ATTEMPTS="30", **SHORT_DEADLINE)
    assert result.returncode == 0, result.stderr
    failures = sum(fault.times for fault in faults)
    assert pg_etl.sim.api_calls == clean_calls + failures
    statuses = Counter(r.status for r in pg_etl.sim.requests)
    assert statuses[0] == 3 and statuses[429] == 5 and statuses[502] == 1
    assert snapshot(pg_etl.engine) == expected
    pg_etl.assert_idle(expected)


EXHAUSTED = {  # fault, attempts allowed, requests expected, what the message names
    "429_forever": (Fault("status", TASKS, times=99, status=429), 4, 4, "HTTP 429"),
    "retry_after_beyond_budget": (
        Fault("status", JOBS, times=99, status=429, headers={"Retry-After": "86400"}),
        4,
        1,
        "Retry-After: 86400",
    ),
    "retry_after_date_beyond_budget": (
        Fault("status", JOBS, times=99, status=503, headers={"Retry-After": _http_date(3600)}),
        4,
        1,
        "more than the 5 s cap",
    ),
    "resets_forever": (Fault("reset", JOBS, times=99), 4, 4, "the connection broke"),
    "never_ending_forever": (
        Fault("slow_body", JOBS, times=99, interval=0.05),
        2,
        2,
        "per-attempt deadline",
    ),
}


@pytest.mark.parametrize("name", list(EXHAUSTED))
def test_exhausted_api_budget_exits_75_and_changes_nothing(
    name: str, pg_etl: Etl, golden: Any
) -> None:
    expected = golden(pg_etl)
    pg_etl.sync_here()
    fault, attempts, calls, message = EXHAUSTED[name]
    if fault.action == JOBS:  # a wrongly "complete" job listing would delete it
        pg_etl.sim.delete_job(pg_etl.sim.jobs()[0]["jobId"])
    pg_etl.sim.requests.clear()
    pg_etl.sim.inject(fault)
    result = pg_etl.invoke(QIANFAN_ETL_API_ATTEMPTS=str(attempts), **SHORT_DEADLINE)
    assert result.returncode == 75, result.stderr
    assert message in result.stderr
    failed = [r for r in pg_etl.sim.requests if r.action == fault.action]
    per_request = Counter(json.dumps(r.body, sort_keys=True) for r in failed)
    assert set(per_request.values()) == {calls}, "each call retried exactly up to its budget"
    assert snapshot(pg_etl.engine) == expected
    # every job's task listing failing (fewer than the breaker's streak) is a partial run
    assert run_status(pg_etl.engine, 2)[0] == ("partial" if fault.action == TASKS else "failed")


AUTH = {
    "401": Fault("status", JOBS, status=401, code="Unauthorized"),
    "403_access_denied": Fault("status", TASKS, status=403, code="AccessDenied"),
    # what the API answers a client whose clock is skewed beyond the signature's validity
    "clock_skew_request_expired": Fault("status", JOBS, status=400, code="RequestExpired"),
}


@pytest.mark.parametrize("name", [*AUTH, "rejected_signature"])
def test_auth_failures_exit_77_without_retrying(name: str, pg_etl: Etl, golden: Any) -> None:
    expected = golden(pg_etl)
    pg_etl.sync_here()
    pg_etl.sim.requests.clear()
    extra = {}
    if name in AUTH:
        pg_etl.sim.inject(AUTH[name])
    else:
        extra["QIANFAN_SECRET_KEY"] = "not-the-secret-" + secrets.token_hex(4)
    result = pg_etl.invoke(**extra)
    assert result.returncode == 77, result.stderr
    refused = [r for r in pg_etl.sim.requests if r.status >= 400]
    assert len(refused) == 1, "auth failures are not retried"
    if name == "clock_skew_request_expired":
        assert "clock skew" in result.stderr
    assert snapshot(pg_etl.engine) == expected
    assert run_status(pg_etl.engine, 2)[0] == "failed"


# -- pagination breaches -------------------------------------------------------------------


PAGED = SimulatorConfig(jobs=2, tasks_per_job=210, checkpoints=0, seed=5)  # 3 pages a job
MANY_JOBS = SimulatorConfig(jobs=105, tasks_per_job=1, checkpoints=0, seed=5)
BREACHES = {  # the listing broken, how, and the dataset that pages it
    "task_marker_cycle": (TASKS, "marker_cycle", PAGED),
    "task_empty_truncated_pages": (TASKS, "empty_truncated_page", PAGED),
    "task_is_truncated_as_string": (TASKS, "truncated_as_string", PAGED),
    "job_repeated_marker": (JOBS, "repeat_marker", MANY_JOBS),
}


@pytest.mark.parametrize("name", list(BREACHES))
def test_pagination_breach_exits_65_and_deletes_nothing(
    name: str, pg_url: URL, pg_engine: Engine, tmp_path: Path, golden: Any
) -> None:
    action, mode, config = BREACHES[name]
    with etl_for(config, pg_url, pg_engine, tmp_path) as etl:
        expected = golden(etl)
        etl.sync_here()
        etl.sim.pagination_fault, etl.sim.pagination_fault_action = mode, action
        result = etl.invoke()
        assert result.returncode == 65, result.stderr
        assert "pagination contract" in result.stderr
        # a breach taken for the end of the listing would soft-delete what it did not reach
        assert snapshot(pg_engine) == expected
        assert run_status(pg_engine, 2)[0] == ("partial" if action == TASKS else "failed")
        etl.sim.pagination_fault = None
        etl.assert_idle(expected)


@pytest.mark.parametrize("mode", ["duplicate_across_pages", "oversized_page"])
def test_a_task_on_two_pages_or_a_page_larger_than_asked_is_tolerated(
    mode: str, pg_url: URL, pg_engine: Engine, tmp_path: Path, golden: Any
) -> None:
    with etl_for(PAGED, pg_url, pg_engine, tmp_path) as etl:
        expected = golden(etl)
        etl.sim.pagination_fault, etl.sim.pagination_fault_action = mode, TASKS
        result = etl.invoke()
        assert result.returncode == 0, result.stderr
        assert "2 jobs, 420 tasks (420 changed)" in result.stdout
        assert snapshot(pg_engine) == expected
        etl.assert_idle(expected)


# -- hostile data --------------------------------------------------------------------------

HOSTILE_JOB = "job-hostile"
# 20,000 characters that do not compress: an index on them would fail with 54000
LONG_TEXT = "".join(hashlib.sha256(str(i).encode()).hexdigest() for i in range(313))[:20000]
SQL_TEXT = "'); DROP TABLE finetune_tasks;-- $$ %s {0} \\ E'\\x00'"


def hostile_tasks() -> list[Any]:
    """Tasks that stretch every parsing rule; the last three cannot be typed."""
    base = {"jobId": HOSTILE_JOB, "runStatus": "Done", "createTime": "2024-01-01T00:00:00Z"}
    metrics = {"BLEU-4": "N/A", "ROUGE-1": "", "ROUGE-2": None, "ROUGE-L": "NaN"}
    metrics |= {"inf": "Infinity", "huge": "1e400", "number": 0.31, "spaced": " 17.03% "}
    return [
        {**base, "taskId": "t-unknown", "surprise": {"nested": [1, None]}, "metrics": {"x": 1}},
        {"taskId": "t-minimal", "jobId": HOSTILE_JOB},
        {**base, "taskId": "t-metrics", "metrics": metrics},
        {**base, "taskId": "t-times", "createTime": "2024-03-01T08:00:00+08:00"}
        | {"finishTime": "yesterday"},
        {**base, "taskId": "t-status", "runStatus": "Paused", "errorCode": "12345678901234567890"},
        {**base, "taskId": "t-unicode", "jobName": "精调任务 🚀", "jobDescription": LONG_TEXT},
        {**base, "taskId": "t-nul", "jobName": "a\x00b", "errorMessage": "bad\ud800pair"},
        {**base, "taskId": "t-sql", "jobName": SQL_TEXT, "parameterScale": "Robert'); --"},
        {**base, "taskId": "t-metrics-list", "metrics": ["17%"]},
        {**base, "taskId": "t-checkpoints-object", "checkpointList": {"step": 1}},
        "not a task",
    ]


def column(engine: Engine, table: sa.Table, name: str, task_id: str) -> Any:
    with engine.connect() as connection:
        return connection.execute(
            sa.select(table.c[name]).where(table.c.task_id == task_id)
        ).scalar_one()


def test_hostile_records_load_or_are_set_aside(etl: Etl, golden: Any) -> None:
    etl.sim.put_job(
        {"jobId": HOSTILE_JOB, "name": "作业 😀", "description": LONG_TEXT, "unknown": [1, {}]}
    )
    for task in hostile_tasks():
        etl.sim.put_task(HOSTILE_JOB, task)
    expected = golden(etl)
    result = etl.invoke()
    # "not a task" has no readable taskId: its job holds back its deletes, and says so
    assert result.returncode == 65, result.stderr
    assert "3 rejects" in result.stdout and f"job {HOSTILE_JOB} kept 0" in result.stdout
    assert snapshot(etl.engine) == expected
    tasks = schema.finetune_tasks
    assert column(etl.engine, tasks, "raw", "t-unknown")["surprise"] == {"nested": [1, None]}
    assert column(etl.engine, tasks, "run_status", "t-minimal") is None
    mine = [r for r in expected["finetune_task_metrics"] if r["task_id"] == "t-metrics"]
    percent = {r["metric_name"]: r["value_percent"] for r in mine}
    assert percent == {"number": 0.31, "spaced": 17.03} | dict.fromkeys(
        ("BLEU-4", "ROUGE-1", "ROUGE-2", "ROUGE-L", "inf", "huge")
    )
    assert {r["metric_name"]: r["value_raw"] for r in mine}["BLEU-4"] == "N/A"
    created = plain("", column(etl.engine, tasks, "create_time", "t-times"))
    assert created == "2024-03-01T00:00:00+00:00"
    assert column(etl.engine, tasks, "finish_time", "t-times") is None
    assert column(etl.engine, tasks, "run_status", "t-status") == "Paused"
    assert column(etl.engine, tasks, "error_code", "t-status") is None
    assert column(etl.engine, tasks, "job_name", "t-unicode") == "精调任务 🚀"
    assert column(etl.engine, tasks, "job_description", "t-unicode") == LONG_TEXT
    assert column(etl.engine, tasks, "job_name", "t-nul") == "ab"
    assert column(etl.engine, tasks, "raw", "t-nul")["jobName"] == "ab"
    assert column(etl.engine, tasks, "error_message", "t-nul") == "bad\ufffdpair"
    assert column(etl.engine, tasks, "job_name", "t-sql") == SQL_TEXT
    rejects = {(r["source_id"], r["raw"]) for r in expected["etl_rejects"]}
    assert (None, "not a task") in rejects
    assert {source for source, _ in rejects} == {None, "t-metrics-list", "t-checkpoints-object"}
    etl.assert_idle(expected)


# -- database faults -----------------------------------------------------------------------


def test_postgres_down_at_start_exits_75_before_any_api_call(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    closed = make_url(f"postgresql://etl:pw@127.0.0.1:{free_port()}/qianfan")
    etl = Etl(sim, server, closed, db.create(closed), tmp_path)
    result = etl.invoke()
    assert result.returncode == 75, result.stderr
    assert "unavailable" in result.stderr
    assert sim.api_calls == 0


def test_connection_killed_mid_load_exits_75_and_converges(
    pg_etl: Etl, golden: Any, tmp_path: Path
) -> None:
    """pg_terminate_backend of every session of the database stands in for a server restart."""
    expected = golden(pg_etl)
    pause = tmp_path / "pause"
    process = start_paused(pg_etl, "before_commit:2", pause)
    admin(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        f"WHERE datname = '{pg_etl.url.database}' AND pid <> pg_backend_pid()"
    )
    Path(f"{pause}.release").touch()
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 75, stderr
    assert len(assert_whole_jobs(pg_etl.engine, expected)) == 1  # batch 1 had committed
    pg_etl.assert_converges(expected)
    assert run_status(pg_etl.engine, 1)[0] in ("failed", "abandoned")


LOCK_WAITS = {
    "lock_timeout": ({}, "LOCK TABLE finetune_tasks IN ACCESS EXCLUSIVE MODE", "lock timeout"),
    "statement_timeout": (
        {"QIANFAN_ETL_DB_LOCK_TIMEOUT": "0", "QIANFAN_ETL_DB_STATEMENT_TIMEOUT": "0.5"},
        "LOCK TABLE finetune_task_metrics IN ACCESS EXCLUSIVE MODE",
        "statement timeout",
    ),
    "row_lock": ({}, "SELECT 1 FROM finetune_tasks FOR UPDATE", "lock timeout"),
}


@pytest.mark.parametrize("name", list(LOCK_WAITS))
def test_bi_locks_bound_the_wait_exit_75_and_converge(name: str, pg_etl: Etl, golden: Any) -> None:
    env, statement, message = LOCK_WAITS[name]
    pg_etl.sync_here()
    pg_etl.sim.rename_job(pg_etl.sim.jobs()[0]["jobId"], "renamed: its tasks change")
    expected = golden(pg_etl)
    before = snapshot(pg_etl.engine)
    with bi_session(pg_etl.url, statement):  # an unbounded wait would hang here (pytest-timeout)
        result = pg_etl.invoke(**env)
    assert result.returncode == 75, result.stderr
    assert message in result.stderr
    assert snapshot(pg_etl.engine) == before
    pg_etl.assert_converges(expected)


@pytest.mark.parametrize("state", ["behind", "ahead"])
def test_schema_not_at_head_exits_78_before_any_api_call(state: str, etl: Etl, golden: Any) -> None:
    expected = golden(etl)
    etl.sync_here()
    etl.sim.requests.clear()
    if state == "behind":
        db.downgrade(etl.engine, "base")
    else:
        _stamp(etl.engine, "ffffffffffff")  # a revision from a newer qianfan-etl
    result = etl.invoke()
    assert result.returncode == 78, result.stderr
    assert ("newer than this" in result.stderr) == (state == "ahead")
    assert etl.sim.api_calls == 0
    if state == "ahead":
        assert snapshot(etl.engine) == expected
    db.upgrade(etl.engine) if state == "behind" else _stamp(etl.engine, db.head_revision())
    etl.assert_converges(expected)


def _stamp(engine: Engine, revision: str | None) -> None:
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = :v"), {"v": revision})


@pytest.fixture
def pg_role(pg_url: URL) -> Iterator[tuple[str, str]]:
    """A unique login role and its password, dropped (privileges first) after the test."""
    name, password = f"qfetl_role_{secrets.token_hex(4)}", f"pw-{secrets.token_hex(8)}"
    admin(f"CREATE ROLE \"{name}\" LOGIN PASSWORD '{password}'")
    yield name, password
    admin(f'DROP OWNED BY "{name}"', database=str(pg_url.database))
    admin(f'DROP ROLE "{name}"')


def test_missing_insert_privilege_exits_77_without_retrying(
    pg_etl: Etl, pg_role: tuple[str, str], golden: Any
) -> None:
    role, password = pg_role
    database = str(pg_etl.url.database)
    for grant in (
        f'GRANT USAGE ON SCHEMA public TO "{role}"',
        f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{role}"',
        f'GRANT INSERT, UPDATE ON etl_runs, etl_rejects TO "{role}"',
        f'GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO "{role}"',
    ):
        admin(grant, database=database)
    expected = golden(pg_etl)
    limited = Etl(
        pg_etl.sim,
        pg_etl.server,
        pg_etl.url.set(username=role, password=password),
        pg_etl.engine,
        pg_etl.cwd,
    )
    result = limited.invoke()
    assert result.returncode == 77, result.stderr
    assert "refused access" in result.stderr and password not in result.stderr
    assert set(Counter(json.dumps(r.body) for r in pg_etl.sim.requests).values()) == {1}
    assert run_status(pg_etl.engine, 1)[0] == "failed"
    assert not any(snapshot(pg_etl.engine).values())
    pg_etl.assert_converges(expected)


# -- process faults ------------------------------------------------------------------------


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_console_script_never_arms_the_fault_hook(etl: Etl) -> None:
    """The hook is the tests' alone: a plan in a production run's environment does nothing."""
    console_script = Path(sys.executable).parent / "qianfan-etl"
    env = etl.env(QIANFAN_ETL_FAULT="before_commit:1:raise")
    done = subprocess.run([console_script, "sync"], env=env, cwd=etl.cwd, **CAPTURED, timeout=60)
    assert done.returncode == 0, done.stderr
    assert run_status(etl.engine, 1) == ("succeeded", None)


@pytest.mark.parametrize(
    ("db_url", "plan", "committed_jobs"),
    [
        ("postgresql", "after_fetch:1", 0),
        ("postgresql", "before_commit:2", 1),
        ("sqlite", "before_commit:2", 1),
        ("postgresql", "after_commit:1", 1),
    ],
    indirect=["db_url"],
)
def test_sigkill_then_rerun_converges_and_marks_the_run_abandoned(
    plan: str, committed_jobs: int, etl: Etl, golden: Any
) -> None:
    expected = golden(etl)
    killed = etl.run(QIANFAN_ETL_FAULT=f"{plan}:sigkill")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert len(assert_whole_jobs(etl.engine, expected)) == committed_jobs
    assert run_status(etl.engine, 1)[0] == "running"
    etl.assert_converges(expected, cli=True)
    assert run_status(etl.engine, 1) == (
        "abandoned",
        "the process ended without finishing its run",
    )


@pytest.mark.parametrize(
    ("db_url", "plan", "code", "committed_jobs"),
    [
        ("postgresql", "after_fetch:1:sigterm", 143, 0),
        ("postgresql", "before_commit:2:sigterm", 143, 1),
        ("postgresql", "before_commit:2:sigint", 130, 1),
        # the writer commits batch 1 as soon as it is written, before or after the signal
        ("sqlite", "after_fetch:2:sigint", 130, (0, 1)),
        ("postgresql", "before_commit:2:raise", 1, 1),
    ],
    indirect=["db_url"],
)
def test_signals_and_errors_roll_back_record_failure_and_converge(
    plan: str, code: int, committed_jobs: int | tuple[int, ...], etl: Etl, golden: Any
) -> None:
    expected = golden(etl)
    stopped = etl.run(QIANFAN_ETL_FAULT=plan)
    assert stopped.returncode == code, stopped.stderr
    allowed = committed_jobs if isinstance(committed_jobs, tuple) else (committed_jobs,)
    assert len(assert_whole_jobs(etl.engine, expected)) in allowed
    status, error = run_status(etl.engine, 1)
    assert status == "failed"
    assert ("interrupted" in str(error)) == (code != 1)
    etl.assert_converges(expected)  # lock-wait 0: the lock was released
    assert run_status(etl.engine, 1)[0] == "failed"


def test_second_run_waits_for_the_lock_then_succeeds(
    pg_etl: Etl, golden: Any, tmp_path: Path
) -> None:
    expected = golden(pg_etl)
    pause = tmp_path / "pause"
    first = start_paused(pg_etl, "before_commit:1", pause)
    # its writer waits at the first commit while its walk goes on to the end of the account
    calls = _calls_of_a_full_run(pg_etl.sim)
    deadline = time.monotonic() + 20
    while pg_etl.sim.api_calls < calls and time.monotonic() < deadline:
        time.sleep(0.01)
    second = pg_etl.start("--lock-wait", "20")
    _wait_for_sessions(pg_etl.url, 3, second)  # first: lock + work; second: polling the lock
    assert pg_etl.sim.api_calls == calls, "the waiting run made no API call"
    Path(f"{pause}.release").touch()
    assert first.wait(timeout=30) == 0, first.communicate()
    out, err = second.communicate(timeout=30)
    assert second.returncode == 0, err
    assert "(0 changed)" in out
    assert snapshot(pg_etl.engine) == expected
    assert [run_status(pg_etl.engine, r)[0] for r in (1, 2)] == ["succeeded", "succeeded"]


def _calls_of_a_full_run(sim: Simulator) -> int:
    """On an account of one job page and one task page a job: the job page, the task pages
    and a detail call per Running task."""
    jobs = sim.jobs()
    running = sum(t["runStatus"] == "Running" for job in jobs for t in sim.tasks(job["jobId"]))
    return 1 + len(jobs) + running


def _wait_for_sessions(url: URL, count: int, process: subprocess.Popen[str]) -> None:
    query = (
        "SELECT count(*) FROM pg_stat_activity "
        f"WHERE datname = '{url.database}' AND application_name = 'qianfan-etl'"
    )
    deadline = time.monotonic() + 20
    with psycopg.connect(dsn(url), autocommit=True) as connection:
        while (connection.execute(query).fetchone() or (0,))[0] < count:  # type: ignore[arg-type]
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.01)


# -- secrets and least privilege -----------------------------------------------------------


def test_secrets_appear_in_no_log_error_or_table(
    pg_url: URL, pg_engine: Engine, pg_role: tuple[str, str], tmp_path: Path
) -> None:
    role, password = pg_role
    admin(f'GRANT ALL ON ALL TABLES IN SCHEMA public TO "{role}"', database=str(pg_url.database))
    admin(f'GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO "{role}"', database=str(pg_url.database))
    secret = f"sk-{secrets.token_hex(12)}"
    config = SimulatorConfig(jobs=3, tasks_per_job=12, checkpoints=2, secret_key=secret)
    url = pg_url.set(username=role, password=password)
    outputs: list[str] = []
    with etl_for(config, url, pg_engine, tmp_path) as etl:
        for fault in TRANSIENT["connection_reset"] + TRANSIENT["malformed_json"]:
            etl.sim.inject(fault)
        runs = [
            ({"QIANFAN_ETL_FAULT": "before_commit:2:raise"}, 1, None),  # traceback after retries
            ({}, 77, Fault("status", TASKS, status=403, code="AccessDenied")),
            ({}, 65, Fault("legacy_error", JOBS, code=100)),
            (
                {"DATABASE_URL": f"postgresql://{role}:{password}@127.0.0.1:{free_port()}/x"},
                75,
                None,
            ),
        ]
        for env, code, fault in runs:
            if fault:
                etl.sim.inject(fault)
            result = etl.run("-vv", **env)
            assert result.returncode == code, result.stderr
            outputs += [result.stdout, result.stderr]
    assert "retrying" in "".join(outputs) and "Traceback" in "".join(outputs)
    dump = subprocess.run(
        ["/usr/bin/pg_dump", "--data-only", dsn(admin_url().set(database=pg_url.database))],
        **CAPTURED,
        check=True,
    ).stdout
    assert "injected fault" in dump and "AccessDenied" in dump  # the errors were recorded
    for text in [*outputs, dump]:
        assert secret not in text and password not in text


def test_bi_reader_role_reads_everything_and_writes_nothing(
    pg_etl: Etl, pg_role: tuple[str, str]
) -> None:
    role, password = pg_role
    pg_etl.sync_here()
    script = Path(__file__).resolve().parent.parent / "sql" / "bi_reader.sql"
    owner = dsn(admin_url().set(database=pg_etl.url.database))
    subprocess.run(["psql", owner, "-q", "-v", f"role={role}", "-f", str(script)], check=True)
    admin("CREATE TABLE later_migration (id int)", database=str(pg_etl.url.database))
    reader = dsn(pg_etl.url.set(username=role, password=password))
    with psycopg.connect(reader, autocommit=True) as connection:
        assert connection.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
        # privileges, not the read-only default (which a session can turn off), must refuse
        connection.execute("SET default_transaction_read_only = off")
        relations = connection.execute(
            "SELECT table_name, table_type FROM information_schema.tables "
            "WHERE table_schema = 'public'"
        ).fetchall()
        assert {"finetune_task_overview", "finetune_task_metrics_wide"} <= {r[0] for r in relations}
        for name, kind in relations:
            connection.execute(f'SELECT count(*) FROM "{name}"')  # type: ignore[arg-type]
            if kind == "BASE TABLE":
                _assert_refused(connection, name)
        _assert_refused_sql(connection, "CREATE TABLE public.bi_scratch (id int)")


def _assert_refused(connection: psycopg.Connection[Any], table: str) -> None:
    column = (
        f"(SELECT column_name FROM information_schema.columns WHERE table_name = '{table}' LIMIT 1)"
    )
    name = connection.execute(column).fetchone()[0]  # type: ignore[arg-type,index]
    for statement in (
        f'INSERT INTO "{table}" DEFAULT VALUES',
        f'UPDATE "{table}" SET "{name}" = "{name}"',
        f'DELETE FROM "{table}"',
        f'TRUNCATE "{table}"',
        f'SELECT 1 FROM "{table}" FOR UPDATE',
        f'SELECT 1 FROM "{table}" FOR SHARE',
        f'LOCK TABLE "{table}" IN ACCESS EXCLUSIVE MODE',
    ):
        _assert_refused_sql(connection, statement)


def _assert_refused_sql(connection: psycopg.Connection[Any], statement: str) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        if statement.startswith("LOCK"):
            with connection.transaction():
                connection.execute(statement)  # type: ignore[arg-type]
        else:
            connection.execute(statement)  # type: ignore[arg-type]
