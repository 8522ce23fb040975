"""Common mistakes in setting qianfan-etl up, each through the CLI: the documented exit code, a
message that names the setting to fix, no traceback and no secret. The console script runs in
a subprocess where it alone does the work (`.env`, an exit code from `main()`)."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from etl import config
from etl.errors import ConfigError
from etl.simulator import Simulator, SimulatorServer
from tests.harness import FAST, Etl, cli_env, free_port, invoke_cli, run_status, scalar
from tests.relay import self_signed, tls_front

BASE_URL = config.BASE_URL_VAR
CA_BUNDLE = "REQUESTS_CA_BUNDLE"
DB_PASSWORD = "Qz7Secret9Pw"
CONSOLE_SCRIPT = Path(sys.executable).with_name("qianfan-etl")


def console(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """The installed `qianfan-etl` entry point, as cron starts it."""
    return subprocess.run(
        [str(CONSOLE_SCRIPT), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )


def assert_clean_failure(done: subprocess.CompletedProcess[str], code: int, *says: str) -> None:
    """Exit `code`, a message holding each of `says`, and no traceback."""
    assert done.returncode == code, done.stderr
    for text in says:
        assert text in done.stderr, (text, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr


# -- item 3: a driver other than psycopg 3, a busy port, an unknown job, TLS, a dead host ----


@pytest.mark.parametrize(
    "scheme",
    ["postgresql+psycopg2", "postgresql+asyncpg", "postgresql+psycopg_async", "mysql", "mssql"],
)
def test_a_database_url_for_another_driver_exits_78_saying_to_use_psycopg_3(
    sim: Simulator, server: SimulatorServer, sqlite_url: URL, tmp_path: Path, scheme: str
) -> None:
    url = f"{scheme}://etl:{DB_PASSWORD}@127.0.0.1:5432/analytics"
    env = cli_env(sim, server, sqlite_url, DATABASE_URL=url)
    done = console(["db", "upgrade"], env, tmp_path)
    assert_clean_failure(done, 78, "DATABASE_URL", "use postgresql:// (psycopg 3)", scheme)
    assert DB_PASSWORD not in done.stderr + done.stdout


def test_simulate_on_a_busy_port_exits_78_saying_to_pick_another(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = console(["simulate", "--port", str(port)], dict(os.environ), tmp_path)
    assert_clean_failure(done, 78, f"127.0.0.1:{port}", "--port N", "--port 0")


def test_a_job_id_not_in_the_job_list_exits_78_naming_it_before_any_task_is_listed(
    etl: Etl,
) -> None:
    """The job list is read whole first: an unknown id stops the run before any task listing,
    so a job asked for beside it is not written either."""
    assert etl.invoke().returncode == 0
    known = etl.sim.jobs()[0]["jobId"]
    etl.sim.rename_job(known, "renamed upstream")
    etl.sim.requests.clear()
    done = etl.invoke("--job-id", known, "--job-id", "job-doesnotexist")
    assert_clean_failure(done, 78, "--job-id job-doesnotexist", "not in the account's job list")
    assert {request.action for request in etl.sim.requests} == {"DescribeFineTuningJobs"}
    name = "SELECT name FROM finetune_jobs WHERE job_id = :job"
    assert scalar(etl.engine, name, job=known) != "renamed upstream"
    status, error = run_status(etl.engine, 2)
    assert status == "failed" and "job-doesnotexist" in (error or "")


def test_https_to_a_plain_http_server_exits_78_naming_the_base_url_and_ca_bundle(
    sim: Simulator, server: SimulatorServer, sqlite_url: URL, tmp_path: Path
) -> None:
    https = server.url.replace("http://", "https://")
    env = cli_env(sim, server, sqlite_url, **FAST, **{BASE_URL: https})
    done = invoke_cli(["sync"], env, cwd=tmp_path)
    assert_clean_failure(done, 78, "does not speak TLS", BASE_URL, CA_BUNDLE)


def test_an_untrusted_certificate_exits_78_and_the_ca_bundle_it_names_fixes_it(
    sim: Simulator, server: SimulatorServer, sqlite_url: URL, tmp_path: Path
) -> None:
    cert, key = self_signed(tmp_path)
    with tls_front(cert, key, int(server.url.rsplit(":", 1)[1])) as https:
        env = cli_env(sim, server, sqlite_url, **FAST, **{BASE_URL: https})
        env = {k: v for k, v in env.items() if k not in (CA_BUNDLE, "CURL_CA_BUNDLE")}
        done = invoke_cli(["sync"], env, cwd=tmp_path)
        assert_clean_failure(done, 78, "certificate is not trusted", BASE_URL, CA_BUNDLE)
        assert sim.config.secret_key not in done.stderr
        trusted = invoke_cli(["sync"], {**env, CA_BUNDLE: str(cert)}, cwd=tmp_path)
    assert trusted.returncode == 0, trusted.stderr


@pytest.mark.parametrize(
    "base_url",
    [f"http://127.0.0.1:{free_port()}", "https://no-such-host.invalid"],
    ids=["refused", "unresolvable"],
)
def test_a_refused_or_unresolvable_api_host_exits_75_naming_the_base_url(
    sim: Simulator, server: SimulatorServer, sqlite_url: URL, tmp_path: Path, base_url: str
) -> None:
    env = cli_env(sim, server, sqlite_url, **FAST, **{BASE_URL: base_url})
    done = invoke_cli(["sync"], env, cwd=tmp_path)
    assert_clean_failure(done, 75, f"is {BASE_URL} right?", base_url.split("//")[1])


# -- item 6: plain HTTP only to loopback or with the opt-in; .env named, and refused if unsafe --

REMOTE = "http://no-such-host.invalid:8080"


def test_plain_http_to_a_host_that_is_not_loopback_is_refused_with_78(
    sim: Simulator, server: SimulatorServer, sqlite_url: URL, tmp_path: Path
) -> None:
    env = cli_env(sim, server, sqlite_url, **FAST, **{BASE_URL: REMOTE})
    done = invoke_cli(["sync"], env, cwd=tmp_path)
    assert_clean_failure(done, 78, BASE_URL, "--allow-plain-http", config.ALLOW_PLAIN_HTTP_VAR)
    assert "could not resolve" not in done.stderr  # refused before any connection


@pytest.mark.parametrize("how", ["option", "env"])
def test_the_plain_http_opt_in_lets_the_run_go_on(
    sim: Simulator, server: SimulatorServer, sqlite_url: URL, tmp_path: Path, how: str
) -> None:
    """Opted in, the run gets as far as the network (here: a host that does not resolve, 75)."""
    extra = {config.ALLOW_PLAIN_HTTP_VAR: "1"} if how == "env" else {}
    env = cli_env(sim, server, sqlite_url, **FAST, **{BASE_URL: REMOTE}, **extra)
    args = ["sync", "--allow-plain-http"] if how == "option" else ["sync"]
    done = invoke_cli(args, env, cwd=tmp_path)
    assert_clean_failure(done, 75, "could not resolve the host name", "plain HTTP to")


def test_the_simulator_on_localhost_needs_no_opt_in(
    sim: Simulator, server: SimulatorServer, sqlite_url: URL, tmp_path: Path
) -> None:
    by_name = server.url.replace("127.0.0.1", "localhost")
    done = invoke_cli(["sync"], cli_env(sim, server, sqlite_url, **{BASE_URL: by_name}), tmp_path)
    assert done.returncode == 0, done.stderr
    assert "plain HTTP" not in done.stderr


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("http://127.0.0.1:8765", True),
        ("http://127.9.9.9", True),
        ("http://localhost:8765", True),
        ("http://LOCALHOST", True),
        ("http://[::1]:8765", True),
        ("https://qianfan.example", True),
        ("http://qianfan.example", False),
        ("http://10.0.0.7:8765", False),
        ("http://localhost.example", False),
        ("http://[::2]", False),
    ],
)
def test_which_base_urls_may_be_plain_http(url: str, allowed: bool) -> None:
    if allowed:
        assert config.base_url(url) == url
    else:
        with pytest.raises(ConfigError, match="--allow-plain-http"):
            config.base_url(url)
        assert config.base_url(url, allow_plain_http=True) == url


def write_env(directory: Path, **values: str) -> Path:
    """A `.env` of these values, mode 600 as deploy/crontab says."""
    path = directory / ".env"
    path.write_text("".join(f"{key}={value}\n" for key, value in values.items()))
    path.chmod(0o600)
    return path


def test_settings_from_dotenv_are_named_at_start_without_their_values(
    sim: Simulator, server: SimulatorServer, sqlite_url: URL, tmp_path: Path
) -> None:
    env = cli_env(sim, server, sqlite_url)
    moved = {name: env.pop(name) for name in (BASE_URL, "DATABASE_URL", config.SECRET_KEY_VAR)}
    metrics = tmp_path / "etl.prom"
    dotenv = write_env(tmp_path, **moved, QIANFAN_ETL_METRICS_FILE=str(metrics))
    done = console(["sync", "-v"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    [line] = [line for line in done.stderr.splitlines() if f"settings from {dotenv}" in line]
    assert " INFO " in line
    for name in (*moved, "QIANFAN_ETL_METRICS_FILE"):
        assert name in line
    assert metrics.exists()
    for value in (*moved.values(), str(metrics)):
        assert value not in line
    assert moved[config.SECRET_KEY_VAR] not in done.stderr + done.stdout


def test_a_plain_http_opt_in_in_dotenv_is_ignored(
    sim: Simulator, server: SimulatorServer, sqlite_url: URL, tmp_path: Path
) -> None:
    """A file in the working directory cannot both redirect the run and allow it."""
    env = cli_env(sim, server, sqlite_url, **FAST)
    del env[BASE_URL]
    write_env(tmp_path, **{BASE_URL: REMOTE, config.ALLOW_PLAIN_HTTP_VAR: "1"})
    done = console(["sync"], env, tmp_path)
    assert_clean_failure(done, 78, f"{BASE_URL} (from {tmp_path / '.env'})", "--allow-plain-http")
    assert f"sets {config.ALLOW_PLAIN_HTTP_VAR}, which is ignored there" in done.stderr


def unsafe(path: Path, how: str) -> None:
    """Make the `.env` writable by others, or another user's."""
    if how == "owner":
        if os.geteuid() != 0:
            pytest.skip("only root can give a file to another user (CI runs as root)")
        os.chown(path, 65534, -1)
    else:
        path.chmod({"group": 0o620, "others": 0o602}[how])


@pytest.mark.parametrize(
    ("how", "fix"),
    [("group", "chmod go-w"), ("others", "chmod go-w"), ("owner", "chown")],
)
def test_a_dotenv_that_others_can_write_is_refused_with_78(
    sim: Simulator, server: SimulatorServer, sqlite_url: URL, tmp_path: Path, how: str, fix: str
) -> None:
    env = cli_env(sim, server, sqlite_url)
    secret = env.pop(config.SECRET_KEY_VAR)
    dotenv = write_env(tmp_path, **{config.SECRET_KEY_VAR: secret})
    unsafe(dotenv, how)
    for args in (["sync"], ["status"]):
        done = console(args, env, tmp_path)
        assert_clean_failure(done, 78, str(dotenv), fix)
        assert secret not in done.stderr + done.stdout
    assert sim.requests == []
