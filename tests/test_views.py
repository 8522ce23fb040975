"""The self-describing schema (revision 0005) and the analyst views, on both backends."""

from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine

from etl import db
from etl.qianfan import QianfanClient
from etl.schema import Timestamp, metadata
from etl.simulator import Simulator, SimulatorServer
from etl.sync import SyncOptions, sync
from etl.transform import parse_percent
from migrations import readme
from migrations.views import VIEW_DESCRIPTIONS
from tests.harness import code_descriptions, descriptions

OVERVIEW_0004 = [
    "task_id",
    "job_id",
    "job_name",
    "model",
    "train_mode",
    "parameter_scale",
    "run_status",
    "create_time",
    "finish_time",
    "duration_seconds",
    "checkpoint_count",
    "last_step",
    "final_training_loss",
    "min_perplexity",
    "bleu_4",
    "rouge_1",
    "rouge_2",
    "rouge_l",
]


def load(engine: Engine, server: SimulatorServer, sim: Simulator) -> None:
    with QianfanClient(server.url, sim.config.access_key, sim.config.secret_key) as client:
        sync(engine, client, SyncOptions())


def rows(engine: Engine, sql: str, **params: Any) -> list[Any]:
    with engine.connect() as connection:
        return list(connection.execute(sa.text(sql), params).all())


def all_tasks(sim: Simulator) -> list[dict[str, Any]]:
    return [task for job in sim.jobs() for task in sim.tasks(job["jobId"])]


# -- descriptions --------------------------------------------------------------------------


def test_every_table_column_and_view_is_described_on_postgres(pg_engine: Engine) -> None:
    """What `\\d+` shows: every relation and column of the schema has its description."""
    found = descriptions(pg_engine)
    assert found == code_descriptions()
    assert all(about and column_about for *_, about, column_about in found)
    assert {"etl_failed_jobs", "finetune_task_checkpoints_live"} <= {row[0] for row in found}


def test_view_descriptions_name_every_view_column_in_order(engine: Engine) -> None:
    inspector = sa.inspect(engine)
    assert set(inspector.get_view_names()) == set(VIEW_DESCRIPTIONS)
    for view, (_, columns) in VIEW_DESCRIPTIONS.items():
        assert [c["name"] for c in inspector.get_columns(view)] == list(columns), view


def test_downgrade_to_0004_removes_descriptions_and_new_views(pg_engine: Engine) -> None:
    db.downgrade(pg_engine, "0004")
    found = descriptions(pg_engine)
    assert found and not any(about or column_about for *_, about, column_about in found)
    assert {name for name, kind, *_ in found if kind == "v"} == {
        "finetune_task_metrics_wide",
        "finetune_task_overview",
    }
    overview = [c["name"] for c in sa.inspect(pg_engine).get_columns("finetune_task_overview")]
    assert overview == OVERVIEW_0004
    db.upgrade(pg_engine)
    assert all(column_about for *_, column_about in descriptions(pg_engine))


def test_readme_reference_is_generated_from_the_descriptions() -> None:
    text = readme.README.read_text()
    assert readme.readme_section(text) == readme.reference_markdown()
    for name in [*metadata.tables, *VIEW_DESCRIPTIONS]:
        assert f"#### `{name}`" in text


# -- the analyst views answer real questions -----------------------------------------------


def test_overview_keeps_its_columns_and_adds_the_new_ones_at_the_end(engine: Engine) -> None:
    columns = [c["name"] for c in sa.inspect(engine).get_columns("finetune_task_overview")]
    assert columns == [*OVERVIEW_0004, "error_code", "error_message", "job_description"]


def test_best_bleu_4_per_model_counts_live_tasks_only(
    sim: Simulator, server: SimulatorServer, engine: Engine
) -> None:
    scored = [t for t in all_tasks(sim) if "metrics" in t]
    best = max(scored, key=lambda t: parse_percent(t["metrics"]["BLEU-4"]) or 0)
    load(engine, server, sim)
    sim.delete_task(best["taskId"])
    load(engine, server, sim)
    expected: dict[str, float] = {}
    for task in all_tasks(sim):
        if "metrics" in task:
            value = parse_percent(task["metrics"]["BLEU-4"]) or 0
            expected[task["model"]] = max(expected.get(task["model"], value), value)
    live = """SELECT model, MAX(value_percent) FROM finetune_task_metrics_live
              WHERE metric_name = 'BLEU-4' GROUP BY model"""
    assert dict(rows(engine, live)) == expected
    # The table keeps the deleted task's metrics: that is what the view is for.
    kept = """SELECT value_percent FROM finetune_task_metrics
              WHERE task_id = :task AND metric_name = 'BLEU-4'"""
    assert rows(engine, kept, task=best["taskId"])[0][0] == parse_percent(best["metrics"]["BLEU-4"])
    assert expected[best["model"]] < parse_percent(best["metrics"]["BLEU-4"])  # type: ignore[operator]


def test_loss_curve_of_a_task(sim: Simulator, server: SimulatorServer, engine: Engine) -> None:
    task = next(t for t in all_tasks(sim) if len(t["checkpointList"]) >= 3)
    load(engine, server, sim)
    query = """SELECT step, training_loss, job_id, model FROM finetune_task_checkpoints_live
               WHERE task_id = :task ORDER BY step"""
    curve = rows(engine, query, task=task["taskId"])
    assert [tuple(row) for row in curve] == [
        (point["step"], point["trainingLoss"], task["jobId"], task["model"])
        for point in task["checkpointList"]
    ]
    sim.delete_task(task["taskId"])
    load(engine, server, sim)
    assert rows(engine, query, task=task["taskId"]) == []
    kept = "SELECT COUNT(*) FROM finetune_task_checkpoints WHERE task_id = :task"
    assert rows(engine, kept, task=task["taskId"])[0][0] == len(task["checkpointList"])


def test_failed_tasks_this_week_with_their_errors(
    sim: Simulator, server: SimulatorServer, engine: Engine
) -> None:
    job = sim.jobs()[0]
    now = datetime.now(UTC).replace(microsecond=0)
    for name, age, code in (("t-recent", 2, 500002), ("t-old", 10, 400120), ("t-ok", 1, None)):
        task = {
            "taskId": name,
            "jobId": job["jobId"],
            "jobName": job["name"],
            "runStatus": "Failed" if code else "Done",
            "createTime": (now - timedelta(days=age)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        if code:
            task.update(errorCode=code, errorMessage=f"training aborted (code {code})")
        sim.put_task(job["jobId"], task)
    load(engine, server, sim)
    query = sa.text(
        """SELECT task_id, job_name, error_code, error_message FROM finetune_task_overview
           WHERE run_status = 'Failed' AND create_time >= :since ORDER BY create_time"""
    ).bindparams(sa.bindparam("since", type_=Timestamp))
    with engine.connect() as connection:
        found = connection.execute(query, {"since": now - timedelta(days=7)}).all()
    assert [tuple(row) for row in found] == [
        ("t-recent", job["name"], 500002, "training aborted (code 500002)")
    ]


def test_duration_is_rounded_to_the_millisecond(engine: Engine) -> None:
    """Before 0005: 51284.12299901247 on SQLite (julianday), 51284.123456 on Postgres."""
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO finetune_jobs (job_id, raw, content_hash, first_seen_at, "
                "last_changed_at) VALUES ('j', '{}', 'h', :t, :t)"
            ),
            {"t": "2024-01-01 00:00:00"},
        )
        connection.execute(
            metadata.tables["finetune_tasks"].insert(),
            {
                "task_id": "t",
                "job_id": "j",
                "error_code": 7,
                "error_message": "boom",
                "create_time": datetime(2024, 1, 1, tzinfo=UTC),
                "finish_time": datetime(2024, 1, 1, 14, 14, 44, 123456, tzinfo=UTC),
                "raw": {},
                "content_hash": "h",
                "first_seen_at": datetime(2024, 1, 1, tzinfo=UTC),
                "last_changed_at": datetime(2024, 1, 1, tzinfo=UTC),
            },
        )
    (row,) = rows(
        engine, "SELECT duration_seconds, error_code, error_message FROM finetune_task_overview"
    )
    assert str(row.duration_seconds) == "51284.123"
    assert (row.error_code, row.error_message) == (7, "boom")
