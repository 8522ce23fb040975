"""No secret in any output: every failure path that can carry a database URL or an API key,
driven through the real CLI with passwords and keys built to break parsers, at -vv, with text
and JSON logs; then stdout, stderr and the database's own text are searched for any fragment of
4 characters of each secret (raw, percent-encoded, or escaped as repr/JSON print it), and so
are the metrics files and the report page."""

import re
import secrets
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pytest
from psycopg import sql
from sqlalchemy import Engine
from sqlalchemy.engine import URL

from etl import db, redact
from etl.simulator import Simulator, SimulatorConfig, SimulatorServer
from tests.faulty_cli import FAULT_VAR
from tests.harness import (
    FAST,
    admin,
    admin_url,
    bi_session,
    cli_env,
    dsn,
    free_port,
    invoke_cli,
    run_cli,
    run_status,
)
from tests.leaks import PASSWORD, assert_no_fragment, fragments
from tests.relay import ForwardProxy, self_signed, tls_front

# Built as PASSWORD is: a fragment of it found anywhere is a leak
SECRET_KEY = "Sk@:Tw/?Uz#%41Vj[]Wb \"X'\\Yé文Qm"
# The case: an `@` SQLAlchemy splits at, with nothing before it that fails to parse, so
# that the rest would be taken for the host and database and printed.
AT_PASSWORD = "Mwq@Rq9Zt/Ux8Pk"
# Proxy authentication carries Latin-1 only (a password beyond it is refused with exit 78)
PROXY_PASSWORD = "Px@:Qw/?Rz#%Sj[]Tb \"U'\\Vé¿Wm"
# A password that is a common word and the start of the host name: masking it as a substring
# would print `***host` and so tell the password.
WORD_PASSWORD = "local"
WORD_HOST = "localhost"
PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
# What a run that listed hostile_sim's whole account says in its summary line ("sync", which
# every log line of the etl.sync logger holds, could not fail).
SYNCED = "2 jobs, 6 tasks ("


@dataclass
class Runs:
    """Runs the real CLI once with text logs and once with JSON logs, at -vv (in this process,
    or in a subprocess where a fault plan needs one), and keeps everything it printed, every
    metrics file `sync` wrote and the report pages."""

    env: dict[str, str]
    cwd: Path
    formats: tuple[str, ...] = ("text", "json")
    outputs: list[str] = field(default_factory=list)

    def run(self, args: list[str], codes: set[int], says: str, **extra: str) -> None:
        """`qianfan-etl ARGS` exits with one of `codes` and says `says` on stderr, both ways."""
        metrics = self.cwd / "metrics.prom"
        log_args = ["-vv", "--metrics-file", str(metrics)] if args[0] == "sync" else []
        for log_format in self.formats:
            metrics.unlink(missing_ok=True)
            env = {**self.env, "QIANFAN_ETL_LOG_FORMAT": log_format, **extra}
            # a process only where one is under test: a fault plan, or a crash's traceback
            # written by the process's exception hook
            if FAULT_VAR in env:
                done = run_cli([*args, *log_args], env, self.cwd)
            else:
                done = invoke_cli([*args, *log_args], env, self.cwd)
            self.outputs += [done.stdout, done.stderr]
            if log_args:
                self.outputs.append(metrics.read_text())
            assert done.returncode in codes, (args, extra, done.stderr)
            assert says in done.stderr + done.stdout, (args, extra, done.stderr)

    def report(self) -> None:
        """`qianfan-etl report`, keeping the page it wrote."""
        page = self.cwd / "report.html"
        self.run(["report", "--output", str(page)], {0}, "report:")
        self.outputs.append(page.read_text())

    def text(self) -> str:
        """All of it."""
        return "\n".join(self.outputs)


def without_proxies(env: dict[str, str]) -> dict[str, str]:
    """The environment with no proxy variable of the machine running the tests."""
    return {k: v for k, v in env.items() if k.lower() not in PROXY_VARS}


@pytest.fixture
def hostile_sim() -> Iterator[tuple[Simulator, SimulatorServer]]:
    """A small account whose secret key is SECRET_KEY."""
    sim = Simulator(
        SimulatorConfig(jobs=2, tasks_per_job=3, checkpoints=2, seed=13, secret_key=SECRET_KEY)
    )
    with sim.serve() as server:
        yield sim, server


def create_role(database: str, password: str) -> str:
    """A login role with this password and every right on the test database's tables."""
    role = f"qfetl_secret_{secrets.token_hex(4)}"
    statement = sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
        sql.Identifier(role), sql.Literal(password)
    )
    admin(statement.as_string(None))
    for what in ("TABLES", "SEQUENCES"):
        admin(f'GRANT ALL ON ALL {what} IN SCHEMA public TO "{role}"', database=database)
    return role


def drop_role(role: str, database: str) -> None:
    admin(f'DROP OWNED BY "{role}"', database=database)
    admin(f'DROP ROLE "{role}"')


@pytest.fixture
def hostile_url(db_url: URL) -> Iterator[URL]:
    """The test database; on Postgres reached as a role whose password is PASSWORD."""
    if db_url.get_backend_name() == "sqlite":
        yield db_url
        return
    role = create_role(str(db_url.database), PASSWORD)
    yield db_url.set(username=role, password=PASSWORD)
    drop_role(role, str(db_url.database))


@pytest.fixture
def tls_url(hostile_sim: tuple[Simulator, SimulatorServer], tmp_path: Path) -> Iterator[str]:
    """The simulator behind TLS with a certificate no CA signed."""
    cert, key = self_signed(tmp_path)
    with tls_front(cert, key, int(hostile_sim[1].url.rsplit(":", 1)[1])) as url:
        yield url


def database_text(url: URL) -> str:
    """Everything the database holds, as text: `pg_dump`, or the SQLite file and its dump."""
    if url.get_backend_name() == "sqlite":
        path = Path(str(url.database))
        raw = b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
        with sqlite3.connect(path) as connection:
            dump = "\n".join(connection.iterdump())
        return dump + raw.decode("utf-8", "replace") + raw.decode("latin-1")
    dump = subprocess.run(
        ["pg_dump", dsn(admin_url().set(database=url.database))],
        capture_output=True,
        text=True,
        check=True,
    )
    return dump.stdout


def test_no_fragment_of_a_test_secret_is_text_every_run_prints() -> None:
    """A fragment made only of what a timestamp or an id prints (`49.587Z`, a lower-case hex
    uuid) would turn up in a clean run's log, and a leak test would fail on text that is not a
    leak."""
    printed = re.compile(r"[0-9:.TZ-]{4}|[0-9a-f-]{4}")
    for secret in (PASSWORD, SECRET_KEY, AT_PASSWORD, PROXY_PASSWORD):
        assert not [f for f in fragments(secret) if printed.fullmatch(f)], secret


def test_api_failures_leak_no_key_or_password(
    hostile_sim: tuple[Simulator, SimulatorServer],
    hostile_url: URL,
    tls_url: str,
    tmp_path: Path,
) -> None:
    """Wrong secret, unreachable API, dead proxy, proxy URL that parses two ways, untrusted TLS,
    a crash with a traceback; then a clean run and `status` over what was recorded."""
    sim, server = hostile_sim
    env = without_proxies(cli_env(sim, server, hostile_url, **FAST))
    runs = Runs(env, tmp_path)
    proxy = f"http://etl:{quote(PROXY_PASSWORD, safe='')}@127.0.0.1:{free_port()}"
    raw_proxy = f"http://etl:{PROXY_PASSWORD}@127.0.0.1:{free_port()}"
    wrong_key = SECRET_KEY[::-1]
    runs.run(["sync"], {77}, "QIANFAN_SECRET_KEY does not match", QIANFAN_SECRET_KEY=wrong_key)
    dead = f"http://127.0.0.1:{free_port()}"
    runs.run(["sync"], {75}, "could not connect", QIANFAN_CONSOLE_API_BASE_URL=dead)
    runs.run(["sync"], {75}, "proxy", HTTP_PROXY=proxy, HTTPS_PROXY=proxy, ALL_PROXY=proxy)
    runs.run(["sync"], {78}, "percent-encode", HTTP_PROXY=raw_proxy, https_proxy=raw_proxy)
    runs.run(["sync"], {78}, "not trusted", QIANFAN_CONSOLE_API_BASE_URL=tls_url)
    with ForwardProxy().running() as live:
        through = live.url.replace("://", f"://etl:{quote(PROXY_PASSWORD, safe='')}@")
        runs.run(["sync"], {0}, SYNCED, HTTP_PROXY=through)
        assert live.seen, "the run went through the proxy"
    runs.run(["sync"], {1}, "Traceback", QIANFAN_ETL_FAULT="before_commit:1:raise")
    runs.run(["sync"], {0}, SYNCED)
    runs.run(["status"], {0}, "failed")
    runs.run(["status", "--json"], {0}, "injected fault")
    runs.report()
    stored = database_text(hostile_url)
    assert "QIANFAN_SECRET_KEY does not match" in stored and "injected fault" in stored
    for text in (runs.text(), stored):
        for secret in (PASSWORD, SECRET_KEY, PROXY_PASSWORD, wrong_key):
            assert_no_fragment(text, secret)


@pytest.fixture
def pg_role(pg_url: URL) -> Iterator[str]:
    """A login role whose password is PASSWORD, with rights on the test database."""
    role = create_role(str(pg_url.database), PASSWORD)
    yield role
    drop_role(role, str(pg_url.database))


def test_database_failures_leak_no_password(
    hostile_sim: tuple[Simulator, SimulatorServer], pg_url: URL, pg_role: str, tmp_path: Path
) -> None:
    """A URL that parses two ways, bad host, bad port, a refused role, a missing database,
    a wrong password; then the commands that print the URL."""
    sim, server = hostile_sim
    url = pg_url.set(username=pg_role, password=PASSWORD)
    runs = Runs(without_proxies(cli_env(sim, server, url, **FAST)), tmp_path)

    def at(target: URL) -> str:
        return target.render_as_string(hide_password=False)

    unencoded = f"postgresql://{pg_role}:{PASSWORD}@127.0.0.1:5432/{pg_url.database}"
    runs.run(["sync"], {78}, "percent-encode", DATABASE_URL=unencoded)
    at_sign = f"postgresql://{pg_role}:{AT_PASSWORD}@127.0.0.1:5432/{pg_url.database}"
    runs.run(["sync"], {78}, "percent-encode", DATABASE_URL=at_sign)
    runs.run(["db", "upgrade"], {78}, "PGPASSWORD", DATABASE_URL=unencoded)
    runs.run(
        ["sync"],
        {75},
        "no-such-host.invalid",
        DATABASE_URL=at(url.set(host="no-such-host.invalid")),
    )
    runs.run(["sync"], {75}, "unavailable", DATABASE_URL=at(url.set(port=free_port())))
    runs.run(["sync"], {77}, "refused the login", DATABASE_URL=at(url.set(username="qfetl_nobody")))
    runs.run(["sync"], {78}, "does not exist", DATABASE_URL=at(url.set(database="qfetl_missing")))
    # trust authentication on 127.0.0.1: a wrong password still logs in, so the run succeeds
    runs.run(["sync"], {0}, SYNCED, DATABASE_URL=at(url.set(password=PASSWORD[::-1])))
    runs.run(["db", "upgrade"], {0}, "***@127.0.0.1")
    runs.run(["db", "current"], {0}, "head")
    runs.run(["status"], {0}, "succeeded")
    runs.report()
    demo = ["demo", "--database-url", at(url), "--jobs", "1", "--tasks-per-job", "1"]
    Runs(runs.env, tmp_path, ("text",), runs.outputs).run(demo, {0}, "Explore it")  # text only
    for secret in (PASSWORD, PASSWORD[::-1], SECRET_KEY, AT_PASSWORD):
        assert_no_fragment(runs.text() + database_text(pg_url), secret)


def test_a_password_that_is_part_of_the_host_name_is_not_masked_there(
    hostile_sim: tuple[Simulator, SimulatorServer], pg_url: URL, tmp_path: Path
) -> None:
    """Password `local`, host `localhost`: the host is printed whole, the password nowhere."""
    sim, server = hostile_sim
    role = create_role(str(pg_url.database), WORD_PASSWORD)
    try:
        url = pg_url.set(username=role, password=WORD_PASSWORD, host=WORD_HOST)
        runs = Runs(without_proxies(cli_env(sim, server, url, **FAST)), tmp_path, ("text",))
        dead = url.set(port=free_port()).render_as_string(hide_password=False)
        runs.run(["sync"], {75}, f"***@{WORD_HOST}:", DATABASE_URL=dead)
        runs.run(["sync"], {0}, SYNCED)
        runs.run(["db", "upgrade"], {0}, f"{role}:***@{WORD_HOST}:5432")
    finally:
        drop_role(role, str(pg_url.database))
    text = runs.text() + database_text(pg_url)
    assert f"***@{WORD_HOST}:" in text and "***host" not in text
    assert_no_fragment(text, WORD_PASSWORD, allowed=(WORD_HOST,))


def test_pgpassword_and_pgpass_are_honoured_when_the_url_has_none(
    hostile_sim: tuple[Simulator, SimulatorServer],
    pg_url: URL,
    pg_role: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """libpq takes the password from PGPASSWORD or a .pgpass file when the URL has none: the
    engine passes no password of its own that would hide them, and nothing prints them."""
    sim, server = hostile_sim
    url = pg_url.set(username=pg_role)
    escaped = PASSWORD.replace("\\", "\\\\").replace(":", "\\:")
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"127.0.0.1:5432:*:{pg_role}:{escaped}\n")
    pgpass.chmod(0o600)
    routes = {"PGPASSWORD": PASSWORD, "PGPASSFILE": str(pgpass)}
    for name, value in routes.items():
        with monkeypatch.context() as patch:
            patch.setenv(name, value)
            engine: Engine = db.create(url)
            with engine.connect() as connection:
                info = connection.connection.dbapi_connection.info  # type: ignore[union-attr]
                assert (info.user, info.password) == (pg_role, PASSWORD), name
            engine.dispose()
        runs = Runs(without_proxies(cli_env(sim, server, url, **FAST)), tmp_path, ("json",))
        runs.run(["sync"], {0}, SYNCED, **{name: value})
        runs.run(["db", "upgrade"], {0}, f"{pg_role}@127.0.0.1")
        assert_no_fragment(runs.text(), PASSWORD)
    assert_no_fragment(database_text(pg_url), PASSWORD)


def test_a_database_error_is_stored_bounded_and_without_sql_parameters(
    hostile_sim: tuple[Simulator, SimulatorServer], pg_url: URL, pg_role: str, tmp_path: Path
) -> None:
    """A statement that fails mid-run: etl_runs.error keeps the driver's words, not the SQL
    and its parameters that SQLAlchemy's text appends."""
    sim, server = hostile_sim
    url = pg_url.set(username=pg_role, password=PASSWORD)
    runs = Runs(without_proxies(cli_env(sim, server, url, **FAST)), tmp_path, ("json",))
    with bi_session(pg_url, "LOCK TABLE finetune_tasks IN ACCESS EXCLUSIVE MODE"):
        runs.run(["sync"], {75}, "lock timeout")
    engine = db.create(pg_url)
    status, error = run_status(engine, 1)
    engine.dispose()
    assert status == "failed" and "lock timeout" in str(error)
    assert "[SQL" not in str(error) and "parameters" not in str(error)
    assert len(str(error)) <= redact.MAX_STORED_CHARS
    assert_no_fragment(runs.text() + database_text(pg_url), PASSWORD)
