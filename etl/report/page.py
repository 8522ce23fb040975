"""`qianfan-etl report`: one self-contained HTML page of Vega-Lite charts over the loaded data.

The page carries its data as JSON inside <script type="application/json"> elements and the Vega
JavaScript inline; a Content-Security-Policy allows only the page's own scripts, by hash, and no
request to anywhere, so a page that tried to fetch something would fail loudly.
"""

import base64
import errno
import hashlib
import html
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson
from sqlalchemy import Connection, Engine

from etl import db
from etl.errors import ConfigError, DiskFullError, EtlError
from etl.files import replace_file
from etl.report import queries
from etl.report.queries import Selection

if TYPE_CHECKING:
    import altair as alt

INSTALL_HINT = "pip install 'qianfan-etl[report]'"
DEFAULT_OUTPUT = "qianfan-report.html"
STATUS_COLOURS = {
    "Done": "#2e7d32",
    "Running": "#1565c0",
    "Waiting": "#9e9e9e",
    "Stopped": "#ef6c00",
    "Failed": "#c62828",
}
LEGEND_LIMIT = 360
# A VisualDL link longer than this is shown as text: no real one comes close, and an href is
# not clipped, so it would grow the page.
LINK_LIMIT = 2048
# Characters a well-formed URL always percent-encodes: a "link" with one is upstream junk.
NOT_IN_URLS = re.compile(r"[\s\x00-\x1f\x7f<>\"'`\\]")
ETA_RULE = "elapsed × (100 − progress) ÷ progress"  # noqa: RUF001 - the page's arithmetic


class MissingExtraError(ConfigError):
    """The report's charting libraries are not installed."""


def require_extra() -> None:
    """Fail with what to install when the optional `report` extra is missing."""
    try:
        import altair  # noqa: F401
        import vl_convert  # noqa: F401
    except ImportError as exc:
        raise MissingExtraError(
            f"`qianfan-etl report` needs the optional charting libraries ({exc.name} is "
            f"missing): {INSTALL_HINT}"
        ) from None


class Html(str):
    """Markup built here from escaped parts: table cells pass it through as is."""


@dataclass
class Section:
    """A heading, a sentence on what it shows, then a chart of its rows (or why there is none)
    and tables. The chart's Vega-Lite data is named after the section's key."""

    key: str
    title: str
    about: str
    empty: str
    rows: list[dict[str, Any]]
    build: Callable[[], dict[str, Any]]
    tables: list[str] = field(default_factory=list)
    tables_first: bool = False
    # Curves repeat their task's label on every point: sent once each, as a lookup (`labelled`).
    labelled: bool = False

    @property
    def chart(self) -> dict[str, Any] | None:
        """The chart's spec with its rows, or None when there are none to draw."""
        if not self.rows:
            return None
        if not self.labelled:
            return {**self.build(), "datasets": {self.key: self.rows}}
        rows, labels = numbered_labels(self.rows)
        return {**self.build(), "datasets": {self.key: rows, f"{self.key}-labels": labels}}


def numbered_labels(
    rows: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The rows with each `task` label replaced by its number `n`, and the labels once each."""
    numbers: dict[str, int] = {}
    compact = [
        {key: value for key, value in row.items() if key != "task"}
        | {"n": numbers.setdefault(row["task"], len(numbers))}
        for row in rows
    ]
    return compact, [{"n": number, "task": label} for label, number in numbers.items()]


def with_labels(chart: "alt.Chart", key: str) -> "alt.Chart":
    """The chart with each row's `task` label looked up by its number (see numbered_labels)."""
    import altair as alt

    labels = alt.LookupData(alt.NamedData(f"{key}-labels"), key="n", fields=["task"])
    result: alt.Chart = chart.transform_lookup(lookup="n", from_=labels)
    return result


def write_report(
    engine: Engine, output: Path, selection: Selection, now: datetime | None = None
) -> int:
    """Query, render and write the page atomically; returns its size in bytes. `now` (default:
    the clock) is the generation time that ages and ETAs count to."""
    require_extra()
    now = now or datetime.now(UTC)
    with engine.connect() as connection:
        header = header_html(connection, selection, _source(engine), now)
        sections = build_sections(connection, selection, now)
    page = render_page(header, sections).encode()
    _write_atomically(output, page)
    return len(page)


def _source(engine: Engine) -> str:
    """The backend and database name, without host or user: the page may travel by mail."""
    source = f"{engine.url.get_backend_name()} {engine.url.database or ''}".strip()
    schema = db.schema_of(engine)
    return f"{source}, schema {schema}" if schema else source


def _write_atomically(output: Path, data: bytes) -> None:
    """Replace the file whole, so a page published from cron is never half-written."""
    try:
        replace_file(output, data)
    except OSError as exc:
        raise _write_error(output, exc) from None


def _write_error(output: Path, exc: OSError) -> EtlError:
    """What a failed write of the page tells the user: a full disk is 74, the rest 78."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        where = output.absolute().parent
        return DiskFullError(
            f"the report's disk is full: free space on the filesystem of {where} "
            f"({exc.strerror}), or choose another --output; {output.name} was left as it was"
        )
    return ConfigError(
        f"cannot write the report into {output.parent}: {exc.strerror}; choose another --output"
    )


def build_sections(connection: Connection, selection: Selection, now: datetime) -> list[Section]:
    """Every section of the page, each from its queries in etl.report.queries."""
    return [
        training_section(connection, selection, now),
        loss_section(connection, selection),
        metrics_section(connection, selection),
        outcomes_section(connection, selection),
        failures_section(connection, selection),
        durations_section(connection, selection),
    ]


# --- header ---


def header_html(connection: Connection, selection: Selection, source: str, now: datetime) -> str:
    """Freshness (latest run, its status, when) and counts, as escaped HTML."""
    runs = queries.latest_runs(connection)
    success = queries.last_success(connection)
    counts = queries.task_counts(connection, selection)
    latest = (
        f"run {runs[0]['run_id']} <b class='status-{_css(runs[0]['status'])}'>"
        f"{_e(runs[0]['status'])}</b>, started {_when(runs[0]['started_at'], now)}"
        if runs
        else "no sync has run on this database yet: run <code>qianfan-etl sync</code>"
    )
    facts = [
        ("latest sync", latest),
        ("last successful sync finished", _when(success, now) if success else "never"),
        ("jobs", _e(queries.job_count(connection, selection))),
        ("tasks", _e(sum(counts.values())) + _by_status(counts)),
        ("covers", _e(_describe(selection))),
        ("database", _e(source)),
    ]
    items = "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in facts)
    generated = now.strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"<header><h1>Qianfan fine-tuning report</h1><p class='generated'>generated {generated}"
        f"</p><dl>{items}</dl>{runs_table(runs)}</header>"
    )


def _by_status(counts: dict[str, int]) -> str:
    parts = [f"{_e(status)} {count}" for status, count in counts.items()]
    return f" ({', '.join(parts)})" if parts else ""


def _describe(selection: Selection) -> str:
    parts = [f"jobs {', '.join(selection.job_ids)}" if selection.job_ids else "all jobs"]
    if selection.since:
        parts.append(f"tasks created since {selection.since:%Y-%m-%d %H:%M} UTC")
    return "; ".join(parts)


def runs_table(runs: list[dict[str, Any]]) -> str:
    """The latest sync runs."""
    columns = ["run_id", "status", "mode", "started_at", "finished_at", "tasks_seen"]
    columns += ["tasks_changed", "rejects", "error"]
    rows = [[r.get(column) for column in columns] for r in runs]
    headers = ["run", "status", "mode", "started", "finished", "tasks", "changed", "rejects"]
    return table([*headers, "error"], rows, "Latest sync runs") if rows else ""


def _when(moment: datetime | None, now: datetime) -> str:
    """A UTC time and how long before `now` it was."""
    if moment is None:
        return "-"
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return f"{_e(_text(aware))} ({_ago(now - aware)})"


def _ago(delta: Any) -> str:
    minutes = int(delta.total_seconds() // 60)
    if minutes < 120:
        return f"{minutes} min ago"
    return f"{minutes // 60} h ago" if minutes < 48 * 60 else f"{minutes // 1440} days ago"


# --- sections ---


def training_section(connection: Connection, selection: Selection, now: datetime) -> Section:
    """The Running tasks: progress, elapsed, ETA and VisualDL link, and their loss so far."""
    tasks, total = queries.running_tasks(connection, selection)
    empty = (
        "None of them has a checkpoint yet: curves appear once a sync has loaded one."
        if tasks
        else "Nothing is training: no task is Running as of the latest sync."
    )
    return Section(
        "training",
        "Training now",
        f"Running tasks, the {queries.TRAINING_TASKS} most recently started first. Progress is "
        "what the latest sync read from the task's detail call; elapsed runs from the task's "
        f"creation to this page's generation time; ETA = {ETA_RULE}, the time left if the pace "
        "so far holds. Below, each task's training loss so far, on its own step axis (a task "
        "with no checkpoint yet has no panel).",
        empty=empty,
        rows=queries.training_curves(connection, tasks),
        build=training_chart,
        labelled=True,
        tables=[training_table(tasks, total, now)] if tasks else [],
        tables_first=True,
    )


def training_table(tasks: list[dict[str, Any]], total: int, now: datetime) -> str:
    """One row per Running task, and how many more there are."""
    headers = ["job", "task", "model", "progress", "started", "elapsed", "ETA", "VisualDL"]
    rows = [
        [
            r["job_name"] or r["job_id"],
            r["task_id"],
            r["model"],
            _percent(r["run_progress"]),
            r["create_time"],
            _elapsed(r["create_time"], now),
            eta(r["run_progress"], r["create_time"], now),
            vdl_link(r["vdl_link"]),
        ]
        for r in tasks
    ]
    caption = f"{len(rows)} of {total} running tasks"
    more = f"<p class='more'>and {total - len(rows)} more running</p>" if total > len(rows) else ""
    return table(headers, rows, caption) + more


def training_chart() -> dict[str, Any]:
    """Small multiples of training loss by step, one panel per task, each with its own axes:
    a 200-step and a 2,000-step task are both readable."""
    import altair as alt

    return spec(
        with_labels(alt.Chart(alt.NamedData("training"), width=200, height=110), "training")
        .mark_line(point=alt.OverlayMarkDef(size=10), color=STATUS_COLOURS["Running"])
        .encode(
            x=alt.X("step:Q", title="step"),
            y=alt.Y("loss:Q", title="training loss", scale=alt.Scale(zero=False)),
            tooltip=["task:N", "step:Q", "loss:Q"],
        )
        .facet(
            facet=alt.Facet(
                "task:N",
                title=None,
                sort=alt.EncodingSortField("place", op="min"),
                header=alt.Header(labelLimit=240),
            ),
            columns=4,
        )
        .resolve_scale(x="independent", y="independent")
    )


def _age(started: datetime | None, now: datetime) -> timedelta | None:
    """How long before `now` the task was created, if known."""
    if started is None:
        return None
    return now - (started if started.tzinfo else started.replace(tzinfo=UTC))


def _elapsed(started: datetime | None, now: datetime) -> str:
    elapsed = _age(started, now)
    return "-" if elapsed is None or elapsed < timedelta(0) else _span(elapsed)


def eta(progress: float | None, started: datetime | None, now: datetime) -> str:
    """The time left at the pace so far (ETA_RULE), or why there is no estimate."""
    elapsed = _age(started, now)
    if elapsed is None:
        return "- (no start time)"
    if elapsed < timedelta(0):
        return "- (starts after this page was made)"
    if progress is None or not math.isfinite(progress):
        return "- (no progress yet)"
    if progress <= 0:
        return "- (progress 0 %)"
    if progress >= 100:
        return "- (at 100 %: finishing)"
    return _span(elapsed * (100 - progress) / progress)


def _span(delta: timedelta) -> str:
    """A duration in minutes, hours and minutes, or days and hours."""
    minutes = int(delta.total_seconds() // 60)
    if minutes < 1:
        return "under 1 min"
    if minutes < 60:
        return f"{minutes} min"
    if minutes < 48 * 60:
        return f"{minutes // 60} h {minutes % 60} min"
    return f"{minutes // 1440:,} days {minutes % 1440 // 60} h"


def _percent(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{round(value, 1):g} %"


def vdl_link(url: str | None) -> str:
    """A link to VisualDL when the text is a plain http(s) URL; any other text stays text."""
    if not url:
        return "-"
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if (
        parts.scheme.lower() not in ("http", "https")
        or not parts.netloc
        or len(url) > LINK_LIMIT
        or NOT_IN_URLS.search(url)
    ):
        return url
    return Html(
        f"<a href='{html.escape(url)}' rel='noopener noreferrer' target='_blank'>VisualDL</a>"
    )


def loss_section(connection: Connection, selection: Selection) -> Section:
    """Training loss and perplexity by step, one line per task."""
    which = (
        "latest tasks with checkpoints, in any status, of the jobs named"
        if selection.job_ids
        else "most recently finished tasks"
    )
    return Section(
        "loss",
        "Loss curves",
        f"Training loss and perplexity of the {selection.tasks} {which}, by how far through its "
        "steps each task was (step ÷ its last step), so a 200-step and a 2,000-step task both "
        "span the axis; hover for the step. Long curves are thinned to about "
        f"{queries.MAX_POINTS} points, the last step always kept.",
        empty=f"None of the {which} has checkpoints: curves appear once a sync has loaded a task "
        "with a checkpointList.",
        rows=queries.loss_curves(connection, selection),
        build=loss_chart,
        labelled=True,
    )


def loss_chart() -> dict[str, Any]:
    """Two line charts sharing one legend of job · task."""
    import altair as alt

    legend = alt.Legend(title="job · task", orient="bottom", columns=2, labelLimit=LEGEND_LIMIT)
    colour = alt.Color("task:N", legend=legend)

    def line(field_name: str, title: str) -> alt.Chart:
        chart: alt.Chart = (
            with_labels(alt.Chart(alt.NamedData("loss"), width=460, height=280), "loss")
            .mark_line(point=alt.OverlayMarkDef(size=12))
            .encode(
                x=alt.X("share:Q", title="% of the task's steps", scale=alt.Scale(domain=[0, 100])),
                y=alt.Y(f"{field_name}:Q", title=title, scale=alt.Scale(zero=False)),
                color=colour,
                tooltip=["task:N", "step:Q", f"{field_name}:Q"],
            )
        )
        return chart

    return spec(alt.hconcat(line("loss", "training loss"), line("perplexity", "perplexity")))


def metrics_section(connection: Connection, selection: Selection) -> Section:
    """Mean BLEU-4 and ROUGE by base model and parameter scale, and the best tasks."""
    rows = queries.metric_means(connection, selection)
    best = queries.best_tasks(connection, selection) if rows else []
    return Section(
        "metrics",
        "Evaluation metrics",
        "Mean BLEU-4 and ROUGE-1/2/L (percent) of finished tasks, by base model (x) and "
        "parameter scale (colour); hover for the number of tasks behind each bar.",
        empty="No finished task has metrics yet: Qianfan reports BLEU/ROUGE for finished text "
        "tasks (SFT, DPO, KTO), not for PostPretrain.",
        rows=rows,
        build=metrics_chart,
        tables=[best_table(best)] if best else [],
    )


def metrics_chart() -> dict[str, Any]:
    """Grouped bars, one panel per metric."""
    import altair as alt

    return spec(
        alt.Chart(alt.NamedData("metrics"), width=220, height=220)
        .mark_bar()
        .encode(
            x=alt.X("model:N", title="base model", axis=alt.Axis(labelAngle=-40, labelLimit=140)),
            xOffset="scale:N",
            y=alt.Y("mean:Q", title="mean (%)"),
            color=alt.Color("scale:N", title="parameter scale", legend=alt.Legend(orient="top")),
            tooltip=[
                "metric:N",
                "model:N",
                "scale:N",
                alt.Tooltip("mean:Q", format=".2f"),
                "tasks:Q",
            ],
        )
        .facet(column=alt.Column("metric:N", title=None))
    )


def best_table(best: list[dict[str, Any]]) -> str:
    """The best finished tasks by BLEU-4."""
    headers = ["job", "task", "model", "train mode", "scale", *queries.METRICS.values()]
    rows = [
        [
            r["job_name"] or r["job_id"],
            r["task_id"],
            r["model"],
            r["train_mode"],
            r["parameter_scale"],
            *(_number(r[column]) for column in queries.METRICS),
        ]
        for r in best
    ]
    return table(headers, rows, f"Best {len(rows)} tasks by BLEU-4 (ties by ROUGE-L)")


def outcomes_section(connection: Connection, selection: Selection) -> Section:
    """Tasks per period by run status."""
    result = queries.tasks_per_period(connection, selection)
    undated = result["undated"]
    about = (
        f"Tasks by the {result['unit']} they were created in (UTC), coloured by run status. "
        "Weeks start on Monday; short spans are shown by day or hour."
    )
    if undated:
        about += f" {undated} tasks have no creation time and are left out."
    return Section(
        "outcomes",
        "Outcomes over time",
        about,
        empty="No tasks with a creation time yet: run `qianfan-etl sync` first.",
        rows=result["rows"],
        build=partial(outcomes_chart, result["unit"]),
    )


def outcomes_chart(unit: str) -> dict[str, Any]:
    """Stacked bars of tasks per period."""
    import altair as alt

    return spec(
        alt.Chart(alt.NamedData("outcomes"), width=960, height=260)
        .mark_bar()
        .encode(
            x=alt.X("period:O", title=f"{unit} (UTC)", axis=alt.Axis(labelAngle=-40)),
            y=alt.Y("sum(tasks):Q", title="tasks", axis=count_axis()),
            color=status_colour(),
            tooltip=["period:O", "status:N", "tasks:Q"],
        )
    )


def status_colour() -> "alt.Color":
    """Run statuses in fixed colours; any other status gets the scheme's next one."""
    import altair as alt

    scale = alt.Scale(domain=list(STATUS_COLOURS), range=list(STATUS_COLOURS.values()))
    return alt.Color("status:N", title="run status", scale=scale)


def failures_section(connection: Connection, selection: Selection) -> Section:
    """Failed tasks by error code, and the latest failures."""
    rows = queries.failures_by_code(connection, selection)
    latest = queries.recent_failures(connection, selection) if rows else []
    return Section(
        "failures",
        "Failures",
        f"Failed tasks by Qianfan error code (the {queries.MAX_CATEGORIES} most frequent), and the "
        "latest failures with their messages.",
        empty="No failed tasks.",
        rows=rows,
        build=failures_chart,
        tables=[failures_table(latest)] if latest else [],
    )


def failures_chart() -> dict[str, Any]:
    """Horizontal bars of failed tasks per error code."""
    import altair as alt

    return spec(
        alt.Chart(alt.NamedData("failures"), width=600)
        .mark_bar(color=STATUS_COLOURS["Failed"])
        .encode(
            y=alt.Y("code:N", title="error code", sort="-x", axis=alt.Axis(labelLimit=200)),
            x=alt.X("tasks:Q", title="failed tasks", axis=count_axis()),
            tooltip=["code:N", "tasks:Q"],
        )
    )


def failures_table(failures: list[dict[str, Any]]) -> str:
    """The latest failed tasks."""
    rows = [
        [r["when"], r["job_name"] or r["job_id"], r["task_id"], r["error_code"], r["error_message"]]
        for r in failures
    ]
    headers = ["finished", "job", "task", "code", "message"]
    return table(headers, rows, f"Latest {len(rows)} failures")


def durations_section(connection: Connection, selection: Selection) -> Section:
    """Hours from creation to finish of finished tasks, per parameter scale."""
    return Section(
        "durations",
        "Durations by parameter scale",
        "Hours from creation to finish of finished tasks: the box spans the middle half, the "
        "white tick is the median, the line runs from the shortest to the longest.",
        empty="No finished task has both a creation and a finish time yet.",
        rows=queries.durations_by_scale(connection, selection),
        build=durations_chart,
    )


def durations_chart() -> dict[str, Any]:
    """A box plot drawn from precomputed quartiles."""
    import altair as alt

    base = alt.Chart(alt.NamedData("durations"), width=600).encode(
        y=alt.Y("scale:N", title="parameter scale", axis=alt.Axis(labelLimit=200)),
        tooltip=["scale:N", "tasks:Q"]
        + [alt.Tooltip(f"{name}:Q", format=".1f") for name in ("min", "q1", "median", "q3")]
        + [alt.Tooltip("max:Q", format=".1f")],
    )
    whisker = base.mark_rule().encode(x=alt.X("min:Q", title="hours"), x2="max:Q")
    box = base.mark_bar(size=18, color="#5c6bc0").encode(x="q1:Q", x2="q3:Q")
    median = base.mark_tick(color="white", size=18, thickness=2).encode(x="median:Q")
    return spec(alt.layer(whisker, box, median))


def count_axis() -> "alt.Axis":
    """A count's axis: whole-number ticks only."""
    import altair as alt

    return alt.Axis(tickMinStep=1, format="d")


def spec(chart: "alt.TopLevelMixin") -> dict[str, Any]:
    """The chart's Vega-Lite spec, validated by Altair while it holds no rows (cheap)."""
    result: dict[str, Any] = chart.to_dict()
    return result


# --- HTML ---


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], caption: str) -> str:
    """An HTML table, every cell escaped."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return (
        f"<table><caption>{_e(caption)}</caption><thead><tr>{head}</tr></thead>"
        f"<tbody>{body}</tbody></table>"
    )


def _e(value: Any) -> str:
    """Data as HTML text: clipped, escaped, NULL as a dash, times in UTC; Html as it is."""
    if isinstance(value, Html):
        return value
    return html.escape(queries.clip(_text(value)))


def _prose(text: str) -> str:
    """One of our own sentences as HTML: escaped, `command` spans as <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M UTC")
    return str(value)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _css(value: Any) -> str:
    """A class-name-safe token."""
    return "".join(ch for ch in str(value) if ch.isalnum()) or "unknown"


def script_json(value: Any) -> str:
    """JSON that cannot end its <script> element or open a comment: <, > and & as escapes.
    Non-finite numbers become null (JSON has no NaN)."""
    text = orjson.dumps(value).decode()
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, escape)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def section_html(section: Section) -> tuple[str, str | None]:
    """A section's HTML and the JSON of its chart, if it has one."""
    tables = "".join(section.tables)
    body = f"<h2>{_e(section.title)}</h2><p class='about'>{_prose(section.about)}</p>"
    body += tables if section.tables_first else ""
    chart = section.chart
    if chart is None:
        body += f"<p class='empty'>{_prose(section.empty)}</p>"
        spec = None
    else:
        body += f"<div class='chart' id='chart-{section.key}' data-marks='pending'></div>"
        spec = script_json(chart)
    body += "" if section.tables_first else tables
    return f"<section id='{section.key}'>{body}</section>", spec


def render_page(header: str, sections: list[Section]) -> str:
    """The whole document: header, sections, chart data, the Vega bundle and the renderer."""
    parts, specs = [], []
    for section in sections:
        part, spec = section_html(section)
        parts.append(part)
        if spec is not None:
            specs.append(
                f"<script type='application/json' data-chart='chart-{section.key}'>{spec}</script>"
            )
    scripts = [vega_bundle(), RENDER_SCRIPT]
    return PAGE.format(
        csp=content_security_policy(scripts),
        style=STYLE,
        body=header + "".join(parts),
        specs="".join(specs),
        scripts="".join(f"<script>{script}</script>" for script in scripts),
    )


def vega_bundle() -> str:
    """Vega, Vega-Lite (the version Altair writes) and vega-embed as one script."""
    import altair as alt
    import vl_convert

    version = "_".join(alt.SCHEMA_VERSION.lstrip("v").split(".")[:2])
    bundle: str = vl_convert.javascript_bundle("window.vegaEmbed = vegaEmbed;", version)
    if "</script" in bundle.lower():
        raise RuntimeError("the Vega bundle contains </script> and cannot be inlined")
    return bundle


def content_security_policy(scripts: list[str]) -> str:
    """Only these inline scripts run (Vega compiles its expressions, hence unsafe-eval); no
    image, font, frame or connection may load from anywhere."""
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'"
        for s in scripts
    )
    return (
        f"default-src 'none'; script-src {hashes} 'unsafe-eval'; style-src 'unsafe-inline'; "
        "img-src data:; base-uri 'none'; form-action 'none'"
    )


RENDER_SCRIPT = """
(async () => {
  const options = {renderer: "svg", actions: false};
  const specs = [...document.querySelectorAll("script[data-chart]")];
  const results = await Promise.allSettled(specs.map((element) => {
    const target = document.getElementById(element.dataset.chart);
    return vegaEmbed(target, JSON.parse(element.textContent), options).then(() => {
      target.dataset.marks = "drawn";
    });
  }));
  results.forEach((result, index) => {
    if (result.status === "rejected") {
      const target = document.getElementById(specs[index].dataset.chart);
      target.dataset.marks = "failed";
      target.textContent = "This chart could not be drawn: " + result.reason;
      console.error(result.reason);
    }
  });
  document.body.dataset.rendered = String(results.length);
})();
"""

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1180px;
       color: #212121; padding: 0 16px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 18px; margin: 32px 0 4px; }
.generated, .about { color: #616161; margin: 0 0 12px; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 8px 0 16px; }
dt { color: #616161; } dd { margin: 0; }
.empty { padding: 24px; background: #f5f5f5; border-radius: 6px; color: #424242; }
.status-succeeded { color: #2e7d32; } .status-failed, .status-abandoned { color: #c62828; }
.status-partial, .status-running { color: #ef6c00; }
table { border-collapse: collapse; margin: 12px 0; font-size: 13px; }
caption { text-align: left; font-weight: 600; padding: 4px 0; }
th, td { border-bottom: 1px solid #e0e0e0; padding: 3px 10px 3px 0; text-align: left;
         vertical-align: top; max-width: 420px; overflow-wrap: anywhere; }
section { border-top: 1px solid #e0e0e0; }
.more { color: #616161; margin: 0 0 12px; }
"""

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Qianfan fine-tuning report</title>
<style>{style}</style>
</head>
<body>
{body}
{specs}
{scripts}
</body>
</html>
"""
