"""Binary COPY of new rows into Postgres: a speed trick, kept because it pays.

New rows go in on Postgres by COPY rather than INSERT (the run lock means no one else inserts
them), and binary COPY takes a fifth of the client CPU of text COPY (README, Performance).
Binary COPY needs what an INSERT does not: each column's type oid, read once per connection,
and `raw` JSON the transformer already wrote, which is sent as it is rather than encoded
again."""

import operator
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg.types.json import Jsonb
from sqlalchemy import Connection

Row = dict[str, Any]


def copy_rows(
    connection: Connection, table: sa.Table, rows: Sequence[Row], raw_json: Mapping[str, str]
) -> int:
    """COPY rows (all with the same keys) into the table; `raw_json` holds JSON text by key."""
    columns = list(rows[0])
    driver: psycopg.Connection[Any] = connection.connection.driver_connection  # type: ignore[assignment]
    statement = f"COPY {table.name} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"
    with driver.cursor() as cursor:
        types = _column_types(connection, cursor, table.name, columns)
        with cursor.copy(statement) as copy:
            copy.set_types(types)
            for values in _values(table, columns, rows, raw_json):
                copy.write_row(values)
    return len(rows)


def _values(
    table: sa.Table, columns: list[str], rows: Sequence[Row], raw_json: Mapping[str, str]
) -> Iterator[Sequence[Any]]:
    """Each row's values in column order, JSON columns wrapped for psycopg."""
    values_of = operator.itemgetter(*columns)
    json_at = [i for i, name in enumerate(columns) if isinstance(table.c[name].type, sa.JSON)]
    if not json_at:
        yield from map(values_of, rows)
        return
    key = next(iter(table.primary_key.columns)).name
    for row in rows:
        values = list(values_of(row))
        text = raw_json.get(row[key]) if raw_json else None
        for i in json_at:
            values[i] = Jsonb(text, dumps=_as_is) if text else Jsonb(values[i])
        yield values


def _column_types(
    connection: Connection, cursor: psycopg.Cursor[Any], table: str, columns: list[str]
) -> list[int]:
    """Each column's type oid, as the database has it: binary COPY must name them. Cached on
    the connection, since a query per COPY waits on a busy server."""
    known: dict[str, dict[str, int]] = connection.info.setdefault("column_types", {})
    if table not in known:
        cursor.execute(
            "SELECT attname, atttypid FROM pg_attribute WHERE attrelid = %s::regclass", [table]
        )
        known[table] = dict(cursor.fetchall())
    return [known[table][name] for name in columns]


def _as_is(text: str) -> str:
    return text
