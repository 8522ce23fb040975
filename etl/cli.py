"""The `qianfan-etl` command line: parse options, call the stages, map errors to exit codes."""

import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource
from sqlalchemy import Engine
from sqlalchemy.engine import URL

from etl import config, db, monitor, process, progress, readout
from etl.errors import (
    EXIT_DATA,
    EXIT_SIGINT,
    ConfigError,
    ContractError,
    EtlError,
    TransientError,
)
from etl.qianfan import QianfanClient, RetryPolicy
from etl.qianfan.client import DEFAULT_DEADLINE
from etl.report import page
from etl.report.queries import Selection
from etl.simulator_config import JOB_FAULTS, SimulatorConfig
from etl.sync import SyncOptions, SyncResult, sync

log = logging.getLogger("etl")


class EtlGroup(click.Group):
    """A group that turns expected failures into one clear line and their exit code, and
    whose commands' help names each option's environment variable."""

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is not None:
            _show_envvars(command)
            # the command list shows each first sentence whole (click cuts it with "...")
            command.short_help = command.get_short_help_str(limit=sys.maxsize)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.BadParameter as exc:
            exc.param_hint = _param_hint(exc) or exc.param_hint
            raise
        except EtlError as exc:
            log.error("%s", exc)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            log.error("interrupted")
            ctx.exit(EXIT_SIGINT)


def _param_hint(exc: click.BadParameter) -> str | None:
    """The bad option, and its env var only when the value came from there (click names
    the variable whatever the source)."""
    param, ctx = exc.param, exc.ctx
    if not isinstance(param, click.Option) or ctx is None or param.name is None:
        return None
    hint = " / ".join(f"'{opt}'" for opt in param.opts)
    if ctx.get_parameter_source(param.name) is ParameterSource.ENVIRONMENT:
        hint += f" (from env var '{param.envvar}')"
    return hint


def _show_envvars(command: click.Command) -> None:
    """Make `--help` show `env var: NAME` for every option read from one."""
    for param in command.params:
        if isinstance(param, click.Option) and param.envvar:
            param.show_envvar = True
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _show_envvars(sub)


@click.group(cls=EtlGroup)
@click.version_option(package_name="qianfan-etl")
def cli() -> None:
    """Copy Baidu Qianfan fine-tuning jobs, tasks, metrics and checkpoints into SQL."""


# Every option is one click.option call, its environment variable named in it; an option that
# several commands take is bound to a name once, as these are.
database_url_option = click.option(
    "--database-url",
    envvar=config.DATABASE_URL_VAR,
    help=f"SQLAlchemy URL of the database (default {config.DEFAULT_DATABASE_URL}).",
)
db_schema_option = click.option(
    "--db-schema",
    envvar=config.DB_SCHEMA_VAR,
    metavar="NAME",
    help="Postgres schema of the tables and views (created by `db upgrade`) "
    "[default: the connection's search path].",
)
# `sync` and `report` select jobs the same way.
job_id_option = click.option(
    "--job-id", "job_ids", multiple=True, help="Only this job (repeatable)."
)


def engine_for(
    database_url: str | None,
    db_schema: str | None = None,
    *,
    existing: bool = False,
    lock_timeout: float = db.DEFAULT_LOCK_TIMEOUT,
    statement_timeout: float = db.DEFAULT_STATEMENT_TIMEOUT,
) -> Engine:
    """An engine for the URL given (or DATABASE_URL, or the embedded default) and schema;
    with `existing`, a SQLite file that is not there yet is an error, not created empty."""
    url = parse_database_url(database_url)
    if existing:
        db.require_file(url)
    return db.create(
        url,
        lock_timeout=lock_timeout,
        statement_timeout=statement_timeout,
        schema=config.db_schema(db_schema),
    )


def parse_database_url(database_url: str | None) -> URL:
    """The URL, whose errors name --database-url or DATABASE_URL, whichever gave it."""
    ctx = click.get_current_context(silent=True)
    given = ctx is not None and ctx.get_parameter_source("database_url") in (
        ParameterSource.COMMANDLINE,
        ParameterSource.DEFAULT_MAP,
    )
    return config.database_url(database_url, "--database-url" if given else None)


SYNC_HELP = f"""Fetch every job and task of the account and load them into the database.

\b
Environment (a .env file in the working directory is read too):
    {config.ACCESS_KEY_VAR}            IAM access key (required)
    {config.SECRET_KEY_VAR}            IAM secret key (required)
    {config.BASE_URL_VAR}  the API (default {config.DEFAULT_BASE_URL})
    {config.DATABASE_URL_VAR}                  the database, as --database-url

\b
Example:
    export {config.ACCESS_KEY_VAR}=... {config.SECRET_KEY_VAR}=...
    qianfan-etl sync --database-url postgresql://etl@db/analytics
    qianfan-etl sync --active-only --full-every 24h    # every few minutes
"""


@cli.command("sync", help=SYNC_HELP)
@job_id_option
@click.option(
    "--concurrency",
    type=click.IntRange(1, 64),
    default=SyncOptions.concurrency,
    show_default=True,
    envvar="QIANFAN_ETL_CONCURRENCY",
    help="API calls in flight at once (job pages, task pages, detail calls: one pool).",
)
@click.option(
    "--qps",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    envvar="QIANFAN_ETL_QPS",
    help="Client-side limit on API requests per second.",
)
@click.option(
    "--dry-run", is_flag=True, help="Fetch and compare, report what would change, write nothing."
)
@click.option(
    "--max-rejects",
    type=click.IntRange(0),
    default=SyncOptions.max_rejects,
    show_default=True,
    envvar="QIANFAN_ETL_MAX_REJECTS",
    help="More rejected records than this fail the run (exit 65).",
)
@click.option(
    "--lock-wait",
    type=click.FloatRange(0),
    default=SyncOptions.lock_wait,
    show_default=True,
    envvar="QIANFAN_ETL_LOCK_WAIT",
    help="Seconds to wait for another run's lock before exit 75.",
)
@click.option(
    "--active-only",
    is_flag=True,
    help="List tasks only of jobs that are new, unfinished or failed to list; delete nothing.",
)
@click.option(
    "--full-every",
    metavar="DURATION",
    default=f"{SyncOptions.full_every / 3600:g}h",
    show_default=True,
    envvar="QIANFAN_ETL_FULL_EVERY",
    callback=lambda _ctx, _param, value: _duration(value),
    help="An --active-only run is full when the last full run is older than this (90m, 2h, 1d).",
)
@click.option(
    "--task-details/--no-task-details",
    default=SyncOptions.task_details,
    show_default=True,
    envvar="QIANFAN_ETL_TASK_DETAILS",
    help="Fetch each Running task's detail for its live progress (one API call per task).",
)
@click.option(
    "--metrics-file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="QIANFAN_ETL_METRICS_FILE",
    help="After every run, also failed ones, write Prometheus metrics here (textfile collector).",
)
@click.option(
    "--allow-plain-http",
    is_flag=True,
    envvar=config.ALLOW_PLAIN_HTTP_VAR,
    help="Allow an http:// API base URL whose host is not loopback (never taken from .env).",
)
@click.option(
    "--api-attempts",
    type=click.IntRange(1),
    default=RetryPolicy.max_attempts,
    show_default=True,
    envvar="QIANFAN_ETL_API_ATTEMPTS",
    help="HTTP attempts per API call before exit 75.",
)
@click.option(
    "--api-retry-wait",
    type=click.FloatRange(0),
    default=RetryPolicy.base_wait,
    show_default=True,
    envvar="QIANFAN_ETL_API_RETRY_WAIT",
    help="Base of the jittered exponential retry wait, seconds.",
)
@click.option(
    "--api-deadline",
    type=click.FloatRange(0),
    default=DEFAULT_DEADLINE,
    show_default=True,
    envvar="QIANFAN_ETL_API_DEADLINE",
    help="Wall-clock limit on one HTTP attempt, s (0: none).",
)
@click.option(
    "--api-retry-after-cap",
    type=click.FloatRange(0),
    default=RetryPolicy.retry_after_cap,
    show_default=True,
    envvar="QIANFAN_ETL_API_RETRY_AFTER_CAP",
    help="Longest Retry-After honoured; more exits 75.",
)
@click.option(
    "--db-lock-timeout",
    type=click.FloatRange(0),
    default=db.DEFAULT_LOCK_TIMEOUT,
    show_default=True,
    envvar="QIANFAN_ETL_DB_LOCK_TIMEOUT",
    help="Postgres lock_timeout, seconds (0: none).",
)
@click.option(
    "--db-statement-timeout",
    type=click.FloatRange(0),
    default=db.DEFAULT_STATEMENT_TIMEOUT,
    show_default=True,
    envvar="QIANFAN_ETL_DB_STATEMENT_TIMEOUT",
    help="Postgres statement_timeout, seconds (0: none).",
)
@click.option(
    "--batch-tasks",
    type=click.IntRange(1),
    default=SyncOptions.batch_tasks,
    show_default=True,
    envvar="QIANFAN_ETL_BATCH_TASKS",
    help="Tasks (of whole jobs) written per transaction.",
)
@click.option(
    "--max-delete-fraction",
    type=click.FloatRange(0, 1),
    default=SyncOptions.max_delete_fraction,
    show_default=True,
    envvar="QIANFAN_ETL_MAX_DELETE_FRACTION",
    help="A run that would soft-delete more than this share of the live jobs or tasks "
    "deletes nothing and exits 65 (1: no limit).",
)
@database_url_option
@db_schema_option
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    envvar=config.LOG_FORMAT_VAR,
    help="Log lines as text, or as one JSON object per line for log shippers.",
)
@click.option("-q", "--quiet", is_flag=True, help="Only errors; no progress, no summary.")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def sync_command(
    job_ids: tuple[str, ...],
    concurrency: int,
    qps: float | None,
    dry_run: bool,
    max_rejects: int,
    lock_wait: float,
    active_only: bool,
    full_every: tuple[float, str],
    task_details: bool,
    metrics_file: Path | None,
    allow_plain_http: bool,
    database_url: str | None,
    db_schema: str | None,
    log_format: str,
    verbose: int,
    quiet: bool,
    api_attempts: int,
    api_retry_wait: float,
    api_deadline: float,
    api_retry_after_cap: float,
    db_lock_timeout: float,
    db_statement_timeout: float,
    batch_tasks: int,
    max_delete_fraction: float,
) -> None:
    process.setup_logging(log_format, verbose, quiet)
    env_file = click.get_current_context().obj
    _note_env_file(env_file)
    if active_only and job_ids:
        raise click.UsageError("--active-only and --job-id do not combine: choose one")
    options = SyncOptions(
        job_ids=frozenset(job_ids),
        concurrency=concurrency,
        dry_run=dry_run,
        max_rejects=max_rejects,
        lock_wait=lock_wait,
        batch_tasks=batch_tasks,
        max_delete_fraction=max_delete_fraction,
        active_only=active_only,
        full_every=full_every[0],
        task_details=task_details,
    )
    retry = RetryPolicy(
        max_attempts=api_attempts, base_wait=api_retry_wait, retry_after_cap=api_retry_after_cap
    )
    try:
        settings = config.api_settings(allow_plain_http=allow_plain_http, env_file=env_file)
        engine = engine_for(
            database_url,
            db_schema,
            existing=True,
            lock_timeout=db_lock_timeout,
            statement_timeout=db_statement_timeout,
        )
    except BaseException as exc:  # the run cannot start: the metrics file says so all the same
        monitor.RunMetrics(metrics_file, dry_run).record(exc)
        raise
    client = QianfanClient(
        settings.base_url,
        settings.access_key,
        settings.secret_key,
        deadline=api_deadline,
        retry=retry,
        qps=qps,
        concurrency=concurrency,
    )
    with monitor.RunMetrics(metrics_file, dry_run, engine, client):
        with process.signals_as_exit(), progress.on_terminal(not quiet) as bar, client:
            result = sync(engine, client, options, bar.update if bar else None)
        _end(result, quiet, log_format)


def _note_env_file(env_file: config.EnvFile | None) -> None:
    """Name the settings a `.env` gave this run (never their values), and those it may not."""
    if env_file is None:
        return
    if env_file.keys:
        log.info("settings from %s: %s", env_file.path, ", ".join(env_file.keys))
    if env_file.ignored:
        log.warning(
            "%s sets %s, which is ignored there: the opt-in is taken only from the command "
            "line or the environment",
            env_file.path,
            ", ".join(env_file.ignored),
        )


def _end(result: SyncResult, quiet: bool, log_format: str) -> None:
    """Print the summary; raise for a partial run's exit code."""
    if not quiet:
        emit_summary(result, log_format)
    if result.exit_code:
        # every other job loaded; the code says what kind of trouble remains
        kind = ContractError if result.exit_code == EXIT_DATA else TransientError
        raise kind(result.message or f"run {result.run_id} ended {result.status}")


def emit_summary(result: SyncResult, log_format: str) -> None:
    """One line at the end of a run, for people and for log shippers alike."""
    if log_format == "json":
        click.echo(json.dumps({"event": "sync_finished", **readout.summary_fields(result)}))
    else:
        click.echo(readout.summary_line(result))


@cli.group("db")
def db_group() -> None:
    """Manage the database schema (Alembic)."""


@db_group.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@database_url_option
@db_schema_option
def db_upgrade(revision: str, database_url: str | None, db_schema: str | None) -> None:
    """Create or migrate the tables and views to the code's revision."""
    engine = engine_for(database_url, db_schema)
    db.upgrade(engine, revision)
    click.echo(f"database {db.describe(engine)} at revision {db.current_revision(engine)}")


@db_group.command("current")
@database_url_option
@db_schema_option
def db_current(database_url: str | None, db_schema: str | None) -> None:
    """Show the database's schema revision and the code's head."""
    engine = engine_for(database_url, db_schema)
    current = None if db.missing_file(engine.url) else db.current_revision(engine)
    head = db.head_revision()
    state = "up to date" if current == head else "not at head"
    click.echo(f"current: {current or 'none'}  head: {head}  ({state})")
    db.require_file(engine.url)  # a missing SQLite file: 78, and it stays missing
    db.require_head(engine)  # exits 78 with what to do when the schema is not at head


@cli.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--runs", type=click.IntRange(1), default=10, show_default=True, help="Recent runs to list."
)
@click.option(
    "--max-age",
    metavar="DURATION",
    callback=lambda _ctx, _param, value: _duration(value),
    help="Check only: exit 0 if the latest run succeeded within DURATION (90m, 2h, 1d), else 69.",
)
@database_url_option
@db_schema_option
def status_command(
    as_json: bool,
    runs: int,
    max_age: tuple[float, str] | None,
    database_url: str | None,
    db_schema: str | None,
) -> None:
    """Show recent runs and table counts, or check that the data is fresh (--max-age).

    \b
    Example (a cron wrapper, health check or Kubernetes probe):
        qianfan-etl status --max-age 2h || alert "qianfan-etl data is stale"
    """
    engine = engine_for(database_url, db_schema, existing=True)
    db.require_head(engine)
    with db.translated_errors(engine.url):
        if max_age is not None:
            click.echo(monitor.check_freshness(engine, *max_age))
            return
        status = readout.status(engine, runs)
    text = json.dumps(status, indent=2, default=readout.json_default) if as_json else None
    click.echo(text or readout.status_text(status))


def _duration(value: str | None) -> tuple[float, str] | None:
    """A DURATION option as (seconds, as written), or a usage error (exit 2)."""
    if value is None:
        return None
    try:
        return config.parse_duration(value), value
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


class IsoMoment(click.ParamType[datetime]):
    """An ISO 8601 date or date-time, as an aware UTC datetime (naive means UTC)."""

    name = "DATETIME"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            example = "such as 2024-01-01 or 2024-01-01T12:00:00Z"
            self.fail(f"{value!r} is not an ISO 8601 date or date-time {example}", param, ctx)
        zone = moment.tzinfo or UTC
        return moment.replace(tzinfo=zone).astimezone(UTC)


@cli.command("report")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=page.DEFAULT_OUTPUT,
    show_default=True,
    help="The HTML file to write (replaced whole).",
)
@job_id_option
@click.option(
    "--since",
    type=IsoMoment(),
    help="Only tasks created at or after this date/time: ISO 8601, UTC unless it carries a "
    "Z or an offset (2024-01-01, 2024-01-01T12:00:00Z, 2024-01-01T20:00+08:00).",
)
@click.option(
    "--tasks",
    type=click.IntRange(1, 50),
    default=Selection.tasks,
    show_default=True,
    help="Tasks drawn in the loss curves.",
)
@database_url_option
@db_schema_option
def report_command(
    output: Path,
    job_ids: tuple[str, ...],
    since: datetime | None,
    tasks: int,
    database_url: str | None,
    db_schema: str | None,
) -> None:
    """Write one self-contained HTML page of charts: loss curves, metrics, outcomes, durations.

    \b
    Example:
        qianfan-etl report --output /var/www/qianfan/index.html
    """
    page.require_extra()
    engine = engine_for(database_url, db_schema)
    db.require_head(engine)
    selection = Selection(job_ids=job_ids, since=since, tasks=tasks)
    with db.translated_errors(engine.url):
        size = page.write_report(engine, output, selection)
    click.echo(f"report: {output.resolve()} ({size / 1e6:.1f} MB)")


# The synthetic account's options, which `simulate` and `demo` both take.
jobs_option = click.option(
    "--jobs",
    type=click.IntRange(0),
    default=SimulatorConfig.jobs,
    show_default=True,
    help="Jobs in the synthetic account.",
)
tasks_per_job_option = click.option(
    "--tasks-per-job",
    type=click.IntRange(0),
    default=SimulatorConfig.tasks_per_job,
    show_default=True,
    help="Tasks listed under each job.",
)
checkpoints_option = click.option(
    "--checkpoints",
    type=click.IntRange(0),
    default=SimulatorConfig.checkpoints,
    show_default=True,
    help="Checkpoints of a finished task.",
)
seed_option = click.option(
    "--seed",
    type=click.INT,
    default=SimulatorConfig.seed,
    show_default=True,
    help="Seed of the synthetic data (same seed, same data).",
)
latency_option = click.option(
    "--latency-ms",
    type=click.FloatRange(0),
    default=SimulatorConfig.latency_ms,
    show_default=True,
    help="Delay added to every response.",
)


SIMULATE_HELP = f"""Serve a Qianfan-compatible API with synthetic data on 127.0.0.1.

It accepts one key pair, {config.ACCESS_KEY_VAR}={SimulatorConfig.access_key} and
{config.SECRET_KEY_VAR}={SimulatorConfig.secret_key}, and refuses any other as the real API
would; the first lines it prints are the exports that point qianfan-etl at it.
"""


@cli.command("simulate", help=SIMULATE_HELP)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8765,
    show_default=True,
    help="Port on 127.0.0.1 (0: any free port).",
)
@click.option(
    "--running-jobs",
    type=click.FloatRange(0, 1),
    help="A steady state: this share of jobs has a Running task, the rest only finished ones.",
)
@click.option(
    "--lean-listings",
    is_flag=True,
    help="List tasks without metrics and checkpointList (as the 2025 doc and the SDK's mock "
    "do); only DescribeFineTuningTask carries them.",
)
@jobs_option
@tasks_per_job_option
@checkpoints_option
@seed_option
@latency_option
@click.option(
    "--job-fault",
    "job_faults",
    multiple=True,
    metavar="JOB=KIND",
    help="Break one job's task listing: JOB is a job id or 0-based position, KIND one of "
    "500, 403 (500:MESSAGE, 403:MESSAGE with that error message), deleted_mid_listing, "
    "slow:SECONDS, or a pagination fault such as "
    "missing_next_marker or oversized_page (repeatable).",
)
def simulate_command(
    port: int,
    running_jobs: float | None,
    lean_listings: bool,
    job_faults: tuple[str, ...],
    jobs: int,
    tasks_per_job: int,
    checkpoints: int,
    seed: int,
    latency_ms: float,
) -> None:
    from etl.simulator import Simulator  # here, so that production commands never load it

    sim_config = _dated_account(
        jobs, tasks_per_job, checkpoints, seed, latency_ms, running_jobs, lean_listings
    )
    simulator = Simulator(sim_config)
    simulator.job_faults = _job_faults([job["jobId"] for job in simulator.jobs()], job_faults)
    try:
        server = simulator.serve(port=port)
    except OSError as exc:
        raise ConfigError(
            f"the simulator cannot listen on 127.0.0.1:{port}: {exc.strerror}; pick another "
            "port with --port N, or --port 0 for any free one"
        ) from None
    keys = f"{config.ACCESS_KEY_VAR}={sim_config.access_key} "
    keys += f"{config.SECRET_KEY_VAR}={sim_config.secret_key}"
    click.echo(f"Qianfan simulator on {server.url}; point qianfan-etl at it with:")
    click.echo(f"  export {config.BASE_URL_VAR}={server.url} {keys}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.shutdown()


def _dated_account(
    jobs: int,
    tasks_per_job: int,
    checkpoints: int,
    seed: int,
    latency_ms: float,
    running_jobs: float | None = None,
    lean_listings: bool = False,
) -> SimulatorConfig:
    """The synthetic account the dataset options describe, dated now, so that "this week"
    finds its rows."""
    return SimulatorConfig(
        jobs=jobs,
        tasks_per_job=tasks_per_job,
        checkpoints=checkpoints,
        seed=seed,
        latency_ms=latency_ms,
        running_jobs=running_jobs,
        lean_listings=lean_listings,
        now=datetime.now(UTC),
    )


def _job_faults(ids: list[str], specs: tuple[str, ...]) -> dict[str, str]:
    """`--job-fault JOB=KIND` values as a job id -> fault mapping."""
    faults: dict[str, str] = {}
    for spec in specs:
        job, _, kind = spec.partition("=")
        if kind.partition(":")[0] not in JOB_FAULTS:
            raise click.BadParameter(f"{spec!r}: KIND must be one of {sorted(JOB_FAULTS)}")
        faults[ids[int(job)] if job.isdigit() and int(job) < len(ids) else job] = kind
    return faults


@cli.command("demo")
@click.option(
    "--database-url",
    default="sqlite:///qianfan_demo.db",
    show_default=True,
    help="SQLAlchemy URL of the demo database.",
)
@jobs_option
@tasks_per_job_option
@checkpoints_option
@seed_option
@latency_option
def demo_command(
    database_url: str,
    jobs: int,
    tasks_per_job: int,
    checkpoints: int,
    seed: int,
    latency_ms: float,
) -> None:
    """Start the simulator, migrate the demo database, sync into it, print a summary."""
    from etl.simulator import Simulator  # here, so that production commands never load it

    process.setup_logging("text", 0, False)
    engine = engine_for(database_url)
    db.upgrade(engine)
    account = _dated_account(jobs, tasks_per_job, checkpoints, seed, latency_ms)
    with (
        Simulator(account).serve() as server,
        QianfanClient(server.url, account.access_key, account.secret_key) as client,
    ):
        click.echo(f"simulator: {server.url}, database: {config.show_url(engine.url)}")
        result = sync(engine, client, SyncOptions())
    click.echo(readout.summary_line(result))
    with db.translated_errors(engine.url):
        click.echo(readout.status_text(readout.status(engine, 3)))
        click.echo(readout.sample_text(engine))
    prog = sys.argv[0] if Path(sys.argv[0]).name == "qianfan-etl" else "qianfan-etl"
    shown = database_url if engine.url.password is None else config.show_url(engine.url)
    click.echo(f"Explore it: {prog} status --database-url {shown}")
    click.echo(_demo_report(engine, f"{prog} report --database-url {shown}"))


def _demo_report(engine: Engine, command: str) -> str:
    """The demo's last line: where its report is, or how to get one."""
    output = Path(page.DEFAULT_OUTPUT)
    try:
        with db.translated_errors(engine.url):
            page.write_report(engine, output, Selection())
    except page.MissingExtraError:
        return f"For a page of charts: {page.INSTALL_HINT}, then {command}"
    return f"Report: {output.resolve()}"


def main() -> None:
    """Console-script entry point."""
    process.run(cli)
