"""Connecting to the database, classifying its errors, and Alembic: upgrade, current, head check."""

import hashlib
import importlib.resources
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import sqlalchemy as sa
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, OperationalError

from etl import redact
from etl.config import show_url
from etl.errors import AuthError, ConfigError, DiskFullError, EtlError, TransientError

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory


def schema_files() -> Path:
    """Where alembic.ini, migrations/ and sql/ are: inside an installed wheel, else the checkout."""
    packaged = importlib.resources.files("etl") / "_schema"
    if isinstance(packaged, Path) and (packaged / "alembic.ini").is_file():
        return packaged
    return Path(__file__).resolve().parent.parent


ALEMBIC_INI = schema_files() / "alembic.ini"
# The newest Alembic revision. A test keeps it equal to the scripts' head, so that the check
# every sync makes needs no Alembic import (a tenth of a second of start-up).
SCHEMA_HEAD = "0009"

# Bounded waits, so a BI session holding a lock or a stuck statement cannot hang cron forever.
DEFAULT_LOCK_TIMEOUT = 30.0
DEFAULT_STATEMENT_TIMEOUT = 300.0
IDLE_IN_TRANSACTION_TIMEOUT = 600.0
SQLITE_BUSY_TIMEOUT = 30.0
SCHEMA_OPTION = "qianfan_etl_schema"
INSUFFICIENT_PRIVILEGE = "42501"
INVALID_PASSWORD = "28P01"
INVALID_AUTHORIZATION = "28000"
READ_ONLY_TRANSACTION = "25006"
DISK_FULL = "53100"  # only this one of class 53: too many connections or out of memory pass
# SQLite says SQLITE_FULL for a write that found no room, and SQLITE_IOERR_SHMSIZE when it
# could not even grow the -shm file that opening a WAL database needs.
SQLITE_DISK_FULL = (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR_SHMSIZE)
_MISSING_DATABASE = re.compile(r'database ".*" does not exist')
# Refused logins carry no SQLSTATE either: a wrong password, an unknown or NOLOGIN role,
# no pg_hba.conf line. Trying again cannot help, so they are 77, not 75.
_LOGIN_REFUSED = re.compile(
    r'password authentication failed|role ".*" does not exist|is not permitted to log in|'
    r"no pg_hba\.conf entry|password is required|fe_sendauth: no password supplied"
)


def create(
    url: URL,
    *,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    statement_timeout: float = DEFAULT_STATEMENT_TIMEOUT,
    schema: str | None = None,
) -> Engine:
    """An engine with the session settings this job wants on each backend (timeouts in s),
    its tables in `schema` (Postgres; None: the connection's search path)."""
    if url.get_backend_name() == "sqlite":
        if schema is not None:
            raise ConfigError(
                f"--db-schema {schema}: a SQLite database has no schemas; "
                "use one database file per installation instead"
            )
        _require_directory(url)
        engine = _sqlite_engine(url)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # libpq options given in the URL (e.g. -c search_path=...) are kept, after ours.
    given = url.query.get("options")
    options = [postgres_options(lock_timeout, statement_timeout)]
    options += [given] if isinstance(given, str) else list(given or ())
    options += [f"-c search_path={schema}"] if schema else []
    engine = create_engine(
        url.difference_update_query(["options"]),
        pool_pre_ping=True,
        connect_args={
            "application_name": "qianfan-etl",
            "connect_timeout": 10,
            "options": " ".join(options),
        },
        execution_options={SCHEMA_OPTION: schema},
    )
    event.listen(engine, "connect", _no_idle_session_timeout)
    return engine


def _sqlite_engine(url: URL) -> Engine:
    """A SQLite engine whose connections wait for another writer's lock, up to a bound."""
    return create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT})


def _require_directory(url: URL) -> None:
    """A SQLite file needs its directory: SQLite creates the file, never the directory."""
    database = url.database
    if database and database != ":memory:" and not database.startswith("file:"):
        directory = Path(database).expanduser().resolve().parent
        if not directory.is_dir():
            raise ConfigError(
                f"database {show_url(url)}: the directory {directory} does not exist; "
                "create it, or fix DATABASE_URL"
            )


def missing_file(url: URL) -> Path | None:
    """The SQLite database file the URL names, if it is not there (opening would create it)."""
    path = url.database or ""
    if url.get_backend_name() != "sqlite" or path in ("", ":memory:") or path.startswith("file:"):
        return None
    return None if Path(path).exists() else Path(path).absolute()


def require_file(url: URL) -> URL:
    """Refuse a SQLite database file that is not there, rather than create it empty."""
    if url.get_backend_name() == "sqlite":
        _require_directory(url)  # the more useful message: db upgrade cannot create it either
    missing = missing_file(url)
    if missing is not None:
        raise ConfigError(
            f"no SQLite database at {missing}: run `qianfan-etl db upgrade` to create it "
            "(or point --database-url / DATABASE_URL at the right file)"
        )
    return url


def schema_of(engine: Engine) -> str | None:
    """The schema the engine was made for (None: the connection's search path)."""
    schema: str | None = engine.get_execution_options().get(SCHEMA_OPTION)
    return schema


def postgres_options(lock_timeout: float, statement_timeout: float) -> str:
    """Session settings for libpq's `options`; Postgres takes these timeouts in ms."""
    timeouts = {
        "lock_timeout": lock_timeout,
        "statement_timeout": statement_timeout,
        "idle_in_transaction_session_timeout": IDLE_IN_TRANSACTION_TIMEOUT,
    }
    return " ".join(
        ["-c timezone=UTC", *(f"-c {name}={round(s * 1000)}" for name, s in timeouts.items())]
    )


def _no_idle_session_timeout(dbapi_connection: psycopg.Connection[Any], _record: object) -> None:
    """A run's sessions idle while it waits on the API, by design: a database-wide
    idle_session_timeout (Postgres 14+; an unknown name before) must not end them."""
    if dbapi_connection.info.server_version >= 140000:
        dbapi_connection.execute("SET idle_session_timeout = 0")
        dbapi_connection.commit()


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


def classify(exc: DBAPIError, url: URL) -> EtlError:
    """Turn a driver error into the run-ending error with the right exit code."""
    return _classify(exc.orig or exc, isinstance(exc, OperationalError), url)


def _classify(error: BaseException, unavailable: bool, url: URL) -> EtlError:
    sqlstate = getattr(error, "sqlstate", None)
    where = show_url(url)
    detail = redact.scrub((str(error).strip().splitlines() or [type(error).__name__])[0])
    if _is_disk_full(error):
        return DiskFullError(
            f"the database's disk is full: free space on {_volume(url)} "
            f"({detail}{_sqlite_name(error)}), then run "
            "again; what was being written was rolled back, so nothing stored is half-changed"
        )
    if _LOGIN_REFUSED.search(detail):
        return AuthError(
            f"database {where} refused the login: {detail}. Check the user and password "
            "(in DATABASE_URL, PGPASSWORD or ~/.pgpass) and the server's pg_hba.conf."
        )
    if sqlstate in (INSUFFICIENT_PRIVILEGE, INVALID_PASSWORD, INVALID_AUTHORIZATION):
        return AuthError(
            f"database {where} refused access: {detail}. Grant the ETL role ownership of "
            "the qianfan-etl tables (see README, 'Permissions')."
        )
    if sqlstate == READ_ONLY_TRANSACTION:
        return ConfigError(
            f"database {where} is read-only ({detail}): a standby, or "
            "default_transaction_read_only is on. Point DATABASE_URL at a writable database."
        )
    # A connection refused for a missing database carries no SQLSTATE: the server's text says.
    if _MISSING_DATABASE.search(detail):
        return ConfigError(
            f"database {where} does not exist: create it (createdb), or fix DATABASE_URL"
        )
    if unavailable:
        return TransientError(f"database {where} unavailable: {detail}. Try again later.")
    return EtlError(f"database error on {where}: {detail}")


def _is_disk_full(error: BaseException) -> bool:
    if isinstance(error, sqlite3.Error):
        return getattr(error, "sqlite_errorcode", None) in SQLITE_DISK_FULL
    return getattr(error, "sqlstate", None) == DISK_FULL


def _sqlite_name(error: BaseException) -> str:
    """SQLite's name for the error, where its text alone ("disk I/O error") says too little."""
    name = getattr(error, "sqlite_errorname", None)
    return f", {name}" if isinstance(error, sqlite3.Error) and name else ""


def _volume(url: URL) -> str:
    """Where the database's files are, as far as the URL tells (never its password)."""
    if url.get_backend_name() == "sqlite":
        database = url.database or ""
        if database in ("", ":memory:") or database.startswith("file:"):
            return "the disk of the SQLite database"
        return f"the filesystem of {Path(database).expanduser().resolve().parent}"
    host = f"{url.host}:{url.port or 5432}" if url.host else "this machine"
    return f"the Postgres server at {host}, database {url.database}"


@contextmanager
def translated_errors(url: URL) -> Iterator[None]:
    """Re-raise driver errors as EtlErrors carrying exit codes."""
    try:
        yield
    except DBAPIError as exc:
        raise classify(exc, url) from exc
    except psycopg.Error as exc:
        # Raised unwrapped where the load talks to psycopg directly (COPY).
        raise _classify(exc, isinstance(exc, psycopg.OperationalError), url) from exc


def alembic_config(engine: Engine) -> "Config":
    """Alembic's config for the project's migrations, bound to this engine's URL."""
    from alembic.config import Config

    config = Config(str(ALEMBIC_INI))
    config.attributes["url"] = engine.url.render_as_string(hide_password=False)
    config.attributes["quiet"] = True
    config.attributes["schema"] = schema_of(engine)
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate the database to `revision`."""
    _migrate(engine, "upgrade", revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Migrate the database down to `revision` (tests and rollbacks)."""
    _migrate(engine, "downgrade", revision)


def _migrate(engine: Engine, direction: str, revision: str) -> None:
    """Run Alembic in one transaction that first takes the migration lock: an interrupted
    migration leaves the previous revision, and a concurrent one waits, then finds the
    revision the first one left (for an upgrade to head: nothing to do)."""
    from alembic import command

    config = alembic_config(engine)
    migrating = _transactional(engine)
    try:
        with translated_errors(engine.url), migrating.begin() as connection:
            _lock_migrations(connection, schema_of(engine))
            config.attributes["connection"] = connection
            getattr(command, direction)(config, revision)
    finally:
        if migrating is not engine:
            migrating.dispose()


def _transactional(engine: Engine) -> Engine:
    """An engine whose transactions hold DDL too: the engine itself on Postgres; on SQLite one
    that sends a real BEGIN IMMEDIATE (pysqlite's own handling runs CREATE and ALTER outside
    any transaction, and IMMEDIATE takes the write lock that serialises migrations)."""
    if engine.dialect.name != "sqlite":
        return engine
    migrating = _sqlite_engine(engine.url)
    event.listen(migrating, "connect", _sqlite_driver_without_transactions)
    event.listen(migrating, "begin", _begin_immediate)
    return migrating


def _sqlite_driver_without_transactions(dbapi_connection: Any, record: object) -> None:
    dbapi_connection.isolation_level = None  # SQLAlchemy's BEGIN, not pysqlite's, rules
    _sqlite_pragmas(dbapi_connection, record)


def _begin_immediate(connection: sa.Connection) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def _lock_migrations(connection: sa.Connection, schema: str | None) -> None:
    """Serialise migrations of one schema on Postgres (on SQLite, BEGIN IMMEDIATE did)."""
    if connection.dialect.name != "postgresql":
        return
    digest = hashlib.sha256(f"qianfan-etl migrations:{schema or ''}".encode()).digest()
    key = int.from_bytes(digest[:8], "big", signed=True)
    connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None when it was never migrated."""
    with translated_errors(engine.url), engine.connect() as connection:
        if not sa.inspect(connection).has_table("alembic_version"):
            return None
        query = sa.text("SELECT version_num FROM alembic_version")
        return connection.execute(query).scalar()


def head_revision() -> str | None:
    """The newest revision of the migration scripts."""
    return _scripts().get_current_head()


def require_head(engine: Engine) -> None:
    """Refuse to run on a schema this code was not written for."""
    current = current_revision(engine)
    if current == SCHEMA_HEAD:
        return
    where, upgrade = describe(engine), "`qianfan-etl db upgrade`"
    if schema_of(engine):
        upgrade = f"`qianfan-etl db upgrade --db-schema {schema_of(engine)}`"
    if current is None:
        raise ConfigError(f"database {where} has no qianfan-etl schema: run {upgrade}")
    if current in _known_revisions():
        raise ConfigError(
            f"database {where} is at schema revision {current}, this qianfan-etl needs "
            f"{SCHEMA_HEAD}: run {upgrade}"
        )
    raise ConfigError(
        f"database {where} is at schema revision {current}, newer than this qianfan-etl "
        f"(head {SCHEMA_HEAD}): upgrade qianfan-etl"
    )


def describe(engine: Engine) -> str:
    """The engine's URL as it may be printed, with its --db-schema if it has one."""
    schema = schema_of(engine)
    return show_url(engine.url) + (f" (schema {schema})" if schema else "")


def _known_revisions() -> set[str]:
    return {revision.revision for revision in _scripts().walk_revisions()}


def _scripts() -> "ScriptDirectory":
    """The project's migration scripts (Alembic imported only when they are needed)."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(Config(str(ALEMBIC_INI)))
