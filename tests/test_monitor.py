"""Monitoring: `status --max-age`, `db current`'s exit code, and the metrics file of `sync`."""

import os
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine
from sqlalchemy.engine import URL, make_url

from etl import db, load
from etl.config import parse_duration
from etl.schema import etl_runs
from etl.simulator import Simulator, SimulatorServer
from tests.harness import FAST, cli_env, free_port, invoke_cli, run_cli


def cli(
    args: list[str], sim: Simulator, server: SimulatorServer, url: URL, cwd: Path, **env: str
) -> subprocess.CompletedProcess[str]:
    """`qianfan-etl ARGS` in this process, pointed at the simulator and the database."""
    return invoke_cli(args, cli_env(sim, server, url, **{**FAST, **env}), cwd=cwd)


def unreachable_api(**env: str) -> dict[str, str]:
    return {"QIANFAN_CONSOLE_API_BASE_URL": f"http://127.0.0.1:{free_port()}", **env}


def age_runs(engine: Engine, by: timedelta) -> None:
    """Move every recorded run back in time, as if it had happened `by` earlier."""
    with engine.begin() as connection:
        for row in connection.execute(sa.select(etl_runs)).all():
            connection.execute(
                etl_runs.update()
                .where(etl_runs.c.run_id == row.run_id)
                .values(
                    started_at=_aware(row.started_at) - by,
                    finished_at=row.finished_at and _aware(row.finished_at) - by,
                )
            )


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# -- status --max-age ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90m", 5400), ("2h", 7200), ("1d", 86400), ("1h30m", 5400), ("45", 45), ("1.5h", 5400)],
)
def test_duration_grammar(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "h", "2y", "-1h", "1h 30m", "1e3s"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_max_age_never_ran_then_fresh_then_stale(
    sim: Simulator, server: SimulatorServer, db_url: URL, engine: Engine, tmp_path: Path
) -> None:
    never = cli(["status", "--max-age", "1h"], sim, server, db_url, tmp_path)
    assert never.returncode == 69, never.stderr
    assert "never ran" in never.stderr and len(never.stderr.strip().splitlines()) == 1
    assert cli(["sync"], sim, server, db_url, tmp_path).returncode == 0
    fresh = cli(["status", "--max-age", "1h"], sim, server, db_url, tmp_path)
    assert fresh.returncode == 0, fresh.stderr
    assert fresh.stdout.startswith("fresh: run 1 succeeded")
    age_runs(engine, timedelta(hours=3, minutes=5))
    stale = cli(["status", "--max-age", "2h"], sim, server, db_url, tmp_path)
    assert stale.returncode == 69 and stale.stdout == ""
    assert "stale: the latest run, 1, succeeded 3h05m ago" in stale.stderr
    assert "--max-age 2h" in stale.stderr
    assert cli(["status", "--max-age", "1d"], sim, server, db_url, tmp_path).returncode == 0


def test_max_age_fails_when_the_latest_run_failed(
    sim: Simulator, server: SimulatorServer, db_url: URL, tmp_path: Path
) -> None:
    assert cli(["sync"], sim, server, db_url, tmp_path).returncode == 0
    failed = cli(["sync"], sim, server, db_url, tmp_path, **unreachable_api())
    assert failed.returncode == 75, failed.stderr
    check = cli(["status", "--max-age", "1h"], sim, server, db_url, tmp_path)
    assert check.returncode == 69
    line = check.stderr.strip()
    assert "failed: run 2 ended" in line and "DescribeFineTuningJobs" in line and "\n" not in line


@pytest.mark.parametrize("status", ["partial", "abandoned"])
def test_max_age_fails_on_partial_and_abandoned_runs(
    status: str,
    sim: Simulator,
    server: SimulatorServer,
    db_url: URL,
    engine: Engine,
    tmp_path: Path,
) -> None:
    assert cli(["sync"], sim, server, db_url, tmp_path).returncode == 0
    with engine.begin() as connection:
        connection.execute(
            etl_runs.insert().values(
                started_at=load.now(),
                finished_at=load.now(),
                status=status,
                error="job j-1 broke",
                jobs_failed=2,
            )
        )
    check = cli(["status", "--max-age", "1h"], sim, server, db_url, tmp_path)
    assert check.returncode == 69
    assert f"{status}: run 2 ended" in check.stderr and "job j-1 broke" in check.stderr
    assert "2 jobs could not be listed (see etl_failed_jobs)" in check.stderr


def test_max_age_judges_the_latest_finished_run_not_one_in_progress(
    sim: Simulator, server: SimulatorServer, db_url: URL, engine: Engine, tmp_path: Path
) -> None:
    assert cli(["sync"], sim, server, db_url, tmp_path).returncode == 0
    with engine.begin() as connection:
        running = load.start_run(connection)
        connection.execute(
            etl_runs.insert().values(
                started_at=load.now(), finished_at=load.now(), status="failed", mode="selected"
            )
        )
    check = cli(["status", "--max-age", "1h"], sim, server, db_url, tmp_path)
    assert check.returncode == 0, check.stderr
    assert "run 1 succeeded" in check.stdout and running == 2
    age_runs(engine, timedelta(hours=2))
    assert cli(["status", "--max-age", "1h"], sim, server, db_url, tmp_path).returncode == 69


def test_max_age_refuses_a_bad_duration(
    sim: Simulator, server: SimulatorServer, sqlite_url: URL, tmp_path: Path
) -> None:
    result = cli(["status", "--max-age", "soon"], sim, server, sqlite_url, tmp_path)
    assert result.returncode == 2 and "not a duration" in result.stderr


# -- db current ----------------------------------------------------------------------------


def test_db_current_exits_78_unless_at_head(tmp_path: Path) -> None:
    url = make_url(f"sqlite:///{tmp_path / 'x.db'}")
    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": str(url)}
    before = invoke_cli(["db", "current"], env, cwd=tmp_path)
    assert before.returncode == 78 and "current: none" in before.stdout
    assert "db upgrade" in before.stderr
    assert invoke_cli(["db", "upgrade"], env, cwd=tmp_path).returncode == 0
    engine = db.create(url)
    db.downgrade(engine, "0003")
    behind = invoke_cli(["db", "current"], env, cwd=tmp_path)
    assert behind.returncode == 78 and "current: 0003" in behind.stdout
    assert "not at head" in behind.stdout and "db upgrade" in behind.stderr
    db.upgrade(engine)
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = 'ffff'"))
    ahead = invoke_cli(["db", "current"], env, cwd=tmp_path)
    assert ahead.returncode == 78 and "upgrade qianfan-etl" in ahead.stderr
    engine.dispose()


# -- sync --metrics-file -------------------------------------------------------------------


def read_metrics(path: Path) -> dict[str, Any]:
    """The file parsed by prometheus_client: {name: value} and {name{label}: value}."""
    values: dict[str, Any] = {}
    for family in text_string_to_metric_families(path.read_text()):
        assert family.name.startswith("qianfan_etl_") and family.documentation
        for sample in family.samples:
            key = sample.name + "".join(f"{{{v}}}" for v in sample.labels.values())
            values[key] = sample.value
    return values


def latest_run(engine: Engine) -> Any:
    with engine.connect() as connection:
        return connection.execute(
            sa.select(etl_runs).order_by(etl_runs.c.run_id.desc()).limit(1)
        ).one()


def test_metrics_after_success_then_failure(
    sim: Simulator, server: SimulatorServer, db_url: URL, engine: Engine, tmp_path: Path
) -> None:
    path = tmp_path / "metrics" / "qianfan_etl.prom"
    path.parent.mkdir()
    ok = cli(["sync", "--metrics-file", str(path)], sim, server, db_url, tmp_path)
    assert ok.returncode == 0, ok.stderr
    run = latest_run(engine)
    first = read_metrics(path)
    assert first["qianfan_etl_last_run_status{succeeded}"] == 1
    assert first["qianfan_etl_last_run_status{failed}"] == 0
    assert first["qianfan_etl_last_run_exit_code"] == 0
    assert first["qianfan_etl_last_run_id"] == run.run_id
    assert (
        first["qianfan_etl_last_success_timestamp_seconds"] == _aware(run.finished_at).timestamp()
    )
    assert first["qianfan_etl_last_run_jobs"] == len(sim.jobs()) == run.jobs_seen
    assert first["qianfan_etl_last_run_tasks"] == run.tasks_seen > 0
    assert first["qianfan_etl_last_run_rows_written"] == run.rows_written > 0
    assert first["qianfan_etl_last_run_api_calls"] == sim.api_calls == run.api_calls
    assert first["qianfan_etl_last_run_rejects"] == 0
    assert first["qianfan_etl_last_run_failed_jobs"] == run.jobs_failed == 0
    assert first["qianfan_etl_last_run_duration_seconds"] > 0
    failed = cli(
        ["sync"],
        sim,
        server,
        db_url,
        tmp_path,
        **unreachable_api(QIANFAN_ETL_METRICS_FILE=str(path)),
    )
    assert failed.returncode == 75
    second = read_metrics(path)
    assert second["qianfan_etl_last_run_status{failed}"] == 1
    assert second["qianfan_etl_last_run_status{succeeded}"] == 0
    assert second["qianfan_etl_last_run_exit_code"] == 75
    assert second["qianfan_etl_last_run_id"] == latest_run(engine).run_id == run.run_id + 1
    assert (
        second["qianfan_etl_last_success_timestamp_seconds"]
        == (first["qianfan_etl_last_success_timestamp_seconds"])
    )
    assert (
        second["qianfan_etl_last_run_timestamp_seconds"]
        > first["qianfan_etl_last_run_timestamp_seconds"]
    )
    assert second["qianfan_etl_last_run_jobs"] == 0
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp file left


def test_metrics_when_the_database_is_down(
    sim: Simulator, server: SimulatorServer, tmp_path: Path, sqlite_url: URL
) -> None:
    path = tmp_path / "qianfan_etl.prom"
    assert (
        cli(["sync", "--metrics-file", str(path)], sim, server, sqlite_url, tmp_path).returncode
        == 0
    )
    success = read_metrics(path)["qianfan_etl_last_success_timestamp_seconds"]
    down = make_url(f"postgresql://etl:pw@127.0.0.1:{free_port()}/qianfan")
    result = cli(["sync", "--metrics-file", str(path)], sim, server, down, tmp_path)
    assert result.returncode == 75, result.stderr
    values = read_metrics(path)
    assert values["qianfan_etl_last_run_exit_code"] == 75
    assert values["qianfan_etl_last_run_status{failed}"] == 1
    assert values["qianfan_etl_last_run_api_calls"] == 0
    assert values["qianfan_etl_last_success_timestamp_seconds"] == success  # carried over
    assert "qianfan_etl_last_run_id" not in values and "qianfan_etl_last_run_jobs" not in values


def test_metrics_on_a_first_run_that_fails_has_no_success_time(
    sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    path = tmp_path / "qianfan_etl.prom"
    down = make_url(f"postgresql://etl:pw@127.0.0.1:{free_port()}/qianfan")
    result = cli(["sync", "--metrics-file", str(path)], sim, server, down, tmp_path)
    assert result.returncode == 75
    values = read_metrics(path)
    assert values["qianfan_etl_last_run_exit_code"] == 75
    assert "qianfan_etl_last_success_timestamp_seconds" not in values


def test_dry_run_leaves_the_metrics_file_alone(
    sim: Simulator, server: SimulatorServer, sqlite_url: URL, tmp_path: Path
) -> None:
    path = tmp_path / "qianfan_etl.prom"
    result = cli(
        ["sync", "--dry-run", "--metrics-file", str(path)], sim, server, sqlite_url, tmp_path
    )
    assert result.returncode == 0 and not path.exists()


@pytest.mark.parametrize(("fault", "code"), [("sigterm", 143), ("raise", 1)])
def test_metrics_after_an_interrupted_or_crashed_run(
    fault: str, code: int, sim: Simulator, server: SimulatorServer, pg_url: URL, tmp_path: Path
) -> None:
    path = tmp_path / "qianfan_etl.prom"
    env = cli_env(sim, server, pg_url, **FAST, QIANFAN_ETL_FAULT=f"after_fetch:2:{fault}")
    # a subprocess: the signal and the crash end a process
    result = run_cli(["sync", "--metrics-file", str(path)], env, cwd=tmp_path)
    assert result.returncode == code, result.stderr
    values = read_metrics(path)
    assert values["qianfan_etl_last_run_exit_code"] == code
    assert values["qianfan_etl_last_run_status{failed}"] == 1
    # the run record counts what the run committed (a signal rolls back the batch in flight)
    engine = db.create(pg_url)
    with engine.connect() as connection:
        stored = connection.execute(sa.text("SELECT count(*) FROM finetune_jobs")).scalar_one()
    engine.dispose()
    assert values["qianfan_etl_last_run_id"] == 1
    assert values["qianfan_etl_last_run_jobs"] == stored


DOWN = "postgresql://etl:pw@127.0.0.1:{port}/qianfan"


@pytest.mark.parametrize(
    "garble",
    [b"\xff\xfe\x00 not UTF-8", b"qianfan_etl_last_success_timestamp_seconds soon\n", b'x{a="\n'],
    ids=["binary", "bad-value", "torn"],
)
def test_a_garbled_metrics_file_is_replaced_and_the_run_keeps_its_exit_code(
    garble: bytes, sim: Simulator, server: SimulatorServer, tmp_path: Path
) -> None:
    path = tmp_path / "qianfan_etl.prom"
    path.write_bytes(garble)
    down = make_url(DOWN.format(port=free_port()))
    # a subprocess, as cron runs it: what went wrong was a traceback out of the process
    env = cli_env(sim, server, down, **FAST)
    result = run_cli(["sync", "--metrics-file", str(path)], env, cwd=tmp_path)
    assert result.returncode == 75, result.stderr
    assert f"WARNING etl.monitor: metrics: the previous metrics file {path}" in result.stderr
    assert "it is replaced" in result.stderr and "Traceback" not in result.stderr
    values = read_metrics(path)
    assert values["qianfan_etl_last_run_exit_code"] == 75
    assert "qianfan_etl_last_success_timestamp_seconds" not in values
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temp file left


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory on a read-only filesystem (a tmpfs mounted ro): even root cannot write."""
    if os.geteuid() != 0:
        pytest.skip("mounting a read-only tmpfs needs root (CI runs as root)")
    directory = tmp_path / "read-only"
    directory.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(directory)], check=True
    )
    yield directory
    subprocess.run(["umount", str(directory)], check=True)


@pytest.mark.parametrize("where", ["missing", "a file", "read-only"])
@pytest.mark.parametrize("database", ["up", "down"])
def test_a_metrics_file_that_cannot_be_written_is_a_warning_never_the_exit_code(
    where: str,
    database: str,
    sim: Simulator,
    server: SimulatorServer,
    sqlite_url: URL,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    directory = tmp_path / "textfile"
    if where == "a file":
        directory.write_text("not a directory\n")
    if where == "read-only":
        directory = request.getfixturevalue("read_only_dir")
    path = directory / "qianfan_etl.prom"
    url = sqlite_url if database == "up" else make_url(DOWN.format(port=free_port()))
    result = cli(["sync", "--metrics-file", str(path)], sim, server, url, tmp_path)
    code = 0 if database == "up" else 75
    assert result.returncode == code, result.stderr
    assert f"WARNING etl.monitor: could not write the metrics file {path}" in result.stderr
    assert f"the run's exit code stays {code}" in result.stderr
    assert "Traceback" not in result.stderr and not path.exists()


def test_the_metrics_file_is_fsynced_before_its_rename_and_the_directory_after(
    sim: Simulator,
    server: SimulatorServer,
    sqlite_url: URL,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "textfile" / "qianfan_etl.prom"
    path.parent.mkdir()
    calls: list[tuple[str, str]] = []
    fsync, replace = os.fsync, os.replace

    def spy_fsync(fd: int) -> None:
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def spy_replace(source: Any, target: Any) -> None:
        calls.append(("replace", f"{source} -> {target}"))
        replace(source, target)

    monkeypatch.setattr(os, "fsync", spy_fsync)
    monkeypatch.setattr(os, "replace", spy_replace)
    result = cli(["sync", "--metrics-file", str(path)], sim, server, sqlite_url, tmp_path)
    assert result.returncode == 0, result.stderr
    monkeypatch.undo()
    mine = [call for call in calls if str(path.parent) in call[1]]
    (temp,) = {name for kind, name in mine if kind == "fsync" and name != str(path.parent)}
    assert mine == [
        ("fsync", temp),
        ("replace", f"{temp} -> {path}"),
        ("fsync", str(path.parent)),
    ]
    assert read_metrics(path)["qianfan_etl_last_run_exit_code"] == 0
