"""Every shape of unreadable id (README, "Failure behaviour": a readable id is a non-empty string)
holds back its own scope's deletes and no other's, says so with 65, and a run with nothing new
after it writes no row, end to end through the CLI, the simulator over HTTP, Postgres and
SQLite."""

from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from etl import schema
from tests.harness import Etl, held_back_rows, is_live, scalar, seeded

MISSING = object()
# a number, an object, null, the empty string, and no key at all: none is a readable id
UNREADABLE: dict[str, Any] = {
    "number": 31337,
    "object": {"id": "job-1"},
    "null": None,
    "empty": "",
    "missing": MISSING,
}
WATCHED = (*schema.CONTENT_TABLES, schema.etl_rejects)


def _record(key: str, value: Any, **rest: Any) -> dict[str, Any]:
    return rest if value is MISSING else {key: value, **rest}


def _count_writes(engine: Engine) -> None:
    """Triggers that log every row written to the content tables and etl_rejects."""
    with engine.begin() as connection:
        connection.execute(sa.text("CREATE TABLE written (tbl TEXT, op TEXT)"))
        for table in WATCHED:
            for op in ("INSERT", "UPDATE", "DELETE"):
                connection.execute(sa.text(_trigger(engine.dialect.name, table.name, op)))


def _trigger(dialect: str, table: str, op: str) -> str:
    name = f"count_{table}_{op.lower()}"
    if dialect == "sqlite":
        return (
            f"CREATE TRIGGER {name} AFTER {op} ON {table} BEGIN "
            f"INSERT INTO written VALUES ('{table}', '{op}'); END"
        )
    return (
        f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger AS $$ BEGIN "
        f"INSERT INTO written VALUES ('{table}', '{op}'); RETURN NULL; END $$ LANGUAGE plpgsql; "
        f"CREATE TRIGGER {name} AFTER {op} ON {table} FOR EACH ROW EXECUTE FUNCTION {name}()"
    )


def _writes(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT tbl, op, count(*) FROM written GROUP BY 1, 2"))
        return sorted(tuple(row) for row in rows)


def _then_nothing_new_writes_nothing(etl: Etl) -> None:
    engine = etl.engine
    _count_writes(engine)
    again = etl.invoke()
    assert again.returncode == 65, again.stderr  # loud every run until upstream fixes it
    assert _writes(engine) == []


@pytest.mark.parametrize("shape", UNREADABLE, ids=list(UNREADABLE))
def test_a_task_with_an_unreadable_id_holds_back_only_its_job(shape: str, etl: Etl) -> None:
    sim, engine = etl.sim, etl.engine
    ids = seeded(etl)
    kept, gone = sim.tasks(ids[0])[0]["taskId"], sim.tasks(ids[1])[0]["taskId"]
    sim.put_task(ids[0], _record("taskId", UNREADABLE[shape], jobId=ids[0], runStatus="Done"))
    sim.delete_task(kept)
    sim.delete_task(gone)
    run = etl.invoke()
    assert run.returncode == 65, run.stderr
    assert f"job {ids[0]} kept 1" in run.stdout
    assert is_live(engine, schema.finetune_tasks, kept)  # it may be the unreadable one
    assert not is_live(engine, schema.finetune_tasks, gone)  # the other jobs still delete
    assert held_back_rows(engine) == [(2, "job", ids[0], 1)]
    assert scalar(engine, "SELECT count(*) FROM etl_rejects WHERE source_id IS NULL") == 1
    _then_nothing_new_writes_nothing(etl)


@pytest.mark.parametrize("shape", UNREADABLE, ids=list(UNREADABLE))
def test_a_job_with_an_unreadable_id_holds_back_only_the_account(shape: str, etl: Etl) -> None:
    sim, engine = etl.sim, etl.engine
    ids = seeded(etl)
    gone_task = sim.tasks(ids[2])[0]["taskId"]
    sim.put_job(_record("jobId", UNREADABLE[shape], name="an unreadable id"))
    sim.delete_job(ids[1])
    sim.delete_task(gone_task)
    run = etl.invoke()
    assert run.returncode == 65, run.stderr
    assert "account kept 1" in run.stdout
    assert is_live(engine, schema.finetune_jobs, ids[1])  # it may be the unreadable one
    assert not is_live(engine, schema.finetune_tasks, gone_task)  # job scopes still delete
    assert held_back_rows(engine) == [(2, "account", "", 1)]
    _then_nothing_new_writes_nothing(etl)
