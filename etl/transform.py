"""Raw Qianfan job and task dicts to typed rows for each table: pure functions, no I/O."""

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import cache
from typing import Any

from etl.canonical import (
    TooDeep,
    Untypable,
    clean_key,
    clean_text,
    cleaned_json,
    content_hash,
    excerpt,
    same_content,
)
from etl.resources import JOBS, TASKS, Field, Resource

# Unfinished tasks carry this instead of a finish time.
TIME_SENTINEL = "0000-00-00"
BIGINT_MIN, BIGINT_MAX = -(2**63), 2**63 - 1
# Ids and metric names are index keys: Postgres refuses a btree entry over ~2,700 bytes, and a
# metric's key holds two of them. Longer ones are rejected on both backends alike.
MAX_ID_BYTES = 1024
# Statuses a task does not leave; any other (`Running`, `Waiting`, `""`, NULL, one not yet
# known) may still change.
TERMINAL_STATUSES = ("Done", "Failed", "Stopped")
# The status of a task in training: the one whose detail carries its live progress.
RUNNING = "Running"
# The keys a lean listing leaves out of a task; only DescribeFineTuningTask carries them.
CHILD_KEYS = ("metrics", "checkpointList")

# ASCII digits only: float()/int() would also take "1_000" and non-Latin digits.
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_INTEGER = re.compile(r"[+-]?\d+", re.ASCII)


@dataclass(frozen=True, kw_only=True)
class Reject:
    """A record that cannot be typed, with the reason and its cleaned raw JSON."""

    entity: str
    # the full readable id: it is what the run marks seen
    source_id: str | None
    reason: str
    raw: Any
    # the job whose task list listed it; None for a job (its scope is the account)
    scope: str | None = None


@dataclass(kw_only=True)
class TaskRows:
    """The rows one task contributes to the task, metric and checkpoint tables."""

    task: dict[str, Any]
    metrics: list[dict[str, Any]] = field(default_factory=list)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    # The JSON text of task["raw"], made while cleaning it, so the loader can reuse it.
    raw_json: str = field(default="", compare=False, repr=False)

    @property
    def task_id(self) -> str:
        return str(self.task["task_id"])


@dataclass(frozen=True, kw_only=True)
class Unchanged:
    """A listed task stored with this very content: nothing of it is typed or written. Its
    hash is the stored one, which may be a legacy hash of the same record."""

    task_id: str
    content_hash: str


def is_lean(raw: Any) -> bool:
    """Whether a listed task says nothing of its children: both keys absent (not empty)."""
    return isinstance(raw, dict) and not any(key in raw for key in CHILD_KEYS)


def enriched(raw: dict[str, Any], detail: Any) -> dict[str, Any]:
    """A lean task with the children its detail carries (the SDK's defaults when absent)."""
    detail = detail if isinstance(detail, dict) else {}
    return {**raw, **{key: detail.get(key, {} if key == "metrics" else []) for key in CHILD_KEYS}}


def parse_time(value: Any) -> datetime | None:
    """An ISO-8601 string as an aware UTC datetime (naive means UTC); else None."""
    if not isinstance(value, str) or value.startswith(TIME_SENTINEL):
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
        if parsed.tzinfo is None:
            return parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def parse_percent(value: Any) -> float | None:
    """A percent string or number, already on the 0-100 scale, as a finite float; else None."""
    if isinstance(value, str):
        value = value.strip().removesuffix("%")
    return _finite(value)


def job_to_row(raw: Any) -> dict[str, Any] | Reject:
    """One raw job as a finetune_jobs row, or a Reject."""
    return record_to_row(JOBS, raw)


def record_to_row(resource: Resource, raw: Any) -> dict[str, Any] | Reject:
    """One raw record of a resource without children as its row, or a Reject."""
    entity, id_field = resource.entity, resource.id_field
    try:
        digest = content_hash(raw)
        cleaned = cleaned_json(raw)[0]
        record_id = _record_id(raw, entity, id_field)
    except Untypable as exc:
        return _reject(entity, raw, id_field, exc)
    row = {resource.key: record_id, **_fields(resource, raw)}
    return row | {"raw": cleaned, "content_hash": digest}


def _fields(resource: Resource, raw: dict[str, Any]) -> dict[str, Any]:
    """The declared fields of a raw record, by column."""
    return {column: read(raw) for column, read in _readers(resource)}


@cache
def _readers(resource: Resource) -> tuple[tuple[str, Callable[[dict[str, Any]], Any]], ...]:
    """Each declared field's column and reader, made once per resource: this runs per task."""
    return tuple((column, _reader(spec)) for column, spec in resource.fields.items())


def _reader(spec: Field) -> Callable[[dict[str, Any]], Any]:
    read, keys = _READ[spec.kind], spec.keys
    if len(keys) == 1:
        return lambda raw: read(raw.get(keys[0]))
    return lambda raw: read(_first(raw, *keys))


def progress_to_row(task_id: str, detail: Any) -> dict[str, Any]:
    """A Running task's live progress from its detail: `"40%"` → 40.0 (else NULL), vdlLink."""
    detail = detail if isinstance(detail, dict) else {}
    return {
        "task_id": clean_text(task_id),
        "run_progress": parse_percent(detail.get("runProgress")),
        "vdl_link": _text(detail, "vdlLink"),
    }


@dataclass(frozen=True, kw_only=True)
class PreparedTask:
    """A raw task with what every run needs of it: its id and content hash; and its rows, if
    it was typed ahead."""

    raw: Any
    task_id: str | None
    digest: str
    typed: "TaskRows | Reject | None" = None


def prepare_task(raw: Any, digest: str | None = None) -> PreparedTask:
    """The cheap first step: enough to tell whether a task changed since it was stored.

    A `digest` given stands for the record's own (a lean listing's enrichment decides it).
    """
    task_id = readable_id(raw, TASKS.id_field)
    try:
        digest = digest or content_hash(raw)
    except Untypable as exc:
        reject = _reject(TASKS.entity, raw, TASKS.id_field, exc)
        return PreparedTask(raw=raw, task_id=task_id, digest="", typed=reject)
    return PreparedTask(raw=raw, task_id=task_id, digest=digest)


def typed_ahead(prepared: PreparedTask, job_id: str) -> PreparedTask:
    """The task typed now, as listed by `job_id`, before its stored hash is known: worth it
    when most tasks change (README, Performance)."""
    if prepared.typed is not None:
        return prepared
    return replace(prepared, typed=task_to_rows(prepared, job_id))


def task_to_rows(raw: Any, job_id: str) -> TaskRows | Reject:
    """One raw (or prepared) task of the listed job `job_id` as rows, or a Reject."""
    prepared = raw if isinstance(raw, PreparedTask) else prepare_task(raw)
    if isinstance(prepared.typed, Reject):
        return prepared.typed
    raw, digest = prepared.raw, prepared.digest
    try:
        cleaned, text = cleaned_json(raw)
        task_id = _record_id(raw, TASKS.entity, TASKS.id_field)
        metrics = _metric_rows(task_id, raw.get("metrics"))
        checkpoints = _checkpoint_rows(task_id, raw.get("checkpointList"))
    except Untypable as exc:
        return _reject(TASKS.entity, raw, TASKS.id_field, exc)
    task = {
        "task_id": task_id,
        "job_id": clean_text(job_id),
        **_fields(TASKS, raw),
        "raw": cleaned,
        "content_hash": digest,
    }
    return TaskRows(task=task, metrics=metrics, checkpoints=checkpoints, raw_json=text)


def tasks_to_rows(
    raws: Iterable[Any], job_id: str, known: Mapping[str, str] | None = None
) -> tuple[list[TaskRows | Unchanged], list[Reject]]:
    """Rows and rejects for one job's tasks; for a repeated taskId the last copy wins.

    Items may be raw tasks or PreparedTasks. `known` maps task ids to the content hash already
    stored: a task whose hash matches is not typed again, and comes back as Unchanged.
    """
    latest: dict[str, TaskRows | Unchanged | Reject] = {}
    anonymous: list[Reject] = []
    for raw in raws:
        prepared = raw if isinstance(raw, PreparedTask) else prepare_task(raw)
        result = _unchanged(prepared, known) or prepared.typed or task_to_rows(prepared, job_id)
        if isinstance(result, TaskRows | Unchanged):
            latest[result.task_id] = result
        elif result.source_id is not None:
            latest[result.source_id] = result
        else:
            anonymous.append(result)
    rows = [r for r in latest.values() if not isinstance(r, Reject)]
    rejects = [r for r in latest.values() if isinstance(r, Reject)]
    return rows, anonymous + rejects


def _unchanged(task: PreparedTask, known: Mapping[str, str] | None) -> Unchanged | None:
    """The task, if its stored hash matches (stored once, so it typed cleanly)."""
    if not known or task.task_id is None:
        return None
    stored = known.get(task.task_id)
    if stored is None or not same_content(stored, task.digest, task.raw):
        return None
    return Unchanged(task_id=task.task_id, content_hash=stored)


def _record_id(raw: Any, entity: str, key: str) -> str:
    """The cleaned, non-empty string id of a record, or raise Untypable."""
    if not isinstance(raw, dict):
        raise Untypable(f"{entity} is not an object: {_show(raw)}")
    value = raw.get(key)
    if value is None:
        raise Untypable(f"{key} is missing")
    if not isinstance(value, str):
        raise Untypable(f"{key} is not a string: {_show(value)}")
    cleaned = clean_text(value)
    if not cleaned:
        raise Untypable(f"{key} is empty")
    return _key_text(cleaned, key)


def _key_text(text: str, what: str) -> str:
    """The text of an index key, or raise Untypable when it is longer than MAX_ID_BYTES."""
    # Four bytes per character at most: most keys are measured without encoding them.
    if len(text) * 4 > MAX_ID_BYTES and len(text.encode()) > MAX_ID_BYTES:
        raise Untypable(
            f"{what} is {len(text.encode())} bytes long, more than the {MAX_ID_BYTES} a key may "
            f"have: {_show(text)}"
        )
    return text


def _reject(entity: str, raw: Any, key: str, error: Untypable) -> Reject:
    """A Reject with its full readable id and a raw value that can be stored: a bounded excerpt
    of the JSON text in place of a record nested too deep to store."""
    source_id = readable_id(raw, key)
    try:
        stored = excerpt(raw) if isinstance(error, TooDeep) else cleaned_json(raw)[0]
    except TooDeep:
        stored = excerpt(raw)
    return Reject(entity=entity, source_id=source_id, reason=str(error), raw=stored)


def readable_id(raw: Any, key: str) -> str | None:
    """The record's id for a Reject, when it is a non-empty string."""
    value = raw.get(key) if isinstance(raw, dict) else None
    return (clean_text(value) or None) if isinstance(value, str) else None


def _metric_rows(task_id: str, metrics: Any) -> list[dict[str, Any]]:
    """One row per metric name; names equal after cleaning collapse, the last wins."""
    if metrics is None:
        return []
    if not isinstance(metrics, dict):
        raise Untypable(f"metrics is not an object: {_show(metrics)}")
    rows: dict[str, dict[str, Any]] = {}
    for key, value in metrics.items():
        name = _key_text(clean_key(key), "metric name")
        # Parse what is stored, so value_percent always agrees with value_raw.
        value = clean_text(value) if isinstance(value, str) else value
        rows[name] = {
            "task_id": task_id,
            "metric_name": name,
            "value_percent": parse_percent(value),
            "value_raw": _value_text(value),
        }
    return list(rows.values())


def _checkpoint_rows(task_id: str, checkpoints: Any) -> list[dict[str, Any]]:
    """One row per distinct step, the last wins, sorted by step."""
    if checkpoints is None:
        return []
    if not isinstance(checkpoints, list):
        raise Untypable(f"checkpointList is not a list: {_show(checkpoints)}")
    by_step: dict[int, dict[str, Any]] = {}
    # This loop runs for every checkpoint, most rows of a load: an int step in range, the
    # common case, skips the parser (and the f-string naming where it is).
    for i, item in enumerate(checkpoints):
        if not isinstance(item, dict):
            raise Untypable(f"checkpointList[{i}] is not an object: {_show(item)}")
        step, loss, perplexity = item.get("step"), item.get("trainingLoss"), item.get("perplexity")
        if type(step) is not int or not BIGINT_MIN <= step <= BIGINT_MAX:
            step = _step(step, f"checkpointList[{i}].step")
        by_step[step] = {
            "task_id": task_id,
            "step": step,
            "training_loss": _finite(loss),
            "perplexity": _finite(perplexity),
        }
    return [by_step[step] for step in sorted(by_step)]


def _step(value: Any, where: str) -> int:
    """A checkpoint step as a bigint, or raise Untypable: the step is part of the key."""
    step = _integer(value)
    if step is None:
        raise Untypable(f"{where} is not an integer: {_show(value)}")
    if not BIGINT_MIN <= step <= BIGINT_MAX:
        raise Untypable(f"{where} is out of range: {_show(value)}")
    return step


def _clean_text(value: Any) -> str | None:
    return clean_text(value) if isinstance(value, str) else None


def _text(raw: dict[str, Any], key: str) -> str | None:
    """The cleaned string at `key`, or None when absent or not a string."""
    value = raw.get(key)
    return clean_text(value) if isinstance(value, str) else None


def _first(raw: dict[str, Any], *keys: str) -> Any:
    """The value of the first key that is present and not null."""
    return next((raw[k] for k in keys if raw.get(k) is not None), None)


def _integer(value: Any) -> int | None:
    """An int, an integral float or a string of digits as an int; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        try:
            return int(value)
        except ValueError:  # beyond Python's int-from-str digit limit
            return None
    return None


def _bigint(value: Any) -> int | None:
    """An integer that fits a Postgres bigint; else None."""
    number = _integer(value)
    return number if number is not None and BIGINT_MIN <= number <= BIGINT_MAX else None


def _finite(value: Any) -> float | None:
    """A number or numeric string as a finite float; else None."""
    if type(value) is float:  # the common case, checked first: this runs per checkpoint
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        value = value.strip()
        if not _NUMBER.fullmatch(value):
            return None
    elif isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        return None
    return number if math.isfinite(number) else None


def _value_text(value: Any) -> str | None:
    """A metric value as received, as text."""
    if value is None:
        return None
    if isinstance(value, str):
        return clean_text(value)
    return clean_text(json.dumps(value, ensure_ascii=False))


# How each kind of declared field (etl.resources.Field) is read from its raw value.
_READ: dict[str, Callable[[Any], Any]] = {
    "text": _clean_text,
    "time": parse_time,
    "bigint": _bigint,
}


def _show(value: Any) -> str:
    """A short, clean repr of a value for a reject reason."""
    text = clean_text(repr(value))
    return text if len(text) <= 80 else text[:77] + "..."
