"""`qianfan-etl report`: the command, the page's escaping, and the page itself opened in headless
Chromium with the network blocked (every chart drew its marks, no JavaScript error, no request
but the file itself, a screenshot that is not blank)."""

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from PIL import Image
from sqlalchemy import Engine
from sqlalchemy.engine import URL

from etl.cli import cli
from etl.report import page, queries
from etl.report.queries import Selection
from etl.schema import finetune_task_checkpoints, finetune_task_metrics
from etl.simulator import Simulator, SimulatorServer
from tests.chart_rows import NOW, insert_task, load, sim_tasks, summarise, when
from tests.chromium import Page, browser, find_chromium
from tests.harness import run_cli

SECTIONS = ("training", "loss", "metrics", "outcomes", "failures", "durations")
HOSTILE = "</script><script>window.pwned = 1</script><img src=x onerror='window.pwned = 2'>"
MARKS = "svg g.role-mark > *"


@pytest.fixture(scope="module")
def chromium() -> Iterator[Page]:
    """One headless Chromium for the module; skipped without it unless under CI."""
    binary = find_chromium()
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is required in CI (.ci/run installs it)")
        pytest.skip("chromium not installed (apt-get install chromium)")
    with browser(binary) as tab:
        yield tab


def report(url: URL, output: Path, *args: str) -> Any:
    """The command, in-process."""
    argv = ["report", "--database-url", url.render_as_string(hide_password=False)]
    return CliRunner().invoke(cli, [*argv, "--output", str(output), *args])


def rendered(tab: Page, path: Path) -> dict[str, Any]:
    """Open the page, wait for every chart, and read what a person would see."""
    tab.events.clear()
    tab.open(path.resolve().as_uri())
    tab.wait_for("document.body.dataset.rendered")
    state = tab.evaluate(
        f"""({{
        charts: Object.fromEntries([...document.querySelectorAll('.chart')].map((c) => [
            c.id, {{state: c.dataset.marks, marks: c.querySelectorAll('{MARKS}').length}}])),
        empties: [...document.querySelectorAll('.empty')].map((p) => p.textContent),
        images: document.querySelectorAll('img, iframe, object, embed').length,
        pwned: window.pwned === undefined ? null : window.pwned,
        text: document.body.innerText,
        cells: [...document.querySelectorAll('td')].map((td) => td.textContent),
        legend: [...document.querySelectorAll('#chart-loss .role-legend-label text')]
            .map((t) => t.textContent),
        height: document.documentElement.scrollHeight,
        code: [...document.querySelectorAll('code')].map((c) => c.textContent),
    }})"""
    )
    state["errors"], state["requests"] = tab.errors(), tab.requests()
    state["screenshot"] = tab.screenshot()
    return dict(state)


def assert_not_blank(png: bytes) -> None:
    """Many colours and a fair share of non-white pixels."""
    image = Image.open(io.BytesIO(png)).convert("RGB").reduce(4)
    colours = image.getcolors(maxcolors=1 << 20) or []
    assert len(colours) > 50
    white = sum(count for count, rgb in colours if rgb == (255, 255, 255))
    assert white < 0.95 * image.width * image.height


def assert_clean(state: dict[str, Any], path: Path) -> None:
    assert state["errors"] == []
    assert state["requests"] == [path.resolve().as_uri()]
    assert state["pwned"] is None and state["images"] == 0
    assert_not_blank(state["screenshot"])


def test_a_synced_account_draws_every_chart_offline(
    chromium: Page,
    engine: Engine,
    db_url: URL,
    sim: Simulator,
    server: SimulatorServer,
    tmp_path: Path,
) -> None:
    load(engine, sim, server)
    output = tmp_path / "report.html"
    result = report(db_url, output, "--tasks", "4")
    assert result.exit_code == 0, result.output
    assert str(output.resolve()) in result.output
    state = rendered(chromium, output)
    assert set(state["charts"]) == {f"chart-{key}" for key in SECTIONS}
    for chart, drawn in state["charts"].items():
        assert drawn["state"] == "drawn" and drawn["marks"] > 0, chart
    assert state["empties"] == []
    assert_clean(state, output)
    done = [t for t in sim_tasks(sim) if t["runStatus"] == "Done"]
    latest = sorted(done, key=lambda t: when(t, "finish"), reverse=True)[:4]  # type: ignore[arg-type, return-value]
    assert set(state["legend"]) == {f"{t['jobName']} · {t['taskId']}" for t in latest}


def test_an_empty_database_explains_each_section(
    chromium: Page, engine: Engine, db_url: URL, tmp_path: Path
) -> None:
    output = tmp_path / "empty.html"
    assert report(db_url, output).exit_code == 0
    state = rendered(chromium, output)
    assert state["charts"] == {}
    assert len(state["empties"]) == len(SECTIONS)
    assert "no sync has run on this database yet" in state["text"]
    assert_clean(state, output)


def hostile_rows(engine: Engine) -> None:
    """Markup in every text column the page shows, NULLs, and a NaN loss where it can be."""
    nan = float("nan") if engine.dialect.name == "postgresql" else None
    with engine.begin() as connection:
        for number, status in enumerate(["Done", "Failed", "Done", "Running"]):
            insert_task(
                connection,
                f"{HOSTILE}{number}",
                job_id=HOSTILE,
                job_name=HOSTILE,
                model=HOSTILE if number else None,
                train_mode=HOSTILE,
                parameter_scale=HOSTILE if number < 2 else None,
                run_status=status,
                create_time=NOW + timedelta(hours=number),
                finish_time=NOW + timedelta(hours=2 * number + 1),
                error_code=None,
                error_message=HOSTILE,
            )
            connection.execute(
                finetune_task_metrics.insert(),
                [
                    {"task_id": f"{HOSTILE}{number}", "metric_name": name, "value_percent": value}
                    for name, value in [("BLEU-4", 10.0 * number), ("ROUGE-L", nan), (HOSTILE, 1)]
                ],
            )
            connection.execute(
                finetune_task_checkpoints.insert(),
                [
                    {"task_id": f"{HOSTILE}{number}", "step": step, "training_loss": loss}
                    | {"perplexity": nan}
                    for step, loss in [(1, 2.0), (2, nan), (3, 1.0)]
                ],
            )
        summarise(connection)
        connection.execute(
            sa.text("INSERT INTO etl_runs (started_at, status, error) VALUES (:t, :s, :e)"),
            {"t": NOW, "s": HOSTILE, "e": HOSTILE},
        )


def test_markup_in_the_data_stays_text(
    chromium: Page, engine: Engine, db_url: URL, tmp_path: Path
) -> None:
    hostile_rows(engine)
    output = tmp_path / "hostile.html"
    assert report(db_url, output).exit_code == 0
    html = output.read_text().replace(page.vega_bundle(), "")
    scripts = html.count("<script")
    assert scripts == html.count("</script>") == len(SECTIONS) + 2  # data, bundle, renderer
    assert "<img" not in html and "<script>window" not in html
    state = rendered(chromium, output)
    for chart, drawn in state["charts"].items():
        assert drawn["state"] == "drawn" and drawn["marks"] > 0, chart
    assert_clean(state, output)
    assert HOSTILE in state["cells"]  # shown as text, in the failures and runs tables
    assert state["legend"] and all(label.startswith(HOSTILE[:20]) for label in state["legend"])


def test_script_json_cannot_close_its_element() -> None:
    value = {"name": "</script><!-- & \u2028", "nan": float("nan")}
    text = page.script_json(value)
    assert not any(char in text for char in "<>&\u2028")
    assert json.loads(text) == {"name": value["name"], "nan": None}


def test_the_harness_sees_a_page_that_fetches(chromium: Page, tmp_path: Path) -> None:
    """The negative control: a page using a CDN fails the assertions the report passes."""
    fetching = tmp_path / "cdn.html"
    fetching.write_text(
        "<html><body><script src='https://cdn.jsdelivr.net/npm/vega@5'></script>"
        "<script>document.body.dataset.rendered = '1'; vega.version;</script></body></html>"
    )
    chromium.events.clear()
    chromium.open(fetching.as_uri())
    assert "https://cdn.jsdelivr.net/npm/vega@5" in chromium.requests()
    assert chromium.errors()  # the failed load, and vega undefined


def test_report_needs_its_extra(sqlite_url: URL, tmp_path: Path) -> None:
    hide = "import sys; sys.modules['altair'] = None; from etl.cli import main; main()"
    env = {"PATH": os.environ["PATH"], "DATABASE_URL": str(sqlite_url)}
    result = run_cli(["report"], env, cwd=tmp_path)  # with the extra: works
    assert result.returncode == 0, result.stderr
    missing = sys.executable, "-c", hide, "report"
    result = subprocess.run(missing, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 78
    assert "pip install 'qianfan-etl[report]'" in result.stderr


def test_report_refuses_a_database_not_at_head(tmp_path: Path) -> None:
    result = report(sa.make_url(f"sqlite:///{tmp_path / 'none.db'}"), tmp_path / "r.html")
    assert result.exit_code == 78
    assert not (tmp_path / "r.html").exists()


def test_report_into_a_missing_directory_exits_78(
    sqlite_url: URL, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    result = report(sqlite_url, tmp_path / "nowhere" / "r.html")
    assert result.exit_code == 78
    assert "No such file or directory; choose another --output" in caplog.text


def test_demo_ends_with_the_report(tmp_path: Path) -> None:
    result = run_cli(["demo", "--jobs", "3"], {"PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last == f"Report: {tmp_path / 'qianfan-report.html'}"
    html = (tmp_path / "qianfan-report.html").read_text()
    assert "vegaEmbed" in html
    training = html.partition("<section id='training'>")[2].partition("</section>")[0]
    assert "rel='noopener noreferrer'" in training and "chart-training" in training


def test_write_report_replaces_the_file_whole(sqlite_url: URL, tmp_path: Path) -> None:
    output = tmp_path / "r.html"
    output.write_text("old")
    engine = sa.create_engine(sqlite_url)
    size = page.write_report(engine, output, Selection())
    assert output.stat().st_size == size and output.read_text().startswith("<!DOCTYPE html>")
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".r.html")]


MB = 1 << 20


def huge_rows(engine: Engine) -> None:
    """Failed, finished and running tasks whose every text column holds a megabyte."""
    huge = "x" * MB
    with engine.begin() as connection:
        for n in range(9):
            task_id = f"task-{n}"
            insert_task(
                connection,
                task_id,
                job_id=f"job-{n}",
                job_name=f"{n}{huge}",
                model=f"{n}{huge}",
                train_mode=huge,
                parameter_scale=f"{n}{huge}",
                run_status=("Failed", "Done", "Running")[n % 3],
                create_time=NOW + timedelta(hours=n),
                finish_time=NOW + timedelta(hours=n + 2),
                error_code=400120 + n,
                error_message=f"{n}{huge}",
                run_progress=10.0 * n,
                vdl_link=f"https://console.bce.baidu.com/qianfan/vdl/{huge}",
            )
            connection.execute(
                finetune_task_metrics.insert(),
                [{"task_id": task_id, "metric_name": "BLEU-4", "value_percent": 1.0 * n}],
            )
            connection.execute(
                finetune_task_checkpoints.insert(),
                [{"task_id": task_id, "step": s, "training_loss": 3.0 / s} for s in range(1, 2001)],
            )
        summarise(connection)
        connection.execute(
            sa.text("INSERT INTO etl_runs (started_at, status, error) VALUES (:t, 'failed', :e)"),
            {"t": NOW, "e": huge},
        )


def test_megabyte_texts_keep_the_page_small_and_short(
    chromium: Page, engine: Engine, db_url: URL, tmp_path: Path
) -> None:
    huge_rows(engine)
    output = tmp_path / "huge.html"
    result = report(db_url, output)
    assert result.exit_code == 0, result.output
    assert output.stat().st_size < 1.5 * MB
    state = rendered(chromium, output)
    for chart, drawn in state["charts"].items():
        assert drawn["state"] == "drawn" and drawn["marks"] > 0, chart
    assert set(state["charts"]) == {f"chart-{key}" for key in SECTIONS}
    assert_clean(state, output)  # the screenshot too: Chromium could take it
    assert state["height"] < 12_000
    clipped = "x" * (queries.TEXT_LIMIT - 1) + "… (1,048,577 characters)"
    assert any(cell.endswith(clipped) for cell in state["cells"])  # an error message
    assert "x" * 301 not in state["text"]


def running_rows(engine: Engine, now: datetime) -> None:
    """21 live Running tasks started 2 h (and a minute more each) before `now`, one 2,000-step
    curve among them, and a deleted Running task and a finished one that must not show."""
    progress = [50.0, None, 0.0, 25.0] + [10.0] * 17
    links = ["https://vdl.example/r00", "javascript:alert(1)", f"http://x/{HOSTILE}"]
    with engine.begin() as connection:
        for n, value in enumerate(progress):
            insert_task(
                connection,
                f"r{n:02d}",
                job_id=f"job-{n % 3}",
                job_name=f"job {n % 3}",
                model="ERNIE-Speed-8K",
                run_status="Running",
                create_time=now - timedelta(hours=2, minutes=n),
                run_progress=value,
                vdl_link=links[n] if n < len(links) else None,
            )
            steps = range(10, 2001, 10) if n == 3 else (10, 20, 30)
            connection.execute(
                finetune_task_checkpoints.insert(),
                [{"task_id": f"r{n:02d}", "step": s, "training_loss": 3 / s} for s in steps],
            )
        summarise(connection)
        stale = {"run_status": "Running", "create_time": now, "run_progress": 60.0}
        insert_task(connection, "gone", deleted_at=now, **stale)
        insert_task(connection, "done", **(stale | {"run_status": "Done"}))


def training_state(tab: Page) -> dict[str, Any]:
    """The rows, links and notes of the Training now section."""
    return dict(
        tab.evaluate(
            """({
            rows: [...document.querySelectorAll('#training tbody tr')]
                .map((tr) => [...tr.cells].map((td) => td.textContent)),
            links: [...document.querySelectorAll('#training a')]
                .map((a) => [a.getAttribute('href'), a.rel, a.textContent]),
            text: document.getElementById('training').innerText,
        })"""
        )
    )


def test_training_now_shows_running_tasks_with_progress_eta_curve_and_link(
    chromium: Page, engine: Engine, db_url: URL, tmp_path: Path
) -> None:
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    running_rows(engine, now)
    output = tmp_path / "training.html"
    page.write_report(engine, output, Selection(), now=now)
    state = rendered(chromium, output)
    assert_clean(state, output)
    assert state["charts"]["chart-training"]["state"] == "drawn"
    training = training_state(chromium)
    assert len(training["rows"]) == 20 and "and 1 more running" in training["text"]
    by_task = {row[1]: row for row in training["rows"]}
    assert "r20" not in by_task and "gone" not in by_task and "done" not in by_task
    # job, task, model, progress, started, elapsed, ETA, VisualDL
    assert by_task["r00"][:4] == ["job 0", "r00", "ERNIE-Speed-8K", "50 %"]
    assert by_task["r00"][5:] == ["2 h 0 min", "2 h 0 min", "VisualDL"]
    assert by_task["r03"][5:7] == ["2 h 3 min", "6 h 9 min"]  # 123 min * 75 / 25
    assert by_task["r01"][6] == "- (no progress yet)" and by_task["r02"][6] == "- (progress 0 %)"
    assert by_task["r01"][7] == "javascript:alert(1)"  # shown as text, not a link
    assert HOSTILE in by_task["r02"][7]
    assert training["links"] == [["https://vdl.example/r00", "noopener noreferrer", "VisualDL"]]
    assert f"ETA = {page.ETA_RULE}, the time left" in training["text"]
    panels = chromium.evaluate(
        "document.querySelectorAll('#chart-training g.mark-line path').length"
    )
    assert panels == 20  # one loss curve so far per task shown


def test_training_now_says_when_nothing_runs_or_no_curve_is_in_yet(
    chromium: Page, sqlite_url: URL, tmp_path: Path
) -> None:
    output = tmp_path / "idle.html"
    assert report(sqlite_url, output).exit_code == 0
    rendered(chromium, output)
    assert "Nothing is training" in training_state(chromium)["text"]
    with sa.create_engine(sqlite_url).begin() as connection:
        insert_task(connection, "queued", run_status="Running", create_time=NOW)
    assert report(sqlite_url, output).exit_code == 0
    state = rendered(chromium, output)
    training = training_state(chromium)
    assert [row[1] for row in training["rows"]] == ["queued"]
    assert "None of them has a checkpoint yet" in training["text"]
    assert "chart-training" not in state["charts"]


@pytest.mark.parametrize(
    ("progress", "started", "expected"),
    [
        (50.0, NOW - timedelta(minutes=30), "30 min"),
        (20.0, NOW - timedelta(hours=30), "5 days 0 h"),
        (99.99, NOW - timedelta(hours=1), "under 1 min"),
        (None, NOW - timedelta(hours=1), "- (no progress yet)"),
        (0.0, NOW - timedelta(hours=1), "- (progress 0 %)"),
        (100.0, NOW - timedelta(hours=1), "- (at 100 %: finishing)"),
        (float("nan"), NOW - timedelta(hours=1), "- (no progress yet)"),
        (50.0, None, "- (no start time)"),
        (50.0, NOW + timedelta(hours=1), "- (starts after this page was made)"),
    ],
)
def test_eta_says_how_long_or_why_not(
    progress: float | None, started: datetime | None, expected: str
) -> None:
    assert page.eta(progress, started, NOW) == expected


def test_loss_curves_of_200_and_2000_steps_both_span_the_axis(
    chromium: Page, sqlite_url: URL, tmp_path: Path
) -> None:
    engine = sa.create_engine(sqlite_url)
    with engine.begin() as connection:
        for task_id, last in (("short", 200), ("long", 2000)):
            insert_task(connection, task_id, run_status="Done", finish_time=NOW)
            connection.execute(
                finetune_task_checkpoints.insert(),
                [
                    {"task_id": task_id, "step": s, "training_loss": 3 / s, "perplexity": 9 / s}
                    for s in range(10, last + 1, 10)
                ],
            )
        summarise(connection)
    output = tmp_path / "steps.html"
    assert report(sqlite_url, output).exit_code == 0
    rendered(chromium, output)
    ends = chromium.evaluate(
        """[...document.querySelectorAll('#chart-loss g.mark-line path')]
            .map((p) => { const box = p.getBBox(); return [box.x, box.x + box.width]; })"""
    )
    assert len(ends) == 4  # two tasks, loss and perplexity
    assert max(right for _, right in ends) - min(right for _, right in ends) < 2


def test_count_axes_tick_whole_numbers(chromium: Page, sqlite_url: URL, tmp_path: Path) -> None:
    engine = sa.create_engine(sqlite_url)
    with engine.begin() as connection:
        insert_task(connection, "failed", run_status="Failed", create_time=NOW, error_code=7)
    output = tmp_path / "one.html"
    assert report(sqlite_url, output).exit_code == 0
    rendered(chromium, output)
    labels = chromium.evaluate(
        """['failures', 'outcomes'].map((key) => [...document.querySelectorAll(
            `#chart-${key} g.role-axis[aria-label*='linear scale'] .role-axis-label text`)]
            .map((t) => t.textContent))"""
    )
    failures, outcomes = labels
    assert "1" in failures and "1" in outcomes
    assert all(label.isdigit() for label in failures + outcomes), labels


def test_the_empty_page_shows_commands_as_code_not_backticks(
    chromium: Page, sqlite_url: URL, tmp_path: Path
) -> None:
    output = tmp_path / "empty.html"
    assert report(sqlite_url, output).exit_code == 0
    state = rendered(chromium, output)
    assert "`" not in state["text"]
    assert state["code"].count("qianfan-etl sync") >= 2  # the header's and a section's hint
