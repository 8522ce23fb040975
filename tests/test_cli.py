"""The command line's finish: logging levels, help, messages, files it must not create, times."""

import json
import logging
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from sqlalchemy.engine import URL

from etl import readout
from etl.cli import cli
from etl.load import RunCounts
from etl.simulator import Simulator, SimulatorConfig, SimulatorServer
from etl.sync import SyncResult
from tests.harness import cli_env, invoke_cli

ROOT = Path(__file__).resolve().parent.parent
WIDE = {"terminal_width": 1000, "max_content_width": 1000}


def help_text(*args: str) -> str:
    """`qianfan-etl ARGS --help`, on a terminal wide enough that nothing wraps."""
    result = CliRunner().invoke(cli, [*args, "--help"], **WIDE)  # type: ignore[arg-type]
    assert result.exit_code == 0, result.output
    return result.output


def commands(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command's name path, subcommands of groups included."""
    found = []
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += commands(command, (*path, name))
        else:
            found.append((*path, name))
    return found


@pytest.mark.parametrize("path", commands(cli), ids=" ".join)
def test_help_shows_each_options_env_var(path: tuple[str, ...]) -> None:
    command: click.Command = cli
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    text = help_text(*path)
    for param in command.params:
        if isinstance(param, click.Option) and isinstance(param.envvar, str):
            assert f"env var: {param.envvar}" in text, (param.name, text)


def test_simulate_help_names_the_keys_it_accepts() -> None:
    text = help_text("simulate")
    config = SimulatorConfig()
    assert config.access_key in text and config.secret_key in text


def imported_modules(importtime_stderr: str) -> set[str]:
    """The modules a `python -X importtime` process imported, read from its stderr."""
    lines = importtime_stderr.splitlines()
    return {line.rsplit("|", 1)[1].strip() for line in lines if line.startswith("import time:")}


def test_the_product_commands_do_not_import_the_simulator(
    sim: Simulator, server: SimulatorServer, sqlite_url: URL, tmp_path: Path
) -> None:
    """The simulator and its fault switches serve tests, `simulate` and `demo`, not a run."""
    env = cli_env(sim, server, sqlite_url)
    for args in (["db", "upgrade"], ["sync"], ["status"]):
        command = [sys.executable, "-X", "importtime", "-m", "etl", *args]
        done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        imported = imported_modules(done.stderr)
        assert "etl.sync" in imported, args  # the parse above reads what ran
        assert "etl.simulator" not in imported, args


def test_verbose_logs_what_the_run_does(
    sim: Simulator, server: SimulatorServer, sqlite_url: URL, tmp_path: Path
) -> None:
    env = cli_env(sim, server, sqlite_url)
    assert invoke_cli(["db", "upgrade"], env, cwd=tmp_path).returncode == 0
    quiet = invoke_cli(["sync"], env, cwd=tmp_path)
    assert quiet.returncode == 0 and " INFO " not in quiet.stderr
    loud = invoke_cli(["sync", "-v"], env, cwd=tmp_path)
    assert loud.returncode == 0, loud.stderr
    info = [line for line in loud.stderr.splitlines() if " INFO etl" in line]
    assert any(re.search(r"run 2 \S* ?started", line) for line in info), loud.stderr
    assert any("listed 6 jobs" in line for line in info), loud.stderr
    assert any("batch written" in line for line in info), loud.stderr
    assert any("run 2 finished" in line for line in info), loud.stderr
    assert not any("sqlalchemy" in line for line in loud.stderr.splitlines())


@pytest.mark.parametrize("given", ["option", "env"])
def test_errors_name_where_the_database_url_came_from(
    sim: Simulator, server: SimulatorServer, sqlite_url: URL, tmp_path: Path, given: str
) -> None:
    env = cli_env(sim, server, sqlite_url)
    if given == "option":
        result = invoke_cli(["status", "--database-url", "mysql://db/x"], env, cwd=tmp_path)
        named, other = "--database-url", "DATABASE_URL"
    else:
        env["DATABASE_URL"] = "mysql://db/x"
        result = invoke_cli(["status"], env, cwd=tmp_path)
        named, other = "DATABASE_URL", "--database-url"
    assert result.returncode == 78
    assert named in result.stderr and other not in result.stderr, result.stderr


@pytest.mark.parametrize("args", [["status"], ["sync"], ["db", "current"]])
def test_a_missing_sqlite_file_is_not_created(
    sim: Simulator, server: SimulatorServer, tmp_path: Path, args: list[str]
) -> None:
    missing = tmp_path / "nowhere.db"
    env = cli_env(sim, server, URL.create("sqlite", database=str(missing)))
    result = invoke_cli(args, env, cwd=tmp_path)
    assert result.returncode == 78, result.stderr
    assert "qianfan-etl db upgrade" in result.stderr and str(missing) in result.stderr
    assert not missing.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_json_log_time_is_rfc3339_utc_with_sub_seconds() -> None:
    record = logging.LogRecord("etl", logging.WARNING, __file__, 1, "hello", None, None)
    record.created = 1_700_000_000.25
    stamp = json.loads(readout.JsonFormatter().format(record))["time"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3,6}(Z|[+-]\d\d:\d\d)", stamp), stamp
    assert datetime.fromisoformat(stamp) == datetime.fromtimestamp(1_700_000_000.25, UTC)


def test_status_json_times_are_aware(
    sim: Simulator, server: SimulatorServer, db_url: URL, tmp_path: Path
) -> None:
    env = cli_env(sim, server, db_url)
    assert invoke_cli(["db", "upgrade"], env, cwd=tmp_path).returncode == 0
    assert invoke_cli(["sync"], env, cwd=tmp_path).returncode == 0
    result = invoke_cli(["status", "--json"], env, cwd=tmp_path)
    run = json.loads(result.stdout)["runs"][0]
    for name in ("started_at", "finished_at"):
        moment = datetime.fromisoformat(run[name])
        assert moment.utcoffset() is not None and moment.utcoffset().total_seconds() == 0, run


def test_dry_run_summary_reads_well() -> None:
    result = SyncResult(run_id=5, counts=RunCounts(jobs_seen=2), seconds=1.0, dry_run=True)
    assert readout.summary_line(result).startswith("dry run 5: 2 jobs")
    assert readout.summary_line(
        SyncResult(run_id=6, counts=RunCounts(), seconds=1.0, dry_run=False)
    ).startswith("sync run 6:")


def test_readme_sections_named_in_messages_exist() -> None:
    headings = {
        line.lstrip("#").strip()
        for line in (ROOT / "README.md").read_text().splitlines()
        if line.startswith("#")
    }
    sources = [p for p in (ROOT / "etl").rglob("*.py")]
    cited = {
        section
        for path in sources
        for section in re.findall(r"README, '([^']+)'", path.read_text())
    }
    assert cited, "no message points to a README section any more: drop this test"
    assert cited <= headings, cited - headings


def test_documents_cited_in_the_code_are_in_the_repository() -> None:
    trees = ("etl", "migrations", "tests", "bench")
    sources = [p for tree in trees for p in (ROOT / tree).rglob("*.py")]
    for path in sources:
        for name in re.findall(r"[\w./-]+\.md\b", path.read_text()):
            candidates = [ROOT / name, path.parent / name]
            assert any(c.exists() for c in candidates), f"{path.name} cites {name}"
