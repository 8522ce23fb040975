"""The COPY floor: load the exported rows (binary COPY, as sync writes them) into unindexed
twins of the content tables.

Usage: python -m bench.copy_floor DSN DIRECTORY  (reads DIRECTORY/<table>.copy)
"""

import json
import sys
from pathlib import Path

import psycopg
from psycopg import sql

from bench.database import CONTENT_TABLES, FLOOR_SCHEMA

CHUNK_BYTES = 1 << 20


def copy_floor(dsn: str, directory: Path) -> dict[str, int]:
    """COPY every table's file in one transaction; rows per table."""
    rows: dict[str, int] = {}
    with psycopg.connect(dsn) as connection, connection.cursor() as cursor:
        for table in CONTENT_TABLES:
            query = sql.SQL("COPY {}.{} FROM STDIN (FORMAT BINARY)").format(
                sql.Identifier(FLOOR_SCHEMA), sql.Identifier(table)
            )
            with (directory / f"{table}.copy").open("rb") as file, cursor.copy(query) as copy:
                while chunk := file.read(CHUNK_BYTES):
                    copy.write(chunk)
            rows[table] = cursor.rowcount
    return rows


def main(argv: list[str]) -> None:
    """Print rows per table and in total as one JSON line."""
    dsn, directory = argv
    rows = copy_floor(dsn, Path(directory))
    print(json.dumps({"rows": sum(rows.values()), "tables": rows}))


if __name__ == "__main__":
    main(sys.argv[1:])
