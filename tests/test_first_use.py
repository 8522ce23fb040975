"""What a new user meets first: help, option errors, `status` before and after runs, dry-run
numbers, shell completion, the README's SQL on the demo database and its simulator path."""

import json
import re
import shutil
import sqlite3
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from filelock import FileLock
from sqlalchemy.engine import URL

from etl import db
from etl.cli import cli
from etl.simulator import Simulator, SimulatorConfig, SimulatorServer
from tests.harness import cli_env, etl_command, invoke_cli, run_cli

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_sync_help_names_the_environment_it_reads() -> None:
    text = CliRunner().invoke(cli, ["sync", "--help"]).output
    for name in (
        "QIANFAN_ACCESS_KEY",
        "QIANFAN_SECRET_KEY",
        "QIANFAN_CONSOLE_API_BASE_URL",
        "DATABASE_URL",
    ):
        assert name in text, text


def test_the_command_list_keeps_each_description_whole() -> None:
    text = CliRunner().invoke(cli, ["--help"], terminal_width=80).output
    listed = " ".join(text.split("Commands:")[1].split())
    assert "..." not in listed and "…" not in listed, text
    for name, command in cli.commands.items():
        paragraph = " ".join((command.help or "").split("\n\n")[0].split())
        first = re.split(r"\.( |$)", paragraph)[0]
        assert f"{name} {first}" in listed, (name, text)


def test_status_before_the_first_run_says_how_to_make_one(sqlite_url: URL, tmp_path: Path) -> None:
    result = invoke_cli(["status"], {"DATABASE_URL": str(sqlite_url)}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("no runs yet"), result.stdout
    assert "`qianfan-etl sync`" in result.stdout
    assert "run  status" not in result.stdout  # no header over nothing
    assert "finetune_tasks" in result.stdout  # the counts stay


def test_status_cuts_a_long_error_at_a_word(
    sim: Simulator, server: SimulatorServer, sqlite_url: URL, tmp_path: Path
) -> None:
    env = cli_env(sim, server, sqlite_url)
    assert invoke_cli(["sync"], env, cwd=tmp_path).returncode == 0
    error = "the API answered with something rather unexpected " * 4
    with db.create(sqlite_url).begin() as connection:
        connection.execute(sa.text("UPDATE etl_runs SET error = :e"), {"e": error})
    line = invoke_cli(["status"], env, cwd=tmp_path).stdout.splitlines()[1]
    shown = line.split("  ")[-1]
    assert shown.endswith("…"), line
    kept = shown[:-1]
    assert error.startswith(kept) and error[len(kept)] == " ", (kept, line)
    assert len(shown) <= 60


def test_dry_runs_use_up_no_run_number(
    sim: Simulator, server: SimulatorServer, db_url: URL, tmp_path: Path
) -> None:
    env = cli_env(sim, server, db_url)
    assert invoke_cli(["sync"], env, cwd=tmp_path).stdout.startswith("sync run 1:")
    for _ in range(2):
        dry = invoke_cli(["sync", "--dry-run"], env, cwd=tmp_path)
        assert dry.returncode == 0, dry.stderr
        assert dry.stdout.startswith("dry run 2:"), dry.stdout
    real = invoke_cli(["sync"], env, cwd=tmp_path)
    assert real.stdout.startswith("sync run 2:"), real.stdout
    runs = json.loads(invoke_cli(["status", "--json"], env, cwd=tmp_path).stdout)["runs"]
    assert [run["run_id"] for run in runs] == [2, 1]


@pytest.mark.parametrize(
    "since", ["2024-01-01T12:00:00Z", "2024-01-01T20:00:00+08:00", "2024-01-01", "2024-01-01T12:00"]
)
def test_report_since_takes_iso_8601(
    sim: Simulator, server: SimulatorServer, sqlite_url: URL, tmp_path: Path, since: str
) -> None:
    env = cli_env(sim, server, sqlite_url)
    args = ["report", "--since", since, "--output", str(tmp_path / "r.html")]
    result = invoke_cli(args, env, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "r.html").stat().st_size > 0


def test_report_since_refuses_what_is_not_iso_8601(tmp_path: Path) -> None:
    result = invoke_cli(["report", "--since", "01/02/2024"], {}, cwd=tmp_path)
    assert result.returncode == 2
    assert "'--since'" in result.stderr and "ISO 8601" in result.stderr, result.stderr


@pytest.mark.parametrize("given", ["option", "env"])
def test_an_option_error_names_the_env_var_only_when_it_gave_the_value(
    given: str, tmp_path: Path
) -> None:
    env = {"QIANFAN_ETL_CONCURRENCY": "0"} if given == "env" else {}
    args = ["sync"] if given == "env" else ["sync", "--concurrency", "0"]
    result = invoke_cli(args, env, cwd=tmp_path)
    assert result.returncode == 2
    if given == "env":
        assert "'--concurrency' (from env var 'QIANFAN_ETL_CONCURRENCY')" in result.stderr
    else:
        assert "Invalid value for '--concurrency': 0" in result.stderr, result.stderr
        assert "QIANFAN_ETL_CONCURRENCY" not in result.stderr, result.stderr


def test_the_busy_lock_advice_fits_the_lock_wait_given(
    sim: Simulator, server: SimulatorServer, sqlite_url: URL, tmp_path: Path
) -> None:
    env = cli_env(sim, server, sqlite_url)
    with FileLock(f"{sqlite_url.database}.lock"):
        at_once = run_cli(["sync"], env, cwd=tmp_path)
        waited = run_cli(["sync", "--lock-wait", "0.2"], env, cwd=tmp_path)
    assert at_once.returncode == waited.returncode == 75
    assert "pass --lock-wait SECONDS to wait for it" in at_once.stderr, at_once.stderr
    assert "pass --lock-wait" not in waited.stderr, waited.stderr
    assert "still running after --lock-wait 0.2" in waited.stderr, waited.stderr
    assert "longer --lock-wait" in waited.stderr


def test_shell_completion_is_produced_and_completes(tmp_path: Path) -> None:
    script = run_cli([], {"_QIANFAN_ETL_COMPLETE": "bash_source"}, cwd=tmp_path)
    assert script.returncode == 0, script.stderr
    assert "_qianfan_etl_completion" in script.stdout and "complete " in script.stdout
    env = {"_QIANFAN_ETL_COMPLETE": "bash_complete", "COMP_WORDS": "qianfan-etl sy"}
    words = run_cli([], {**env, "COMP_CWORD": "1"}, cwd=tmp_path)
    assert words.stdout.split() == ["plain,sync"], words.stdout
    assert "_QIANFAN_ETL_COMPLETE=bash_source qianfan-etl" in README
    bash = shutil.which("bash")
    if bash:  # the script is valid bash, and registers the command
        check = f'eval "$(cat {tmp_path / "c.sh"})" && complete -p qianfan-etl'
        (tmp_path / "c.sh").write_text(script.stdout)
        registered = subprocess.run([bash, "-c", check], capture_output=True, text=True)
        assert "_qianfan_etl_completion" in registered.stdout, registered.stderr


def readme_sql() -> list[str]:
    """Every statement of the README's ```sql blocks, comments dropped."""
    blocks = re.findall(r"^```sql\n(.*?)^```", README, re.MULTILINE | re.DOTALL)
    lines = [line for block in blocks for line in block.splitlines()]
    text = "\n".join(line for line in lines if not line.lstrip().startswith("--"))
    return [statement.strip() for statement in text.split(";") if statement.strip()]


def test_every_readme_sql_example_returns_rows_on_the_demo_database(tmp_path: Path) -> None:
    demo = tmp_path / "qianfan_demo.db"
    result = invoke_cli(["demo", "--database-url", f"sqlite:///{demo}"], {}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    statements = readme_sql()
    assert len(statements) >= 3, statements
    with sqlite3.connect(demo) as connection:
        for statement in statements:
            rows = connection.execute(statement).fetchall()
            assert rows, f"no rows on the demo database: {statement}"


def test_the_simulator_dates_its_account_before_a_given_now() -> None:
    now = datetime(2030, 6, 1, 12, 0, 0, tzinfo=UTC)
    config = SimulatorConfig(jobs=5, tasks_per_job=40, seed=4, now=now)
    times = [
        datetime.fromisoformat(task[key])
        for job in Simulator(config).jobs()
        for task in Simulator(config).tasks(job["jobId"])
        for key in ("createTime", "finishTime", "createDate", "finishDate")
        if key in task and not task[key].startswith("0000")
    ]
    assert max(times) <= now and max(times) > now - timedelta(days=1), max(times)
    assert min(times) > now - timedelta(days=3)
    again = Simulator(config)
    assert [again.tasks(j["jobId"]) for j in again.jobs()] == [
        Simulator(config).tasks(j["jobId"]) for j in Simulator(config).jobs()
    ]
    first = Simulator(SimulatorConfig(jobs=1, seed=4)).jobs()[0]
    assert (first.get("createTime") or first.get("createDate", "")).startswith("2024-01-01")


def test_the_readmes_simulator_path_works(pg_url: URL, tmp_path: Path) -> None:
    """`simulate` in one process; in another, the README's exports and commands, on SQLite
    then Postgres."""
    section = README.split("### Try it against the simulator, then Postgres")[1].split("\n## ")[0]
    exports = dict(re.findall(r"(QIANFAN_[A-Z_]+)=(\S+)", section))
    simulate = [*etl_command({}), "simulate", "--port", "0", "--jobs", "3"]
    with subprocess.Popen(simulate, stdout=subprocess.PIPE, text=True) as served:
        assert served.stdout is not None
        served.stdout.readline()
        printed = dict(re.findall(r"(QIANFAN_[A-Z_]+)=(\S+)", served.stdout.readline()))
        try:
            assert set(printed) == set(exports)
            assert {k: v for k, v in exports.items() if "KEY" in k} == {
                k: v for k, v in printed.items() if "KEY" in k
            }
            for url in (f"sqlite:///{tmp_path / 'try.db'}", pg_url.render_as_string(False)):
                env = {**printed, "DATABASE_URL": url}
                for command in (["db", "upgrade"], ["sync"], ["status"]):
                    done = run_cli(command, env, cwd=tmp_path)
                    assert done.returncode == 0, (command, done.stderr)
                status = done.stdout.splitlines()
                assert status[1].split()[:2] == ["1", "succeeded"], status
        finally:
            served.terminate()
