"""A Qianfan-compatible fine-tuning API on 127.0.0.1 with seeded synthetic data and faults."""

import copy
import hashlib
import hmac
import json
import math
import random
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar, cast
from urllib.parse import parse_qsl, unquote, urlsplit

from etl.canonical import faithful_json
from etl.qianfan.pagination import id_of
from etl.qianfan.signing import AUTH_VERSION, signature
from etl.simulator_config import JOB_FAULTS, PAGINATION_FAULTS, SimulatorConfig

API_PATH = "/v2/finetuning"
# Not part of the API: what the simulator counted, for tests and the benchmark (GET; `?reset=1`
# starts the count afresh). The API's own path stays as faithful as before.
STATS_PATH = "/simulator/stats"
ACTIONS = ("DescribeFineTuningJobs", "DescribeFineTuningTasks", "DescribeFineTuningTask")
SENTINEL_TIME = "0000-00-00T00:00:00Z"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
MAX_FUTURE_SKEW = 300
MODELS = ("ERNIE-Speed-8K", "ERNIE-Lite-8K", "ERNIE-4.0-8K", "ERNIE-3.5-8K", "ERNIE-Tiny-8K")
TRAIN_MODES = ("SFT", "PostPretrain", "DPO", "KTO")
TEXT_MODES = frozenset({"SFT", "DPO", "KTO"})
SCALES = ("FullFineTuning", "LoRA", "PromptTuning")
UNFINISHED = ("Running", "Waiting")
OTHER_STATUSES = ("Running", "Failed", "Stopped", "Waiting")
METRIC_NAMES = ("BLEU-4", "ROUGE-1", "ROUGE-2", "ROUGE-L")
EPOCH = datetime(2024, 1, 1, tzinfo=UTC)


@dataclass
class Fault:
    """A misbehaviour applied to the next `times` requests for `action` (None: any action)."""

    kind: str  # "status" | "reset" | "legacy_error" | "raw_body" | "slow_body" | "short_body"
    action: str | None = None
    times: int = 1
    status: int = 500
    code: str | int | None = None
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    interval: float = 0.1
    message: str | None = None  # a "status" fault's error message (hostile text in tests)


@dataclass
class RecordedRequest:
    """One request as received; status 0 means the connection was reset."""

    action: str | None
    body: Any
    headers: dict[str, str]
    status: int


class ApiError(Exception):
    """A BCE v2 error response: HTTP status, string code, message, extra headers."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}


# --- dataset: lazy generation from the seed, overlays for upstream changes, paging ---


def _hex_id(prefix: str, seed: int, *parts: int) -> str:
    """A stable opaque id such as job-1a2b3c4d5e, different for every seed."""
    text = ":".join(str(part) for part in (seed, prefix, *parts))
    return f"{prefix}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


def _iso(moment: datetime) -> str:
    """ISO-8601 UTC with a Z, as the API writes times."""
    return moment.strftime(TIME_FORMAT)


def _epoch(config: SimulatorConfig) -> datetime:
    """When job 0 was created: EPOCH, or early enough that the last job's tasks (jobs an hour
    apart, tasks two minutes apart, finishing within a day) have all ended by `config.now`."""
    if config.now is None:
        return EPOCH
    span = timedelta(hours=config.jobs + 25, minutes=2 * config.tasks_per_job)
    return config.now.replace(microsecond=0) - span


def _time_keys(style: str, index: int) -> tuple[str, str]:
    """The create/finish field names a job (and its tasks) use under a field style."""
    sdk = style == "sdk" or (style == "mixed" and index % 2 == 1)
    return ("createDate", "finishDate") if sdk else ("createTime", "finishTime")


def _make_job(config: SimulatorConfig, index: int) -> dict[str, Any]:
    """The generated job number `index`."""
    rng = random.Random(f"{config.seed}:{index}")
    model, mode = rng.choice(MODELS), rng.choice(TRAIN_MODES)
    created = _epoch(config) + timedelta(hours=index, seconds=rng.randrange(60))  # before its tasks
    description = "" if rng.random() < 0.2 else f"Synthetic {mode} run {index} on {model}"
    return {
        "jobId": _hex_id("job", config.seed, index),
        "name": f"{mode.lower()}-{model.lower()}-{index:05d}",
        "description": description,
        "model": model,
        "trainMode": mode,
        _time_keys(config.field_style, index)[0]: _iso(created),
    }


def _make_checkpoints(rng: random.Random, count: int) -> list[dict[str, Any]]:
    """A decreasing loss curve at a fixed step interval; the last step may fall off it."""
    interval = rng.choice((10, 50, 100))
    steps = [interval * (k + 1) for k in range(count)]
    if steps and rng.random() < 0.5:
        steps[-1] = interval * (count - 1) + rng.randrange(1, interval)
    loss, points = rng.uniform(1.5, 3.0), []
    draw, exp = rng.random, math.exp
    for step in steps:
        loss *= 0.9 + (0.99 - 0.9) * draw()  # rng.uniform(0.9, 0.99), inlined: the same floats
        points.append(
            {"step": step, "perplexity": round(exp(loss), 4), "trainingLoss": round(loss, 4)}
        )
    return points


def _make_task(
    config: SimulatorConfig, job: dict[str, Any], index: int, number: int, done: bool
) -> dict[str, Any]:
    """Task `number` of job `index`; every draw happens whatever the status, so `done` is stable."""
    rng = random.Random(f"{config.seed}:{index}:{number}")
    status = "Done" if rng.random() < 0.8 else rng.choice(OTHER_STATUSES)
    status = "Done" if done else _steady_status(config, index, number, status)
    created = _epoch(config) + timedelta(
        hours=index, minutes=2 * number + 1, seconds=rng.randrange(60)
    )
    finished = created + timedelta(seconds=rng.randrange(600, 86400))
    checkpoints = _make_checkpoints(rng, config.checkpoints)
    kept = rng.randrange(len(checkpoints)) if checkpoints else 0
    metrics = {name: f"{rng.uniform(0, 100):.2f}%" for name in METRIC_NAMES}
    scale, error_code = rng.choice(SCALES), rng.choice((400120, 500001, 500002))
    create_key, finish_key = _time_keys(config.field_style, index)
    task: dict[str, Any] = {
        "taskId": _hex_id("task", config.seed, index, number),
        "jobId": job["jobId"],
        "jobName": job["name"],
        "jobDescription": job["description"],
        "model": job["model"],
        "trainMode": job["trainMode"],
        "parameterScale": scale,
        "runStatus": status,
        create_key: _iso(created),
        finish_key: SENTINEL_TIME if status in UNFINISHED else _iso(finished),
        "checkpointList": checkpoints if status == "Done" else [],
    }
    if status in ("Running", "Stopped", "Failed"):
        task["checkpointList"] = checkpoints[:kept]
    if status == "Done" and job["trainMode"] in TEXT_MODES:
        task["metrics"] = metrics
    if status == "Failed":
        task.update(errorCode=error_code, errorMessage=f"training aborted (code {error_code})")
    return task


def _steady_status(config: SimulatorConfig, index: int, number: int, drawn: str) -> str:
    """The drawn status, or under `running_jobs` the one that job's place gives it."""
    share = config.running_jobs
    if share is None:
        return drawn
    if math.floor((index + 1) * share) > math.floor(index * share):
        return "Running" if number == 0 else drawn
    return "Done" if drawn in UNFINISHED else drawn


def _finish_raw(task: dict[str, Any]) -> dict[str, Any]:
    """A put_task dict moved to Done: finish time now, metrics for text modes, no error."""
    done = {k: v for k, v in task.items() if k not in ("errorCode", "errorMessage")}
    done["runStatus"] = "Done"
    done["finishDate" if "finishDate" in task else "finishTime"] = _iso(datetime.now(UTC))
    if done.get("trainMode") in TEXT_MODES and "metrics" not in done:
        rng = random.Random(str(task.get("taskId")))
        done["metrics"] = {name: f"{rng.uniform(0, 100):.2f}%" for name in METRIC_NAMES}
    return done


@dataclass
class _Listing:
    """Where one client's walk through one list stands (reset by a request without marker)."""

    pages: int = 0
    first_next: str = ""


# Jobs whose generated task listing is kept between pages: a job of 50,000 tasks is listed in
# 500 pages, and generating it for each page made its listing quadratic.
LISTINGS_KEPT = 64


class _Dataset:
    """The account: generated jobs/tasks plus overlays. The task listings of the jobs listed
    last are kept until anything changes; other tasks are generated when read."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self._ids = [_hex_id("job", config.seed, i) for i in range(config.jobs)]
        self._index = {job_id: i for i, job_id in enumerate(self._ids)}
        self._job_cache: dict[int, dict[str, Any]] = {}  # jobs are small; tasks never cached
        self._job_overrides: dict[str, Any] = {}
        self._deleted_jobs: set[str] = set()
        self._added_jobs: list[Any] = []
        self._task_overrides: dict[str, Any] = {}
        self._deleted_tasks: set[str] = set()
        self._done_tasks: set[str] = set()
        self._added_tasks: dict[str, list[Any]] = {}
        # generated task id -> (job index, position in its job), built once
        self._task_places: dict[str, tuple[int, int]] = {}
        self._listings: dict[str, list[Any]] = {}  # job id -> its task listing, as last made

    def _base_job(self, index: int) -> dict[str, Any]:
        if index not in self._job_cache:
            self._job_cache[index] = _make_job(self.config, index)
        return self._job_cache[index]

    def _task_ids(self, index: int) -> list[str]:
        return [
            _hex_id("task", self.config.seed, index, n) for n in range(self.config.tasks_per_job)
        ]

    def job_listing(self) -> list[Any]:
        """Every listed job, in listing order."""
        base = [self.find_job(job_id) for job_id in self._ids if job_id not in self._deleted_jobs]
        return base + self._added_jobs

    def find_job(self, job_id: str) -> Any:
        """The listed job with this id, or None."""
        if job_id in self._index and job_id not in self._deleted_jobs:
            return self._job_overrides.get(job_id, self._base_job(self._index[job_id]))
        return next((raw for raw in self._added_jobs if id_of(raw, "jobId") == job_id), None)

    def task_listing(self, job_id: str) -> list[Any]:
        """Every listed task of a listed job, in listing order ([] for an unknown job); the
        caller must not change it."""
        if job_id not in self._listings:
            if len(self._listings) >= LISTINGS_KEPT:
                del self._listings[next(iter(self._listings))]
            self._listings[job_id] = self._made_listing(job_id)
        return self._listings[job_id]

    def changed(self) -> None:
        """Forget the kept listings: the account changed."""
        self._listings.clear()

    def _made_listing(self, job_id: str) -> list[Any]:
        job = self.find_job(job_id)
        if job is None:
            return []
        tasks: list[Any] = []
        if job_id in self._index:
            index = self._index[job_id]
            for number, task_id in enumerate(self._task_ids(index)):
                if task_id in self._task_overrides:
                    tasks.append(self._task_overrides[task_id])
                elif task_id not in self._deleted_tasks:
                    done = task_id in self._done_tasks
                    task = _make_task(self.config, self._base_job(index), index, number, done)
                    task.update(jobName=job.get("name"), jobDescription=job.get("description"))
                    tasks.append(task)
        return tasks + self._added_tasks.get(job_id, [])

    def locate_task(self, task_id: str) -> str:
        """The id of the listed job that lists this task (KeyError if none does)."""
        for job_id, raws in self._added_tasks.items():
            if self.find_job(job_id) is not None and any(
                id_of(raw, "taskId") == task_id for raw in raws
            ):
                return job_id
        index = self._generator_of(task_id)
        if index is None or self._ids[index] in self._deleted_jobs:
            raise KeyError(task_id)
        if task_id in self._deleted_tasks and task_id not in self._task_overrides:
            raise KeyError(task_id)
        return self._ids[index]

    def _place(self, task_id: str | None) -> tuple[int, int] | None:
        """Which job generated a task id, and where in its listing: a detail call must not
        generate (nor hash) the whole account."""
        if not self._task_places and self.config.tasks_per_job:
            for index in range(self.config.jobs):
                ids = self._task_ids(index)
                self._task_places.update((task_id, (index, n)) for n, task_id in enumerate(ids))
        return self._task_places.get(task_id) if task_id is not None else None

    def _generator_of(self, task_id: str | None) -> int | None:
        """The index of the job that generated this task id, or None."""
        place = self._place(task_id)
        return place[0] if place is not None else None

    def find_task(self, task_id: str) -> Any:
        """The listed task with this id, or None."""
        try:
            job_id = self.locate_task(task_id)
        except KeyError:
            return None
        generated = self._generated_task(job_id, task_id)
        if generated is not None:
            return generated
        listing = self.task_listing(job_id)
        return next((raw for raw in listing if id_of(raw, "taskId") == task_id), None)

    def _generated_task(self, job_id: str, task_id: str) -> Any:
        """The task as its job's listing gives it, when the job generated it and lists it
        first: made alone, since a detail call must not generate the whole job (the simulator's
        CPU is the client's in a benchmark). None when only the listing can tell."""
        index = self._index.get(job_id)
        if index is None or self._generator_of(task_id) != index:
            return None
        if task_id in self._task_overrides:
            return self._task_overrides[task_id]
        if task_id in self._deleted_tasks:
            return None
        job, number = self.find_job(job_id), self._task_places[task_id][1]
        done = task_id in self._done_tasks
        task = _make_task(self.config, self._base_job(index), index, number, done)
        task.update(jobName=job.get("name"), jobDescription=job.get("description"))
        return task

    def finish_task(self, task_id: str) -> None:
        job_id = self.locate_task(task_id)
        current = self.find_task(task_id)
        if task_id in self._task_overrides or job_id not in self._index:
            self.put_task(job_id, _finish_raw(current) if isinstance(current, dict) else current)
        else:
            self._done_tasks.add(task_id)

    def delete_task(self, task_id: str) -> None:
        job_id = self.locate_task(task_id)
        added = self._added_tasks.get(job_id, [])
        self._added_tasks[job_id] = [raw for raw in added if id_of(raw, "taskId") != task_id]
        if job_id in self._index and self._generator_of(task_id) == self._index[job_id]:
            self._task_overrides.pop(task_id, None)
            self._deleted_tasks.add(task_id)

    def delete_job(self, job_id: str) -> None:
        if self.find_job(job_id) is None:
            raise KeyError(job_id)
        self._job_overrides.pop(job_id, None)
        self._added_jobs = [raw for raw in self._added_jobs if id_of(raw, "jobId") != job_id]
        if job_id in self._index:
            self._deleted_jobs.add(job_id)

    def rename_job(self, job_id: str, name: str) -> None:
        job = self.find_job(job_id)
        if job is None:
            raise KeyError(job_id)
        self.put_job({**job, "name": name})
        for raw in self.task_listing(job_id):
            task_id = id_of(raw, "taskId")
            if task_id and (task_id in self._task_overrides or job_id not in self._index):
                self.put_task(job_id, {**raw, "jobName": name})

    def put_task(self, job_id: str, raw: Any) -> None:
        task_id = id_of(raw, "taskId")
        index = self._index.get(job_id)
        if task_id is not None and index is not None and self._generator_of(task_id) == index:
            self._task_overrides[task_id] = raw
            self._deleted_tasks.discard(task_id)
            return
        added = self._added_tasks.setdefault(job_id, [])
        for position, old in enumerate(added):
            if task_id is not None and id_of(old, "taskId") == task_id:
                added[position] = raw
                return
        added.append(raw)

    def remove_added(self, match: Callable[[Any], bool]) -> None:
        """Drop the hand-made jobs and tasks `match` picks (even those with no usable id)."""
        self._added_jobs = [raw for raw in self._added_jobs if not match(raw)]
        for job_id, raws in self._added_tasks.items():
            self._added_tasks[job_id] = [raw for raw in raws if not match(raw)]

    def put_job(self, raw: Any) -> None:
        job_id = id_of(raw, "jobId")
        if job_id in self._index:
            self._job_overrides[job_id] = raw
            self._deleted_jobs.discard(job_id)
            return
        for position, old in enumerate(self._added_jobs):
            if job_id is not None and id_of(old, "jobId") == job_id:
                self._added_jobs[position] = raw
                return
        self._added_jobs.append(raw)


def _page_params(body: dict[str, Any]) -> tuple[str, int, bool]:
    """marker, clamped maxKeys and pageReverse from a list request."""
    marker = body.get("marker") or ""
    max_keys = body.get("maxKeys", 10)
    reverse = body.get("pageReverse", False)
    if not isinstance(marker, str):
        raise ApiError(400, "InvalidParameter", "marker must be a string")
    if isinstance(max_keys, bool) or not isinstance(max_keys, int) or max_keys < 1:
        raise ApiError(400, "InvalidParameter", "maxKeys must be an integer >= 1")
    if not isinstance(reverse, bool):
        raise ApiError(400, "InvalidParameter", "pageReverse must be a boolean")
    return marker, min(max_keys, 100), reverse


def paginate(
    items: list[Any], id_key: str, body: dict[str, Any], mode: str | None, walk: _Listing
) -> tuple[list[Any], dict[str, Any]]:
    """One page after `marker` (exclusive) and its pageInfo, broken as `mode` says."""
    marker, max_keys, reverse = _page_params(body)
    walk.pages = walk.pages + 1 if marker else 1
    if mode == "empty_truncated_page" and marker:
        fresh = f"gap-{uuid.uuid4().hex[:10]}"
        return [], {"marker": marker, "maxKeys": max_keys, "isTruncated": True, "nextMarker": fresh}
    # items without a usable id still need a marker: their position in the unreversed list
    keyed = [(id_of(item, id_key) or f"#{pos}", item) for pos, item in enumerate(items)]
    if reverse:
        keyed.reverse()
    start = 0
    if marker:
        found = next((i for i, (key, _) in enumerate(keyed) if key == marker), None)
        if found is None:
            raise ApiError(400, "InvalidParameter", f"marker not found: {marker}")
        start = found if mode == "duplicate_across_pages" and max_keys > 1 else found + 1
    size = max_keys + max_keys // 2 + 1 if mode == "oversized_page" else max_keys
    chunk = keyed[start : start + size]
    truncated = start + size < len(keyed)
    info: dict[str, Any] = {
        "marker": marker,
        "maxKeys": max_keys,
        "isTruncated": truncated,
        "nextMarker": chunk[-1][0] if truncated else "",
    }
    _break_page_info(info, mode, marker, walk)
    return [item for _, item in chunk], info


def _break_page_info(info: dict[str, Any], mode: str | None, marker: str, walk: _Listing) -> None:
    """Apply a pagination fault to an honest pageInfo."""
    if walk.pages == 1:
        walk.first_next = info["nextMarker"]
    if mode == "missing_next_marker":  # on every page, so a one-page listing breaks too
        info["isTruncated"] = True
        del info["nextMarker"]
    elif mode == "repeat_marker" and walk.pages >= 2:
        info.update(isTruncated=True, nextMarker=marker)
    elif mode == "marker_cycle" and walk.pages >= 3 and walk.pages % 2 == 1:
        # pages 3, 5, 7 … point back to page 1's nextMarker: A → B → A → B …
        info.update(isTruncated=True, nextMarker=walk.first_next)
    elif mode == "truncated_as_string":
        info["isTruncated"] = "true" if info["isTruncated"] else "false"


# --- auth: bce-auth-v1 verification ---


def _auth_error(status: int, code: str, message: str) -> ApiError:
    return ApiError(
        status, code, message, {"X-Bce-Error-Code": code, "X-Bce-Error-Message": message}
    )


def verify_authorization(
    config: SimulatorConfig, path: str, query: dict[str, str], headers: Message, now: float
) -> None:
    """Raise the ApiError BCE would answer for this request's Authorization, if any."""
    parts = (headers.get("Authorization") or "").split("/")
    if len(parts) != 6 or parts[0] != AUTH_VERSION:
        raise _auth_error(400, "InvalidHTTPAuthHeader", "malformed or missing Authorization")
    _, access_key, stamp, expiration, signed, digest = parts
    try:
        signed_at = datetime.strptime(stamp, TIME_FORMAT).replace(tzinfo=UTC).timestamp()
        ttl = int(expiration)
    except ValueError:
        raise _auth_error(400, "InvalidHTTPAuthHeader", "bad timestamp or expiration") from None
    if access_key != config.access_key:
        raise _auth_error(403, "InvalidAccessKeyId", "unknown access key")
    names = signed.split(";")
    if "host" not in names or "x-bce-date" not in names or headers.get("x-bce-date") != stamp:
        raise _auth_error(400, "InvalidHTTPAuthHeader", "host and x-bce-date must be signed")
    if now - signed_at > ttl or signed_at - now > MAX_FUTURE_SKEW:
        raise _auth_error(400, "RequestExpired", f"request timestamp {stamp} out of range")
    values = {name: headers.get(name) or "" for name in names}
    prefix = f"{AUTH_VERSION}/{access_key}/{stamp}/{expiration}"
    expected = signature(config.secret_key, prefix, "POST", path, query, values)
    if not hmac.compare_digest(expected, digest):
        raise _auth_error(403, "SignatureDoesNotMatch", "signature does not match")


# --- the simulator: dataset + faults + observation behind one lock ---


class CallStats:
    """Requests received on the API path, counted by action, and how many were in flight at
    once (from the request read to the response written, latency included)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_flight: dict[str, int] = {}
        self.calls: dict[str, int] = {}
        self.max_in_flight = 0
        self.max_by_action: dict[str, int] = {}
        self.busy_s = 0.0  # the requests' seconds, summed: / wall time = the mean in flight

    def reset(self) -> None:
        """Start counting afresh (requests in flight stay counted as in flight)."""
        with self._lock:
            self.calls, self.max_by_action = {}, {}
            self.max_in_flight = sum(self._in_flight.values())
            self.busy_s = 0.0

    def enter(self, action: str) -> None:
        """A request for `action` arrived."""
        with self._lock:
            self.calls[action] = self.calls.get(action, 0) + 1
            self._in_flight[action] = self._in_flight.get(action, 0) + 1
            self.max_in_flight = max(self.max_in_flight, sum(self._in_flight.values()))
            busy = max(self.max_by_action.get(action, 0), self._in_flight[action])
            self.max_by_action[action] = busy

    def leave(self, action: str, seconds: float) -> None:
        """The request for `action` was answered (or its connection reset) after `seconds`."""
        with self._lock:
            self._in_flight[action] -= 1
            self.busy_s += seconds

    def snapshot(self) -> dict[str, Any]:
        """The counts as JSON: calls by action, their total, the most in flight at once."""
        with self._lock:
            return {
                "calls": dict(self.calls),
                "total": sum(self.calls.values()),
                "in_flight": sum(self._in_flight.values()),
                "max_in_flight": self.max_in_flight,
                "max_in_flight_by_action": dict(self.max_by_action),
                "busy_s": self.busy_s,
            }


class Simulator:
    """The fake Qianfan account; its methods are the test oracle and the upstream changes."""

    # under a pagination fault, a walk longer than this gets 500s: a client that follows the
    # broken markers blindly cannot spin forever
    max_pages = 1000

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config or SimulatorConfig()
        if self.config.field_style not in ("seed", "sdk", "mixed"):
            raise ValueError(f"unknown field_style {self.config.field_style!r}")
        self._data = _Dataset(self.config)
        self._lock = threading.RLock()
        self._faults: list[tuple[Fault, list[int]]] = []
        self._walks: dict[tuple[str, str], _Listing] = {}
        self.requests: list[RecordedRequest] = []
        self.pagination_fault: str | None = None
        self.pagination_fault_action: str | None = None
        # job id -> fault of that job's task listing (JOB_FAULTS; "slow" as "slow:SECONDS")
        self.job_faults: dict[str, str] = {}
        self._progress: dict[str, Any] = {}
        # action -> (list key, id key, records): further account-level listings, as a
        # resource declared beside jobs lists (tests of the extension point)
        self._listings: dict[str, tuple[str, str, list[Any]]] = {}
        self.stats = CallStats()

    @property
    def api_calls(self) -> int:
        """Requests received so far."""
        return len(self.requests)

    def jobs(self) -> list[Any]:
        """Every job the API lists right now, in listing order."""
        with self._lock:
            return _copy(self._data.job_listing())

    def tasks(self, job_id: str) -> list[Any]:
        """Every task the API lists for this job right now, in listing order."""
        with self._lock:
            return _copy(self._data.task_listing(job_id))

    def _mutate(self, change: Callable[..., None], *args: Any) -> None:
        with self._lock:
            try:
                change(*_copy(args))
            finally:
                self._data.changed()

    def finish_task(self, task_id: str) -> None:
        """Running/Waiting → Done with full checkpoints, metrics (text modes) and finish time."""
        self._mutate(self._data.finish_task, task_id)

    def delete_task(self, task_id: str) -> None:
        """Remove a task from its job's listing."""
        self._mutate(self._data.delete_task, task_id)

    def delete_job(self, job_id: str) -> None:
        """Remove a job (and so its tasks) from the listing."""
        self._mutate(self._data.delete_job, job_id)

    def rename_job(self, job_id: str, name: str) -> None:
        """Change a job's name and the jobName of its tasks."""
        self._mutate(self._data.rename_job, job_id, name)

    def put_task(self, job_id: str, raw: Any) -> None:
        """Replace the task with raw's taskId in this job, or append raw (any JSON value)."""
        self._mutate(self._data.put_task, job_id, raw)

    def put_job(self, raw: Any) -> None:
        """Replace the job with raw's jobId, or append raw (any JSON value) to the listing."""
        self._mutate(self._data.put_job, raw)

    def remove_added(self, match: Callable[[Any], bool]) -> None:
        """Remove the jobs and tasks added by put_job/put_task that `match` picks: how a test
        takes back a record whose id is a number, null, empty or missing."""
        with self._lock:
            self._data.remove_added(match)
            self._data.changed()

    def serve_listing(self, action: str, list_key: str, id_key: str, records: list[Any]) -> None:
        """Serve `action` as an account-level listing of these records under `list_key`,
        paginated by `id_key` like the job list (replacing what it served before)."""
        with self._lock:
            self._listings[action] = (list_key, id_key, _copy(records))
            self._walks.pop((action, ""), None)

    def serves(self, action: str) -> bool:
        """Whether the action is one this simulator answers."""
        with self._lock:
            return action in ACTIONS or action in self._listings

    def set_progress(self, task_id: str, value: Any) -> None:
        """What the detail call answers as runProgress while the task is Running (any JSON)."""
        with self._lock:
            self._progress[task_id] = copy.deepcopy(value)

    def inject(self, fault: Fault) -> None:
        """Arm a fault for the next `fault.times` matching requests."""
        with self._lock:
            self._faults.append((fault, [fault.times]))

    def take_fault(self, action: str | None) -> Fault | None:
        """The first armed fault matching this action, consuming one of its hits."""
        with self._lock:
            for fault, left in self._faults:
                if left[0] > 0 and fault.action in (None, action):
                    left[0] -= 1
                    return fault
        return None

    def record(self, request: RecordedRequest) -> None:
        """Keep a request for the tests."""
        with self._lock:
            self.requests.append(request)

    def result(self, action: str, body: dict[str, Any]) -> dict[str, Any]:
        """The `result` of a valid, authenticated call (raises ApiError)."""
        if action == "DescribeFineTuningTasks":
            return self._task_page(body)
        with self._lock:
            if action == "DescribeFineTuningJobs":
                return self._list(action, "", "jobList", "jobId", self._data.job_listing(), body)
            if action in self._listings:
                return self._list(action, "", *self._listings[action], body)
            return self._detail(body.get("taskId"))

    def _task_page(self, body: dict[str, Any]) -> dict[str, Any]:
        """One page of a job's tasks, with that job's fault applied."""
        job_id = body.get("jobId")
        if not isinstance(job_id, str) or not job_id:
            raise ApiError(400, "InvalidParameter", "jobId is required")
        with self._lock:
            kind, _, arg = self.job_faults.get(job_id, "").partition(":")
        if kind and kind not in JOB_FAULTS:
            raise ApiError(500, "InternalError", f"unknown job fault {kind!r}")
        if kind == "slow":
            time.sleep(float(arg or 1))  # outside the lock: other jobs are served meanwhile
        if kind == "500":
            raise ApiError(500, "InternalError", arg or "simulated failure of this job's listing")
        if kind == "403":
            raise ApiError(403, "AccessDenied", arg or "no permission on this job")
        with self._lock:
            if body.get("marker") and self._data.find_job(job_id) is None:
                raise ApiError(404, "ResourceNotFound", f"job {job_id} not found")
            tasks = self._data.task_listing(job_id)
            mode = kind if kind in PAGINATION_FAULTS else None
            page = self._list(
                "DescribeFineTuningTasks", job_id, "taskList", "taskId", tasks, body, mode
            )
            if kind == "deleted_mid_listing" and page["pageInfo"]["isTruncated"] is True:
                self._data.delete_job(job_id)
                self._data.changed()
            if self.config.lean_listings:
                page["taskList"] = [_lean(task) for task in page["taskList"]]
            return page

    def _list(
        self,
        action: str,
        scope: str,
        key: str,
        id_key: str,
        items: list[Any],
        body: dict[str, Any],
        job_mode: str | None = None,
    ) -> dict[str, Any]:
        walk = self._walks.setdefault((action, scope), _Listing())
        broken = self.pagination_fault or job_mode
        if broken and body.get("marker") and walk.pages >= self.max_pages:
            raise ApiError(500, "InternalError", "page limit exceeded")
        if self.pagination_fault not in PAGINATION_FAULTS | {None}:
            raise ApiError(500, "InternalError", f"unknown fault {self.pagination_fault!r}")
        wanted = self.pagination_fault_action in (None, action)
        mode = job_mode or (self.pagination_fault if wanted else None)
        page, info = paginate(items, id_key, body, mode, walk)
        return {key: page, "pageInfo": info}

    def _detail(self, task_id: Any) -> dict[str, Any]:
        if not isinstance(task_id, str) or not task_id:
            raise ApiError(400, "InvalidParameter", "taskId is required")
        task = self._data.find_task(task_id)
        if not isinstance(task, dict):
            raise ApiError(404, "ResourceNotFound", f"task {task_id} not found")
        # the SDK's defaults: a detail always carries both, lean listing or not
        detail = {"metrics": {}, "checkpointList": [], **task}
        detail["vdlLink"] = f"https://console.bce.baidu.com/qianfan/vdl/{task_id}"
        if task.get("runStatus") == "Running":
            done = len(task.get("checkpointList") or [])
            percent = f"{min(99, done * 100 // max(1, self.config.checkpoints))}%"
            detail["runProgress"] = self._progress.get(task_id, percent)
        return detail

    def serve(self, host: str = "127.0.0.1", port: int = 0) -> "SimulatorServer":
        """Start serving in a daemon thread."""
        return SimulatorServer(self, host, port)


# --- HTTP ---


def _lean(task: Any) -> Any:
    """A listed task as a lean listing gives it: without `metrics` and `checkpointList`."""
    if not isinstance(task, dict):
        return task
    return {k: v for k, v in task.items() if k not in ("metrics", "checkpointList")}


def _parse_body(payload: bytes) -> dict[str, Any] | None:
    """The JSON object sent ({} for an empty body), or None if it is not one."""
    try:
        body = json.loads(payload.decode("utf-8")) if payload.strip() else {}
    except (UnicodeDecodeError, ValueError):
        return None
    return body if isinstance(body, dict) else None


def _legacy_code(code: str | int | None) -> int:
    """The int error_code of an old-style error (500000, internal, unless given)."""
    if isinstance(code, int):
        return code
    return int(code) if code and code.isdigit() else 500000


_T = TypeVar("_T")


def _copy(value: _T) -> _T:
    """A deep copy; JSON nested deeper than copy.deepcopy can recurse is copied through json."""
    try:
        return copy.deepcopy(value)
    except RecursionError:
        copied: _T = json.loads(json.dumps(value))
        return copied


def _json_bytes(payload: Any) -> bytes:
    """The response body. orjson keeps the simulator's CPU off the client's in benchmarks
    (a real API server has machines of its own); json writes what orjson cannot exactly."""
    text = faithful_json(payload)
    return json.dumps(payload).encode() if text is None else text.encode()


def _error_body(request_id: str, code: str, message: str) -> bytes:
    return json.dumps({"requestId": request_id, "code": code, "message": message}).encode()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], simulator: Simulator) -> None:
        super().__init__(address, _Handler)
        self.simulator = simulator


class _Handler(BaseHTTPRequestHandler):
    """Order per request: latency, path, injected fault (a gateway in front of the service,
    so it hits before auth), auth, Action, JSON body, the call itself."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, the body waits for the client's
    # delayed ACK (40 ms on Linux), which would make every call look slow.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: tests read `Simulator.requests` instead."""

    def do_POST(self) -> None:
        self._handle(allowed=True)

    def do_GET(self) -> None:
        self._handle(allowed=False)

    do_PUT = do_DELETE = do_PATCH = do_GET

    def _handle(self, allowed: bool) -> None:
        sim = cast(_Server, self.server).simulator
        if urlsplit(self.path).path == STATS_PATH:
            return self._send_stats(sim)
        action = dict(parse_qsl(urlsplit(self.path).query)).get("Action") or ""
        sim.stats.enter(action)
        began = time.monotonic()
        try:
            self._serve(sim, allowed)
        finally:
            sim.stats.leave(action, time.monotonic() - began)

    def _send_stats(self, sim: Simulator) -> None:
        """The call counts, unrecorded and without latency; `?reset=1` resets them after."""
        length = int(self.headers.get("Content-Length") or 0)
        if length > 0:
            self.rfile.read(length)
        data = json.dumps(sim.stats.snapshot()).encode()
        if dict(parse_qsl(urlsplit(self.path).query)).get("reset"):
            sim.stats.reset()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _serve(self, sim: Simulator, allowed: bool) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        payload = self.rfile.read(length) if length > 0 else b""
        url = urlsplit(self.path)
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        self._action, self._body = query.get("Action"), _parse_body(payload)
        self._request_id = str(uuid.uuid4())
        time.sleep(sim.config.latency_ms / 1000)
        path = unquote(url.path)
        if path != API_PATH:
            return self._send_error(ApiError(404, "NotFound", f"no such path: {path}"))
        if not allowed:
            return self._send_error(ApiError(405, "MethodNotAllowed", f"use POST {API_PATH}"))
        fault = sim.take_fault(self._action)
        if fault is not None and fault.kind not in ("slow_body", "short_body"):
            return self._apply_fault(fault)
        status, data, headers = self._call(sim, path, query)
        if fault is not None and fault.body is not None:
            status, data, headers = 200, fault.body, {}
        if fault is not None and fault.kind == "short_body":
            return self._send(status, data, headers, short=True)
        self._send(status, data, headers, interval=fault.interval if fault else 0.0)

    def _call(
        self, sim: Simulator, path: str, query: dict[str, str]
    ) -> tuple[int, bytes, dict[str, str]]:
        try:
            verify_authorization(sim.config, path, query, self.headers, time.time())
            if self._action is None or not sim.serves(self._action):
                raise ApiError(400, "InvalidAction", f"unknown Action {self._action!r}")
            if self._body is None:
                raise ApiError(400, "InappropriateJSON", "the body is not a JSON object")
            result = sim.result(self._action, self._body)
        except ApiError as error:
            body = _error_body(self._request_id, error.code, error.message)
            return error.status, body, error.headers
        return 200, _json_bytes({"requestId": self._request_id, "result": result}), {}

    def _apply_fault(self, fault: Fault) -> None:
        if fault.kind == "reset":
            return self._reset()
        if fault.kind == "legacy_error":
            code = _legacy_code(fault.code)
            body = {"error_code": code, "error_msg": f"simulated legacy error {code}"}
            return self._send(200, json.dumps(body).encode())
        if fault.kind == "raw_body":
            return self._send(200, fault.body if fault.body is not None else b'{"result":')
        if fault.kind != "status":
            raise ValueError(f"unknown fault kind {fault.kind!r}")
        name = fault.code or ("TooManyRequests" if fault.status == 429 else "InternalError")
        data = fault.body
        if data is None:
            message = fault.message or f"simulated HTTP {fault.status}"
            data = _error_body(self._request_id, str(name), message)
        self._send(fault.status, data, fault.headers)

    def _send_error(self, error: ApiError) -> None:
        self._send(error.status, _error_body(self._request_id, error.code, error.message))

    def _send(
        self,
        status: int,
        data: bytes,
        extra: dict[str, str] | None = None,
        interval: float = 0.0,
        short: bool = False,
    ) -> None:
        sim = cast(_Server, self.server).simulator
        headers = {"Content-Type": "application/json", "x-bce-request-id": self._request_id}
        for name, value in (extra or {}).items():
            headers = {k: v for k, v in headers.items() if k.lower() != name.lower()}
            headers[name] = value
        # record first, so a test reading `requests` after the response sees this one
        sim.record(RecordedRequest(self._action, self._body, dict(self.headers.items()), status))
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if short:  # half the promised Content-Length, then the connection closes
            self.wfile.write(data[: len(data) // 2])
            self.close_connection = True
            return
        if interval <= 0:
            self.wfile.write(data)
            return
        try:
            for start in range(len(data)):
                self.wfile.write(data[start : start + 1])
                time.sleep(interval)
        except OSError:
            self.close_connection = True  # the client gave up on a slow body

    def _reset(self) -> None:
        sim = cast(_Server, self.server).simulator
        sim.record(RecordedRequest(self._action, self._body, dict(self.headers.items()), 0))
        # SO_LINGER 0: close() sends RST instead of FIN
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True


class SimulatorServer:
    """A running simulator on 127.0.0.1; a context manager."""

    def __init__(self, simulator: Simulator, host: str, port: int) -> None:
        self._httpd = _Server((host, port), simulator)
        self.url = f"http://{host}:{self._httpd.server_port}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        self._closed = False

    def serve_forever(self) -> None:
        """Block in the foreground until interrupted, then shut down."""
        try:
            while self._thread.is_alive():
                self._thread.join(0.5)
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        """Stop serving and close the socket (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def __enter__(self) -> "SimulatorServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
