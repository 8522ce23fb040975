"""What the tests drive and judge the ETL with: the admin connection, the CLI (in a subprocess as
cron runs it, or in this process with click's CliRunner), and the oracle of the fault suite.

The fixtures built on these live in conftest.py.
"""

import fcntl
import gc
import json
import logging
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import chdir, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy import Engine
from sqlalchemy.engine import URL, make_url

from etl import db, schema
from etl.cli import cli
from etl.process import setup_logging
from etl.qianfan import QianfanClient
from etl.simulator import Simulator, SimulatorConfig, SimulatorServer
from etl.sync import SyncOptions
from etl.sync import sync as sync_in_process
from migrations.views import VIEW_DESCRIPTIONS
from tests.faulty_cli import FAULT_VAR

DEFAULT_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
FAULTY_CLI = Path(__file__).with_name("faulty_cli.py")


def admin_url() -> URL:
    """The server tests create their databases on (TEST_DATABASE_URL overrides)."""
    url = make_url(os.environ.get("TEST_DATABASE_URL", DEFAULT_ADMIN_URL))
    return url.set(drivername="postgresql+psycopg")


def dsn(url: URL) -> str:
    """The libpq connection string of a Postgres URL, password included."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def admin(sql: str, database: str = "postgres") -> None:
    """One statement as the test server's admin, autocommit."""
    url = admin_url().set(database=database)
    with psycopg.connect(dsn(url), autocommit=True, connect_timeout=5) as connection:
        connection.execute(sql)  # type: ignore[arg-type]


# Postgres checkpoints for CREATE and DROP DATABASE, and no checkpoint can finish while a
# tablespace's disk is full. The Postgres disk-full test fills one: with the suite in parallel
# workers, it holds this lock exclusively meanwhile, and creating or dropping a database holds
# it shared. (flock: a lock of the machine, whichever process or suite holds it.)
CHECKPOINT_LOCK = Path(tempfile.gettempdir()) / "qfetl-tests-checkpoints.lock"


@contextmanager
def checkpoints_possible(exclusive: bool = False) -> Iterator[None]:
    """Shared: the server can checkpoint. Exclusive: the holder may stop it from doing so."""
    with CHECKPOINT_LOCK.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield


def create_database(name: str, template: str | None = None) -> None:
    """A database on the test server, empty or a copy of `template`."""
    copy = f' TEMPLATE "{template}"' if template else ""
    with checkpoints_possible():
        admin(f'CREATE DATABASE "{name}"{copy}')


def drop_database(name: str) -> None:
    """Drop a test database, whoever is still connected."""
    with checkpoints_possible():
        admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def free_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- the CLI ------------------------------------------------------------------------------


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


class _AsMain:
    """`cli` as the console script's main() runs it: logging set up first, here on the
    runner's stderr. (main() also reads `.env`, which would change this process's
    environment for good: a test of `.env` runs the console script with run_cli.)"""

    name = "qianfan-etl"

    def main(self, args: list[str], prog_name: str, **extra: Any) -> Any:
        setup_logging(os.environ.get("QIANFAN_ETL_LOG_FORMAT", "text"), 0, False)
        return cli.main(args=args, prog_name=prog_name, **extra)


def invoke_cli(
    args: list[str], env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the CLI in this process with click's CliRunner, in exactly the environment `env`
    and the directory `cwd`, for behaviour that needs no signal, fault plan, `.env` file or
    console script; the result reads as run_cli's."""
    assert FAULT_VAR not in env, "only tests/faulty_cli.py arms a fault plan: use run_cli"
    unset: dict[str, str | None] = {name: None for name in os.environ if name not in env}
    with chdir(cwd or Path.cwd()), _logging_restored():
        result = CliRunner().invoke(
            _AsMain(),  # type: ignore[arg-type]
            args,
            env={**unset, **env},
            prog_name="qianfan-etl",
            catch_exceptions=False,
        )
    gc.collect()  # close the command's engines' connections, as the end of its process would
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


@contextmanager
def _logging_restored() -> Iterator[None]:
    """The command replaces the root handlers and sets levels; pytest's capture needs them back."""
    root, etl = logging.getLogger(), logging.getLogger("etl")
    handlers, levels = root.handlers[:], (root.level, etl.level)
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(levels[0])
        etl.setLevel(levels[1])
        logging.captureWarnings(False)


def sync(
    sim: Simulator, server: SimulatorServer, url: URL, tmp_path: Path, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    """`qianfan-etl sync ARGS` in this process, in the environment cron would give it (without
    the fast settings: Etl.invoke has them)."""
    return invoke_cli(["sync", *args], cli_env(sim, server, url, **env), cwd=tmp_path)


def seeded(etl: "Etl") -> list[str]:
    """A first sync of the account, which must succeed; the job ids it listed."""
    first = etl.invoke()
    assert first.returncode == 0, first.stderr
    return [job["jobId"] for job in etl.sim.jobs()]


def is_live(engine: Engine, table: sa.Table, record_id: str) -> bool:
    """Whether the stored row of this id is not soft-deleted."""
    key = next(iter(table.primary_key.columns))
    with engine.connect() as connection:
        deleted = connection.execute(sa.select(table.c.deleted_at).where(key == record_id)).one()
    return deleted[0] is None


def held_back_rows(engine: Engine) -> list[tuple[Any, ...]]:
    """etl_held_back_scopes as (run_id, scope_kind, scope_id, held_back), by run."""
    table = schema.etl_held_back_scopes
    columns = (table.c.run_id, table.c.scope_kind, table.c.scope_id, table.c.held_back)
    with engine.connect() as connection:
        rows = connection.execute(sa.select(*columns).order_by(table.c.run_id)).all()
    return [tuple(row) for row in rows]


# -- the database, read back ---------------------------------------------------------------

CONTENT_TABLE_NAMES = tuple(table.name for table in schema.CONTENT_TABLES)


def scalar(engine: Engine, query: str, **params: Any) -> Any:
    """The first column of the first row of `query`."""
    with engine.connect() as connection:
        return connection.execute(sa.text(query), params).scalar()


def row_counts(engine: Engine) -> dict[str, int]:
    """Rows per content table."""
    return {t: scalar(engine, f"SELECT count(*) FROM {t}") for t in CONTENT_TABLE_NAMES}


def writes_on_postgres(engine: Engine) -> dict[str, int]:
    """Rows inserted, updated or deleted per content table since the database was made."""
    with engine.connect() as connection:
        connection.execute(sa.text("SELECT pg_stat_clear_snapshot()"))
        rows = connection.execute(
            sa.text(
                "SELECT relname, n_tup_ins + n_tup_upd + n_tup_del FROM pg_stat_user_tables "
                "WHERE relname = ANY(:names)"
            ),
            {"names": list(CONTENT_TABLE_NAMES)},
        ).all()
    return dict(rows)  # type: ignore[arg-type]


# -- the fault suite's oracle ------------------------------------------------------------

Row = dict[str, Any]
Snapshot = dict[str, list[Row]]

ORACLE_TABLES = (*schema.CONTENT_TABLES, schema.etl_rejects)
# run metadata and load timestamps differ between two correct histories; content may not
SKIPPED_COLUMNS = frozenset(
    {
        "first_seen_at",
        "last_changed_at",
        "observed_at",
        "progress_at",
        "run_id",
        "reject_id",
        "rejected_at",
        "resolved_at",
        "resolved_run_id",
    }
)
# Retries immediate, deadlines and lock waits short. The per-attempt deadline is one a healthy
# page meets with the suite's four workers busy on two cores (at 1 s, an in-process run that
# shares its interpreter with the simulator sometimes missed it, and a test counting calls saw
# a retry); a test of a body that never ends sets the SHORT_DEADLINE that cuts it.
SHORT_DEADLINE = {"QIANFAN_ETL_API_DEADLINE": "1"}
FAST = {
    "QIANFAN_ETL_API_ATTEMPTS": "4",
    "QIANFAN_ETL_API_RETRY_WAIT": "0",
    "QIANFAN_ETL_API_DEADLINE": "5",
    "QIANFAN_ETL_API_RETRY_AFTER_CAP": "5",
    "QIANFAN_ETL_DB_LOCK_TIMEOUT": "0.5",
    "QIANFAN_ETL_DB_STATEMENT_TIMEOUT": "10",
    # 12 tasks per job: every job is a batch (and a commit) of its own
    "QIANFAN_ETL_BATCH_TASKS": "10",
}
CAPTURED: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}


def snapshot(engine: Engine) -> Snapshot:
    """Every contract table as sorted plain rows, without run metadata and load timestamps;
    every kept task summary is first checked against the children it summarises."""
    assert_summaries_true(engine)
    with engine.connect() as connection:
        return {table.name: _rows(connection, table) for table in ORACLE_TABLES}


# Each kept summary column of finetune_tasks, and the aggregate of its children it must equal
# (written here from the children, independently of etl.summary).
SUMMARY_ORACLE = {
    "checkpoint_count": "SELECT COUNT(*) FROM finetune_task_checkpoints c WHERE {on}",
    "last_step": "SELECT MAX(step) FROM finetune_task_checkpoints c WHERE {on}",
    "final_training_loss": (
        "SELECT c.training_loss FROM finetune_task_checkpoints c WHERE {on} "
        "ORDER BY c.step DESC LIMIT 1"
    ),
    "min_perplexity": "SELECT MIN(perplexity) FROM finetune_task_checkpoints c WHERE {on}",
    **{
        column: "SELECT value_percent FROM finetune_task_metrics c WHERE {on} "
        f"AND c.metric_name = '{name}'"
        for column, name in (
            ("bleu_4", "BLEU-4"),
            ("rouge_1", "ROUGE-1"),
            ("rouge_2", "ROUGE-2"),
            ("rouge_l", "ROUGE-L"),
        )
    },
}


def summary_disagreements(engine: Engine) -> list[tuple[str, str, Any, Any]]:
    """(task, column, kept, aggregate) for every kept summary that differs from its children."""
    on = "c.task_id = t.task_id"
    kept = ", ".join(f"t.{column}" for column in SUMMARY_ORACLE)
    computed = ", ".join(f"({sql.format(on=on)})" for sql in SUMMARY_ORACLE.values())
    query = f"SELECT t.task_id, {kept}, {computed} FROM finetune_tasks t"
    with engine.connect() as connection:
        rows = connection.execute(sa.text(query)).all()
    width = len(SUMMARY_ORACLE)
    return [
        (row[0], column, row[1 + i], row[1 + width + i])
        for row in rows
        for i, column in enumerate(SUMMARY_ORACLE)
        if row[1 + i] != row[1 + width + i]
    ]


def assert_summaries_true(engine: Engine) -> None:
    """Every task's kept summary equals the aggregate of its stored children."""
    assert summary_disagreements(engine) == []


def _rows(connection: sa.Connection, table: sa.Table) -> list[Row]:
    columns = [c for c in table.columns if c.name not in SKIPPED_COLUMNS]
    query = sa.select(*columns)
    if table is schema.etl_rejects:
        # each reject is stored once while upstream still has it: what matters is the open ones
        query = query.where(table.c.resolved_at.is_(None))
    rows = [
        {c.name: plain(c.name, v) for c, v in zip(columns, row, strict=True)}
        for row in connection.execute(query)
    ]
    return sorted(rows, key=repr)


def plain(name: str, value: Any) -> Any:
    """A stored value as the oracle compares it."""
    if name == "deleted_at":
        return value is not None
    if isinstance(value, datetime):
        aware = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return aware.isoformat()
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    return value


def whole_jobs_of(golden: Snapshot, job_ids: set[str]) -> Snapshot:
    """Golden restricted to some whole jobs: what a run that failed between jobs may leave."""
    tasks = {r["task_id"] for r in golden["finetune_tasks"] if r["job_id"] in job_ids}

    def kept(row: Row) -> bool:
        return row.get("job_id") in job_ids or row.get("task_id") in tasks

    restricted = {name: [r for r in rows if kept(r)] for name, rows in golden.items()}
    return restricted | {"etl_rejects": []}  # a failed run has no successful run's rejects


def assert_whole_jobs(engine: Engine, golden: Snapshot) -> set[str]:
    """The tables hold golden's rows for some whole jobs and nothing else; returns those jobs."""
    now = snapshot(engine)
    jobs = {r["job_id"] for r in now["finetune_jobs"]}
    assert now == whole_jobs_of(golden, jobs)
    return jobs


def run_status(engine: Engine, run_id: int) -> tuple[str, str | None]:
    """etl_runs status and error of one run."""
    with engine.connect() as connection:
        row = connection.execute(
            sa.select(schema.etl_runs.c.status, schema.etl_runs.c.error).where(
                schema.etl_runs.c.run_id == run_id
            )
        ).one()
    return row.status, row.error


# -- the ETL run as cron runs it ----------------------------------------------------------


@dataclass
class Etl:
    """The ETL pointed at one simulator and one database: run as cron would run it, in this
    process, or as a plain sync to seed a state or check the next run."""

    sim: Simulator
    server: SimulatorServer
    url: URL
    engine: Engine
    cwd: Path

    def env(self, **extra: str) -> dict[str, str]:
        """cli_env plus the fast budgets."""
        return cli_env(self.sim, self.server, self.url, **{**FAST, **extra})

    def run(self, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        """`qianfan-etl sync ARGS` to completion, in a subprocess."""
        env = self.env(**extra)
        command = [*etl_command(env), "sync", *args]
        return subprocess.run(command, env=env, cwd=self.cwd, **CAPTURED, timeout=60)

    def invoke(self, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        """`qianfan-etl sync ARGS` in this process: for runs no signal or fault plan stops."""
        return invoke_cli(["sync", *args], self.env(**extra), cwd=self.cwd)

    def summary(self, *args: str, exit_code: int = 0, **extra: str) -> dict[str, Any]:
        """`qianfan-etl sync --log-format json ARGS` in this process, which must exit with
        `exit_code`: its summary line as a dict, with its stderr under "stderr"."""
        result = self.invoke("--log-format", "json", *args, **extra)
        assert result.returncode == exit_code, result.stderr
        summary: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
        summary["stderr"] = result.stderr
        return summary

    def start(self, *args: str, **extra: str) -> subprocess.Popen[str]:
        """`qianfan-etl sync ARGS` in the background."""
        env = self.env(**extra)
        command = [*etl_command(env), "sync", *args]
        return subprocess.Popen(command, env=env, cwd=self.cwd, **CAPTURED)

    def sync_here(self, **options: Any) -> Any:
        """A clean sync in this process (seeding a state, or checking a further run is idle)."""
        with QianfanClient(
            self.server.url, self.sim.config.access_key, self.sim.config.secret_key
        ) as client:
            return sync_in_process(self.engine, client, SyncOptions(**options))

    def assert_idle(self, golden: Snapshot) -> None:
        """A further clean run changes no content row and the tables stay golden."""
        result = self.sync_here()
        assert result.counts.tasks_changed == 0
        assert result.counts.rows_written == 0  # rejects included: each is stored once
        assert snapshot(self.engine) == golden

    def assert_converges(self, golden: Snapshot, cli: bool = False) -> None:
        """A clean re-run reaches golden; a further run is idle.

        The re-run goes through the CLI only where asked: the faulty run already exercised
        it, and a subprocess costs ~0.8 s that the file's runtime budget cannot spare."""
        if cli:
            rerun = self.run()
            assert rerun.returncode == 0, rerun.stderr
        else:
            assert self.sync_here().counts.api_calls > 0
        assert snapshot(self.engine) == golden
        self.assert_idle(golden)


@contextmanager
def etl_for(config: SimulatorConfig, url: URL, engine: Engine, cwd: Path) -> Iterator[Etl]:
    """An Etl on its own simulator (for datasets the default `sim` does not fit)."""
    sim = Simulator(config)
    with sim.serve() as server:
        yield Etl(sim, server, url, engine, cwd)


@contextmanager
def scratch_database(
    kind: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[URL]:
    """A database of the backend `kind` at the Alembic head, apart from the test's own."""
    if kind == "sqlite":
        url = make_url(f"sqlite:///{tmp_path_factory.mktemp('golden') / 'golden.db'}")
        engine = db.create(url)
        db.upgrade(engine)
        engine.dispose()
        yield url
        return
    template = request.getfixturevalue("pg_template")
    name = f"qfetl_golden_{secrets.token_hex(6)}"
    create_database(name, template)
    try:
        yield admin_url().set(database=name)
    finally:
        drop_database(name)


def start_paused(etl: Etl, at: str, pause: Path) -> subprocess.Popen[str]:
    """Start a run that pauses at the fault point `at` (e.g. before_commit:2), once it has;
    touching `{pause}.release` lets it go on."""
    process = etl.start(QIANFAN_ETL_FAULT=f"{at}:pause:{pause}")
    wait_for(Path(f"{pause}.reached"), process)
    return process


def wait_for(path: Path, process: subprocess.Popen[str], limit: float = 20.0) -> None:
    """Poll until the paused ETL has touched `path` (bounded; fails if the ETL died)."""
    deadline = time.monotonic() + limit
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"the ETL never reached {path.name}"
        time.sleep(0.01)


@contextmanager
def bi_session(url: URL, *statements: str) -> Iterator[None]:
    """A BI connection holding whatever locks `statements` take, in an open transaction."""
    with psycopg.connect(dsn(url)) as connection:
        for statement in statements:
            connection.execute(statement)  # type: ignore[arg-type]
        yield
        connection.rollback()


# -- the schema's descriptions -----------------------------------------------------------

Description = tuple[str, str, str, str | None, str | None]

DESCRIPTIONS = """
SELECT c.relname, c.relkind, a.attname, obj_description(c.oid, 'pg_class') AS about,
       col_description(c.oid, a.attnum) AS column_about
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'v') AND c.relname <> 'alembic_version'
"""


def descriptions(engine: Engine) -> set[Description]:
    """(relation, r or v, column, the relation's description, the column's) on Postgres."""
    with engine.connect() as connection:
        return {tuple(row) for row in connection.execute(sa.text(DESCRIPTIONS))}


def code_descriptions() -> set[Description]:
    """The same, as etl/schema.py and migrations/views.py say they are."""
    return {
        (table.name, "r", column.name, table.comment, column.comment)
        for table in schema.metadata.tables.values()
        for column in table.columns
    } | {
        (view, "v", column, about, text)
        for view, (about, columns) in VIEW_DESCRIPTIONS.items()
        for column, text in columns.items()
    }
