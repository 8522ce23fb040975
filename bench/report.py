"""What the benchmark prints and saves: the phase table, the targets, the JSON document."""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PHASE_NAMES = {
    "full_sync": "full sync",
    "noop_sync": "no-op sync",
    "fetch_floor": "fetch floor",
    "copy_floor": "COPY floor",
    "first_load": "first load (full)",
    "steady_full": "steady full sync",
    "steady_active": "steady --active-only",
}
COLUMNS = ("phase", "wall s", "API calls", "tasks/s", "rows/s", "peak RSS MB", "rows written")
# Peak RSS of sync by size (issue 16: 150 MB at M, 300 MB for one job of 50,000 tasks).
RSS_LIMIT_MB = {"S": 150.0, "M": 150.0, "L": 250.0, "J": 300.0}


@dataclass
class Phase:
    """One measured row of the table; None where a figure does not apply."""

    wall_s: float
    peak_rss_mb: float
    cpu_s: float
    api_calls: int | None = None
    tasks: int | None = None
    rows: int | None = None
    rows_written: int | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def rate(self, count: int | None) -> float | None:
        """count per wall second."""
        return None if count is None else count / self.wall_s

    def as_json(self) -> dict[str, Any]:
        """The phase with its derived rates."""
        return {
            **asdict(self),
            "tasks_per_s": self.rate(self.tasks),
            "rows_per_s": self.rate(self.rows),
        }


@dataclass
class Target:
    """One goal from the issue, its measured value, and whether it is met (None: n/a)."""

    goal: str
    measured: str
    met: bool | None


@dataclass
class Results:
    """Everything one benchmark run measured."""

    settings: dict[str, Any]
    machine: dict[str, Any]
    rows: dict[str, int]
    phases: dict[str, Phase | None]
    targets: list[Target] = field(default_factory=list)


def _cell(value: float | int | None, digits: int = 0) -> str:
    """A number for the table, or n/a."""
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"


def _row(name: str, phase: Phase | None) -> list[str]:
    """The table cells of one phase."""
    if phase is None:
        return [name, *["n/a"] * (len(COLUMNS) - 1)]
    return [
        name,
        _cell(phase.wall_s, 2),
        _cell(phase.api_calls),
        _cell(phase.rate(phase.tasks)),
        _cell(phase.rate(phase.rows)),
        _cell(phase.peak_rss_mb, 1),
        _cell(phase.rows_written),
    ]


def table_text(results: Results) -> str:
    """The phases as one aligned table."""
    rows = [list(COLUMNS)]
    rows += [_row(PHASE_NAMES[key], phase) for key, phase in results.phases.items()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join(_line(row, widths) for row in rows)


def _line(cells: list[str], widths: list[int]) -> str:
    """One table line: the name left-aligned, the numbers right-aligned."""
    numbers = [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True)]
    return "  ".join([cells[0].ljust(widths[0]), *numbers])


def targets_text(results: Results) -> str:
    """The targets block: goal, measured, verdict."""
    verdict = {True: "met", False: "NOT MET", None: "n/a"}
    width = max(len(target.goal) for target in results.targets)
    lines = [f"  {t.goal.ljust(width)}  {verdict[t.met]:<7}  {t.measured}" for t in results.targets]
    note = "" if results.settings["size"] == "M" else " (the issue sets the time targets at size M)"
    return "\n".join([f"targets{note}:", *lines])


def header_text(results: Results) -> str:
    """One line saying what was measured, and where."""
    s, m = results.settings, results.machine
    rows = sum(results.rows.values())
    return (
        f"size {s['size']} ({s['jobs']} jobs x {s['tasks_per_job']} tasks, {rows:,} rows), "
        f"latency {s['latency_ms']:g} ms, concurrency {s['concurrency']}, {s['database']}; "
        f"commit {m['commit']}, {m['nproc']} CPUs, Postgres {m['postgres']}"
    )


def document(results: Results) -> dict[str, Any]:
    """The JSON document for comparison across commits."""
    return {
        "settings": results.settings,
        "machine": results.machine,
        "rows": results.rows,
        "phases": {k: p.as_json() if p else None for k, p in results.phases.items()},
        "targets": [asdict(target) for target in results.targets],
    }


def default_json_path(settings: dict[str, Any], stamp: str) -> Path:
    """bench/results/<size>-<latency>ms-<db>-<UTC timestamp>.json"""
    name = f"{settings['size']}-{settings['latency_ms']:g}ms-{settings['database']}-{stamp}.json"
    if settings.get("steady_state"):
        name = f"steady-{name}"  # not a size-S baseline for the RSS target
    return RESULTS_DIR / name


def write_json(results: Results, path: Path) -> None:
    """Save the document, creating the directory if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document(results), indent=2) + "\n")


def size_s_baseline(settings: dict[str, Any]) -> tuple[Path, dict[str, Any]] | None:
    """The newest saved size-S run with the same latency, database and concurrency."""
    same = ("latency_ms", "database", "concurrency")
    for path in sorted(RESULTS_DIR.glob("S-*.json"), reverse=True):
        saved = json.loads(path.read_text())
        if all(saved["settings"].get(key) == settings[key] for key in same):
            return path, saved
    return None
