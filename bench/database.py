"""The benchmark's own databases: create and drop, count rows, read pg_stat, export for COPY."""

import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from etl.schema import CONTENT_TABLES as _TABLES

ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
CONTENT_TABLES = tuple(table.name for table in _TABLES)
FLOOR_SCHEMA = "floor"
SETTLE_SECONDS = 10.0
SETTLE_POLL = 0.2


@contextmanager
def fresh_postgres(admin_dsn: str) -> Iterator[str]:
    """A new, empty database qfetl_bench_<random> for the block; dropped afterwards."""
    name = f"qfetl_bench_{secrets.token_hex(4)}"
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield psycopg.conninfo.make_conninfo(admin_dsn, dbname=name)
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            admin.execute(drop.format(sql.Identifier(name)))


def sqlalchemy_url(dsn: str) -> str:
    """The DATABASE_URL for a libpq DSN of our fresh database."""
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    user = params.get("user", "postgres")
    host, port = params.get("host", "127.0.0.1"), params.get("port", 5432)
    return f"postgresql://{user}@{host}:{port}/{params['dbname']}"


def postgres_counts(dsn: str) -> dict[str, int]:
    """Rows in each content table."""
    with psycopg.connect(dsn) as connection:
        return {table: _count(connection, table) for table in CONTENT_TABLES}


def _count(connection: psycopg.Connection[Any], table: str) -> int:
    """Rows in one public table."""
    query = sql.SQL("SELECT count(*) FROM public.{}").format(sql.Identifier(table))
    row = connection.execute(query).fetchone()
    return int(row[0]) if row else 0


def sqlite_counts(path: Path) -> dict[str, int]:
    """Rows in each content table of a SQLite file."""
    with sqlite3.connect(path) as connection:
        return {
            table: connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in CONTENT_TABLES
        }


def settled_writes(dsn: str) -> int:
    """n_tup_ins + n_tup_upd + n_tup_del of the content tables, once other sessions are gone."""
    with psycopg.connect(dsn, autocommit=True) as connection:
        deadline = time.monotonic() + SETTLE_SECONDS
        while _other_sessions(connection) and time.monotonic() < deadline:
            time.sleep(SETTLE_POLL)
        # a backend flushes its counters while exiting, just after leaving pg_stat_activity
        previous, current = -1, _writes(connection)
        while current != previous and time.monotonic() < deadline:
            time.sleep(SETTLE_POLL)
            previous, current = current, _writes(connection)
        return current


def _other_sessions(connection: psycopg.Connection[Any]) -> int:
    """Sessions on this database besides ours."""
    query = (
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    row = connection.execute(query).fetchone()
    return int(row[0]) if row else 0


def _writes(connection: psycopg.Connection[Any]) -> int:
    """The content tables' write counters, from a fresh statistics snapshot."""
    connection.execute("SELECT pg_stat_clear_snapshot()")
    query = (
        "SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0) FROM pg_stat_user_tables "
        "WHERE schemaname = 'public' AND relname = ANY(%s)"
    )
    row = connection.execute(query, [list(CONTENT_TABLES)]).fetchone()
    return int(row[0]) if row else 0


def autovacuum_runs(dsn: str) -> int:
    """autovacuum_count + autoanalyze_count of the content tables."""
    query = (
        "SELECT coalesce(sum(autovacuum_count + autoanalyze_count), 0) FROM pg_stat_user_tables "
        "WHERE schemaname = 'public' AND relname = ANY(%s)"
    )
    with psycopg.connect(dsn) as connection:
        row = connection.execute(query, [list(CONTENT_TABLES)]).fetchone()
        return int(row[0]) if row else 0


def export_tables(dsn: str, directory: Path) -> None:
    """COPY each content table to <directory>/<table>.copy and create its unindexed twin."""
    with psycopg.connect(dsn) as connection:
        for table in CONTENT_TABLES:
            _export(connection, table, directory / f"{table}.copy")
        connection.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(FLOOR_SCHEMA)))
        for table in CONTENT_TABLES:
            # LIKE copies columns and NOT NULL; INCLUDING COMPRESSION the raw columns' lz4.
            # No PK, index or FK.
            twin = sql.SQL("CREATE TABLE {}.{} (LIKE public.{} INCLUDING COMPRESSION)").format(
                sql.Identifier(FLOOR_SCHEMA), sql.Identifier(table), sql.Identifier(table)
            )
            connection.execute(twin)


def _export(connection: psycopg.Connection[Any], table: str, path: Path) -> None:
    """One table's rows in COPY binary format, which the server reads faster than text."""
    query = sql.SQL("COPY public.{} TO STDOUT (FORMAT BINARY)").format(sql.Identifier(table))
    with path.open("wb") as file, connection.cursor().copy(query) as copy:
        for data in copy:
            file.write(data)


def server_version(dsn: str) -> str:
    """Postgres's version string."""
    with psycopg.connect(dsn) as connection:
        row = connection.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "unknown"
