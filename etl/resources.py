"""What the run lists, declared once: each API entity's action, id, scope, fields and table.

The walk (etl.extract), the scope ledger (etl.scopes), the typing (etl.transform) and the load
(etl.load, etl.sync) read these declarations; none of them names an action, an id field or a
scope of its own. A new field of a job or a task is a line in its `fields` (with its column in
etl.schema and a migration); a new entity the account lists is a `Resource` in LISTED (with
its table and a migration). README, "Changing it", works both through.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

import sqlalchemy as sa

from etl.schema import (
    finetune_jobs,
    finetune_task_checkpoints,
    finetune_task_metrics,
    finetune_tasks,
)


@dataclass(frozen=True)
class Field:
    """How one column is read from a raw record: the value of the first of `keys` present and
    not null, as `kind` ("text", "time": ISO-8601 to UTC, "bigint"); else NULL."""

    kind: str
    keys: tuple[str, ...]


def text(*keys: str) -> Field:
    """A string column: the value cleaned of NUL characters, NULL when not a string."""
    return Field("text", keys)


def time(*keys: str) -> Field:
    """A timestamp column: an ISO-8601 string as UTC, NULL otherwise."""
    return Field("time", keys)


def bigint(*keys: str) -> Field:
    """An integer column: an integer (or a string of digits) that fits a bigint, else NULL."""
    return Field("bigint", keys)


# What absence from a complete listing of its scope means for a stored row.
SOFT_DELETE = "soft-delete"  # it gets deleted_at (and a job's tasks with it)
KEEP = "keep"  # nothing: the row stays live as last listed


@dataclass(frozen=True, kw_only=True, eq=False)  # one declaration is one resource
class Resource:
    """One listed API entity. Its records come from `action`, a marker-paginated listing under
    `list_key`, identified by `id_field`; the account lists it once, or, with a `parent`, each
    parent record lists its own. Each record is one row of `table`, keyed by its id, with
    `fields` read from the raw record plus `raw` and `content_hash` (the change detection: a
    row whose hash is stored as it is is not written again)."""

    entity: str  # its name in etl_rejects.entity and in what a run says
    action: str
    list_key: str
    id_field: str
    # the kind of scope whose listing holds it (etl_held_back_scopes.scope_kind): one scope
    # for the account, or, with a parent, one per parent record, named by the parent's id
    scope_kind: str
    table: sa.Table
    fields: Mapping[str, Field]
    parent: "Resource | None" = None
    absent: str = SOFT_DELETE
    # the tables of its child rows, replaced whenever it changes
    children: tuple[sa.Table, ...] = field(default=())

    @cached_property
    def key(self) -> str:
        """The table's key column: the record's id."""
        return str(next(iter(self.table.primary_key.columns)).name)


@dataclass(frozen=True, kw_only=True)
class Enrichment:
    """A call that completes one record of `of`: `action` with the record's id as `id_field`."""

    action: str
    of: Resource
    id_field: str


JOBS = Resource(
    entity="job",
    action="DescribeFineTuningJobs",
    list_key="jobList",
    id_field="jobId",
    scope_kind="account",
    table=finetune_jobs,
    fields={
        "name": text("name"),
        "description": text("description"),
        "model": text("model"),
        "train_mode": text("trainMode"),
        "create_time": time("createTime", "createDate"),
    },
)

# A task's `job_id` is the job whose listing holds it (the ownership rule, etl.sync), and its
# `metrics` and `checkpointList` are child rows (etl.transform): neither is a field.
TASKS = Resource(
    entity="task",
    action="DescribeFineTuningTasks",
    list_key="taskList",
    id_field="taskId",
    scope_kind="job",
    table=finetune_tasks,
    parent=JOBS,
    children=(finetune_task_metrics, finetune_task_checkpoints),
    fields={
        "job_name": text("jobName"),
        "job_description": text("jobDescription"),
        "model": text("model"),
        "train_mode": text("trainMode"),
        "parameter_scale": text("parameterScale"),
        "run_status": text("runStatus"),
        "create_time": time("createTime", "createDate"),
        "finish_time": time("finishTime", "finishDate"),
        "error_code": bigint("errorCode"),
        "error_message": text("errorMessage"),
    },
)

# Live progress of a Running task, and the metrics and checkpoints of a lean-listed one.
TASK_DETAIL = Enrichment(action="DescribeFineTuningTask", of=TASKS, id_field="taskId")

# Everything the run lists: jobs for the account and, with their parent, tasks for each job.
BUILT_IN = (JOBS, TASKS)
# Further resources the account lists, each once for the account, beside its jobs (none yet).
LISTED: tuple[Resource, ...] = ()
