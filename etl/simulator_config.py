"""What a simulated account looks like and which faults its listings can play.

Kept apart from the server (`etl.simulator`) so the CLI builds the options and help of
`simulate` and `demo` without importing the server into every production command.
"""

from dataclasses import dataclass
from datetime import datetime

PAGINATION_FAULTS = frozenset(
    {
        "missing_next_marker",
        "repeat_marker",
        "marker_cycle",
        "empty_truncated_page",
        "oversized_page",
        "duplicate_across_pages",
        "truncated_as_string",
    }
)
# Faults of one job's task listing (Simulator.job_faults): "500" answers every request with
# HTTP 500, "403" with AccessDenied (a policy scoped to some jobs), "500:MESSAGE" and
# "403:MESSAGE" with that error message (hostile upstream text); "deleted_mid_listing"
# deletes the job once its first page is served, so a later page answers 404; "slow:SECONDS"
# delays each response; a PAGINATION_FAULTS name breaks that job's paging alone.
JOB_FAULTS = frozenset({"500", "403", "deleted_mid_listing", "slow"}) | PAGINATION_FAULTS


@dataclass
class SimulatorConfig:
    """Size, seed, latency, credentials and time-field naming of a simulated account."""

    jobs: int = 20
    tasks_per_job: int = 10
    checkpoints: int = 20
    seed: int = 0
    latency_ms: float = 0.0
    access_key: str = "sim-access-key"
    secret_key: str = "sim-secret-key"
    field_style: str = "mixed"  # "seed": createTime/finishTime; "sdk": *Date; "mixed": per job
    # A steady state: this share of the jobs (spread evenly) has a Running first task and the
    # others only finished tasks. None: every task's status is drawn on its own.
    running_jobs: float | None = None
    # The moment the account's history ends: every job and task is created (and finished)
    # before it, the newest within about a day. None: dated from 2024-01-01 on. Either way
    # the same config gives the same data; `demo` and `simulate` pass the real now.
    now: datetime | None = None
    # List tasks without `metrics` and `checkpointList`, as the SDK's mock and the 2025 doc do;
    # only the detail call (DescribeFineTuningTask) carries them.
    lean_listings: bool = False
