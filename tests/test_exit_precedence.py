"""Exit precedence (README, "Exit codes"): a run's own stop wins (75 for a fault that ends the
walk), then 65, then 75 for a job that still fails, then 0. Each case combines faults of
different scopes on one account, end to end through the CLI, the simulator over HTTP, Postgres
and SQLite."""

from collections.abc import Callable

import pytest

from etl.simulator import Simulator
from tests.harness import Etl

# One case: what it does to the account after the first sync, the exit code the second sync
# must end with, and a phrase its summary or message must hold.
Case = tuple[Callable[[Simulator, list[str]], None], int, str]


def _hold_back(sim: Simulator, ids: list[str]) -> None:
    """Job ids[0] lists a task without a readable taskId while a stored task of it is gone."""
    sim.delete_task(sim.tasks(ids[0])[0]["taskId"])
    sim.put_task(ids[0], {"taskId": 404, "runStatus": "Done"})


def _fail(*positions: int, kind: str = "500") -> Callable[[Simulator, list[str]], None]:
    def apply(sim: Simulator, ids: list[str]) -> None:
        for position in positions:
            sim.job_faults[ids[position]] = kind

    return apply


def _both(*steps: Callable[[Simulator, list[str]], None]) -> Callable[[Simulator, list[str]], None]:
    def apply(sim: Simulator, ids: list[str]) -> None:
        for step in steps:
            step(sim, ids)

    return apply


CASES: dict[str, Case] = {
    "nothing wrong": (lambda sim, ids: None, 0, "wrote 0 rows, 0 rejects"),
    "a job still failing": (_fail(3), 75, "partial (exit 75)"),
    "a broken job listing": (_fail(3, kind="missing_next_marker"), 65, "partial (exit 65)"),
    "broken over failing": (
        _both(_fail(2, kind="missing_next_marker"), _fail(3)),
        65,
        "partial (exit 65)",
    ),
    "held back over failing": (_both(_hold_back, _fail(3)), 65, "partial (exit 65)"),
    "held back alone": (_hold_back, 65, "kept 1"),
    # five jobs failing in a row stop the walk: the stop's own 75 wins over the held-back 65
    "the breaker's stop over held back": (
        _both(_hold_back, _fail(1, 2, 3, 4, 5)),
        75,
        "in a row",
    ),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_the_run_exits_with_the_code_that_comes_first(case: str, etl: Etl) -> None:
    change, code, phrase = CASES[case]
    # one job at a time, so that "in a row" is the job list's order
    args = ("--concurrency", "1")
    first = etl.invoke(*args)
    assert first.returncode == 0, first.stderr
    change(etl.sim, [job["jobId"] for job in etl.sim.jobs()])
    run = etl.invoke(*args)
    assert run.returncode == code, run.stderr
    assert phrase in run.stdout + run.stderr
