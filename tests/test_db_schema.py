"""--db-schema: two schemas of one Postgres database are two independent installations."""

import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import Engine
from sqlalchemy.engine import URL

from etl import db, load
from etl.simulator import Simulator, SimulatorConfig
from migrations.views import VIEW_NAMES
from tests.harness import cli_env, invoke_cli


def etl_cli(
    args: list[str], sim: Simulator, url: str, cwd: Path, **env: str
) -> subprocess.CompletedProcess[str]:
    with sim.serve() as server:
        return invoke_cli(args, cli_env(sim, server, sa.make_url(url), **env), cwd=cwd)


def scalar(engine: Engine, sql: str) -> object:
    with engine.connect() as connection:
        return connection.execute(sa.text(sql)).scalar()


def relations(engine: Engine, schema: str) -> set[str]:
    inspector = sa.inspect(engine)
    return set(inspector.get_table_names(schema)) | set(inspector.get_view_names(schema))


def test_two_schemas_are_two_installations(pg_url: URL, pg_engine: Engine, tmp_path: Path) -> None:
    url = pg_url.render_as_string(hide_password=False)
    small = Simulator(SimulatorConfig(jobs=3, tasks_per_job=4, checkpoints=2, seed=1))
    large = Simulator(SimulatorConfig(jobs=5, tasks_per_job=7, checkpoints=3, seed=2))
    upgraded = etl_cli(["db", "upgrade", "--db-schema", "alpha"], small, url, tmp_path)
    assert upgraded.returncode == 0, upgraded.stderr
    assert "(schema alpha) at revision" in upgraded.stdout
    beta = {"QIANFAN_ETL_DB_SCHEMA": "beta"}
    assert etl_cli(["db", "upgrade"], large, url, tmp_path, **beta).returncode == 0
    for sim, schema in ((small, "alpha"), (large, "beta")):
        result = etl_cli(["sync", "--db-schema", schema], sim, url, tmp_path)
        assert result.returncode == 0, result.stderr
    assert relations(pg_engine, "alpha") == relations(pg_engine, "public")
    assert relations(pg_engine, "beta") >= {"alembic_version", "etl_failed_jobs", *VIEW_NAMES}
    for sim, schema in ((small, "alpha"), (large, "beta")):
        tasks = sum(len(sim.tasks(job["jobId"])) for job in sim.jobs())
        assert scalar(pg_engine, f"SELECT COUNT(*) FROM {schema}.finetune_task_overview") == tasks
        assert scalar(pg_engine, f"SELECT version_num FROM {schema}.alembic_version") == (
            db.SCHEMA_HEAD
        )
        ids = f"SELECT string_agg(task_id, ',' ORDER BY task_id) FROM {schema}.finetune_tasks"
        assert scalar(pg_engine, ids) == ",".join(
            sorted(t["taskId"] for job in sim.jobs() for t in sim.tasks(job["jobId"]))
        )
    assert scalar(pg_engine, "SELECT COUNT(*) FROM public.finetune_tasks") == 0
    status = etl_cli(["status", "--max-age", "1h", "--db-schema", "beta"], large, url, tmp_path)
    assert status.returncode == 0 and "run 1 succeeded" in status.stdout
    assert etl_cli(["status", "--max-age", "1h"], large, url, tmp_path).returncode == 69
    page = tmp_path / "beta.html"
    report = etl_cli(["report", "--db-schema", "beta", "--output", str(page)], large, url, tmp_path)
    assert report.returncode == 0, report.stderr
    html = page.read_text()

    def drawn(sim: Simulator) -> set[str]:
        return {
            t["taskId"] for j in sim.jobs() for t in sim.tasks(j["jobId"]) if t["taskId"] in html
        }

    assert drawn(large) and not drawn(small)
    assert ", schema beta</dd>" in html
    current = etl_cli(["db", "current", "--db-schema", "gamma"], large, url, tmp_path)
    assert current.returncode == 78 and "current: none" in current.stdout
    assert "(schema gamma) has no qianfan-etl schema" in current.stderr
    assert "db upgrade --db-schema gamma" in current.stderr


def test_each_schema_has_its_own_run_lock(pg_url: URL, tmp_path: Path) -> None:
    url = pg_url.render_as_string(hide_password=False)
    sim = Simulator(SimulatorConfig(jobs=2, tasks_per_job=2, checkpoints=1))
    for schema in ("alpha", "beta"):
        assert etl_cli(["db", "upgrade", "--db-schema", schema], sim, url, tmp_path).returncode == 0
    alpha = db.create(pg_url, schema="alpha")
    with load.run_lock(alpha, 0):
        other = etl_cli(["sync", "--db-schema", "beta"], sim, url, tmp_path)
        assert other.returncode == 0, other.stderr
        same = etl_cli(["sync", "--db-schema", "alpha"], sim, url, tmp_path)
        assert same.returncode == 75 and "holds the lock" in same.stderr
        public = etl_cli(["sync"], sim, url, tmp_path)
        assert public.returncode == 0, public.stderr
    alpha.dispose()


def test_search_path_in_the_url_is_honoured(pg_url: URL, pg_engine: Engine, tmp_path: Path) -> None:
    """The URL's libpq options used to be replaced by the engine's own session settings."""
    with pg_engine.begin() as connection:
        connection.execute(sa.text("CREATE SCHEMA delta"))
    url = pg_url.update_query_dict({"options": "-c search_path=delta"})
    engine = db.create(url)
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT current_schema()")).scalar() == "delta"
        assert connection.execute(sa.text("SHOW statement_timeout")).scalar() == "5min"
    sim = Simulator(SimulatorConfig(jobs=2, tasks_per_job=2, checkpoints=1))
    text = url.render_as_string(hide_password=False)
    assert etl_cli(["db", "upgrade"], sim, text, tmp_path).returncode == 0
    assert etl_cli(["sync"], sim, text, tmp_path).returncode == 0
    assert scalar(pg_engine, "SELECT COUNT(*) FROM delta.finetune_tasks") == 4
    engine.dispose()


def test_db_schema_on_sqlite_or_a_bad_name_exits_78(sqlite_url: URL, tmp_path: Path) -> None:
    sim = Simulator(SimulatorConfig(jobs=1, tasks_per_job=1))
    url = sqlite_url.render_as_string()
    result = etl_cli(["sync", "--db-schema", "alpha"], sim, url, tmp_path)
    assert result.returncode == 78 and "SQLite database has no schemas" in result.stderr
    bad = etl_cli(["db", "upgrade", "--db-schema", "Alpha; DROP"], sim, url, tmp_path)
    assert bad.returncode == 78 and "not a plain schema name" in bad.stderr


def test_alembic_upgrade_from_the_checkout_reads_the_schema_variable(
    pg_url: URL, pg_engine: Engine, tmp_path: Path
) -> None:
    root = Path(__file__).resolve().parent.parent
    env = {
        "PATH": "/usr/bin:/bin",
        "DATABASE_URL": pg_url.render_as_string(hide_password=False),
        "QIANFAN_ETL_DB_SCHEMA": "epsilon",
    }
    alembic = Path(sys.executable).parent / "alembic"
    result = subprocess.run(
        [str(alembic), "-c", str(root / "alembic.ini"), "upgrade", "head"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert scalar(pg_engine, "SELECT version_num FROM epsilon.alembic_version") == db.SCHEMA_HEAD
    assert relations(pg_engine, "epsilon") == relations(pg_engine, "public")
