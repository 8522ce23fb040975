"""The deploy/ recipes: each parses, schedules sensibly and runs a command line the CLI accepts."""

import configparser
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from etl.cli import cli

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
INSTALLED = "/opt/qianfan-etl/bin/qianfan-etl"
CRON_FIELD = re.compile(r"(\*|\d+(-\d+)?)(/\d+)?(,(\d+(-\d+)?)(/\d+)?)*")
CRON_RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]


def accepted(args: list[str]) -> click.Context:
    """Parse a qianfan-etl command line as the CLI would (a usage error fails the test)."""
    command: click.Command = cli
    name, rest = "qianfan-etl", list(args)
    while isinstance(command, click.Group):
        name, rest = rest[0], rest[1:]
        found = command.commands.get(name)
        assert found is not None, f"no command {name!r}"
        command = found
    return command.make_context(name, rest)


def qianfan_args(command_line: str) -> list[str]:
    """The arguments given to the installed qianfan-etl in a shell command line."""
    words = shlex.split(command_line, comments=False)
    start = words.index(INSTALLED) + 1
    end = next((i for i, w in enumerate(words[start:], start) if w in ("&&", "||", ";")), None)
    return [w for w in words[start:end] if not w.startswith(("2>", ">"))]


def cron_entries() -> list[tuple[list[str], str]]:
    """(the five schedule fields, the command) of each crontab entry."""
    entries = []
    for line in (DEPLOY / "crontab").read_text().splitlines():
        if not line.strip() or line.startswith("#") or re.match(r"^[A-Z_]+=", line):
            continue
        fields = line.split(None, 5)
        entries.append((fields[:5], fields[5]))
    return entries


def test_crontab_fields_are_valid_and_commands_parse() -> None:
    entries = cron_entries()
    assert len(entries) == 2
    for schedule, command in entries:
        for field, (low, high) in zip(schedule, CRON_RANGES, strict=True):
            assert CRON_FIELD.fullmatch(field), field
            numbers = [int(n) for n in re.findall(r"\d+", field.split("/")[0])]
            assert all(low <= n <= high for n in numbers), (field, low, high)
        accepted(qianfan_args(command.replace(">/dev/null", "")))
    sync = accepted(qianfan_args(entries[0][1]))
    assert sync.info_name == "sync" and sync.params["lock_wait"] > 0
    assert sync.params["metrics_file"] is not None
    check = accepted(qianfan_args(entries[1][1]))
    assert check.info_name == "status" and check.params["max_age"] is not None


def unit(name: str) -> configparser.ConfigParser:
    """A systemd unit file as sections and keys (keys keep their case)."""
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((DEPLOY / name).read_text())
    return parser


def test_systemd_service_and_timer() -> None:
    service, timer = unit("qianfan-etl.service"), unit("qianfan-etl.timer")
    assert service["Service"]["Type"] == "oneshot"
    assert service["Service"]["EnvironmentFile"].startswith("/etc/")
    sync = accepted(qianfan_args(service["Service"]["ExecStart"]))
    assert sync.info_name == "sync" and sync.params["lock_wait"] > 0
    assert sync.params["metrics_file"] is not None
    assert str(sync.params["metrics_file"]).startswith(service["Service"]["ReadWritePaths"])
    assert timer["Timer"]["Unit"] == "qianfan-etl.service"
    assert timer["Timer"]["OnCalendar"] and timer["Install"]["WantedBy"] == "timers.target"


def test_systemd_analyze_verify_finds_nothing(tmp_path: Path) -> None:
    """systemd's own checker, with ExecStart pointed at this environment's qianfan-etl."""
    if shutil.which("systemd-analyze") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze is missing: .ci/run installs Debian's systemd package")
        pytest.skip("no systemd-analyze on this machine")
    installed = Path(sys.executable).parent / "qianfan-etl"
    for name in ("qianfan-etl.service", "qianfan-etl.timer"):
        text = (DEPLOY / name).read_text().replace(INSTALLED, str(installed))
        (tmp_path / name).write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", *(str(p) for p in sorted(tmp_path.iterdir()))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def kubernetes() -> list[dict[str, Any]]:
    """Every document of the Kubernetes recipes."""
    return [
        document
        for path in sorted((DEPLOY / "kubernetes").glob("*.yaml"))
        for document in yaml.safe_load_all(path.read_text())
    ]


def test_kubernetes_cronjobs_forbid_overlap_and_read_the_secret() -> None:
    documents = kubernetes()
    secrets = {d["metadata"]["name"]: d for d in documents if d["kind"] == "Secret"}
    jobs = {d["metadata"]["name"]: d for d in documents if d["kind"] == "CronJob"}
    assert set(jobs) == {"qianfan-etl-sync", "qianfan-etl-freshness"}
    commands = {}
    for name, job in jobs.items():
        assert job["apiVersion"] == "batch/v1"
        assert job["spec"]["concurrencyPolicy"] == "Forbid"
        assert len(job["spec"]["schedule"].split()) == 5
        pod = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        assert pod["restartPolicy"] == "Never"
        (container,) = pod["containers"]
        (source,) = container["envFrom"]
        secret = secrets[source["secretRef"]["name"]]
        assert {"QIANFAN_ACCESS_KEY", "QIANFAN_SECRET_KEY", "DATABASE_URL"} <= set(
            secret["stringData"]
        )
        assert "env" not in container  # no credential written into the CronJob itself
        commands[name] = accepted(container["args"])
    assert commands["qianfan-etl-sync"].info_name == "sync"
    assert commands["qianfan-etl-sync"].params["lock_wait"] > 0
    freshness = commands["qianfan-etl-freshness"]
    assert freshness.info_name == "status" and freshness.params["max_age"] is not None


def test_a_typo_in_a_recipe_would_be_caught() -> None:
    """The command-line check is real: an unknown option is a usage error."""
    with pytest.raises(click.UsageError):
        accepted(["sync", "--lock-wiat", "300"])
