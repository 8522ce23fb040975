"""Raw Qianfan job and task dicts to typed rows for each table: pure functions, no I/O."""

import hashlib
import json
import marshal
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

# Unfinished tasks carry this instead of a finish time.
TIME_SENTINEL = "0000-00-00"
BIGINT_MIN, BIGINT_MAX = -(2**63), 2**63 - 1
# Ids and metric names are index keys: Postgres refuses a btree entry over ~2,700 bytes, and a
# metric's key holds two of them. Longer ones are rejected on both backends alike.
MAX_ID_BYTES = 1024
# Objects and arrays nested deeper than this (the record itself is level 1) are rejected: it is
# the most orjson writes, and the recursive walks below stay far inside Python's stack.
MAX_DEPTH = 254
# A reject whose record cannot be stored keeps this much of its JSON text.
EXCERPT_CHARS = 2000
# Content hashes carry this prefix; a stored hash without one is a legacy (marshal) hash.
HASH_PREFIX = "j1:"
# A finished task of a lean listing, enriched from its detail call, is stored under its
# listing's hash with this prefix instead: a hash stored without enrichment never matches it.
LEAN_PREFIX = "l1:"
# Statuses a task does not leave; any other (`Running`, `Waiting`, `""`, NULL, one not yet
# known) may still change.
TERMINAL_STATUSES = ("Done", "Failed", "Stopped")
# The keys a lean listing leaves out of a task; only DescribeFineTuningTask carries them.
CHILD_KEYS = ("metrics", "checkpointList")

# ASCII digits only: float()/int() would also take "1_000" and non-Latin digits.
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_INTEGER = re.compile(r"[+-]?\d+", re.ASCII)
# In a Python str every surrogate code point is unpaired and cannot be encoded as UTF-8.
_SURROGATE = re.compile("[\ud800-\udfff]")
_CONTAINERS = (dict, list, tuple)
_SHAPES = {"e": "e", "E": "e", "+": "+", "-": "+", ".": "."}


@dataclass(frozen=True)
class Reject:
    """A record that cannot be typed, with the reason and its cleaned raw JSON."""

    entity: str
    # the full readable id: it is what the run marks seen
    source_id: str | None
    reason: str
    raw: Any
    # the job whose task list listed it; None for a job (its scope is the account)
    scope: str | None = None


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


class _TooDeep(_Untypable):
    """A record nested deeper than MAX_DEPTH: no walk may recurse into it."""

    def __init__(self) -> None:
        super().__init__(f"nested deeper than {MAX_DEPTH} levels of objects and arrays")


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
    """SHA-256 hex of the record's canonical JSON, prefixed with its version (HASH_PREFIX).

    The text is what the standard library's json module writes with sorted keys and no spaces:
    integers in decimal, floats as repr() (the shortest text that reads back as the same double,
    Python's rule since 3.1), strings with only JSON's mandatory escapes. It depends on the data
    alone, so neither a Python nor a library upgrade changes a hash. orjson writes the same
    bytes for most records, several times faster; it is used only where that is proven (see
    _orjson_canonical). Raises _TooDeep for a record nested deeper than MAX_DEPTH.
    """
    text = _orjson_canonical(raw)
    if text is None:
        text = _stdlib_canonical(raw)
    return HASH_PREFIX + hashlib.sha256(text).hexdigest()


def legacy_hash(raw: Any) -> str:
    """The hash releases before canonical JSON stored: SHA-256 of marshal format 2."""
    try:
        return hashlib.sha256(marshal.dumps(raw, 2)).hexdigest()
    except ValueError:  # nested too deep for marshal: no stored hash can match it
        return ""


def same_content(stored: str | None, digest: str, raw: Any) -> bool:
    """Whether a stored hash is this record's: equal, or a legacy hash of the same record.

    Legacy hashes stay until their record changes, so moving to canonical JSON writes nothing;
    the marshal hash is computed only for records that still have one."""
    if stored is None:
        return False
    if stored == digest:
        return True
    legacy = not stored.startswith((HASH_PREFIX, LEAN_PREFIX))
    return legacy and legacy_hash(raw) == stored


def is_lean(raw: Any) -> bool:
    """Whether a listed task says nothing of its children: both keys absent (not empty)."""
    return isinstance(raw, dict) and not any(key in raw for key in CHILD_KEYS)


def lean_hash(raw: Any) -> str | None:
    """The hash a finished lean task is stored under once enriched from this listing; None
    for a record that cannot be hashed (it is set aside when typed)."""
    try:
        return LEAN_PREFIX + content_hash(raw).removeprefix(HASH_PREFIX)
    except _Untypable:
        return None


def enriched(raw: dict[str, Any], detail: Any) -> dict[str, Any]:
    """A lean task with the children its detail carries (the SDK's defaults when absent)."""
    detail = detail if isinstance(detail, dict) else {}
    return {**raw, **{key: detail.get(key, {} if key == "metrics" else []) for key in CHILD_KEYS}}


def _orjson_canonical(value: Any) -> bytes | None:
    """orjson's sorted-key text where it is exactly the stdlib's canonical text, else None."""
    if not _ORJSON_AGREES:
        return None
    try:
        data = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # ints beyond 64 bits, lone surrogates, nesting past MAX_DEPTH
        return None
    if _own_notation(data):
        return None
    return data if _has_no_nan(data, value) else None


def _stdlib_canonical(value: Any) -> bytes:
    """The canonical text (see content_hash), from the json module; lone surrogates kept."""
    if _deeper_than(value, MAX_DEPTH):
        raise _TooDeep()
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return text.encode("utf-8", "surrogatepass")


# A bytes.translate table: digits become "0", e and E "e", + and - "+", "." stays, the rest " ".
_NUMBER_SHAPE = bytes(
    0x30 if chr(b).isdigit() and b < 128 else ord(_SHAPES.get(chr(b), " ")) for b in range(256)
)


def _own_notation(data: bytes) -> bool:
    """Whether orjson's text may hold a float in a notation of orjson's own: an exponent
    ("1e-7", where repr writes "1e-07") or a tiny float ("0.00005", repr "5e-05")."""
    # Strings merely looking alike ("1e+5" in a name) only cost the slower path. Two C passes,
    # no regex: this runs for every task hashed.
    return b"0.0000" in data or b"0e+0" in data.translate(_NUMBER_SHAPE)


def _orjson_agrees() -> bool:
    """Whether this orjson writes the probes exactly as the canonical stdlib text does
    (floats in plain notation, every ASCII character, non-ASCII text, key order), and writes
    exponents and tiny floats in a form _own_notation sends the stdlib way."""
    floats = [0.0, -0.0, 1.0, 123.0, 0.1, 0.0001, 0.00015000000000000001, 1234.5678, 2.5, 1e15]
    text = "".join(map(chr, range(128))) + "\u00e9\u2028\U0001f642\ufeff"
    probe = {"floats": floats, "text": text, "\ufffd": 1, "\U0001f642": 2, "\u00e9": 3, "B": [True]}
    others = [1e16, -1e16, 1e-7, 2.5e-05, 5e-05, 5e-324, 1.7976931348623157e308, 1e300]
    try:
        same = orjson.dumps(probe, option=orjson.OPT_SORT_KEYS) == _stdlib_canonical(probe)
        return same and all(_own_notation(orjson.dumps([x])) for x in others)
    except TypeError:
        return False


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether objects and arrays nest more than `limit` levels, found without recursion."""
    stack = [(value, 1)] if isinstance(value, _CONTAINERS) else []
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, _CONTAINERS))
    return False


_ORJSON_AGREES = _orjson_agrees()


def cleaned_json(raw: Any) -> tuple[Any, str]:
    """The cleaned record and its JSON text, without a deep copy unless one is needed.

    Raises _TooDeep for a record nested deeper than MAX_DEPTH."""
    # Most records are clean: one orjson dump proves it and is the text to store. Only
    # records with a NUL, a lone surrogate, a NaN or infinity, or a huge int pay for the walk.
    text = faithful_json(raw)
    if text is not None and "\\u0000" not in text:
        return raw, text
    if _deeper_than(raw, MAX_DEPTH):  # clean_json recurses
        raise _TooDeep()
    cleaned = clean_json(raw)
    return cleaned, _json_text(cleaned)


def faithful_json(value: Any) -> str | None:
    """orjson's text for a value, or None where it would not be exact."""
    try:
        data = orjson.dumps(value)  # refuses lone surrogates and ints beyond 64 bits
    except TypeError:
        return None
    return data.decode() if _has_no_nan(data, value) else None


def _has_no_nan(data: bytes, value: Any) -> bool:
    """Whether orjson's text `data` of `value` holds no NaN or infinity, which it writes as null.

    Text with a null proves it by reading back equal: far cheaper than json.dumps, which
    checks as it writes (README, Performance)."""
    return b"null" not in data or orjson.loads(data) == value


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
    try:
        digest = content_hash(raw)
        cleaned = cleaned_json(raw)[0]
        job_id = _record_id(raw, "job", "jobId")
    except _Untypable as exc:
        return _reject("job", raw, "jobId", exc)
    return {
        "job_id": job_id,
        "name": _text(raw, "name"),
        "description": _text(raw, "description"),
        "model": _text(raw, "model"),
        "train_mode": _text(raw, "trainMode"),
        "create_time": parse_time(_first(raw, "createTime", "createDate")),
        "raw": cleaned,
        "content_hash": digest,
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


def prepare_task(raw: Any, job_id: str | None = None, digest: str | None = None) -> PreparedTask:
    """The cheap first step: enough to tell whether a task changed since it was stored.

    Given the listed job's id, the task is typed now too: worth it when most tasks change.
    A `digest` given stands for the record's own (a lean listing's enrichment decides it).
    """
    task_id = _readable_id(raw, "taskId")
    try:
        digest = digest or content_hash(raw)
    except _Untypable as exc:
        return PreparedTask(raw, task_id, "", _reject("task", raw, "taskId", exc))
    prepared = PreparedTask(raw, task_id, digest)
    if job_id is None:
        return prepared
    return PreparedTask(raw, task_id, digest, task_to_rows(prepared, job_id))


def task_to_rows(raw: Any, job_id: str) -> TaskRows | Reject:
    """One raw (or prepared) task of the listed job `job_id` as rows, or a Reject."""
    prepared = raw if isinstance(raw, PreparedTask) else prepare_task(raw)
    if isinstance(prepared.typed, Reject):
        return prepared.typed
    raw, digest = prepared.raw, prepared.digest
    try:
        cleaned, text = cleaned_json(raw)
        task_id = _record_id(raw, "task", "taskId")
        metrics = _metric_rows(task_id, raw.get("metrics"))
        checkpoints = _checkpoint_rows(task_id, raw.get("checkpointList"))
    except _Untypable as exc:
        return _reject("task", raw, "taskId", exc)
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
    """A stub for a task whose stored hash matches (carrying that hash, which may be a legacy
    one): stored once, so it typed cleanly."""
    if not known or task.task_id is None:
        return None
    stored = known.get(task.task_id)
    if stored is None or not same_content(stored, task.digest, task.raw):
        return None
    return TaskRows({"task_id": task.task_id, "content_hash": stored})


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
    return _key_text(cleaned, key)


def _key_text(text: str, what: str) -> str:
    """The text of an index key, or raise _Untypable when it is longer than MAX_ID_BYTES."""
    # Four bytes per character at most: most keys are measured without encoding them.
    if len(text) * 4 > MAX_ID_BYTES and len(text.encode()) > MAX_ID_BYTES:
        raise _Untypable(
            f"{what} is {len(text.encode())} bytes long, more than the {MAX_ID_BYTES} a key may "
            f"have: {_show(text)}"
        )
    return text


def _reject(entity: str, raw: Any, key: str, error: _Untypable) -> Reject:
    """A Reject with its full readable id and a raw value that can be stored: a bounded excerpt
    of the JSON text in place of a record nested too deep to store."""
    source_id = _readable_id(raw, key)
    try:
        stored = excerpt(raw) if isinstance(error, _TooDeep) else cleaned_json(raw)[0]
    except _TooDeep:
        stored = excerpt(raw)
    return Reject(entity, source_id, str(error), stored)


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
        name = _key_text(_clean_key(key), "metric name")
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


def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> str:
    """The start of a value's JSON text, cleaned, at most `limit` characters (written without
    recursion, so any depth will do)."""
    pieces: list[str] = []
    size = 0
    for piece in _json_pieces(value):
        pieces.append(piece)
        size += len(piece)
        if size > limit:
            return "".join(pieces)[:limit] + "..."
    return "".join(pieces)


class _Punct(str):
    """Punctuation among _json_pieces' values, written as it is."""


def _json_pieces(value: Any) -> Iterator[str]:
    """A value's compact JSON text piece by piece, with a stack of iterators, not recursion."""
    stack: list[Iterator[Any]] = [iter((value,))]
    while stack:
        item = next(stack[-1], stack)  # the stack itself marks an exhausted iterator
        if item is stack:
            stack.pop()
        elif isinstance(item, _Punct):
            yield item
        elif isinstance(item, dict):
            yield "{"
            stack.append(_members(item))
        elif isinstance(item, list | tuple):
            yield "["
            stack.append(_elements(item))
        else:
            yield _json_text(clean_json(item))


def _members(value: dict[Any, Any]) -> Iterator[Any]:
    for i, (key, item) in enumerate(value.items()):
        yield _Punct(("," if i else "") + _json_text(_clean_key(key)) + ":")
        yield item
    yield _Punct("}")


def _elements(value: list[Any] | tuple[Any, ...]) -> Iterator[Any]:
    for i, item in enumerate(value):
        if i:
            yield _Punct(",")
        yield item
    yield _Punct("]")
