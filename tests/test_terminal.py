"""Hostile upstream text: escaped on a terminal and in text log lines, exact in JSON, verbatim in
the database. Each run is a subprocess, as cron starts it."""

import json
import re
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine
from sqlalchemy.engine import URL

from etl import terminal
from etl.simulator import Fault, Simulator, SimulatorConfig
from tests.harness import FAST, cli_env, run_cli, run_status

# a text-mode record as the log formatter writes it: the line data must not be able to fake
FORGED = "2026-12-02 03:00:00,000 ERROR etl: FORGED LINE"
# OSC (set the window title), BEL, clear screen, colour, C1 CSI, DEL, NEL, LINE SEPARATOR, CR LF
HOSTILE = "x\x1b]0;pwned\x07\x1b[2J\x1b[31mred\x9b1A\x7f\x85\u2028\x0b\r\n" + FORGED + "\x1b[0m."
HOSTILE_JOB = "job-" + HOSTILE
HOSTILE_TASK = "task-" + HOSTILE
# what a terminal must never receive raw: C0 but tab and newline (which ends our own lines),
# DEL, C1, the Unicode line breaks
RAW_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")
# HOSTILE as the terminal must show it: every control character escaped, tab aside
SHOWN = (
    "x\\x1b]0;pwned\\x07\\x1b[2J\\x1b[31mred\\x9b1A\\x7f\\x85\\u2028\\x0b\\r\\n"
    + FORGED
    + "\\x1b[0m."
)
RECORD = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ \S+: ")


def hostile_account() -> Simulator:
    """Two jobs: one renamed to hostile text, with a hostile task id and error message; and a
    hostile job id whose listing fails with a hostile message; every detail call fails so."""
    sim = Simulator(SimulatorConfig(jobs=2, tasks_per_job=2, checkpoints=2, seed=3, running_jobs=1))
    first, second = sim.jobs()
    job_id = first["jobId"]
    sim.rename_job(job_id, HOSTILE)
    running, finished = sim.tasks(job_id)
    sim.put_task(job_id, {**finished, "errorCode": 7, "errorMessage": HOSTILE})
    sim.put_task(job_id, {**running, "taskId": HOSTILE_TASK})
    sim.put_job({**second, "jobId": HOSTILE_JOB, "name": HOSTILE})
    sim.job_faults[HOSTILE_JOB] = f"500:{HOSTILE}"
    detail = Fault(
        "status", "DescribeFineTuningTask", 100, 404, "ResourceNotFound", message=HOSTILE
    )
    sim.inject(detail)
    return sim


def assert_terminal_safe(text: str) -> None:
    """No raw control character, and no line that data started."""
    assert RAW_CONTROL.search(text) is None, repr(text)
    for line in text.split("\n"):
        assert not line.startswith(FORGED), repr(text)


def assert_records(stderr: str) -> None:
    """Every stderr line is a log record of its own or an indented continuation of one."""
    lines = stderr.rstrip("\n").split("\n")
    assert lines and RECORD.match(lines[0]), stderr
    for line in lines:
        assert RECORD.match(line) or line[:1].isspace(), repr(line)


def json_lines(text: str) -> list[dict[str, Any]]:
    """Each line of the output as JSON (exact JSON: no raw control character either)."""
    assert RAW_CONTROL.search(text) is None, repr(text)
    return [json.loads(line) for line in text.splitlines()]


def stored(engine: Engine, query: str) -> list[Any]:
    with engine.connect() as connection:
        return list(connection.execute(sa.text(query)).scalars())


def test_hostile_upstream_text_is_escaped_on_the_terminal_and_verbatim_in_the_database(
    db_url: URL, engine: Engine, tmp_path: Path
) -> None:
    sim = hostile_account()
    with sim.serve() as server:
        env = cli_env(sim, server, db_url, **FAST)
        text = run_cli(["sync"], env, cwd=tmp_path)
        as_json = run_cli(["sync", "--log-format", "json"], env, cwd=tmp_path)
    assert text.returncode == 75, text.stderr  # partial: the hostile job's listing failed
    for output in (text.stdout, text.stderr):
        assert_terminal_safe(output)
    assert_records(text.stderr)
    assert f"jobs failed: job-{SHOWN}" in text.stdout  # shown, escaped, not dropped
    assert f"no live progress for task task-{SHOWN} this run" in text.stderr
    assert as_json.returncode == 75, as_json.stderr
    messages = [line["message"] for line in json_lines(as_json.stderr)]
    assert any(HOSTILE_JOB in message for message in messages)
    assert any(HOSTILE_TASK in message for message in messages)
    (summary,) = json_lines(as_json.stdout)
    assert summary["failed_jobs"][0]["job_id"] == HOSTILE_JOB
    names = {HOSTILE, sim.jobs()[1]["name"]}
    assert set(stored(engine, "SELECT name FROM finetune_jobs")) == names
    assert stored(engine, "SELECT error_message FROM finetune_tasks WHERE error_code = 7") == [
        HOSTILE
    ]
    assert HOSTILE_TASK in stored(engine, "SELECT task_id FROM finetune_tasks")
    assert set(stored(engine, "SELECT DISTINCT job_name FROM finetune_tasks")) == names
    assert set(stored(engine, "SELECT job_id FROM etl_failed_jobs")) == {HOSTILE_JOB}


def test_status_and_the_max_age_line_escape_hostile_text(
    db_url: URL, engine: Engine, tmp_path: Path
) -> None:
    sim = hostile_account()
    with sim.serve() as server:
        env = cli_env(sim, server, db_url, **FAST)
        assert run_cli(["sync"], env, cwd=tmp_path).returncode == 75
        status = run_cli(["status"], env, cwd=tmp_path)
        check = run_cli(["status", "--max-age", "1h"], env, cwd=tmp_path)
        as_json = run_cli(["status", "--json"], env, cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert_terminal_safe(status.stdout)
    assert f"jobs failed: job-{SHOWN}" in status.stdout
    assert check.returncode == 69 and check.stdout == ""
    assert_terminal_safe(check.stderr)
    assert len(check.stderr.rstrip("\n").split("\n")) == 1, check.stderr
    assert "partial: run 1 ended" in check.stderr and "\\x1b]0;pwned" in check.stderr
    (failed,) = json.loads(as_json.stdout)["runs"][0]["failed_jobs"]
    assert failed["job_id"] == HOSTILE_JOB
    assert RAW_CONTROL.search(as_json.stdout) is None


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_traceback_keeps_its_lines_indented_and_no_line_is_forged(
    log_format: str, db_url: URL, engine: Engine, tmp_path: Path
) -> None:
    sim = Simulator(SimulatorConfig(jobs=2, tasks_per_job=2, checkpoints=2))
    with sim.serve() as server:
        env = cli_env(sim, server, db_url, QIANFAN_ETL_LOG_FORMAT=log_format)
        fault = {"QIANFAN_ETL_FAULT": f"after_fetch:raise:{HOSTILE}"}
        crash = run_cli(["sync"], {**env, **fault}, cwd=tmp_path)
        status = run_cli(["status"], env, cwd=tmp_path)
    assert crash.returncode == 1, crash.stderr
    assert run_status(engine, 1) == ("failed", HOSTILE)  # stored verbatim
    if log_format == "json":
        (record,) = json_lines(crash.stderr)
        assert record["level"] == "critical" and record["exception"].endswith(HOSTILE)
        return
    assert_terminal_safe(crash.stderr)
    assert_records(crash.stderr)
    assert "\n    Traceback (most recent call last):\n" in crash.stderr
    assert "InjectedFault: x\\x1b]0;pwned" in crash.stderr
    assert f"\n    {FORGED}" in crash.stderr  # the message's own line, indented
    assert_terminal_safe(status.stdout)


def test_escaping_is_exact_and_idempotent() -> None:
    assert terminal.safe(HOSTILE) == SHOWN
    shown = terminal.safe("a\tb\x00é\\x1b")
    assert shown == "a\tb\\x00é\\x1b" and terminal.safe(shown) == shown
    assert json.loads(terminal.dumps({"k": HOSTILE})) == {"k": HOSTILE}
