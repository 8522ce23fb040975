"""The issue's targets, computed from the measured numbers."""

from pathlib import Path
from typing import Any

from bench.report import RSS_LIMIT_MB, Phase, Results, Target

FLOOR_FACTOR = 1.5
# full and no-op sync against the network bound, calls counted by the simulator (issue 16)
LATENCY_FACTOR = 1.10
NOOP_FACTOR = 1.2
FLAT_FACTOR = 1.2


def evaluate(results: Results, baseline: tuple[Path, dict[str, Any]] | None) -> list[Target]:
    """Every target, met, not met or n/a."""
    return [
        floor_target(results),
        latency_target(results, "full_sync"),
        latency_target(results, "noop_sync"),
        noop_rows_target(results),
        noop_time_target(results),
        rss_limit_target(results),
        rss_flat_target(results, baseline),
    ]


def _phase(results: Results, key: str) -> Phase:
    """A phase that every run measures."""
    phase = results.phases[key]
    assert phase is not None, key
    return phase


def floor_target(results: Results) -> Target:
    """Full sync at 0 ms within 1.5x of fetch floor + COPY floor."""
    goal = f"full sync <= {FLOOR_FACTOR}x (fetch + COPY floor) at 0 ms"
    copy = results.phases.get("copy_floor")
    if results.settings["latency_ms"] != 0 or copy is None:
        return Target(goal, "applies to Postgres at 0 ms", None)
    full, fetch = _phase(results, "full_sync"), _phase(results, "fetch_floor")
    floor = fetch.wall_s + copy.wall_s
    ratio = full.wall_s / floor
    measured = f"{full.wall_s:.2f} s / ({fetch.wall_s:.2f} + {copy.wall_s:.2f}) s = {ratio:.2f}x"
    return Target(goal, measured, ratio <= FLOOR_FACTOR)


def latency_target(results: Results, key: str) -> Target:
    """A sync with latency within 1.1x of API calls x latency / concurrency, the calls as the
    simulator counted them."""
    name = "full sync" if key == "full_sync" else "no-op sync"
    goal = f"{name} <= {LATENCY_FACTOR}x (API calls x latency / concurrency)"
    latency_s = results.settings["latency_ms"] / 1000
    if latency_s == 0:
        return Target(goal, "applies when latency > 0", None)
    phase = _phase(results, key)
    ideal = (phase.api_calls or 0) * latency_s / results.settings["concurrency"]
    ratio = phase.wall_s / ideal
    calls = phase.details.get("simulator_calls", {})
    mean = calls.get("busy_s", 0.0) / phase.wall_s
    measured = (
        f"{phase.wall_s:.2f} s / ({phase.api_calls} calls x {latency_s * 1000:g} ms / "
        f"{results.settings['concurrency']}) {ideal:.2f} s = {ratio:.2f}x; in flight: "
        f"{mean:.1f} on average, {calls.get('max_in_flight')} at most"
    )
    return Target(goal, measured, ratio <= LATENCY_FACTOR)


def noop_rows_target(results: Results) -> Target:
    """The no-op re-run writes no content rows."""
    noop = _phase(results, "noop_sync")
    if results.settings["database"] == "postgresql":
        source, written = "pg_stat", noop.rows_written
    else:
        source, written = "summary line", noop.details["summary"]["rows_written"]
    goal = "no-op sync writes 0 content rows"
    return Target(goal, f"{written} rows ({source})", written == 0)


def noop_time_target(results: Results) -> Target:
    """The no-op re-run within 1.2x of the fetch floor."""
    noop, fetch = _phase(results, "noop_sync"), _phase(results, "fetch_floor")
    ratio = noop.wall_s / fetch.wall_s
    measured = f"{noop.wall_s:.2f} s / {fetch.wall_s:.2f} s = {ratio:.2f}x"
    return Target(f"no-op sync <= {NOOP_FACTOR}x fetch floor", measured, ratio <= NOOP_FACTOR)


def _sync_rss(results: Results) -> float:
    """The larger peak RSS of the two sync runs."""
    return max(_phase(results, key).peak_rss_mb for key in ("full_sync", "noop_sync"))


def rss_limit_target(results: Results) -> Target:
    """Peak RSS of sync within the size's limit."""
    rss, limit = _sync_rss(results), RSS_LIMIT_MB[results.settings["size"]]
    goal = f"sync peak RSS <= {limit:g} MB"
    return Target(goal, f"{rss:.1f} MB", rss <= limit)


def rss_flat_target(results: Results, baseline: tuple[Path, dict[str, Any]] | None) -> Target:
    """Peak RSS of sync within 1.2x of a saved size-S run's."""
    goal = f"sync peak RSS <= {FLAT_FACTOR}x size S's"
    if results.settings["size"] in ("S", "J"):
        return Target(goal, "applies to sizes M and L", None)
    if baseline is None:
        return Target(goal, "no saved size-S run with these settings in bench/results", None)
    path, saved = baseline
    phases = saved["phases"]
    base = max(phases[key]["peak_rss_mb"] for key in ("full_sync", "noop_sync"))
    rss = _sync_rss(results)
    measured = f"{rss:.1f} MB / {base:.1f} MB = {rss / base:.2f}x (S: {path.name})"
    return Target(goal, measured, rss / base <= FLAT_FACTOR)
