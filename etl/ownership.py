"""The ownership rule, in one place: of the jobs that list a task, the smallest job id owns it.

Upstream can list one task under two jobs. Within a batch, the claim of the smaller job id wins
(`owned`). A task listed by a job that ranks after the live job it is stored under is held back
(`outranked`), since that job may still list it later in the run; at the end of the run,
`Claims` hands it over only if the stored job's complete listing no longer has it, or a complete
account listing no longer has that job. A job that failed, or that a restricted run did not
list, keeps what it had. Pure: the caller reads and writes the database.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from etl.scopes import ACCOUNT, Ledger, job_scope
from etl.transform import TaskRows, Unchanged

JobTasks = tuple[str, list[TaskRows | Unchanged]]  # a job's id, and its tasks as it listed them


def owned(listed: Iterable[JobTasks]) -> list[TaskRows | Unchanged]:
    """Of the tasks each job of one batch listed (job id, its tasks), for each task id, the
    one the smallest job id listed (the first of equals)."""
    chosen: dict[str, tuple[str, TaskRows | Unchanged]] = {}
    for job_id, tasks in listed:
        for rows in tasks:
            held = chosen.get(rows.task_id)
            if held is None or job_id < held[0]:
                chosen[rows.task_id] = (job_id, rows)
    return [rows for _, rows in chosen.values()]


def outranked(
    tasks: list[TaskRows | Unchanged], stored: dict[str, sa.Row[Any]]
) -> list[tuple[TaskRows, str]]:
    """Typed tasks listed by a job that ranks after the live one they are stored under, each
    with that job (an unchanged one was listed by the job it is stored under)."""
    held = []
    for rows in tasks:
        if isinstance(rows, Unchanged):
            continue
        before = stored.get(rows.task_id)
        if before is None or before.deleted_at is not None:
            continue
        if before.job_id < rows.task["job_id"]:
            held.append((rows, before.job_id))
    return held


@dataclass
class Claims:
    """The tasks held back by the rule so far in a run: by task id, the best claim (the
    smallest listing job id) and the job the task is stored under."""

    held: dict[str, tuple[TaskRows, str]] = field(default_factory=dict)

    def note(self, written: set[str], deferred: list[tuple[TaskRows, str]]) -> None:
        """What a committed batch wrote and held back: a task it wrote came from a job ranking
        before any claim held on it, so that claim goes."""
        for task_id in [task_id for task_id in self.held if task_id in written]:
            del self.held[task_id]
        for rows, stored_job in deferred:
            held = self.held.get(rows.task_id)
            if held is None or rows.task["job_id"] < held[0].task["job_id"]:
                self.held[rows.task_id] = (rows, stored_job)

    def winners(self, ledger: Ledger) -> list[TaskRows | Unchanged]:
        """The held tasks that go to their listing job: their stored job no longer lists them."""
        return [rows for rows, job in self.held.values() if _stored_job_let_go(ledger, rows, job)]


def _stored_job_let_go(ledger: Ledger, rows: TaskRows, stored_job: str) -> bool:
    """Whether the job a task is stored under no longer lists it, as the run's listings say."""
    scope = job_scope(stored_job)
    if ledger.is_listed(scope):
        return ledger.lacks(scope, rows.task_id)
    # a job that failed, or was not listed by a restricted run, keeps what it had
    return ledger.complete(ACCOUNT) and not ledger.seen(ACCOUNT, stored_job)
