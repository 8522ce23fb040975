"""The queries behind the report's charts, on Postgres and SQLite, against data loaded by the
real sync from the simulator (expectations read from the simulator, not from etl) or inserted
through SQLAlchemy Core for the cases the simulator never serves."""

import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Connection, Engine

from etl.report import queries
from etl.report.queries import Selection
from etl.schema import (
    finetune_task_checkpoints,
    finetune_task_metrics,
)
from etl.simulator import Simulator, SimulatorServer
from tests.chart_rows import NOW, insert_task, load, sim_tasks, summarise, when

METRIC_COLUMNS = {name: column for column, name in queries.METRICS.items()}


@pytest.fixture
def loaded(engine: Engine, sim: Simulator, server: SimulatorServer) -> Iterator[Connection]:
    load(engine, sim, server)
    with engine.connect() as connection:
        yield connection


def test_task_counts_and_jobs(loaded: Connection, sim: Simulator) -> None:
    expected = Counter(task["runStatus"] for task in sim_tasks(sim))
    assert queries.task_counts(loaded, Selection()) == dict(expected)
    assert queries.job_count(loaded, Selection()) == len(sim.jobs())


def test_curves_are_the_latest_finished_tasks(loaded: Connection, sim: Simulator) -> None:
    done = [t for t in sim_tasks(sim) if t["runStatus"] == "Done" and t["checkpointList"]]
    latest = sorted(done, key=lambda t: (-when(t, "finish").timestamp(), t["taskId"]))[:4]  # type: ignore[union-attr]
    picked = queries.curve_tasks(loaded, Selection(tasks=4))
    assert [row["task_id"] for row in picked] == [t["taskId"] for t in latest]


def test_curves_of_named_jobs_include_unfinished_tasks(loaded: Connection, sim: Simulator) -> None:
    job = next(
        j
        for j in sim.jobs()
        if any(t["runStatus"] != "Done" and t["checkpointList"] for t in sim.tasks(j["jobId"]))
    )
    with_points = {t["taskId"] for t in sim.tasks(job["jobId"]) if t["checkpointList"]}
    picked = queries.curve_tasks(loaded, Selection(job_ids=(job["jobId"],), tasks=50))
    assert {row["task_id"] for row in picked} == with_points


def test_loss_curves_keep_real_points_first_and_last(loaded: Connection, sim: Simulator) -> None:
    points = {
        t["taskId"]: {p["step"]: (p["trainingLoss"], p["perplexity"]) for p in t["checkpointList"]}
        for t in sim_tasks(sim)
    }
    labels = {f"{t['jobName']} · {t['taskId']}": t["taskId"] for t in sim_tasks(sim)}
    rows = queries.loss_curves(loaded, Selection(tasks=3), max_points=2)
    by_task: dict[str, list[int]] = defaultdict(list)
    for row in rows:
        task_id = labels[row["task"]]
        assert points[task_id][row["step"]] == (row["loss"], row["perplexity"])
        by_task[task_id].append(row["step"])
    assert len(by_task) == 3
    for task_id, steps in by_task.items():
        every = sorted(points[task_id])
        # 5 checkpoints thinned to every 3rd: the 1st, the 4th, and the last always.
        assert steps == [every[0], every[3], every[-1]]


def test_running_tasks_are_the_latest_started(loaded: Connection, sim: Simulator) -> None:
    running = [t for t in sim_tasks(sim) if t["runStatus"] == "Running"]
    latest = sorted(running, key=lambda t: (-when(t, "create").timestamp(), t["taskId"]))[:2]  # type: ignore[union-attr]
    tasks, total = queries.running_tasks(loaded, Selection(), limit=2)
    assert total == len(running) > 2
    assert [row["task_id"] for row in tasks] == [t["taskId"] for t in latest]
    curves = queries.training_curves(loaded, tasks)
    by_place = {place: [r for r in curves if r["place"] == place] for place in (0, 1)}
    for place, task in enumerate(latest):
        steps = [p["step"] for p in task["checkpointList"]]
        assert [r["step"] for r in by_place[place]] == steps
        assert [r["share"] for r in by_place[place]][-1:] == ([100.0] if steps else [])


def test_metric_means_by_model_and_scale(loaded: Connection, sim: Simulator) -> None:
    values: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for task in sim_tasks(sim):
        if task["runStatus"] == "Done":
            for name, raw in (task.get("metrics") or {}).items():
                values[(task["model"], task["parameterScale"], name)].append(float(raw[:-1]))
    rows = queries.metric_means(loaded, Selection())
    got = {(r["model"], r["scale"], r["metric"]): (r["mean"], r["tasks"]) for r in rows}
    assert got.keys() == values.keys()
    for key, sample in values.items():
        assert got[key][0] == pytest.approx(statistics.fmean(sample))
        assert got[key][1] == len(sample)


def test_best_tasks_by_bleu(loaded: Connection, sim: Simulator) -> None:
    scored = [
        (float(t["metrics"]["BLEU-4"][:-1]), t["taskId"])
        for t in sim_tasks(sim)
        if t["runStatus"] == "Done" and t.get("metrics")
    ]
    best = queries.best_tasks(loaded, Selection(), limit=5)
    assert [row["task_id"] for row in best] == [tid for _, tid in sorted(scored, reverse=True)[:5]]
    assert best[0]["bleu_4"] == max(scored)[0]


def test_tasks_per_hour_by_status(loaded: Connection, sim: Simulator) -> None:
    expected = Counter(
        (when(t, "create").strftime("%Y-%m-%d %H:00"), t["runStatus"])  # type: ignore[union-attr]
        for t in sim_tasks(sim)
    )
    result = queries.tasks_per_period(loaded, Selection())
    assert result["unit"] == "hour"  # 6 jobs an hour apart
    assert {(r["period"], r["status"]): r["tasks"] for r in result["rows"]} == expected
    assert result["undated"] == 0


def test_failures_by_code_and_latest(loaded: Connection, sim: Simulator) -> None:
    failed = [t for t in sim_tasks(sim) if t["runStatus"] == "Failed"]
    codes = Counter(str(t["errorCode"]) for t in failed)
    rows = queries.failures_by_code(loaded, Selection())
    assert {r["code"]: r["tasks"] for r in rows} == codes
    latest = queries.recent_failures(loaded, Selection(), limit=100)
    assert {r["task_id"] for r in latest} == {t["taskId"] for t in failed}
    assert all(r["error_message"] == f"training aborted (code {r['error_code']})" for r in latest)


def test_durations_by_scale(loaded: Connection, sim: Simulator) -> None:
    hours: dict[str, list[float]] = defaultdict(list)
    for t in sim_tasks(sim):
        if t["runStatus"] == "Done":
            seconds = (when(t, "finish") - when(t, "create")).total_seconds()  # type: ignore[operator]
            hours[t["parameterScale"]].append(seconds / 3600)
    rows = {r["scale"]: r for r in queries.durations_by_scale(loaded, Selection())}
    assert rows.keys() == hours.keys()
    for scale, sample in hours.items():
        q1, median, q3 = statistics.quantiles(sample, n=4, method="inclusive")
        got = rows[scale]
        assert got["tasks"] == len(sample)
        assert (got["min"], got["max"]) == pytest.approx((min(sample), max(sample)))
        assert (got["q1"], got["median"], got["q3"]) == pytest.approx((q1, median, q3))


def test_selection_by_job_and_time(loaded: Connection, sim: Simulator) -> None:
    jobs = [job["jobId"] for job in sim.jobs()[:2]]
    chosen = Selection(job_ids=tuple(jobs))
    expected = Counter(t["runStatus"] for t in sim_tasks(sim) if t["jobId"] in jobs)
    assert queries.task_counts(loaded, chosen) == dict(expected)
    assert queries.job_count(loaded, chosen) == 2
    assert {r["job_id"] for r in queries.best_tasks(loaded, chosen, 100)} <= set(jobs)
    cut = sorted(when(t, "create") for t in sim_tasks(sim))[40]  # type: ignore[type-var]
    since = Selection(since=cut)
    later = Counter(t["runStatus"] for t in sim_tasks(sim) if when(t, "create") >= cut)  # type: ignore[operator]
    assert queries.task_counts(loaded, since) == dict(later)
    assert sum(r["tasks"] for r in queries.tasks_per_period(loaded, since)["rows"]) == 38


# --- rows the simulator never serves ---


def test_weeks_start_on_monday_on_both_backends(engine: Engine) -> None:
    sunday, monday = (
        datetime(2026, 1, 4, 23, 30, tzinfo=UTC),
        datetime(2026, 1, 5, 0, 30, tzinfo=UTC),
    )
    with engine.begin() as connection:
        for number, created in enumerate(
            [sunday, monday, monday + timedelta(days=6), monday + timedelta(days=90)]
        ):
            insert_task(connection, f"t{number}", create_time=created, run_status="Done")
        insert_task(connection, "undated", run_status="Failed")
        result = queries.tasks_per_period(connection, Selection())
    assert result["unit"] == "week"
    assert result["rows"] == [
        {"period": "2025-12-29", "status": "Done", "tasks": 1},
        {"period": "2026-01-05", "status": "Done", "tasks": 2},
        {"period": "2026-03-30", "status": "Done", "tasks": 1},
    ]
    assert result["undated"] == 1


@pytest.mark.parametrize(
    ("span", "unit"),
    [(timedelta(hours=70), "hour"), (timedelta(days=10), "day"), (timedelta(days=61), "week")],
)
def test_period_unit(span: timedelta, unit: str) -> None:
    assert queries.period_unit(NOW, NOW + span) == unit
    assert queries.period_unit(None, None) == "week"


def test_nulls_read_as_unknown_and_are_left_out_of_figures(engine: Engine) -> None:
    with engine.begin() as connection:
        insert_task(connection, "bare")  # every optional column NULL
        insert_task(
            connection,
            "done",
            run_status="Done",
            create_time=NOW,
            finish_time=NOW + timedelta(hours=2),
        )
        connection.execute(
            finetune_task_metrics.insert().values(
                task_id="done", metric_name="BLEU-4", value_percent=None, value_raw="N/A"
            )
        )
        connection.execute(
            finetune_task_checkpoints.insert(),
            [{"task_id": "done", "step": 1, "training_loss": None, "perplexity": None}],
        )
        summarise(connection)
        selection = Selection()
        assert queries.task_counts(connection, selection) == {queries.UNKNOWN: 1, "Done": 1}
        assert queries.metric_means(connection, selection) == []
        assert queries.best_tasks(connection, selection) == []
        assert queries.failures_by_code(connection, selection) == []
        assert queries.durations_by_scale(connection, selection) == [
            {
                "scale": queries.UNKNOWN,
                "tasks": 1,
                "min": 2.0,
                "q1": 2.0,
                "median": 2.0,
                "q3": 2.0,
                "max": 2.0,
            }
        ]
        curve = queries.loss_curves(connection, selection)
        point = {"task": "job-1 · done", "step": 1, "loss": None, "perplexity": None}
        assert curve == [point | {"share": 100.0}]


def test_an_empty_database_gives_empty_rows(engine: Engine) -> None:
    with engine.connect() as connection:
        selection = Selection()
        assert queries.latest_runs(connection) == []
        assert queries.last_success(connection) is None
        assert queries.task_counts(connection, selection) == {}
        assert queries.loss_curves(connection, selection) == []
        assert queries.metric_means(connection, selection) == []
        assert queries.tasks_per_period(connection, selection) == {
            "unit": "week",
            "rows": [],
            "undated": 0,
        }
        assert queries.failures_by_code(connection, selection) == []
        assert queries.durations_by_scale(connection, selection) == []


def test_long_curves_are_thinned_to_the_limit(engine: Engine) -> None:
    with engine.begin() as connection:
        insert_task(connection, "long", run_status="Done", finish_time=NOW)
        connection.execute(
            finetune_task_checkpoints.insert(),
            [
                {
                    "task_id": "long",
                    "step": s,
                    "training_loss": 1 / s,
                    "perplexity": math.exp(1 / s),
                }
                for s in range(1, 1001)
            ],
        )
        summarise(connection)
        steps = [
            row["step"] for row in queries.loss_curves(connection, Selection(), max_points=100)
        ]
    assert steps == [*range(1, 1001, 10), 1000]


def test_category_charts_keep_the_largest_categories(engine: Engine) -> None:
    """More error codes, parameter scales, models or statuses than a chart keeps: the most
    frequent stay."""
    codes = [*range(queries.MAX_CATEGORIES + 5), 999, 999]
    with engine.begin() as connection:
        for n, code in enumerate(codes):
            times = {"create_time": NOW, "finish_time": NOW + timedelta(hours=1)}
            insert_task(connection, f"f{n}", run_status="Failed", error_code=code, **times)
            insert_task(connection, f"s{n}", run_status=f"status {code}", **times)
            done = {"parameter_scale": f"s{code}", "model": f"m{code}"}
            insert_task(connection, f"d{n}", run_status="Done", **done, **times)
            connection.execute(
                finetune_task_metrics.insert().values(
                    task_id=f"d{n}", metric_name="BLEU-4", value_percent=1.0
                )
            )
        summarise(connection)
        selection = Selection()
        failures = queries.failures_by_code(connection, selection)
        scales = queries.durations_by_scale(connection, selection)
        means = queries.metric_means(connection, selection)
        statuses = {
            row["status"] for row in queries.tasks_per_period(connection, selection)["rows"]
        }
    assert len(failures) == len(scales) == len(statuses) == queries.MAX_CATEGORIES
    assert failures[0] == {"code": "999", "tasks": 2}
    assert [s["tasks"] for s in scales if s["scale"] == "s999"] == [2]
    assert {"Done", "Failed", "status 999"} <= statuses
    assert len({row["model"] for row in means}) == queries.MAX_CATEGORIES
    assert [row["tasks"] for row in means if row["model"] == "m999"] == [2]
