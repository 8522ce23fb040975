"""The queries behind the charts of `qianfan-etl report`: plain rows on both backends."""

import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection

from etl.schema import (
    PIVOTED_METRICS,
    etl_runs,
    finetune_jobs,
    finetune_task_checkpoints,
    finetune_tasks,
)
from etl.transform import RUNNING

DONE = "Done"
FAILED = "Failed"
# Points kept per loss curve: enough for the shape, few enough that the page stays a few MB.
MAX_POINTS = 200
# The Training now panels are small: fewer points draw the same shape.
TRAINING_POINTS = 50
TRAINING_TASKS = 20
# Bars per category chart: more would grow the chart's height with the data.
MAX_CATEGORIES = 20
# Texts on the page, and the shorter labels repeated in chart data (every point of a curve).
TEXT_LIMIT = 300
LABEL_LIMIT = 60
BEST_TASKS = 10
RECENT_FAILURES = 10
METRICS = PIVOTED_METRICS
UNKNOWN = "(unknown)"

metrics_wide = sa.table(
    "finetune_task_metrics_wide",
    *(
        sa.column(name)
        for name in ("task_id", "job_id", "job_name", "model", "train_mode", "parameter_scale")
    ),
    sa.column("run_status"),
    sa.column("create_time", finetune_tasks.c.create_time.type),
    *(sa.column(name, sa.Float) for name in METRICS),
)


@dataclass(frozen=True)
class Selection:
    """Which tasks a report covers: some jobs, tasks created since a time, curves to draw."""

    job_ids: tuple[str, ...] = ()
    since: datetime | None = None
    tasks: int = 10


def _selected(columns: Any, selection: Selection) -> list[sa.ColumnElement[bool]]:
    """WHERE terms for a table or view with job_id and create_time columns."""
    terms: list[sa.ColumnElement[bool]] = []
    if selection.job_ids:
        terms.append(columns.job_id.in_(selection.job_ids))
    if selection.since is not None:
        terms.append(columns.create_time >= selection.since)
    return terms


def _live_tasks(selection: Selection) -> list[sa.ColumnElement[bool]]:
    return [finetune_tasks.c.deleted_at.is_(None), *_selected(finetune_tasks.c, selection)]


def clip(text: str, limit: int = TEXT_LIMIT) -> str:
    """At most `limit` characters of the text, then "…" and its full length."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text):,} characters)"


def _label(value: Any) -> str:
    """A category's name in a legend or axis, clipped; NULL and empty read as unknown."""
    return UNKNOWN if value is None or value == "" else clip(str(value), LABEL_LIMIT)


def latest_runs(connection: Connection, limit: int = 5) -> list[dict[str, Any]]:
    """The most recent sync runs, newest first."""
    query = sa.select(etl_runs).order_by(etl_runs.c.run_id.desc()).limit(limit)
    return [dict(row) for row in connection.execute(query).mappings()]


def last_success(connection: Connection) -> datetime | None:
    """When the latest succeeded run finished."""
    query = sa.select(sa.func.max(etl_runs.c.finished_at)).where(etl_runs.c.status == "succeeded")
    finished: datetime | None = connection.execute(query).scalar()
    return finished


def task_counts(connection: Connection, selection: Selection) -> dict[str, int]:
    """Live tasks of the selection by run status."""
    t = finetune_tasks.c
    query = (
        sa.select(t.run_status, sa.func.count())
        .where(*_live_tasks(selection))
        .group_by(t.run_status)
        .order_by(sa.func.count().desc(), t.run_status)
    )
    return {_label(status): count for status, count in connection.execute(query)}


def job_count(connection: Connection, selection: Selection) -> int:
    """Live jobs of the selection."""
    j = finetune_jobs.c
    query = sa.select(sa.func.count()).where(j.deleted_at.is_(None))
    if selection.job_ids:
        query = query.where(j.job_id.in_(selection.job_ids))
    count: int = connection.execute(query).scalar_one()
    return count


def curve_tasks(connection: Connection, selection: Selection) -> list[dict[str, Any]]:
    """The tasks whose curves are drawn: the latest finished ones with checkpoints (any status
    when jobs are named), at most `selection.tasks`."""
    t = finetune_tasks.c
    # the count the load keeps with the checkpoints: no probe of the checkpoint table per task
    query = sa.select(t.task_id, t.job_id, t.job_name, t.run_status).where(
        *_live_tasks(selection), t.checkpoint_count > 0
    )
    if not selection.job_ids:
        query = query.where(t.run_status == DONE)
    newest = sa.func.coalesce(t.finish_time, t.create_time)
    query = query.order_by(newest.desc().nulls_last(), t.task_id).limit(selection.tasks)
    return [dict(row) for row in connection.execute(query).mappings()]


def loss_curves(
    connection: Connection, selection: Selection, max_points: int = MAX_POINTS
) -> list[dict[str, Any]]:
    """Training loss and perplexity by step for `curve_tasks`, thinned (see `thinned_curves`)."""
    tasks = {row["task_id"]: row for row in curve_tasks(connection, selection)}
    return thinned_curves(connection, tasks, max_points)


def thinned_curves(
    connection: Connection, tasks: dict[str, dict[str, Any]], max_points: int
) -> list[dict[str, Any]]:
    """Each task's curve thinned in SQL to every k-th checkpoint (k = ceil(count / max_points))
    plus its last one; `share` is the step in percent of the task's last step."""
    if not tasks:
        return []
    cp = finetune_task_checkpoints.c
    numbered = (
        sa.select(
            cp.task_id,
            cp.step,
            cp.training_loss,
            cp.perplexity,
            sa.func.row_number().over(partition_by=cp.task_id, order_by=cp.step).label("n"),
            sa.func.count().over(partition_by=cp.task_id).label("total"),
            sa.func.max(cp.step).over(partition_by=cp.task_id).label("last"),
        )
        .where(cp.task_id.in_(tasks))
        .subquery()
    )
    stride = (numbered.c.total + (max_points - 1)) // max_points
    kept = sa.or_((numbered.c.n - 1) % stride == 0, numbered.c.n == numbered.c.total)
    names = ("task_id", "step", "training_loss", "perplexity", "last")
    query = (
        sa.select(*(numbered.c[name] for name in names))
        .where(kept)
        .order_by(numbered.c.task_id, numbered.c.step)
    )
    return [
        {"task": curve_label(tasks[task_id]), "step": step, "loss": loss, "perplexity": ppl}
        | {"share": round(100 * step / last, 2) if last > 0 else None}
        for task_id, step, loss, ppl, last in connection.execute(query)
    ]


def curve_label(task: dict[str, Any]) -> str:
    """A legend entry naming the job and the task (each clipped, so labels stay distinct)."""
    job = clip(task["job_name"] or task["job_id"], LABEL_LIMIT)
    return f"{job} · {clip(task['task_id'], LABEL_LIMIT)}"


def running_tasks(
    connection: Connection, selection: Selection, limit: int = TRAINING_TASKS
) -> tuple[list[dict[str, Any]], int]:
    """The most recently started live Running tasks, at most `limit`, and how many there are."""
    t = finetune_tasks.c
    where = [*_live_tasks(selection), t.run_status == RUNNING]
    total: int = connection.execute(sa.select(sa.func.count()).where(*where)).scalar_one()
    query = (
        sa.select(t.task_id, t.job_id, t.job_name, t.model, t.run_progress, t.create_time)
        .add_columns(t.vdl_link)
        .where(*where)
        .order_by(t.create_time.desc().nulls_last(), t.task_id)
        .limit(limit)
    )
    return [dict(row) for row in connection.execute(query).mappings()], total


def training_curves(connection: Connection, tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The loss so far of these tasks, thinned, each point with its task's place in `tasks`."""
    order = {task["task_id"]: place for place, task in enumerate(tasks)}
    rows = thinned_curves(connection, {task["task_id"]: task for task in tasks}, TRAINING_POINTS)
    labels = {curve_label(task): order[task["task_id"]] for task in tasks}
    return [row | {"place": labels[row["task"]]} for row in rows]


def metric_means(connection: Connection, selection: Selection) -> list[dict[str, Any]]:
    """Mean BLEU-4 and ROUGE-1/2/L (percent) of finished tasks by base model and scale."""
    w = metrics_wide.c
    means = [sa.func.avg(getattr(w, column)) for column in METRICS]
    counts = [sa.func.count(getattr(w, column)) for column in METRICS]
    query = (
        sa.select(w.model, w.parameter_scale, *means, *counts)
        .where(w.run_status == DONE, *_selected(w, selection))
        .group_by(w.model, w.parameter_scale)
        .order_by(w.model, w.parameter_scale)
    )
    rows = []
    for model, scale, *figures in connection.execute(query):
        for name, mean, count in zip(METRICS.values(), figures[:4], figures[4:], strict=True):
            if count:
                rows.append(
                    {"model": _label(model), "scale": _label(scale), "metric": name}
                    | {"mean": float(mean), "tasks": count}
                )
    return _largest(_largest(rows, "model"), "scale")


def _largest(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """The rows of the MAX_CATEGORIES values of `key` with the most tasks (ties by name)."""
    totals: Counter[str] = Counter()
    for row in rows:
        totals[row[key]] += row["tasks"]
    ranked = sorted(totals.items(), key=lambda item: (-item[1], item[0]))
    kept = {value for value, _ in ranked[:MAX_CATEGORIES]}
    return [row for row in rows if row[key] in kept]


def best_tasks(
    connection: Connection, selection: Selection, limit: int = BEST_TASKS
) -> list[dict[str, Any]]:
    """The finished tasks with the highest BLEU-4 (ROUGE-L breaks ties)."""
    w = metrics_wide.c
    query = (
        sa.select(w.task_id, w.job_id, w.job_name, w.model, w.train_mode, w.parameter_scale)
        .add_columns(*(getattr(w, column) for column in METRICS))
        .where(w.run_status == DONE, w.bleu_4.is_not(None), *_selected(w, selection))
        .order_by(w.bleu_4.desc(), w.rouge_l.desc().nulls_last(), w.task_id)
        .limit(limit)
    )
    return [dict(row) for row in connection.execute(query).mappings()]


def period_unit(first: datetime | None, last: datetime | None) -> str:
    """The bucket that gives a readable number of bars: week, or day/hour for short spans."""
    if first is None or last is None or last - first > timedelta(days=60):
        return "week"
    return "day" if last - first > timedelta(days=3) else "hour"


def _period(column: Any, unit: str, dialect: str) -> Any:
    """The start of the hour/day/week (Monday) a UTC timestamp falls in."""
    if dialect == "postgresql":
        return sa.func.date_trunc(unit, column)
    if unit == "week":
        return sa.func.date(column, "-6 days", "weekday 1")
    return sa.func.strftime("%Y-%m-%d %H:00" if unit == "hour" else "%Y-%m-%d", column)


def _period_text(value: Any, unit: str) -> str:
    """A bucket's axis label, the same on both backends."""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:00" if unit == "hour" else "%Y-%m-%d")
    return str(value)


def tasks_per_period(connection: Connection, selection: Selection) -> dict[str, Any]:
    """Live tasks by creation period and run status, with the bucket used and the undated."""
    t = finetune_tasks.c
    where = _live_tasks(selection)
    first, last, undated = connection.execute(
        sa.select(
            sa.func.min(t.create_time),
            sa.func.max(t.create_time),
            sa.func.count().filter(t.create_time.is_(None)),
        ).where(*where)
    ).one()
    unit = period_unit(first, last)
    period = _period(t.create_time, unit, connection.dialect.name).label("period")
    query = (
        sa.select(period, t.run_status, sa.func.count())
        .where(*where, t.create_time.is_not(None))
        .group_by(period, t.run_status)
        .order_by(period, t.run_status)
    )
    rows = [
        {"period": _period_text(start, unit), "status": _label(status), "tasks": count}
        for start, status, count in connection.execute(query)
    ]
    return {"unit": unit, "rows": _largest(rows, "status"), "undated": undated or 0}


def failures_by_code(connection: Connection, selection: Selection) -> list[dict[str, Any]]:
    """Failed tasks by error code, most frequent first."""
    t = finetune_tasks.c
    query = (
        sa.select(t.error_code, sa.func.count().label("tasks"))
        .where(*_live_tasks(selection), t.run_status == FAILED)
        .group_by(t.error_code)
        .order_by(sa.func.count().desc(), t.error_code)
        .limit(MAX_CATEGORIES)
    )
    return [{"code": _label(code), "tasks": count} for code, count in connection.execute(query)]


def recent_failures(
    connection: Connection, selection: Selection, limit: int = RECENT_FAILURES
) -> list[dict[str, Any]]:
    """The latest failed tasks with their error code and message."""
    t = finetune_tasks.c
    newest = sa.func.coalesce(t.finish_time, t.create_time)
    query = (
        sa.select(t.task_id, t.job_id, t.job_name, t.error_code, t.error_message)
        .add_columns(newest.label("when"))
        .where(*_live_tasks(selection), t.run_status == FAILED)
        .order_by(newest.desc().nulls_last(), t.task_id)
        .limit(limit)
    )
    return [dict(row) for row in connection.execute(query).mappings()]


def durations_by_scale(connection: Connection, selection: Selection) -> list[dict[str, Any]]:
    """Hours from creation to finish of finished tasks, as box statistics per parameter scale."""
    t = finetune_tasks.c
    query = sa.select(t.parameter_scale, t.create_time, t.finish_time).where(
        *_live_tasks(selection),
        t.run_status == DONE,
        t.create_time.is_not(None),
        t.finish_time.is_not(None),
    )
    hours: dict[str, list[float]] = defaultdict(list)
    for scale, created, finished in connection.execute(query):
        hours[_label(scale)].append((finished - created).total_seconds() / 3600)
    largest = sorted(hours.items(), key=lambda item: -len(item[1]))[:MAX_CATEGORIES]
    return [box_stats(scale, values) for scale, values in sorted(largest)]


def box_stats(name: str, values: list[float]) -> dict[str, Any]:
    """Minimum, quartiles and maximum of a non-empty sample."""
    ordered = sorted(values)
    q1, median, q3 = (
        statistics.quantiles(ordered, n=4, method="inclusive") if len(ordered) > 1 else ordered * 3
    )
    return {
        "scale": name,
        "tasks": len(ordered),
        "min": ordered[0],
        "q1": q1,
        "median": median,
        "q3": q3,
        "max": ordered[-1],
    }
