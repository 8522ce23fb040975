"""The load's own records: run counts land in the etl_runs columns of the same name."""

from dataclasses import fields

import sqlalchemy as sa
from sqlalchemy.engine import URL

from etl import db, load
from etl.schema import etl_runs


def test_each_run_count_is_recorded_in_its_own_etl_runs_column(sqlite_url: URL) -> None:
    names = [counter.name for counter in fields(load.RunCounts)]
    counts = load.RunCounts(**{name: 10 + i for i, name in enumerate(names)})
    engine = db.create(sqlite_url)
    with engine.begin() as connection:
        run_id = load.start_run(connection)
        load.finish_run(connection, run_id, counts)
        row = connection.execute(sa.select(etl_runs)).mappings().one()
    engine.dispose()
    assert {name: row[name] for name in names} == {name: 10 + i for i, name in enumerate(names)}
