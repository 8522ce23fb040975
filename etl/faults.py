"""A test-only fault hook: `fault_point(name)` does nothing unless a fault plan was armed.

A plan reads `POINT[:HIT]:ACTION[:ARG]`, e.g. `before_commit:sigkill`, `after_fetch:2:sigterm`,
`before_commit:pause:/tmp/f` (touch /tmp/f.reached, wait for /tmp/f.release) or
`after_fetch:raise:MESSAGE` (an unexpected error with that message). Only test
code arms it: `tests/faulty_cli.py` starts the CLI with the plan in QIANFAN_ETL_FAULT, while
`qianfan-etl` never reads that variable, so no environment can make a production run kill
itself. A module-level plan keeps test plumbing out of every stage's signature, and an unarmed
hook costs one comparison.
"""

import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from etl import stopping
from etl.errors import ConfigError

POINTS = frozenset(
    {"after_fetch", "after_piece", "before_commit", "after_commit", "after_revision"}
)
ACTIONS = frozenset({"sigkill", "sigterm", "sigint", "raise", "pause"})
PAUSE_POLL_SECONDS = 0.01
PAUSE_LIMIT_SECONDS = 30.0


class InjectedFault(RuntimeError):
    """Raised by the `raise` action: an unexpected error at a chosen point."""


@dataclass
class FaultPlan:
    """Act at the `hit`-th time `point` is reached."""

    point: str
    hit: int
    action: str
    arg: str = ""
    seen: int = 0


_plan: FaultPlan | None = None


def parse(spec: str) -> FaultPlan:
    """A plan from its `POINT[:HIT]:ACTION[:ARG]` text."""
    point, _, rest = spec.strip().partition(":")
    head, _, tail = rest.partition(":")
    hit = 1
    if head.isdigit():
        hit = int(head)
        head, _, tail = tail.partition(":")
    wrong_arg = (head == "pause") != bool(tail) and head != "raise"
    if point not in POINTS or head not in ACTIONS or hit < 1 or wrong_arg:
        raise ConfigError(
            f"bad fault plan {spec!r}: expected POINT[:HIT]:ACTION[:ARG], POINT one of "
            f"{sorted(POINTS)}, ACTION one of {sorted(ACTIONS)} (pause takes a path, "
            "raise may take a message)"
        )
    return FaultPlan(point, hit, head, tail)


def arm(spec: str | None) -> None:
    """Arm the plan `spec` (or disarm with None/empty) for this process."""
    global _plan
    _plan = parse(spec) if spec else None


def fault_point(name: str) -> None:
    """Act as the armed plan says if this is its point and hit; otherwise do nothing."""
    plan = _plan
    if plan is None or plan.point != name:
        return
    plan.seen += 1
    if plan.seen == plan.hit:
        _act(plan)


def _act(plan: FaultPlan) -> None:
    if plan.action == "raise":
        raise InjectedFault(plan.arg or f"injected fault at {plan.point} (hit {plan.hit})")
    if plan.action == "pause":
        _pause(plan.arg)
        return
    signum = {"sigkill": signal.SIGKILL, "sigterm": signal.SIGTERM, "sigint": signal.SIGINT}
    os.kill(os.getpid(), signum[plan.action])
    if threading.current_thread() is threading.main_thread():
        # A handled signal runs its Python handler at the next bytecode; give it that chance.
        time.sleep(PAUSE_POLL_SECONDS)
    else:
        # The handler runs on the main thread: let it mark the run stopping before going on.
        stopping.wait_for_request(PAUSE_LIMIT_SECONDS)


def _pause(path: str) -> None:
    """Tell the test we are here, then wait (bounded) until it releases us."""
    Path(f"{path}.reached").touch()
    release = Path(f"{path}.release")
    deadline = time.monotonic() + PAUSE_LIMIT_SECONDS
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(PAUSE_POLL_SECONDS)
