"""The extension point is real: a resource declared here, with its own table and its own
simulator listing, syncs end to end through the walk, the ledger and the load that jobs use,
with nothing of etl/ changed for it (README, "Changing it")."""

from dataclasses import replace
from typing import Any

import pytest
import sqlalchemy as sa

from etl import transform
from etl.errors import EXIT_DATA, EXIT_OK
from etl.load import PROGRESS_COLUMNS
from etl.resources import JOBS, KEEP, TASKS, Resource, bigint, text
from etl.schema import NAMING_CONVENTION, Json, Timestamp
from etl.scopes import Scope
from etl.summary import summarised
from tests.harness import Etl, held_back_rows

ACTION = "DescribeFineTuningWidgets"

widgets_metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
test_widgets = sa.Table(
    "test_widgets",
    widgets_metadata,
    sa.Column("widget_id", sa.Text, primary_key=True),
    sa.Column("name", sa.Text),
    sa.Column("size", sa.BigInteger),
    sa.Column("raw", Json, nullable=False),
    sa.Column("content_hash", sa.Text, nullable=False),
    sa.Column("first_seen_at", Timestamp, nullable=False),
    sa.Column("last_changed_at", Timestamp, nullable=False),
    sa.Column("deleted_at", Timestamp),
)

WIDGETS = Resource(
    entity="widget",
    action=ACTION,
    list_key="widgetList",
    id_field="widgetId",
    scope_kind="widgets",
    table=test_widgets,
    fields={"name": text("name", "title"), "size": bigint("size")},
)


def _widgets(count: int) -> list[dict[str, Any]]:
    return [{"widgetId": f"w-{n:04d}", "name": f"widget {n}", "size": str(n)} for n in range(count)]


def _stored(etl: Etl) -> dict[str, tuple[Any, ...]]:
    table = test_widgets
    query = sa.select(table.c.widget_id, table.c.name, table.c.size, table.c.deleted_at)
    with etl.engine.connect() as connection:
        return {row.widget_id: tuple(row[1:]) for row in connection.execute(query)}


@pytest.fixture
def widgets(etl: Etl) -> list[dict[str, Any]]:
    """150 widgets served (two pages of 100), their table created beside the migrated ones."""
    widgets_metadata.create_all(etl.engine)
    served = _widgets(150)
    etl.sim.serve_listing(ACTION, "widgetList", "widgetId", served)
    return served


def test_a_declared_resource_loads_pages_and_is_idle_after(
    etl: Etl, widgets: list[dict[str, Any]]
) -> None:
    result = etl.sync_here(listed=(WIDGETS,))
    assert result.exit_code == EXIT_OK, result.message
    stored = _stored(etl)
    assert len(stored) == 150 and stored["w-0042"] == ("widget 42", 42, None)
    calls = [r for r in etl.sim.requests if r.action == ACTION]
    assert [r.status for r in calls] == [200, 200]  # signed as every call is, two pages
    assert result.counts.jobs_seen == len(etl.sim.jobs())  # jobs load beside it as before

    again = etl.sync_here(listed=(WIDGETS,))
    assert (again.exit_code, again.counts.rows_written) == (EXIT_OK, 0)


def test_a_declared_resource_changes_deletes_and_holds_back_in_its_own_scope(
    etl: Etl, widgets: list[dict[str, Any]]
) -> None:
    etl.sync_here(listed=(WIDGETS,))
    widgets[1]["name"] = "renamed"
    gone = widgets.pop(2)
    unreadable = {"widgetId": 7, "name": "a number for an id"}
    etl.sim.serve_listing(ACTION, "widgetList", "widgetId", [*widgets, unreadable])

    held = etl.sync_here(listed=(WIDGETS,))
    assert held.exit_code == EXIT_DATA
    assert [(h.scope, h.count) for h in held.held_back] == [(Scope("widgets"), 1)]
    assert held_back_rows(etl.engine) == [(held.run_id, "widgets", "", 1)]
    assert held.held_back[0].reason == "1 widget(s) listed without a readable widgetId"
    stored = _stored(etl)
    assert stored["w-0001"][0] == "renamed"
    assert stored[gone["widgetId"]][2] is None  # kept live: the unreadable one may be it
    assert all(row[2] is None for row in stored.values())

    etl.sim.serve_listing(ACTION, "widgetList", "widgetId", widgets)
    settled = etl.sync_here(listed=(WIDGETS,))
    assert settled.exit_code == EXIT_OK, settled.message
    assert _stored(etl)[gone["widgetId"]][2] is not None
    with etl.engine.connect() as connection:
        open_rejects = (
            "SELECT count(*) FROM etl_rejects WHERE entity = 'widget' AND resolved_at IS NULL"
        )
        still_open = connection.execute(sa.text(open_rejects)).scalar_one()
    assert still_open == 0  # the listing that no longer has it resolved the reject

    widgets.insert(2, gone)
    etl.sim.serve_listing(ACTION, "widgetList", "widgetId", widgets)
    assert etl.sync_here(listed=(WIDGETS,)).exit_code == EXIT_OK
    assert _stored(etl)[gone["widgetId"]][2] is None  # listed again: live again


def test_a_resource_whose_absence_keeps_never_deletes(
    etl: Etl, widgets: list[dict[str, Any]]
) -> None:
    keeping = replace(WIDGETS, absent=KEEP)
    etl.sync_here(listed=(keeping,))
    etl.sim.serve_listing(ACTION, "widgetList", "widgetId", widgets[:10])
    result = etl.sync_here(listed=(keeping,))
    assert result.exit_code == EXIT_OK and result.deleted == 0
    assert all(row[2] is None for row in _stored(etl).values())


def test_a_declared_resources_mass_delete_is_refused_with_the_rest(
    etl: Etl, widgets: list[dict[str, Any]]
) -> None:
    etl.sync_here(listed=(WIDGETS,))
    etl.sim.serve_listing(ACTION, "widgetList", "widgetId", widgets[:10])
    result = etl.sync_here(listed=(WIDGETS,))
    assert result.exit_code == EXIT_DATA
    assert "140 of 150 live widgets" in (result.message or "")
    assert all(row[2] is None for row in _stored(etl).values())


KEPT_BY_THE_LOAD = {"raw", "content_hash", "first_seen_at", "last_changed_at", "deleted_at"}


def test_every_column_of_a_listed_table_is_declared_or_kept_by_the_load() -> None:
    """A column added to finetune_jobs or finetune_tasks without its line in the declaration
    would stay NULL for ever: each is a declared field, the key, or written by the load."""
    task_rows = transform.task_to_rows({"taskId": "t-1", "metrics": {}, "checkpointList": []}, "j")
    assert isinstance(task_rows, transform.TaskRows)
    by_the_load = KEPT_BY_THE_LOAD | set(PROGRESS_COLUMNS) | set(summarised(task_rows))
    for resource, extra in ((JOBS, set()), (TASKS, {"job_id"})):
        columns = {column.name for column in resource.table.columns}
        declared = {resource.key, *resource.fields, *extra}
        assert columns - by_the_load == declared, resource.entity
    job = transform.job_to_row({"jobId": "j-1"})
    assert isinstance(job, dict) and set(job) == {JOBS.key, *JOBS.fields, "raw", "content_hash"}


def test_restricted_runs_delete_nothing_of_a_declared_resource(
    etl: Etl, widgets: list[dict[str, Any]]
) -> None:
    """An --active-only run lists the resource (its listing is the account's, like the job
    list) and loads what is new, but deletes nothing; a --job-id run does not list it."""
    etl.sync_here(listed=(WIDGETS,))
    served = [*widgets[1:], {"widgetId": "w-new", "name": "new"}]
    etl.sim.serve_listing(ACTION, "widgetList", "widgetId", served)

    active = etl.sync_here(listed=(WIDGETS,), active_only=True)
    assert (active.mode, active.exit_code, active.deleted) == ("active", EXIT_OK, 0)
    stored = _stored(etl)
    assert stored["w-new"] == ("new", None, None) and stored["w-0000"][2] is None

    etl.sim.requests.clear()
    job_id = etl.sim.jobs()[0]["jobId"]
    selected = etl.sync_here(listed=(WIDGETS,), job_ids=frozenset({job_id}))
    assert (selected.mode, selected.exit_code) == ("selected", EXIT_OK)
    assert not [r for r in etl.sim.requests if r.action == ACTION]
    assert _stored(etl)["w-0000"][2] is None
