"""Rows the report's charts are drawn from: loaded by the real sync from the simulator, or
inserted as the loader would leave them, and what the simulator served, read back."""

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from etl.qianfan import QianfanClient
from etl.schema import finetune_jobs, finetune_tasks
from etl.simulator import Simulator, SimulatorServer
from etl.sync import SyncOptions, sync
from tests.harness import SUMMARY_ORACLE

NOW = datetime(2026, 3, 1, tzinfo=UTC)


def insert_task(connection: Connection, task_id: str, job_id: str = "job-1", **values: Any) -> None:
    """A task row (and its job, if new) as the loader would leave it, with these columns."""
    stamps = {"first_seen_at": NOW, "last_changed_at": NOW, "content_hash": "x", "raw": {}}
    job = {"job_id": job_id, "name": values.get("job_name"), **stamps}
    if not connection.execute(sa.select(finetune_jobs.c.job_id).filter_by(job_id=job_id)).first():
        connection.execute(finetune_jobs.insert().values(job))
    connection.execute(
        finetune_tasks.insert().values(task_id=task_id, job_id=job_id, **stamps, **values)
    )


def load(engine: Engine, sim: Simulator, server: SimulatorServer) -> None:
    """The real sync, in-process, from the simulator over HTTP."""
    with QianfanClient(server.url, sim.config.access_key, sim.config.secret_key) as client:
        sync(engine, client, SyncOptions())


def sim_tasks(sim: Simulator) -> list[dict[str, Any]]:
    """Every task the simulator serves, with its job."""
    return [task | {"job": job} for job in sim.jobs() for task in sim.tasks(job["jobId"])]


def when(task: dict[str, Any], key: str) -> datetime | None:
    """A task's create/finish time as the simulator wrote it (either field style)."""
    value = task.get(f"{key}Time", task.get(f"{key}Date"))
    if value is None or value.startswith("0000"):
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def summarise(connection: Connection) -> None:
    """Write each task's kept summaries from the children inserted beside it, as the loader
    writes them with the children."""
    on = "c.task_id = finetune_tasks.task_id"
    sets = ", ".join(f"{column} = ({sql.format(on=on)})" for column, sql in SUMMARY_ORACLE.items())
    connection.execute(sa.text(f"UPDATE finetune_tasks SET {sets}"))
