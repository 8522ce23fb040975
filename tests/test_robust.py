"""Records the database would refuse, the switch from the legacy content hash: end to end
through the CLI, the simulator over HTTP, Postgres and SQLite."""

import os
import random
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy import Engine
from sqlalchemy.engine import URL, make_url

from etl import db, schema
from etl.canonical import HASH_PREFIX, MAX_DEPTH, legacy_hash
from etl.simulator import Fault, Simulator, SimulatorConfig, SimulatorServer
from tests.harness import (
    Etl,
    admin,
    admin_url,
    assert_whole_jobs,
    cli_env,
    create_database,
    drop_database,
    dsn,
    etl_command,
    etl_for,
    invoke_cli,
    row_counts,
    run_cli,
    run_status,
    scalar,
    snapshot,
    start_paused,
    sync,
    wait_for,
    writes_on_postgres,
)


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def _incompressible(prefix: str, length: int) -> str:
    """A key of `length` characters that Postgres cannot compress below its index limit
    (2,704 bytes: a run of one letter compresses, and its index entry fits)."""
    return prefix + random.Random(prefix).randbytes(length).hex()[: length - len(prefix)]


def test_records_the_database_would_refuse_are_rejected_and_the_rest_loads(
    sim: Simulator, server: SimulatorServer, db_url: URL, engine: Engine, tmp_path: Path
) -> None:
    job_id = sim.jobs()[0]["jobId"]
    task = sim.tasks(job_id)[0]
    long_task, long_metric = _incompressible("t", 3000), _incompressible("m", 3000)
    long_job = _incompressible("j", 3000)
    sim.put_task(job_id, {**task, "taskId": long_task})
    sim.put_task(job_id, {**task, "taskId": "task-long-metric", "metrics": {long_metric: "1%"}})
    sim.put_task(job_id, {**task, "taskId": "task-deep", "unknown": {"x": _nested(600)}})
    sim.put_job({"jobId": long_job, "name": "a job whose id no index takes"})
    first = sync(sim, server, db_url, tmp_path)
    assert first.returncode == 0, first.stderr
    assert "4 rejects" in first.stdout
    with engine.connect() as connection:
        rejects = connection.execute(
            sa.select(schema.etl_rejects.c.source_id, schema.etl_rejects.c.reason)
        ).all()
    reasons = {source[:20]: reason for source, reason in rejects}
    assert reasons[long_task[:20]].startswith("taskId is 3000 bytes long")
    assert reasons[long_job[:20]].startswith("jobId is 3000 bytes long")
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
    assert "(0 changed), wrote 0 rows, 4 rejects" in second.stdout  # each stored once
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


# -- transactions and the run lock ---------------------------------------------------------


def _rows(url: URL, query: str) -> list[tuple[Any, ...]]:
    """A query's rows on the test server, its one parameter the database's name."""
    with psycopg.connect(dsn(url), autocommit=True) as connection:
        return connection.execute(query, [url.database]).fetchall()  # type: ignore[arg-type]


def _sessions(url: URL) -> list[tuple[Any, ...]]:
    """(pid, state) of every qianfan-etl session on the database."""
    return _rows(
        url,
        "SELECT pid, state FROM pg_stat_activity "
        "WHERE datname = %s AND application_name = 'qianfan-etl'",
    )


def test_no_transaction_stays_open_while_the_run_fetches(pg_etl: Etl, tmp_path: Path) -> None:
    """Paused between two fetches, with two batches written: every session is idle, none
    idle in a transaction (a DBA's idle_in_transaction_session_timeout would end it)."""
    pause = tmp_path / "pause"
    process = start_paused(pg_etl, "after_fetch:3", pause)
    deadline = time.monotonic() + 20
    while scalar(pg_etl.engine, "SELECT count(*) FROM finetune_jobs") < 2:
        assert time.monotonic() < deadline, "batch 2 was not committed while the run waited"
        time.sleep(0.01)
    states = [state for _, state in _sessions(pg_etl.url)]
    Path(f"{pause}.release").touch()
    assert process.wait(timeout=30) == 0, process.communicate()
    assert states and set(states) == {"idle"}
    assert scalar(pg_etl.engine, "SELECT count(*) FROM finetune_jobs") == len(pg_etl.sim.jobs())


def test_database_idle_timeouts_do_not_end_a_slow_run(
    pg_url: URL, pg_engine: Engine, tmp_path: Path, golden: Any
) -> None:
    """Every API call takes longer than the database lets a session idle: the lock's session
    and the work session both idle for as long, and the run still succeeds."""
    database = str(pg_url.database)
    admin(f"ALTER DATABASE \"{database}\" SET idle_session_timeout = '200ms'")
    admin(f"ALTER DATABASE \"{database}\" SET idle_in_transaction_session_timeout = '200ms'")
    config = SimulatorConfig(jobs=3, tasks_per_job=12, checkpoints=2, latency_ms=400)
    with etl_for(config, pg_url, pg_engine, tmp_path) as etl:
        expected = golden(etl)
        result = etl.invoke("--concurrency", "1", QIANFAN_ETL_API_DEADLINE="10")
        assert result.returncode == 0, result.stderr
        assert snapshot(etl.engine) == expected
        assert run_status(etl.engine, 1)[0] == "succeeded"


def _lock_holder(url: URL) -> int:
    rows = _rows(
        url,
        "SELECT l.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND a.datname = %s",
    )
    assert rows, "no session holds the run lock"
    return int(rows[0][0])


def test_a_run_that_lost_its_lock_stops_with_75_before_committing(
    pg_etl: Etl, golden: Any, tmp_path: Path
) -> None:
    expected = golden(pg_etl)
    pause = tmp_path / "pause"
    process = start_paused(pg_etl, "before_commit:2", pause)
    admin(f"SELECT pg_terminate_backend({_lock_holder(pg_etl.url)}, 10000)")  # until it is gone
    Path(f"{pause}.release").touch()
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 75, stderr
    # before issue 8 the run went on without its lock, committed every batch and recorded
    # itself `succeeded` though it exited 75
    assert len(assert_whole_jobs(pg_etl.engine, expected)) == 1  # batch 2 was not committed
    assert run_status(pg_etl.engine, 1)[0] == "failed"
    assert "lost its lock" in stderr and "Traceback" not in stderr
    pg_etl.assert_converges(expected)


# -- prompt shutdown -----------------------------------------------------------------------

JOBS, TASKS = "DescribeFineTuningJobs", "DescribeFineTuningTasks"
# Each case makes a worker wait 20 s or more: a rate-limit sleep, a Retry-After wait, a body
# that trickles in (with no per-attempt deadline, so nothing else would cut it).
WAITS: dict[str, tuple[list[str], dict[str, str], Fault | None]] = {
    "rate_limit": (["--qps", "0.05"], {}, None),
    "retry_after": (
        [],
        {"QIANFAN_ETL_API_RETRY_AFTER_CAP": "120"},
        Fault("status", TASKS, status=429, headers={"Retry-After": "60"}),
    ),
    "slow_response": (
        [],
        {"QIANFAN_ETL_API_DEADLINE": "0"},
        Fault("slow_body", TASKS, interval=1.0),
    ),
}


@pytest.mark.parametrize("wait", list(WAITS))
def test_sigterm_ends_the_run_at_once_whatever_the_workers_wait_on(
    wait: str, pg_etl: Etl, golden: Any
) -> None:
    expected = golden(pg_etl)
    args, env, fault = WAITS[wait]
    if fault is not None:
        pg_etl.sim.inject(fault)
    process = pg_etl.start(*args, **env)
    deadline = time.monotonic() + 20
    while not _waiting(pg_etl.sim, wait):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the run never reached its wait"
        time.sleep(0.01)
    time.sleep(0.2)  # well inside the wait
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=10)  # a bound, far below the 20+ s the wait asked for
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"still running 10 s after SIGTERM: {process.communicate()}")
    _, stderr = process.communicate()
    assert process.returncode == 143, stderr
    assert run_status(pg_etl.engine, 1)[0] == "failed"
    pg_etl.assert_converges(expected)


def _waiting(sim: Simulator, wait: str) -> bool:
    """Whether the run has reached the wait the case is about."""
    if wait == "rate_limit":
        return sim.api_calls >= 1  # the first call goes at once, the next in 20 s
    if wait == "retry_after":
        return any(r.action == TASKS and r.status == 429 for r in sim.requests)
    return any(r.action == TASKS for r in sim.requests)  # its body trickles from now on


# -- exit codes ----------------------------------------------------------------------------


def test_a_read_only_database_is_a_configuration_error(
    sim: Simulator, server: SimulatorServer, pg_url: URL, tmp_path: Path
) -> None:
    admin(f'ALTER DATABASE "{pg_url.database}" SET default_transaction_read_only = on')
    result = sync(sim, server, pg_url, tmp_path)
    assert result.returncode == 78, result.stderr
    assert "is read-only" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("where", ["missing_database", "missing_directory"])
def test_a_database_that_does_not_exist_is_a_configuration_error(
    where: str, sim: Simulator, server: SimulatorServer, pg_url: URL, tmp_path: Path
) -> None:
    if where == "missing_database":
        url = pg_url.set(database=f"{pg_url.database}_missing")
    else:
        url = make_url(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / 'etl.db'}")
    result = sync(sim, server, url, tmp_path)
    assert result.returncode == 78, result.stderr
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr
    assert sim.api_calls == 0


def test_a_port_that_is_not_a_number_is_a_clear_configuration_error(
    sim: Simulator, server: SimulatorServer, pg_url: URL, tmp_path: Path
) -> None:
    env = cli_env(sim, server, pg_url, DATABASE_URL="postgresql://etl:hunter2@db:abc/x")
    result = invoke_cli(["sync"], env, cwd=tmp_path)
    assert result.returncode == 78, result.stderr
    assert "port that is not a number" in result.stderr
    assert "Traceback" not in result.stderr and "hunter2" not in result.stderr


def test_a_redirect_is_reported_with_its_location(
    sim: Simulator, server: SimulatorServer, db_url: URL, tmp_path: Path
) -> None:
    location = "https://sso.example.com/login?token=s3cret"
    sim.inject(Fault("status", JOBS, status=302, headers={"Location": location}))
    result = sync(sim, server, db_url, tmp_path)
    assert result.returncode == 78, result.stderr
    assert "HTTP 302 redirect to https://sso.example.com/login" in result.stderr
    assert "s3cret" not in result.stderr


def test_api_deadline_0_means_no_deadline(
    sim: Simulator, server: SimulatorServer, db_url: URL, engine: Engine, tmp_path: Path
) -> None:
    result = sync(sim, server, db_url, tmp_path, "--api-deadline", "0")
    assert result.returncode == 0, result.stderr
    assert scalar(engine, "SELECT count(*) FROM finetune_tasks") == 6 * 13


# -- migrations ----------------------------------------------------------------------------


def _db_env(url: URL, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QIANFAN_", "DATABASE_URL"))}
    return {**env, "DATABASE_URL": url.render_as_string(hide_password=False), **extra}


def _sqlite_schema(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as connection:
        query = "SELECT type, name, sql FROM sqlite_master ORDER BY type, name"
        return [tuple(row) for row in connection.exec_driver_sql(query)]


@pytest.mark.parametrize("start", [None, "0002"])
def test_an_interrupted_sqlite_upgrade_leaves_the_previous_revision(
    start: str | None, tmp_path: Path
) -> None:
    url = make_url(f"sqlite:///{tmp_path / 'etl.db'}")
    engine = db.create(url)
    if start is not None:
        db.upgrade(engine, start)
    before = _sqlite_schema(engine)
    # SIGINT once the first revision of the run is applied, before the next one
    plan = {"QIANFAN_ETL_FAULT": "after_revision:1:sigint"}
    interrupted = run_cli(["db", "upgrade"], _db_env(url, **plan), cwd=tmp_path)
    assert interrupted.returncode == 130, interrupted.stderr
    assert db.current_revision(engine) == start
    assert _sqlite_schema(engine) == before
    again = run_cli(["db", "upgrade"], _db_env(url), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert db.current_revision(engine) == db.head_revision()
    engine.dispose()


def test_the_suite_sends_its_signals_however_it_is_started(tmp_path: Path) -> None:
    """Run from a background job or nohup, pytest starts with SIGINT ignored; the interrupted
    upgrade above must still see its SIGINT (it got 0 for 130 before conftest reset it)."""
    test = f"{__file__}::test_an_interrupted_sqlite_upgrade_leaves_the_previous_revision"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test]
    ignored = subprocess.run(
        ["sh", "-c", 'trap "" INT; exec "$@"', "sh", *command],
        cwd=Path(__file__).parent.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ignored.returncode == 0, ignored.stdout[-2000:]
    assert "2 passed" in ignored.stdout


@pytest.fixture
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[URL]:
    """A database that was never migrated, on the backend the test names."""
    if request.param == "sqlite":
        yield make_url(f"sqlite:///{tmp_path / 'etl.db'}")
        return
    name = f"qfetl_empty_{secrets.token_hex(6)}"
    create_database(name)
    yield admin_url().set(database=name)
    drop_database(name)


@pytest.mark.parametrize("empty_url", ["postgresql", "sqlite"], indirect=True)
def test_two_upgrades_at_once_both_succeed(empty_url: URL, tmp_path: Path) -> None:
    """The second waits for the first, then finds nothing to do."""
    pause = tmp_path / "pause"
    plan = {"QIANFAN_ETL_FAULT": f"after_revision:2:pause:{pause}"}
    upgrade = ["db", "upgrade"]
    captured: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    env = _db_env(empty_url, **plan)
    first = subprocess.Popen([*etl_command(env), *upgrade], env=env, cwd=tmp_path, **captured)
    wait_for(Path(f"{pause}.reached"), first)  # mid-migration, holding the migration lock
    env = _db_env(empty_url)
    second = subprocess.Popen([*etl_command(env), *upgrade], env=env, cwd=tmp_path, **captured)
    if empty_url.get_backend_name() == "postgresql":
        _wait_for_a_lock_wait(empty_url, second)
    else:
        time.sleep(0.5)  # time to reach SQLite's write lock; no assertion rests on it
    assert second.poll() is None, second.communicate()
    Path(f"{pause}.release").touch()
    assert first.wait(timeout=60) == 0, first.communicate()
    out, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    engine = db.create(empty_url)
    assert db.current_revision(engine) == db.head_revision()
    assert f"at revision {db.head_revision()}" in out
    engine.dispose()


def _wait_for_a_lock_wait(url: URL, process: subprocess.Popen[str]) -> None:
    """Until a session of the database waits for an advisory lock (bounded)."""
    query = (
        "SELECT l.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND NOT l.granted AND a.datname = %s"
    )
    deadline = time.monotonic() + 20
    while not _rows(url, query):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the second upgrade never waited for the lock"
        time.sleep(0.01)


def _start_upgrade(url: URL, tmp_path: Path) -> subprocess.Popen[str]:
    env = _db_env(url)
    return subprocess.Popen(
        [*etl_command(env), "db", "upgrade"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@contextmanager
def _first_write_held(url: URL) -> Iterator[None]:
    """Hold back the first write an upgrade makes: SQLite's write lock, or on Postgres an
    uncommitted alembic_version table (its catalog rows make a CREATE of the same name wait)."""
    if url.get_backend_name() == "sqlite":
        holder = sqlite3.connect(str(url.database), isolation_level=None)
        holder.execute("PRAGMA journal_mode=WAL")  # as etl.db sets it, so no upgrade needs to
        holder.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        return
    with psycopg.connect(dsn(url)) as connection:
        connection.execute("CREATE TABLE alembic_version (version_num varchar(32) NOT NULL)")
        yield
        connection.rollback()


def _waiting_for_sqlite(process: subprocess.Popen[str], path: Path) -> bool:
    """Whether the process has the database open and sleeps: SQLite's busy handler sleeps
    between its tries for the write lock; starting up and migrating do not sleep."""
    proc = Path(f"/proc/{process.pid}")
    try:
        opened = any(os.readlink(fd) == str(path) for fd in (proc / "fd").iterdir())
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:  # not started yet, or a descriptor closed while we looked
        return False
    return opened and state == "S"


def _lock_waiters(url: URL) -> int:
    query = (
        "SELECT count(DISTINCT l.pid) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE NOT l.granted AND a.datname = %s"
    )
    return int(_rows(url, query)[0][0])


def _wait_until_all_wait(url: URL, processes: list[subprocess.Popen[str]]) -> None:
    """Until every process waits on the held write (bounded; three looks in a row on SQLite,
    whose busy handler wakes up now and then)."""
    path = Path(str(url.database)).resolve()
    deadline, streak = time.monotonic() + 30, 0
    while streak < 3:
        for process in processes:
            assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the upgrades never waited for the held write"
        if url.get_backend_name() == "sqlite":
            waiting = all(_waiting_for_sqlite(process, path) for process in processes)
        else:
            waiting = _lock_waiters(url) == len(processes)
        streak = streak + 1 if waiting else 0
        time.sleep(0.02)


@pytest.mark.parametrize("empty_url", ["postgresql", "sqlite"], indirect=True)
def test_two_upgrades_that_start_together_both_succeed(empty_url: URL, tmp_path: Path) -> None:
    """Both upgrades reach their first write before either makes it, so they overlap for
    sure: each saw no schema, and one that then creates tables without waiting for the other
    fails (before issue 8: 'table alembic_version already exists', exit 75, on SQLite; a
    duplicate pg_type key, exit 1, on Postgres). Serialised, the second finds nothing to do."""
    with _first_write_held(empty_url):
        upgrades = [_start_upgrade(empty_url, tmp_path) for _ in range(2)]
        _wait_until_all_wait(empty_url, upgrades)
    for process in upgrades:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        assert f"at revision {db.head_revision()}" in out
    engine = db.create(empty_url)
    assert db.current_revision(engine) == db.head_revision()
    engine.dispose()


def _tables_seen(watcher: sqlite3.Connection) -> int:
    query = "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name <> 'alembic_version'"
    return int(watcher.execute(query).fetchone()[0])


def test_a_sigint_once_a_table_shows_leaves_a_whole_revision(tmp_path: Path) -> None:
    """The issue's report, from outside: interrupt a SQLite `db upgrade` as soon as another
    session sees one of its tables, while the test's write lock holds its next statement
    back. An upgrade that commits table by table is mid-revision then (before issue 8: every
    table, no version row, and `db upgrade` failing 'already exists' from then on); one in a
    single transaction shows its tables only once its revisions are all recorded."""
    url = make_url(f"sqlite:///{tmp_path / 'etl.db'}")
    watcher = sqlite3.connect(str(url.database), isolation_level=None)
    watcher.execute("PRAGMA journal_mode=WAL")
    upgrade = _start_upgrade(url, tmp_path)
    deadline = time.monotonic() + 30
    while not _tables_seen(watcher):
        assert upgrade.poll() is None, upgrade.communicate()
        assert time.monotonic() < deadline, "no table of the upgrade ever showed"
        time.sleep(0.001)
    watcher.execute("BEGIN IMMEDIATE")
    upgrade.send_signal(signal.SIGINT)
    watcher.execute("ROLLBACK")
    watcher.close()
    _, err = upgrade.communicate(timeout=60)
    engine = db.create(url)
    revision = db.current_revision(engine)
    reference = db.create(make_url(f"sqlite:///{tmp_path / 'reference.db'}"))
    if revision is not None:
        db.upgrade(reference, revision)
    assert _sqlite_schema(engine) == _sqlite_schema(reference), f"at revision {revision}"
    # 130: stopped by the signal; -SIGINT: it came while the interpreter shut down
    assert upgrade.returncode in (0, 130, -signal.SIGINT), err
    again = run_cli(["db", "upgrade"], _db_env(url), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert db.current_revision(engine) == db.head_revision()
    engine.dispose()
    reference.dispose()
