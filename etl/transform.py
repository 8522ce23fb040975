"""Raw Qianfan job and task dicts to typed rows for each table: pure functions, no I/O."""

import hashlib
import json
import marshal
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

# Unfinished tasks carry this instead of a finish time.
TIME_SENTINEL = "0000-00-00"
BIGINT_MIN, BIGINT_MAX = -(2**63), 2**63 - 1

# ASCII digits only: float()/int() would also take "1_000" and non-Latin digits.
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_INTEGER = re.compile(r"[+-]?\d+", re.ASCII)
# In a Python str every surrogate code point is unpaired and cannot be encoded as UTF-8.
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class Reject:
    """A record that cannot be typed, with the reason and its cleaned raw JSON."""

    entity: str
    source_id: str | None
    reason: str
    raw: Any


@dataclass
class TaskRows:
    """The rows one task contributes to the task, metric and checkpoint tables."""

    task: dict[str, Any]
    metrics: list[dict[str, Any]] = field(default_factory=list)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    # The JSON text of task["raw"], made while cleaning it, so the loader can reuse it.
    raw_json: str = field(default="", compare=False, repr=False)


class _Untypable(ValueError):
    """Raised inside this module; its message becomes the reject reason."""


def clean_text(value: str) -> str:
    """Strip NUL characters and replace lone surrogates with U+FFFD."""
    if value.isascii():  # most text, and it cannot hold a surrogate
        return value.replace("\x00", "")
    return _SURROGATE.sub("\ufffd", value.replace("\x00", ""))


def clean_json(value: Any) -> Any:
    """Deep copy with every string and key cleaned and non-finite floats as their repr."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {_clean_key(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return value


def content_hash(raw: Any) -> str:
    """SHA-256 hex of the record exactly as received: equal records, equal hashes."""
    # marshal format 2 writes floats in binary and uses no back-references, so the same JSON
    # value always gives the same bytes, six times faster than a canonical json.dumps.
    return hashlib.sha256(marshal.dumps(raw, 2)).hexdigest()


def cleaned_json(raw: Any) -> tuple[Any, str]:
    """The cleaned record and its JSON text, without a deep copy unless one is needed."""
    # Most records are clean: one orjson dump proves it and is the text to store. Only
    # records with a NUL, a lone surrogate, a NaN or infinity, or a huge int pay for the walk.
    text = faithful_json(raw)
    if text is not None and "\\u0000" not in text:
        return raw, text
    cleaned = clean_json(raw)
    return cleaned, _json_text(cleaned)


def faithful_json(value: Any) -> str | None:
    """orjson's text for a value, or None where it would not be exact."""
    try:
        data = orjson.dumps(value)  # refuses lone surrogates and ints beyond 64 bits
    except TypeError:
        return None
    # orjson writes NaN and infinity as null; a record with a null proves it has none of those
    # by reading back equal (~20x faster than json.dumps, which checks as it writes).
    if b"null" in data and orjson.loads(data) != value:
        return None
    return data.decode()


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
    cleaned = cleaned_json(raw)[0]
    try:
        job_id = _record_id(raw, "job", "jobId")
    except _Untypable as exc:
        return Reject("job", _readable_id(raw, "jobId"), str(exc), cleaned)
    return {
        "job_id": job_id,
        "name": _text(raw, "name"),
        "description": _text(raw, "description"),
        "model": _text(raw, "model"),
        "train_mode": _text(raw, "trainMode"),
        "create_time": parse_time(_first(raw, "createTime", "createDate")),
        "raw": cleaned,
        "content_hash": content_hash(raw),
    }


def progress_to_row(task_id: str, detail: Any) -> dict[str, Any]:
    """A Running task's live progress from its detail: `"40%"` → 40.0 (else NULL), vdlLink."""
    detail = detail if isinstance(detail, dict) else {}
    return {
        "task_id": clean_text(task_id),
        "run_progress": parse_percent(detail.get("runProgress")),
        "vdl_link": _text(detail, "vdlLink"),
    }


@dataclass(frozen=True)
class PreparedTask:
    """A raw task with what every run needs of it: its id and content hash; and its rows, if
    it was typed ahead."""

    raw: Any
    task_id: str | None
    digest: str
    typed: "TaskRows | Reject | None" = None


def prepare_task(raw: Any, job_id: str | None = None) -> PreparedTask:
    """The cheap first step: enough to tell whether a task changed since it was stored.

    Given the listed job's id, the task is typed now too: worth it when most tasks change.
    """
    task_id, digest = _readable_id(raw, "taskId"), content_hash(raw)
    prepared = PreparedTask(raw, task_id, digest)
    if job_id is None:
        return prepared
    return PreparedTask(raw, task_id, digest, task_to_rows(prepared, job_id))


def task_to_rows(raw: Any, job_id: str) -> TaskRows | Reject:
    """One raw (or prepared) task of the listed job `job_id` as rows, or a Reject."""
    prepared = raw if isinstance(raw, PreparedTask) else prepare_task(raw)
    raw, digest = prepared.raw, prepared.digest
    cleaned, text = cleaned_json(raw)
    try:
        task_id = _record_id(raw, "task", "taskId")
        metrics = _metric_rows(task_id, raw.get("metrics"))
        checkpoints = _checkpoint_rows(task_id, raw.get("checkpointList"))
    except _Untypable as exc:
        return Reject("task", prepared.task_id, str(exc), cleaned)
    task = {
        "task_id": task_id,
        "job_id": clean_text(job_id),
        "job_name": _text(raw, "jobName"),
        "job_description": _text(raw, "jobDescription"),
        "model": _text(raw, "model"),
        "train_mode": _text(raw, "trainMode"),
        "parameter_scale": _text(raw, "parameterScale"),
        "run_status": _text(raw, "runStatus"),
        "create_time": parse_time(_first(raw, "createTime", "createDate")),
        "finish_time": parse_time(_first(raw, "finishTime", "finishDate")),
        "error_code": _bigint(raw.get("errorCode")),
        "error_message": _text(raw, "errorMessage"),
        "raw": cleaned,
        "content_hash": digest,
    }
    return TaskRows(task, metrics, checkpoints, text)


def tasks_to_rows(
    raws: Iterable[Any], job_id: str, known: Mapping[str, str] | None = None
) -> tuple[list[TaskRows], list[Reject]]:
    """Rows and rejects for one job's tasks; for a repeated taskId the last copy wins.

    Items may be raw tasks or PreparedTasks. `known` maps task ids to the content hash already
    stored: a task whose hash matches is not typed again, and comes back as a stub carrying
    only `task_id` and `content_hash`.
    """
    latest: dict[str, TaskRows | Reject] = {}
    anonymous: list[Reject] = []
    for raw in raws:
        prepared = raw if isinstance(raw, PreparedTask) else prepare_task(raw)
        result = (
            _unchanged_stub(prepared, known) or prepared.typed or task_to_rows(prepared, job_id)
        )
        if isinstance(result, TaskRows):
            latest[result.task["task_id"]] = result
        elif result.source_id is not None:
            latest[result.source_id] = result
        else:
            anonymous.append(result)
    rows = [r for r in latest.values() if isinstance(r, TaskRows)]
    rejects = [r for r in latest.values() if isinstance(r, Reject)]
    return rows, anonymous + rejects


def _unchanged_stub(task: PreparedTask, known: Mapping[str, str] | None) -> TaskRows | None:
    """A stub for a task whose stored hash matches: stored once, so it typed cleanly."""
    if not known or task.task_id is None or known.get(task.task_id) != task.digest:
        return None
    return TaskRows({"task_id": task.task_id, "content_hash": task.digest})


def _record_id(raw: Any, entity: str, key: str) -> str:
    """The cleaned, non-empty string id of a record, or raise _Untypable."""
    if not isinstance(raw, dict):
        raise _Untypable(f"{entity} is not an object: {_show(raw)}")
    value = raw.get(key)
    if value is None:
        raise _Untypable(f"{key} is missing")
    if not isinstance(value, str):
        raise _Untypable(f"{key} is not a string: {_show(value)}")
    cleaned = clean_text(value)
    if not cleaned:
        raise _Untypable(f"{key} is empty")
    return cleaned


def _readable_id(raw: Any, key: str) -> str | None:
    """The record's id for a Reject, when it is a non-empty string."""
    value = raw.get(key) if isinstance(raw, dict) else None
    return (clean_text(value) or None) if isinstance(value, str) else None


def _metric_rows(task_id: str, metrics: Any) -> list[dict[str, Any]]:
    """One row per metric name; names equal after cleaning collapse, the last wins."""
    if metrics is None:
        return []
    if not isinstance(metrics, dict):
        raise _Untypable(f"metrics is not an object: {_show(metrics)}")
    rows: dict[str, dict[str, Any]] = {}
    for key, value in metrics.items():
        name = _clean_key(key)
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
        raise _Untypable(f"checkpointList is not a list: {_show(checkpoints)}")
    by_step: dict[int, dict[str, Any]] = {}
    # This loop runs for every checkpoint, most rows of a load: an int step in range, the
    # common case, skips the parser (and the f-string naming where it is).
    for i, item in enumerate(checkpoints):
        if not isinstance(item, dict):
            raise _Untypable(f"checkpointList[{i}] is not an object: {_show(item)}")
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
    """A checkpoint step as a bigint, or raise _Untypable: the step is part of the key."""
    step = _integer(value)
    if step is None:
        raise _Untypable(f"{where} is not an integer: {_show(value)}")
    if not BIGINT_MIN <= step <= BIGINT_MAX:
        raise _Untypable(f"{where} is out of range: {_show(value)}")
    return step


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


def _clean_key(key: Any) -> str:
    """A dict key as cleaned text; non-string keys as json.dumps would write them."""
    return clean_text(key if isinstance(key, str) else json.dumps(key))


def _show(value: Any) -> str:
    """A short, clean repr of a value for a reject reason."""
    text = clean_text(repr(value))
    return text if len(text) <= 80 else text[:77] + "..."


def _json_text(value: Any) -> str:
    """Compact JSON text, keys in the order received (for what orjson cannot write exactly)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
