"""A full disk under the database or the report: exit 74 with what to free, nothing half-written.

The disks are real: a small tmpfs filled by a ballast file (tests/disks.py); these tests skip,
saying so, where the process cannot mount one (CI runs as root and mounts)."""

import os
import pwd
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine
from sqlalchemy.engine import URL, make_url

from etl import db
from etl.errors import EtlError
from etl.extract import SPOOL_AFTER
from etl.simulator import SimulatorConfig
from tests.disks import fill, tmpfs
from tests.harness import (
    Etl,
    admin,
    admin_url,
    checkpoints_possible,
    etl_for,
    invoke_cli,
    run_cli,
    snapshot,
)

SEED = SimulatorConfig(jobs=2, tasks_per_job=13, checkpoints=40, seed=7)
# The same account with more jobs: the next run has whole new jobs to write, each batch of
# them (a job's 13 tasks and 520 checkpoints) larger than the room a test leaves.
GROWN = SimulatorConfig(jobs=8, tasks_per_job=13, checkpoints=40, seed=7)
# Room for SQLite to open the database (its 32 KiB -shm file) and record the run's start,
# not for a batch: the first batch finds the disk full.
ROOM_FOR_THE_RUN_ROW = 96 * 1024


def seeded(url: URL, cwd: Path) -> Engine:
    """The database at head with the SEED account loaded by a clean sync."""
    engine = db.create(url)
    db.upgrade(engine)
    with etl_for(SEED, url, engine, cwd) as etl:
        etl.sync_here()
    return engine


def runs(engine: Engine) -> list[tuple[Any, ...]]:
    """Every run: id, status, exit code, error."""
    with engine.connect() as connection:
        query = sa.text("SELECT run_id, status, exit_code, error FROM etl_runs ORDER BY run_id")
        return [tuple(row) for row in connection.execute(query)]


def gauges(path: Path) -> dict[str, float]:
    """The metrics file's samples by name, `name{status}` for the status gauge."""
    samples = {}
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            status = sample.labels.get("status")
            samples[sample.name + (f"{{{status}}}" if status else "")] = sample.value
    return samples


def test_sqlite_disk_full_mid_run_exits_74_changes_no_row_and_records_the_run_failed(
    tmp_path: Path,
) -> None:
    with tmpfs("16m") as disk:
        url = make_url(f"sqlite:///{disk / 'etl.db'}")
        engine = seeded(url, tmp_path)
        before = snapshot(engine)
        engine.dispose()  # the last connection closes: SQLite checkpoints and drops the WAL
        ballast = fill(disk, leave=ROOM_FOR_THE_RUN_ROW)
        with etl_for(GROWN, url, engine, tmp_path) as etl:
            result = etl.invoke("--metrics-file", str(tmp_path / "etl.prom"))
            ballast.unlink()
            assert result.returncode == 74, result.stderr
            expected = f"the database's disk is full: free space on the filesystem of {disk} ("
            assert expected in result.stderr and "SQLITE_FULL" in result.stderr
            assert snapshot(engine) == before
            _, status, code, error = runs(engine)[-1]
            assert (status, code) == ("failed", 74) and error.startswith(expected)
            written = gauges(tmp_path / "etl.prom")
            assert written["qianfan_etl_last_run_exit_code"] == 74
            assert written["qianfan_etl_last_run_status{failed}"] == 1
            check = invoke_cli(["status", "--max-age", "1h"], etl.env(), cwd=tmp_path)
        engine.dispose()
    assert check.returncode == 69
    assert "failed: run 2 ended" in check.stderr
    assert "with exit 74: the database's disk is full: free space on" in check.stderr


def test_sqlite_too_full_to_open_exits_74_before_any_api_call(tmp_path: Path) -> None:
    with tmpfs("16m") as disk:
        url = make_url(f"sqlite:///{disk / 'etl.db'}")
        engine = seeded(url, tmp_path)
        before = snapshot(engine), runs(engine)
        engine.dispose()
        ballast = fill(disk)
        with etl_for(GROWN, url, engine, tmp_path) as etl:
            result = etl.invoke()
            ballast.unlink()
            assert result.returncode == 74, result.stderr
            assert "the database's disk is full: free space on the filesystem of" in result.stderr
            assert "SQLITE_IOERR_SHMSIZE" in result.stderr  # SQLite's own words: disk I/O error
            assert (snapshot(engine), runs(engine)) == before
            assert etl.sim.api_calls == 0
        engine.dispose()


@pytest.fixture
def pg_disk(pg_template: str) -> Iterator[tuple[URL, Path]]:
    """A fresh Postgres database at head whose files are all on a small tmpfs of their own
    (a tablespace there), and that tmpfs; database, tablespace and mount go afterwards."""
    owner = pwd.getpwnam("postgres")
    # the disk filled, no checkpoint of the server finishes: no other test may need one
    with checkpoints_possible(exclusive=True), tmpfs("16m", owner=owner.pw_uid) as disk:
        location = disk / "tablespace"
        location.mkdir()
        os.chown(location, owner.pw_uid, owner.pw_gid)
        name = f"qfetl_full_{secrets.token_hex(6)}"
        admin(f"CREATE TABLESPACE {name} LOCATION '{location}'")
        try:
            admin(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}" TABLESPACE {name}')
            try:
                yield admin_url().set(database=name), disk
            finally:
                (disk / "ballast").unlink(missing_ok=True)
                admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            admin(f"DROP TABLESPACE IF EXISTS {name}")


def test_postgres_disk_full_exits_74_changes_no_row_and_records_the_run_failed(
    pg_disk: tuple[URL, Path], tmp_path: Path
) -> None:
    url, disk = pg_disk
    url = url.set(password="full-disk-s3cret")  # the test server trusts; nothing may show it
    engine = seeded(url, tmp_path)
    before = snapshot(engine)
    fill(disk)
    with etl_for(GROWN, url, engine, tmp_path) as etl:
        result = etl.invoke()
    assert result.returncode == 74, result.stderr
    where = f"the Postgres server at 127.0.0.1:5432, database {url.database}"
    expected = f"the database's disk is full: free space on {where} ("
    assert expected in result.stderr and "No space left on device" in result.stderr
    assert snapshot(engine) == before
    _, status, code, error = runs(engine)[-1]
    assert (status, code) == ("failed", 74) and error.startswith(expected)
    assert "s3cret" not in result.stderr + error
    engine.dispose()


@pytest.mark.parametrize(
    ("condition", "code"),
    [("disk_full", 74), ("too_many_connections", 75), ("insufficient_resources", 75)],
)
def test_only_disk_full_of_postgres_class_53_exits_74(
    pg_engine: Engine, condition: str, code: int
) -> None:
    """The server raises each SQLSTATE for real (RAISE ... USING ERRCODE)."""
    raising = f"RAISE EXCEPTION 'as the server says' USING ERRCODE = '{condition}'"
    with (
        pytest.raises(EtlError) as raised,
        db.translated_errors(pg_engine.url),
        pg_engine.connect() as connection,
    ):
        connection.execute(sa.text(f"DO $$ BEGIN {raising}; END $$"))
    assert raised.value.exit_code == code
    assert ("the database's disk is full" in str(raised.value)) == (code == 74)


def test_sqlite_full_is_74_without_a_full_disk_too(tmp_path: Path) -> None:
    """SQLITE_FULL for real where no tmpfs can be mounted: a page-count cap fills the file."""
    engine = db.create(make_url(f"sqlite:///{tmp_path / 'capped.db'}"))
    with (
        pytest.raises(EtlError) as raised,
        db.translated_errors(engine.url),
        engine.begin() as connection,
    ):
        connection.exec_driver_sql("CREATE TABLE t (x BLOB)")
        pages = connection.exec_driver_sql("PRAGMA page_count").scalar()
        connection.exec_driver_sql(f"PRAGMA max_page_count = {pages}")
        connection.exec_driver_sql("INSERT INTO t VALUES (zeroblob(100000))")
    engine.dispose()
    assert raised.value.exit_code == 74
    assert f"free space on the filesystem of {tmp_path} (" in str(raised.value)


# -- the report ------------------------------------------------------------------------------


@pytest.fixture
def reported(tmp_path: Path) -> Iterator[Etl]:
    """The SEED account synced into SQLite beside the test, to write reports of."""
    url = make_url(f"sqlite:///{tmp_path / 'etl.db'}")
    engine = seeded(url, tmp_path)
    with etl_for(SEED, url, engine, tmp_path) as etl:
        yield etl
    engine.dispose()


def test_report_onto_a_full_disk_exits_74_and_keeps_the_old_page(
    reported: Etl, tmp_path: Path
) -> None:
    with tmpfs("4m") as disk:
        page = disk / "index.html"
        page.write_bytes(b"<p>yesterday's page</p>")
        fill(disk, leave=256 * 1024)  # the new page, about 1 MB, starts and cannot finish
        result = run_cli(["report", "--output", str(page)], reported.env(), cwd=tmp_path)
        assert result.returncode == 74, result.stderr
        assert f"the report's disk is full: free space on the filesystem of {disk}" in (
            result.stderr
        )
        assert "index.html was left as it was" in result.stderr
        assert page.read_bytes() == b"<p>yesterday's page</p>"
        assert sorted(path.name for path in disk.iterdir()) == ["ballast", "index.html"]


def test_the_report_file_mode_follows_the_umask(reported: Etl, tmp_path: Path) -> None:
    page = tmp_path / "index.html"
    previous = os.umask(0o027)
    try:
        result = invoke_cli(["report", "--output", str(page)], reported.env(), cwd=tmp_path)
    finally:
        os.umask(previous)
    assert result.returncode == 0, result.stderr
    assert page.stat().st_mode & 0o777 == 0o640  # neither a fixed 0644 nor mkstemp's 0600


def test_a_full_temporary_directory_under_a_big_job_exits_74_and_says_where(
    pg_url: URL, pg_engine: Engine, tmp_path: Path
) -> None:
    """A job past SPOOL_AFTER tasks waits in TMPDIR while it is listed: a full one ends the
    run with 74, naming the directory, and nothing of the job is written."""
    big = SimulatorConfig(jobs=1, tasks_per_job=SPOOL_AFTER + 150, checkpoints=1, seed=4)
    with tmpfs("1m") as disk, etl_for(big, pg_url, pg_engine, tmp_path) as etl:
        fill(disk, leave=16 * 1024)  # room for tempfile's probe (a full one is passed over)
        result = etl.run(TMPDIR=str(disk))
    assert result.returncode == 74, result.stderr
    assert f"temporary directory {disk} is full" in result.stderr
    assert "TMPDIR" in result.stderr
    with pg_engine.connect() as connection:
        assert connection.execute(sa.text("SELECT COUNT(*) FROM finetune_tasks")).scalar() == 0
    assert [row[1:3] for row in runs(pg_engine)] == [("failed", 74)]
