"""`qianfan-etl report`: the command, the page's escaping, and the page itself opened in headless
Chromium with the network blocked (every chart drew its marks, no JavaScript error, no request
but the file itself, a screenshot that is not blank)."""

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from PIL import Image
from sqlalchemy import Engine
from sqlalchemy.engine import URL

from etl import page
from etl.charts import Selection
from etl.cli import cli
from etl.schema import finetune_task_checkpoints, finetune_task_metrics
from etl.simulator import Simulator, SimulatorServer
from tests.chart_rows import NOW, insert_task, load, sim_tasks, when
from tests.chromium import Page, browser, find_chromium
from tests.harness import run_cli

SECTIONS = ("loss", "metrics", "outcomes", "failures", "durations")
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
    assert "vegaEmbed" in (tmp_path / "qianfan-report.html").read_text()


def test_write_report_replaces_the_file_whole(sqlite_url: URL, tmp_path: Path) -> None:
    output = tmp_path / "r.html"
    output.write_text("old")
    engine = sa.create_engine(sqlite_url)
    size = page.write_report(engine, output, Selection())
    assert output.stat().st_size == size and output.read_text().startswith("<!DOCTYPE html>")
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".r.html")]
