"""The steady-state case: 5 % of the jobs have a Running task, the rest only finished ones.

After a first full load, a full run and an `--active-only` run are measured. An active-only run
should make job pages + the task pages of the jobs it lists + one detail call per Running task
in them, and take time in proportion to those calls, not to the account.
"""

import math
from dataclasses import dataclass

from bench.report import PHASE_NAMES, Results, Target
from etl.load import TERMINAL_STATUSES
from etl.qianfan.pagination import PAGE_SIZE
from etl.simulator import Simulator, SimulatorConfig

RUNNING_JOBS = 0.05
PHASES = {key: PHASE_NAMES[key] for key in ("first_load", "steady_full", "steady_active")}


@dataclass(frozen=True)
class Formula:
    """The API calls each kind of run should make on the simulated account."""

    job_pages: int
    task_pages: int
    active_task_pages: int
    detail_calls: int
    active_jobs: int

    @property
    def full(self) -> int:
        return self.job_pages + self.task_pages + self.detail_calls

    @property
    def active(self) -> int:
        # Running tasks are always in jobs an active-only run lists: their detail calls are all
        return self.job_pages + self.active_task_pages + self.detail_calls


def formula(jobs: int, tasks_per_job: int, checkpoints: int) -> Formula:
    """Count pages and Running tasks on the same seeded account, in process (no HTTP)."""
    config = SimulatorConfig(jobs, tasks_per_job, checkpoints, running_jobs=RUNNING_JOBS)
    sim = Simulator(config)
    listed = sim.jobs()
    task_pages = active_pages = running = active = 0
    for job in listed:
        statuses = [task.get("runStatus") for task in sim.tasks(job["jobId"])]
        pages = max(1, math.ceil(len(statuses) / PAGE_SIZE))
        task_pages += pages
        running += statuses.count("Running")
        if any(status not in TERMINAL_STATUSES for status in statuses):
            active_pages += pages
            active += 1
    job_pages = max(1, math.ceil(len(listed) / PAGE_SIZE))
    return Formula(job_pages, task_pages, active_pages, running, active)


def evaluate(results: Results, expected: Formula) -> list[Target]:
    """Calls against the formula for both runs; the active-only run's time against its calls."""
    targets = []
    for key, want in (("steady_full", expected.full), ("steady_active", expected.active)):
        phase = results.phases[key]
        calls = phase.api_calls if phase else None
        goal = f"{PHASES[key]}: API calls = formula"
        targets.append(Target(goal, f"{calls} measured, {want} by the formula", calls == want))
    targets.append(_time_target(results))
    return targets


def _time_target(results: Results) -> Target:
    """At latency: the active-only run's wall time over calls x latency / concurrency."""
    goal = "steady --active-only: wall time follows its calls (reported, no threshold)"
    latency_s = results.settings["latency_ms"] / 1000
    active = results.phases["steady_active"]
    if latency_s == 0 or active is None or not active.api_calls:
        return Target(goal, "applies when latency > 0", None)
    ideal = active.api_calls * latency_s / results.settings["concurrency"]
    return Target(goal, f"{active.wall_s:.2f} s against {ideal:.2f} s of calls", None)
