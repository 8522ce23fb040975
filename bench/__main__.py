"""`python -m bench`: time `qianfan-etl sync` against the simulator and against its floors."""

import json
import os
import platform
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from bench import database, queries, report, steady, targets
from bench.measure import (
    QIANFAN_ETL,
    ROOT,
    BenchError,
    Measured,
    SimulatorProcess,
    python_module,
    run_measured,
    run_quietly,
)
from bench.report import Phase, Results

# Jobs of 25 tasks by size; J is one job of 50,000 tasks (the memory bound of a big job).
SIZES = {"S": 200, "M": 2000, "L": 8000, "J": 1}
TASKS_PER_JOB = {"S": 25, "M": 25, "L": 25, "J": 50_000}
CHECKPOINTS = 20


@dataclass(frozen=True)
class Settings:
    """What to measure, and how."""

    size: str
    latency_ms: float
    concurrency: int
    database: str
    admin_dsn: str
    timeout: float
    steady_state: bool = False
    task_details: bool = True

    def as_json(self) -> dict[str, Any]:
        """The settings that identify a run, for the JSON document."""
        return {
            "steady_state": self.steady_state,
            "size": self.size,
            "jobs": SIZES[self.size],
            "tasks_per_job": TASKS_PER_JOB[self.size],
            "checkpoints": CHECKPOINTS,
            "latency_ms": self.latency_ms,
            "concurrency": self.concurrency,
            "database": self.database,
            "task_details": self.task_details,
        }


@dataclass
class BenchDatabase:
    """The database under test: its DATABASE_URL, and how the bench reaches it."""

    url: str
    dsn: str | None = None
    sqlite_path: Path | None = None

    def counts(self) -> dict[str, int]:
        """Rows in each content table."""
        if self.dsn is not None:
            return database.postgres_counts(self.dsn)
        assert self.sqlite_path is not None
        return database.sqlite_counts(self.sqlite_path)

    def autovacuums(self) -> int | None:
        """Autovacuum and autoanalyze runs on the content tables so far (None on SQLite)."""
        return database.autovacuum_runs(self.dsn) if self.dsn is not None else None

    def writes(self) -> int | None:
        """The pg_stat write counters of the content tables (None on SQLite)."""
        return database.settled_writes(self.dsn) if self.dsn is not None else None


@contextmanager
def target_database(settings: Settings, workdir: Path) -> Iterator[BenchDatabase]:
    """A fresh database of the kind asked for, gone after the block."""
    if settings.database == "sqlite":
        path = workdir / "bench.db"
        yield BenchDatabase(f"sqlite:///{path}", sqlite_path=path)
        return
    with database.fresh_postgres(settings.admin_dsn) as dsn:
        yield BenchDatabase(database.sqlalchemy_url(dsn), dsn=dsn)


def child_env(sim: SimulatorProcess, url: str) -> dict[str, str]:
    """The environment of every measured child: ours, minus qianfan-etl settings, plus the run's."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("QIANFAN_") and k != "DATABASE_URL"
    }
    env.update(sim.env, QIANFAN_CONSOLE_API_BASE_URL=sim.url, DATABASE_URL=url)
    env["PYTHONPATH"] = str(ROOT)
    return env


def run_with_simulator(
    argv: list[str], settings: Settings, sim: SimulatorProcess, env: dict[str, str], cwd: Path
) -> tuple[Measured, dict[str, Any]]:
    """Run one measured phase against the simulator; also the simulator's CPU seconds in it
    and the calls it received (counted by the simulator, not by the client)."""
    before = sim.cpu_seconds()
    sim.call_stats(reset=True)
    measured = run_measured(argv, env, cwd, settings.timeout)
    calls = sim.call_stats()
    return measured, {"simulator_cpu_s": sim.cpu_seconds() - before, "simulator_calls": calls}


def phase_of(measured: Measured, **figures: Any) -> Phase:
    """A table row from a measured child and the figures it reported."""
    return Phase(measured.wall_s, measured.peak_rss_mb, measured.cpu_s, **figures)


def sync_phase(
    settings: Settings, sim: SimulatorProcess, env: dict[str, str], cwd: Path, *args: str
) -> Phase:
    """One measured `qianfan-etl sync ARGS`, with its summary line."""
    argv = [QIANFAN_ETL, "sync", "--log-format=json", f"--concurrency={settings.concurrency}"]
    argv += args
    measured, seen = run_with_simulator(argv, settings, sim, env, cwd)
    summary = summary_line(measured.stdout)
    return phase_of(
        measured,
        api_calls=seen["simulator_calls"]["total"],
        tasks=summary["tasks_seen"],
        rows_written=summary["rows_written"],
        details={"summary": summary, **seen},
    )


def summary_line(stdout: str) -> dict[str, Any]:
    """The sync_finished JSON object that sync prints last."""
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            fields: dict[str, Any] = json.loads(line)
            if fields.get("event") == "sync_finished":
                return fields
    raise BenchError(f"no sync_finished summary line in sync's output:\n{stdout[-2000:]}")


def fetch_phase(settings: Settings, sim: SimulatorProcess, env: dict[str, str], cwd: Path) -> Phase:
    """The fetch floor: the same pages, the same concurrency, no transform or load."""
    argv = python_module("bench.fetch_floor", sim.url, str(settings.concurrency))
    measured, seen = run_with_simulator(argv, settings, sim, env, cwd)
    counts = json.loads(measured.stdout)
    return phase_of(
        measured,
        api_calls=seen["simulator_calls"]["total"],
        tasks=counts["tasks"],
        details={"jobs": counts["jobs"], "client_api_calls": counts["api_calls"], **seen},
    )


def copy_phase(settings: Settings, dsn: str, env: dict[str, str], cwd: Path) -> Phase:
    """The COPY floor: the synced rows, exported (untimed), COPYed into unindexed tables."""
    exports = cwd / "exports"
    exports.mkdir()
    database.export_tables(dsn, exports)
    measured = run_measured(
        python_module("bench.copy_floor", dsn, str(exports)), env, cwd, settings.timeout
    )
    copied = json.loads(measured.stdout)
    return phase_of(
        measured,
        tasks=copied["tables"]["finetune_tasks"],
        rows=copied["rows"],
        rows_written=copied["rows"],
        details={"tables": copied["tables"]},
    )


def measure_syncs(
    settings: Settings, sim: SimulatorProcess, target: BenchDatabase, env: dict[str, str], cwd: Path
) -> tuple[Phase, Phase, dict[str, int]]:
    """The full sync, then the no-op re-run; pg_stat writes around each on Postgres."""
    run_quietly([QIANFAN_ETL, "db", "upgrade"], env, cwd)
    progress(f"full sync ({SIZES[settings.size]} jobs)")
    before = target.writes()
    full = sync_phase(settings, sim, env, cwd)
    after_full = target.writes()
    full.details["autovacuum_runs_at_end"] = target.autovacuums()
    progress("no-op sync")
    noop = sync_phase(settings, sim, env, cwd)
    after_noop = target.writes()
    noop.details["autovacuum_runs_at_end"] = target.autovacuums()
    counts = target.counts()
    for phase, start, end in ((full, before, after_full), (noop, after_full, after_noop)):
        phase.rows = sum(counts.values())
        if start is not None and end is not None:
            phase.rows_written = end - start
    return full, noop, counts


def run(settings: Settings) -> Results:
    """Start the simulator and a fresh database, measure every phase, clean up."""
    jobs = SIZES[settings.size]
    with (
        tempfile.TemporaryDirectory(prefix="qfetl-bench-") as tmp,
        SimulatorProcess(
            jobs, TASKS_PER_JOB[settings.size], CHECKPOINTS, settings.latency_ms
        ) as sim,
        target_database(settings, Path(tmp)) as target,
    ):
        cwd, env = Path(tmp), child_env(sim, target.url)
        if not settings.task_details:  # the sync and the fetch floor both read it
            env["QIANFAN_ETL_TASK_DETAILS"] = "false"
        # first, while Postgres is idle: autovacuum after a big load would slow the floor
        progress("fetch floor")
        fetch = fetch_phase(settings, sim, env, cwd)
        full, noop, counts = measure_syncs(settings, sim, target, env, cwd)
        fetch.rows = sum(counts.values())
        copy = None
        if target.dsn is not None:
            progress("COPY floor")
            copy = copy_phase(settings, target.dsn, env, cwd)
    phases = {"full_sync": full, "noop_sync": noop, "fetch_floor": fetch, "copy_floor": copy}
    return Results(settings.as_json(), machine(settings), counts, phases)


def run_steady(settings: Settings) -> Results:
    """The steady-state case: a first load, then a full and an active-only run, measured."""
    jobs = SIZES[settings.size]
    with (
        tempfile.TemporaryDirectory(prefix="qfetl-bench-") as tmp,
        SimulatorProcess(
            jobs,
            TASKS_PER_JOB[settings.size],
            CHECKPOINTS,
            settings.latency_ms,
            steady.RUNNING_JOBS,
        ) as sim,
        target_database(settings, Path(tmp)) as target,
    ):
        cwd, env = Path(tmp), child_env(sim, target.url)
        run_quietly([QIANFAN_ETL, "db", "upgrade"], env, cwd)
        phases: dict[str, Phase | None] = {}
        for key, args in (
            ("first_load", ()),
            ("steady_full", ()),
            ("steady_active", ("--active-only",)),
        ):
            progress(steady.PHASES[key])
            before = target.writes()
            phase = phases[key] = sync_phase(settings, sim, env, cwd, *args)
            after = target.writes()
            if before is not None and after is not None:
                phase.rows_written = after - before
        counts = target.counts()
    return Results(settings.as_json(), machine(settings), counts, phases)


def run_queries(settings: Settings) -> dict[str, float]:
    """Sync a fresh database at the size asked for, then time the dashboards' queries on it."""
    with (
        tempfile.TemporaryDirectory(prefix="qfetl-bench-") as tmp,
        SimulatorProcess(
            SIZES[settings.size], TASKS_PER_JOB[settings.size], CHECKPOINTS, 0.0
        ) as sim,
        target_database(settings, Path(tmp)) as target,
    ):
        cwd, env = Path(tmp), child_env(sim, target.url)
        run_quietly([QIANFAN_ETL, "db", "upgrade"], env, cwd)
        progress(f"full sync ({SIZES[settings.size]} jobs)")
        sync_phase(settings, sim, env, cwd)
        progress("queries")
        return queries.time_shapes(target.url)


def report_queries(settings: Settings, url: str | None) -> None:
    """The queries mode: time an existing database, or a fresh one synced, and print."""
    timings = queries.time_shapes(url) if url else run_queries(settings)
    dialect = sa_dialect(url) if url else settings.database
    queries.print_table(timings, settings.size, dialect)


def machine(settings: Settings) -> dict[str, Any]:
    """Where and on what code the numbers were measured."""
    return {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "postgres": database.server_version(settings.admin_dsn),
        "sqlite": sqlite3.sqlite_version,
        "commit": git("rev-parse", "--short", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def sa_dialect(url: str) -> str:
    """postgresql or sqlite, from a database URL."""
    return "sqlite" if url.startswith("sqlite") else "postgresql"


def git(*args: str) -> str:
    """A git query's output (read-only commands only)."""
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else "unknown"


def progress(message: str) -> None:
    """A progress note on stderr, so stdout holds only the results."""
    click.echo(f"bench: {message}...", err=True)


@click.command()
@click.option(
    "--size",
    type=click.Choice(list(SIZES)),
    required=True,
    help="S, M, L, or J (one job of 50,000 tasks).",
)
@click.option("--latency-ms", type=click.FloatRange(0), default=0.0, show_default=True)
@click.option("--concurrency", type=click.IntRange(1, 64), default=8, show_default=True)
@click.option(
    "--database",
    "kind",
    type=click.Choice(["postgresql", "sqlite"]),
    default="postgresql",
    show_default=True,
)
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Where to save.")
@click.option("--postgres", default=database.ADMIN_DSN, show_default=True, help="Admin DSN.")
@click.option("--timeout", type=click.FloatRange(1), default=900.0, show_default=True)
@click.option(
    "--steady-state",
    is_flag=True,
    help="5 %% of jobs running: a full and an --active-only run after a first load.",
)
@click.option(
    "--no-task-details",
    is_flag=True,
    help="Sync and fetch floor without the detail call per Running task (like-for-like with "
    "releases before live progress).",
)
@click.option(
    "--queries",
    "query_mode",
    is_flag=True,
    help="Time the dashboards' query shapes (bench/queries.py) instead of the sync.",
)
@click.option("--url", help="With --queries: time this existing database, loading nothing.")
def main(
    size: str,
    latency_ms: float,
    concurrency: int,
    kind: str,
    json_path: Path | None,
    postgres: str,
    timeout: float,
    steady_state: bool,
    no_task_details: bool,
    query_mode: bool,
    url: str | None,
) -> None:
    """Time full and no-op `qianfan-etl sync` against the simulator and the fetch/COPY floors.

    Sizes: S = 200, M = 2,000, L = 8,000 jobs of 25 tasks, 4 metrics and 20 checkpoints each;
    J = one job of 50,000 such tasks.
    Prints one table and the targets; saves the same as JSON (default bench/results/).

    \b
    Example:
        make bench ARGS='--size M --latency-ms 20'
        make bench ARGS='--size M --latency-ms 50 --steady-state'
        make bench ARGS='--size M --queries'
    """
    settings = Settings(
        size, latency_ms, concurrency, kind, postgres, timeout, steady_state, not no_task_details
    )
    if query_mode:
        report_queries(settings, url)
        return
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    try:
        results = run_steady(settings) if steady_state else run(settings)
    except BenchError as exc:
        raise click.ClickException(str(exc)) from None
    if steady_state:
        expected = steady.formula(SIZES[size], TASKS_PER_JOB[size], CHECKPOINTS)
        results.targets = steady.evaluate(results, expected)
    else:
        baseline = report.size_s_baseline(results.settings)
        results.targets = targets.evaluate(results, baseline)
    path = json_path or report.default_json_path(results.settings, stamp)
    report.write_json(results, path)
    click.echo("\n".join([report.header_text(results), "", report.table_text(results), ""]))
    click.echo(report.targets_text(results))
    click.echo(f"\nsaved {path}")


if __name__ == "__main__":
    main(prog_name="python -m bench")
