"""Kept task summaries (revision 0008): the views read the same rows as before, every summary
equals the aggregate of its children, and a database loaded at 0007 is backfilled."""

import secrets
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from etl import db, transform
from etl.simulator import Simulator
from etl.summary import summarised
from migrations.views import VIEW_NAMES
from tests.harness import Etl, snapshot, summary_disagreements

OLD = "0007"  # the revision before the summaries: its views aggregate the children per query

# Tasks whose summaries are easy to get wrong, each beside the simulator's ordinary ones.
EDGE_TASKS: list[dict[str, Any]] = [
    {"taskId": "task-edge-none", "runStatus": "Done"},
    {
        "taskId": "task-edge-nulls",
        "runStatus": "Done",
        "metrics": {"BLEU-4": "N/A", "ROUGE-1": "12.5%", "Other": "3%"},
        "checkpointList": [
            {"step": 30, "trainingLoss": None, "perplexity": "NaN"},
            {"step": 5, "trainingLoss": 2.0, "perplexity": None},
        ],
    },
    {
        "taskId": "task-edge-duplicates",
        "runStatus": "Failed",
        "metrics": {"ROUGE-L": "40%", "ROUGE-2": 7},
        "checkpointList": [
            {"step": 10, "trainingLoss": 9.0, "perplexity": 3.0},
            {"step": 10, "trainingLoss": 1.0, "perplexity": 8.0},
            {"step": 2, "trainingLoss": 5.0, "perplexity": 1.5},
        ],
    },
]


def load_varied_account(etl: Etl) -> None:
    """Sync an account with edge cases, a deleted task and job, and a changed task."""
    sim = etl.sim
    jobs = [job["jobId"] for job in sim.jobs()]
    for raw in EDGE_TASKS:
        sim.put_task(jobs[0], {**raw, "jobId": jobs[0]})
    etl.sync_here()
    first = sim.tasks(jobs[1])[0]
    sim.put_task(jobs[1], {**first, "checkpointList": [{"step": 1, "trainingLoss": 0.5}]})
    sim.delete_task(sim.tasks(jobs[2])[0]["taskId"])
    sim.delete_job(jobs[3])
    etl.sync_here(max_delete_fraction=1.0)


def view_rows(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every view, in a stable order."""
    with engine.connect() as connection:
        return {
            view: sorted(
                (tuple(row) for row in connection.execute(sa.text(f"SELECT * FROM {view}"))),
                key=repr,
            )
            for view in VIEW_NAMES
        }


def test_every_view_reads_the_same_rows_as_the_views_before_the_summaries(etl: Etl) -> None:
    load_varied_account(etl)
    now = view_rows(etl.engine)
    assert len(now["finetune_task_overview"]) > 50
    db.downgrade(etl.engine, OLD)  # the same children, read by revision 0005's views
    assert view_rows(etl.engine) == now
    db.upgrade(etl.engine)


def test_a_database_loaded_before_the_summaries_is_backfilled(etl: Etl) -> None:
    load_varied_account(etl)
    loaded = snapshot(etl.engine)
    views = view_rows(etl.engine)
    db.downgrade(etl.engine, OLD)  # as an earlier release left it: no summary columns
    db.upgrade(etl.engine)
    assert summary_disagreements(etl.engine) == []
    assert snapshot(etl.engine) == loaded
    assert view_rows(etl.engine) == views


def test_the_summary_check_catches_a_summary_that_disagrees(etl: Etl) -> None:
    load_varied_account(etl)
    assert summary_disagreements(etl.engine) == []
    with etl.engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE finetune_tasks SET last_step = 7 WHERE task_id = 'task-edge-nulls'")
        )
    assert summary_disagreements(etl.engine) == [("task-edge-nulls", "last_step", 7, 30)]


@pytest.mark.parametrize("raw", EDGE_TASKS, ids=lambda raw: raw["taskId"])
def test_summarised_is_the_aggregate_of_the_typed_children(raw: dict[str, Any]) -> None:
    rows = transform.task_to_rows(raw, "job-1")
    assert isinstance(rows, transform.TaskRows)
    steps = {c["step"]: c for c in rows.checkpoints}
    last = max(steps, default=None)
    perplexities = [c["perplexity"] for c in rows.checkpoints if c["perplexity"] is not None]
    metrics = {m["metric_name"]: m["value_percent"] for m in rows.metrics}
    assert summarised(rows) == {
        "checkpoint_count": len(steps),
        "last_step": last,
        "final_training_loss": None if last is None else steps[last]["training_loss"],
        "min_perplexity": min(perplexities, default=None),
        "bleu_4": metrics.get("BLEU-4"),
        "rouge_1": metrics.get("ROUGE-1"),
        "rouge_2": metrics.get("ROUGE-2"),
        "rouge_l": metrics.get("ROUGE-L"),
    }


def test_simulated_tasks_have_summaries_to_compare(sim: Simulator) -> None:
    """The row-equality tests above are only as good as the data: it has every summary."""
    tasks = [task for job in sim.jobs() for task in sim.tasks(job["jobId"])]
    assert any(task.get("checkpointList") for task in tasks)
    assert any("BLEU-4" in (task.get("metrics") or {}) for task in tasks)


# 12,000 characters that no compression shortens: more than a btree entry takes (Postgres
# refuses one over about 2,700 bytes once compressed), and nothing stops the API sending them.
LONG = secrets.token_hex(6000)


def test_no_index_refuses_a_long_text_the_api_sends(etl: Etl) -> None:
    job_id = etl.sim.jobs()[0]["jobId"]
    long_task = {"taskId": "task-long", "jobId": job_id, "runStatus": f"Done {LONG}"}
    long_task |= {"model": f"m {LONG}", "parameterScale": f"p {LONG}", "trainMode": LONG}
    etl.sim.put_task(job_id, long_task)
    result = etl.sync_here()
    assert (result.exit_code, result.counts.rejects) == (0, 0)
    with etl.engine.connect() as connection:
        stored = connection.execute(
            sa.text(
                "SELECT run_status, model, parameter_scale FROM finetune_tasks "
                "WHERE task_id = 'task-long'"
            )
        ).one()
    assert tuple(stored) == (f"Done {LONG}", f"m {LONG}", f"p {LONG}")
    db.downgrade(etl.engine, OLD)  # a database an earlier release loaded with it upgrades
    db.upgrade(etl.engine)
    assert summary_disagreements(etl.engine) == []


FILTERS = {
    "ix_finetune_tasks_live_run_status": "run_status",
    "ix_finetune_tasks_live_model": "model",
    "ix_finetune_tasks_live_parameter_scale": "parameter_scale",
}


@pytest.mark.parametrize("index, column", FILTERS.items())
def test_a_dashboards_filter_on_text_the_api_sends_has_its_index(
    etl: Etl, index: str, column: str
) -> None:
    """A filter on the overview by status, model or scale can read its index (the planner
    chooses it once a table scan is priced out), long values included."""
    job_id = etl.sim.jobs()[0]["jobId"]
    long_task = {"taskId": "task-long", "jobId": job_id, "runStatus": f"Done {LONG}"}
    etl.sim.put_task(job_id, long_task | {"model": LONG, "parameterScale": LONG})
    assert etl.sync_here().exit_code == 0
    query = f"SELECT task_id FROM finetune_task_overview WHERE {column} = :value"
    with etl.engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(sa.text("ANALYZE finetune_tasks"))
            connection.execute(sa.text("SET LOCAL enable_seqscan = off"))
            plan = connection.execute(sa.text(f"EXPLAIN {query}"), {"value": "x"}).scalars()
        else:
            plan = connection.execute(sa.text(f"EXPLAIN QUERY PLAN {query}"), {"value": "x"})
            plan = (row[-1] for row in plan)
        assert index in " ".join(plan)
        found = connection.execute(sa.text(query), {"value": LONG}).scalars().all()
    assert found == (["task-long"] if column != "run_status" else [])
