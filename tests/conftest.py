"""Shared fixtures: a fresh Postgres database per test (from a migrated template), SQLite, and
the simulator served over real HTTP on loopback."""

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine
from sqlalchemy.engine import URL, make_url

from etl import db
from etl.simulator import Simulator, SimulatorConfig, SimulatorServer
from tests.faulty_cli import FAULT_VAR

DEFAULT_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
FAULTY_CLI = Path(__file__).with_name("faulty_cli.py")


def admin_url() -> URL:
    """The server tests create their databases on (TEST_DATABASE_URL overrides)."""
    url = make_url(os.environ.get("TEST_DATABASE_URL", DEFAULT_ADMIN_URL))
    return url.set(drivername="postgresql+psycopg")


def _admin(sql: str) -> None:
    dsn = admin_url().set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as connection:
        connection.execute(sql)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A database migrated to head, copied for each test; dropped at the end."""
    name = f"qfetl_tpl_{secrets.token_hex(4)}"
    try:
        _admin(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Postgres is required in CI and is not reachable: {exc}")
        pytest.skip(f"Postgres not reachable at {admin_url()}: {exc}")
    engine = db.create(admin_url().set(database=name))
    db.upgrade(engine)
    engine.dispose()
    yield name
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(pg_template: str) -> Iterator[URL]:
    """A fresh Postgres database at the Alembic head, dropped after the test."""
    name = f"qfetl_{secrets.token_hex(6)}"
    _admin(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    yield admin_url().set(database=name)
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_engine(pg_url: URL) -> Iterator[Engine]:
    engine = db.create(pg_url)
    yield engine
    engine.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> URL:
    """An embedded SQLite database at the Alembic head."""
    url = make_url(f"sqlite:///{tmp_path / 'etl.db'}")
    engine = db.create(url)
    db.upgrade(engine)
    engine.dispose()
    return url


@pytest.fixture(params=["postgresql", "sqlite"])
def db_url(request: pytest.FixtureRequest) -> URL:
    """Each end-to-end test runs on Postgres and on SQLite."""
    fixture = "pg_url" if request.param == "postgresql" else "sqlite_url"
    url: URL = request.getfixturevalue(fixture)
    return url


@pytest.fixture
def engine(db_url: URL) -> Iterator[Engine]:
    engine = db.create(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def sim() -> Simulator:
    """A small account: 6 jobs x 13 tasks, so that task listings take two pages of 10."""
    return Simulator(SimulatorConfig(jobs=6, tasks_per_job=13, checkpoints=5, seed=7))


@pytest.fixture
def server(sim: Simulator) -> Iterator[SimulatorServer]:
    with sim.serve() as running:
        yield running


def cli_env(sim: Simulator, server: SimulatorServer, url: URL, **extra: str) -> dict[str, str]:
    """The environment a cron line would give qianfan-etl, pointed at the simulator."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QIANFAN_", "DATABASE_URL"))}
    env.update(
        QIANFAN_ACCESS_KEY=sim.config.access_key,
        QIANFAN_SECRET_KEY=sim.config.secret_key,
        QIANFAN_CONSOLE_API_BASE_URL=server.url,
        DATABASE_URL=url.render_as_string(hide_password=False),
    )
    env.update(extra)
    return env


def etl_command(env: Mapping[str, str]) -> list[str]:
    """How a subprocess starts `qianfan-etl`: as cron would, or, where the environment names a
    fault plan, through tests/faulty_cli.py, the only entry point that arms the fault hook."""
    if FAULT_VAR in env:
        return [sys.executable, str(FAULTY_CLI)]
    return [sys.executable, "-m", "etl"]


def run_cli(
    args: list[str], env: dict[str, str], cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the real console entry point in a subprocess, as cron would."""
    return subprocess.run(
        [*etl_command(env), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
