"""The shared fixtures: a fresh Postgres database per test (from a migrated template), SQLite,
the simulator served over real HTTP on loopback, and the ETL pointed at them. The helpers they
use, and tests import, are in harness.py."""

import hashlib
import json
import os
import secrets
import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine
from sqlalchemy.engine import URL, make_url

from etl import db
from etl.simulator import Simulator, SimulatorConfig, SimulatorServer
from tests.harness import (
    Etl,
    Snapshot,
    admin_url,
    create_database,
    drop_database,
    scratch_database,
    snapshot,
)


def pytest_configure(config: pytest.Config) -> None:
    """The processes the tests start get SIGINT at its default, as the tests that send it mean.
    Started from nohup or a background job, pytest has SIGINT ignored, and a child inherits an
    ignored signal through exec: a fault plan's SIGINT would then do nothing. A handled one is
    reset to the default in the child."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A database migrated to head, copied for each test; dropped at the end."""
    name = f"qfetl_tpl_{secrets.token_hex(4)}"
    try:
        create_database(name)
    except psycopg.OperationalError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Postgres is required in CI and is not reachable: {exc}")
        pytest.skip(f"Postgres not reachable at {admin_url()}: {exc}")
    engine = db.create(admin_url().set(database=name))
    db.upgrade(engine)
    engine.dispose()
    yield name
    drop_database(name)


@pytest.fixture
def pg_url(pg_template: str) -> Iterator[URL]:
    """A fresh Postgres database at the Alembic head, dropped after the test."""
    name = f"qfetl_{secrets.token_hex(6)}"
    create_database(name, pg_template)
    yield admin_url().set(database=name)
    drop_database(name)


@pytest.fixture
def pg_engine(pg_url: URL) -> Iterator[Engine]:
    engine = db.create(pg_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An embedded SQLite database migrated to head once, copied for each test."""
    path = tmp_path_factory.mktemp("sqlite_template") / "etl.db"
    engine = db.create(make_url(f"sqlite:///{path}"))
    db.upgrade(engine)
    engine.dispose()
    return path


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> URL:
    """An embedded SQLite database at the Alembic head: a copy of the migrated template, as
    Postgres databases are."""
    path = tmp_path / "etl.db"
    shutil.copyfile(sqlite_template, path)
    return make_url(f"sqlite:///{path}")


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
    """A small account: 6 jobs x 13 tasks, 78 in all; each listing is one page of 100."""
    return Simulator(SimulatorConfig(jobs=6, tasks_per_job=13, checkpoints=5, seed=7))


@pytest.fixture
def server(sim: Simulator) -> Iterator[SimulatorServer]:
    with sim.serve() as running:
        yield running


@pytest.fixture
def etl(
    sim: Simulator, server: SimulatorServer, db_url: URL, engine: Engine, tmp_path: Path
) -> Etl:
    """The ETL on the test's simulator and database, on each backend."""
    return Etl(sim, server, db_url, engine, tmp_path)


@pytest.fixture
def pg_etl(
    sim: Simulator, server: SimulatorServer, pg_url: URL, pg_engine: Engine, tmp_path: Path
) -> Etl:
    """Postgres only: faults whose handling does not depend on the backend."""
    return Etl(sim, server, pg_url, pg_engine, tmp_path)


_GOLDEN: dict[str, Snapshot] = {}


@pytest.fixture
def golden(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[Etl], Snapshot]:
    """golden(etl): the snapshot of a fault-free sync of the simulator's current data."""

    def compute(etl: Etl) -> Snapshot:
        kind = etl.engine.dialect.name
        data = [(job, etl.sim.tasks(job["jobId"])) for job in etl.sim.jobs()]
        key = hashlib.sha256(json.dumps([kind, data], default=repr).encode()).hexdigest()
        if key not in _GOLDEN:
            with scratch_database(kind, request, tmp_path_factory) as url:
                scratch = Etl(etl.sim, etl.server, url, db.create(url), etl.cwd)
                scratch.sync_here()
                _GOLDEN[key] = snapshot(scratch.engine)
                scratch.engine.dispose()
        etl.sim.requests.clear()  # tests count only their own run's requests
        return _GOLDEN[key]

    return compute
