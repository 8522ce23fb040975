"""The simulator over real HTTP: paging, data shape, auth, faults, pagination faults, mutations."""

import json
import re
import time
import tracemalloc
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from etl.qianfan.signing import authorization, bce_timestamp
from etl.simulator import SENTINEL_TIME, Fault, Simulator, SimulatorConfig, SimulatorServer

JOBS, TASKS, TASK = "DescribeFineTuningJobs", "DescribeFineTuningTasks", "DescribeFineTuningTask"
AK, SK = "sim-access-key", "sim-secret-key"
PERCENT = re.compile(r"^\d{1,3}\.\d{2}%$")

Start = Callable[..., tuple[Simulator, SimulatorServer]]


@pytest.fixture
def start() -> Iterator[Start]:
    """Start simulators with any config; every one is shut down after the test."""
    servers: list[SimulatorServer] = []

    def run(**config: Any) -> tuple[Simulator, SimulatorServer]:
        sim = Simulator(SimulatorConfig(**config))
        servers.append(sim.serve())
        return sim, servers[-1]

    yield run
    for server in servers:
        server.shutdown()


def post(
    server: SimulatorServer,
    action: str,
    body: Any = None,
    *,
    access_key: str = AK,
    secret_key: str = SK,
    stamp: str | None = None,
    signed: tuple[str, ...] = ("host", "x-bce-date"),
    sign: bool = True,
    data: bytes | None = None,
) -> requests.Response:
    """One bce-auth-v1 signed POST, as the real client sends it."""
    stamp = stamp or bce_timestamp()
    headers = {
        "Host": server.url.removeprefix("http://"),
        "Content-Type": "application/json",
        "x-bce-date": stamp,
    }
    if sign:
        query = {"Action": action}
        headers["Authorization"] = authorization(
            access_key, secret_key, "POST", "/v2/finetuning", query, headers, stamp, 300, signed
        )
    payload = data if data is not None else json.dumps(body if body is not None else {}).encode()
    return requests.post(
        f"{server.url}/v2/finetuning",
        params={"Action": action},
        data=payload,
        headers=headers,
        timeout=5,
    )


def result(server: SimulatorServer, action: str, body: Any = None) -> dict[str, Any]:
    """The `result` of a call that must succeed."""
    response = post(server, action, body)
    assert response.status_code == 200, response.text
    payload: dict[str, Any] = response.json()
    assert payload["requestId"] == response.headers["x-bce-request-id"]
    return dict(payload["result"])


def list_all(server: SimulatorServer, action: str, key: str, **body: Any) -> list[Any]:
    """Every item of a listing, following nextMarker."""
    items: list[Any] = []
    marker = ""
    for _ in range(1000):
        page = result(server, action, {**body, "marker": marker})
        items += page[key]
        if not page["pageInfo"]["isTruncated"]:
            return items
        marker = page["pageInfo"]["nextMarker"]
    raise AssertionError("listing did not end")


def all_tasks(sim: Simulator) -> list[dict[str, Any]]:
    return [task for job in sim.jobs() for task in sim.tasks(job["jobId"])]


# --- listing and paging ---


def test_paging_lists_every_job_and_task(start: Start) -> None:
    sim, server = start(jobs=23, tasks_per_job=7, checkpoints=3)
    jobs = list_all(server, JOBS, "jobList", maxKeys=5)
    assert jobs == sim.jobs() and len(jobs) == 23
    for job in jobs:
        tasks = list_all(server, TASKS, "taskList", jobId=job["jobId"], maxKeys=3)
        assert tasks == sim.tasks(job["jobId"]) and len(tasks) == 7
        assert {task["jobId"] for task in tasks} == {job["jobId"]}
    assert sim.api_calls == len(sim.requests) == 5 + 23 * 3


def test_default_page_size_is_10_and_large_values_are_clamped_to_100(start: Start) -> None:
    sim, server = start(jobs=150, tasks_per_job=1, checkpoints=0)
    first = result(server, JOBS)
    assert first["jobList"] == sim.jobs()[:10]
    assert first["pageInfo"] == {
        "marker": "",
        "maxKeys": 10,
        "isTruncated": True,
        "nextMarker": sim.jobs()[9]["jobId"],
    }
    big = result(server, JOBS, {"maxKeys": 500})
    assert len(big["jobList"]) == 100 and big["pageInfo"]["maxKeys"] == 100
    rest = result(server, JOBS, {"maxKeys": 100, "marker": big["pageInfo"]["nextMarker"]})
    assert rest["jobList"] == sim.jobs()[100:]
    assert rest["pageInfo"]["isTruncated"] is False and rest["pageInfo"]["nextMarker"] == ""


def test_page_reverse_lists_backwards(start: Start) -> None:
    sim, server = start(jobs=12, tasks_per_job=5)
    jobs = list_all(server, JOBS, "jobList", maxKeys=5, pageReverse=True)
    assert jobs == sim.jobs()[::-1]
    job_id = jobs[0]["jobId"]
    tasks = list_all(server, TASKS, "taskList", jobId=job_id, maxKeys=2, pageReverse=True)
    assert tasks == sim.tasks(job_id)[::-1]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"maxKeys": 0}, "InvalidParameter"),
        ({"maxKeys": "10"}, "InvalidParameter"),
        ({"marker": "job-nope"}, "InvalidParameter"),
        ({"pageReverse": "yes"}, "InvalidParameter"),
    ],
)
def test_bad_page_parameters_are_400(start: Start, body: dict[str, Any], code: str) -> None:
    _, server = start()
    response = post(server, JOBS, body)
    assert response.status_code == 400 and response.json()["code"] == code


def test_task_listing_needs_a_job_id_and_unknown_jobs_are_empty(start: Start) -> None:
    _, server = start()
    response = post(server, TASKS, {})
    assert response.status_code == 400 and response.json()["code"] == "InvalidParameter"
    assert result(server, TASKS, {"jobId": "job-0000000000"})["taskList"] == []


def test_protocol_errors(start: Start) -> None:
    _, server = start()
    unknown = post(server, "DeleteEverything")
    assert unknown.status_code == 400 and unknown.json()["code"] == "InvalidAction"
    bad_json = post(server, JOBS, data=b'{"maxKeys": ')
    assert bad_json.status_code == 400 and bad_json.json()["code"] == "InappropriateJSON"
    array = post(server, JOBS, data=b"[]")
    assert array.json()["code"] == "InappropriateJSON"
    assert requests.get(f"{server.url}/v2/finetuning", timeout=5).status_code == 405
    other = requests.post(f"{server.url}/v1/other", timeout=5)
    assert (
        other.status_code == 404 and other.json()["requestId"] == other.headers["x-bce-request-id"]
    )


# --- data shape ---


def test_same_seed_same_data_other_seed_other_data() -> None:
    config: dict[str, Any] = {"jobs": 5, "tasks_per_job": 4, "checkpoints": 3}
    one, again = (
        Simulator(SimulatorConfig(seed=1, **config)),
        Simulator(SimulatorConfig(seed=1, **config)),
    )
    other = Simulator(SimulatorConfig(seed=2, **config))
    assert one.jobs() == again.jobs() and all_tasks(one) == all_tasks(again)
    assert {job["jobId"] for job in one.jobs()}.isdisjoint(job["jobId"] for job in other.jobs())
    assert {t["taskId"] for t in all_tasks(one)}.isdisjoint(t["taskId"] for t in all_tasks(other))
    assert all(re.fullmatch(r"job-[0-9a-f]{10}", job["jobId"]) for job in one.jobs())
    assert all(re.fullmatch(r"task-[0-9a-f]{10}", task["taskId"]) for task in all_tasks(one))


@pytest.mark.parametrize(
    ("style", "names"),
    [
        ("seed", {("createTime", "finishTime")}),
        ("sdk", {("createDate", "finishDate")}),
        ("mixed", {("createTime", "finishTime"), ("createDate", "finishDate")}),
    ],
)
def test_field_style_names_the_time_fields(style: str, names: set[tuple[str, str]]) -> None:
    sim = Simulator(SimulatorConfig(jobs=4, tasks_per_job=3, field_style=style))
    seen = set()
    for job in sim.jobs():
        create, finish = next(pair for pair in names if pair[0] in job)
        for task in sim.tasks(job["jobId"]):
            assert create in task and finish in task
            assert ({"createTime", "createDate"} - {create}).isdisjoint(task)
        seen.add((create, finish))
    assert seen == names


def test_task_fields_follow_run_status() -> None:
    sim = Simulator(SimulatorConfig(jobs=40, tasks_per_job=10, checkpoints=8, seed=3))
    tasks = all_tasks(sim)
    statuses = [task["runStatus"] for task in tasks]
    assert 0.7 < statuses.count("Done") / len(tasks) < 0.9
    assert set(statuses) == {"Done", "Running", "Failed", "Stopped", "Waiting"}
    for task in tasks:
        finish = task.get("finishTime") or task["finishDate"]
        checkpoints = task["checkpointList"]
        if task["runStatus"] in ("Running", "Waiting"):
            assert finish == SENTINEL_TIME
        else:
            assert datetime.strptime(finish, "%Y-%m-%dT%H:%M:%SZ")
        if task["runStatus"] == "Done":
            assert len(checkpoints) == 8
        elif task["runStatus"] == "Waiting":
            assert checkpoints == []
        else:
            assert len(checkpoints) < 8
        assert ("errorCode" in task) == (task["runStatus"] == "Failed")
        if task["runStatus"] == "Failed":
            assert isinstance(task["errorCode"], int) and task["errorMessage"]


def test_metrics_only_on_done_text_generation_tasks() -> None:
    sim = Simulator(SimulatorConfig(jobs=40, tasks_per_job=5, checkpoints=1, seed=4))
    with_metrics = 0
    for task in all_tasks(sim):
        expected = task["runStatus"] == "Done" and task["trainMode"] != "PostPretrain"
        assert ("metrics" in task) == expected
        if expected:
            with_metrics += 1
            assert set(task["metrics"]) == {"BLEU-4", "ROUGE-1", "ROUGE-2", "ROUGE-L"}
            for value in task["metrics"].values():
                assert PERCENT.match(value) and 0 <= float(value[:-1]) <= 100
    assert 0 < with_metrics < 200
    assert any(
        t["trainMode"] == "PostPretrain" and t["runStatus"] == "Done" for t in all_tasks(sim)
    )


def test_checkpoint_steps_use_a_fixed_interval_except_maybe_the_last() -> None:
    sim = Simulator(SimulatorConfig(jobs=10, tasks_per_job=5, checkpoints=6, seed=5))
    done = [t["checkpointList"] for t in all_tasks(sim) if t["runStatus"] == "Done"]
    off_grid = 0
    for points in done:
        steps = [point["step"] for point in points]
        interval = steps[0]
        assert steps[:-1] == [interval * (k + 1) for k in range(5)]
        assert interval * 5 < steps[-1] <= interval * 6
        off_grid += steps[-1] % interval != 0
        assert all(isinstance(p["trainingLoss"], float) for p in points)
    assert 0 < off_grid < len(done)


def test_a_large_account_is_generated_lazily() -> None:
    tracemalloc.start()
    try:
        sim = Simulator(SimulatorConfig(jobs=8000, tasks_per_job=25, checkpoints=20))
        jobs = sim.jobs()
        tasks = sim.tasks(jobs[-1]["jobId"])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(jobs) == 8000 and len(tasks) == 25
    assert peak < 64 * 1024 * 1024  # all 4 M checkpoints at once would take gigabytes


def test_task_detail_adds_progress_while_running_and_a_vdl_link(start: Start) -> None:
    sim, server = start(jobs=20, tasks_per_job=5, checkpoints=10, seed=6)
    tasks = all_tasks(sim)
    running = next(t for t in tasks if t["runStatus"] == "Running")
    done = next(t for t in tasks if t["runStatus"] == "Done")
    detail = result(server, TASK, {"taskId": running["taskId"]})
    assert detail["runProgress"] == f"{len(running['checkpointList']) * 10}%"
    assert detail["vdlLink"] and {k: detail[k] for k in running} == running
    assert "runProgress" not in result(server, TASK, {"taskId": done["taskId"]})
    assert post(server, TASK, {"taskId": "task-0000000000"}).status_code == 404
    assert post(server, TASK, {}).json()["code"] == "InvalidParameter"


def test_task_detail_progress_is_settable_and_follows_the_task(start: Start) -> None:
    sim, server = start(jobs=20, tasks_per_job=5, checkpoints=10, seed=6, running_jobs=0.2)
    running = [sim.tasks(j["jobId"])[0] for j in sim.jobs()]
    running = [t for t in running if t["runStatus"] == "Running"]
    first, second = running[0]["taskId"], running[1]["taskId"]
    sim.set_progress(first, "40%")
    assert result(server, TASK, {"taskId": first})["runProgress"] == "40%"
    sim.set_progress(first, "55%")  # advances between two calls
    assert result(server, TASK, {"taskId": first})["runProgress"] == "55%"
    sim.finish_task(first)
    finished = result(server, TASK, {"taskId": first})
    assert finished["runStatus"] == "Done" and "runProgress" not in finished
    sim.delete_task(second)
    assert post(server, TASK, {"taskId": second}).json()["code"] == "ResourceNotFound"
    job_id = running[2]["jobId"]
    sim.delete_job(job_id)
    gone = [t["taskId"] for t in running if t["jobId"] == job_id]
    assert all(post(server, TASK, {"taskId": t}).status_code == 404 for t in gone)


def test_running_jobs_gives_a_steady_state_account(start: Start) -> None:
    sim, _ = start(jobs=40, tasks_per_job=6, checkpoints=3, seed=2, running_jobs=0.1)
    unfinished = {"Running", "Waiting", ""}
    live = [
        j["jobId"]
        for j in sim.jobs()
        if {t["runStatus"] for t in sim.tasks(j["jobId"])} & unfinished
    ]
    assert len(live) == 4
    assert all(sim.tasks(j)[0]["runStatus"] == "Running" for j in live)
    drawn, _ = start(jobs=40, tasks_per_job=6, checkpoints=3, seed=2)
    assert (
        len(
            [
                j
                for j in drawn.jobs()
                if {t["runStatus"] for t in drawn.tasks(j["jobId"])} & unfinished
            ]
        )
        > 4
    )


# --- auth ---


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"secret_key": "wrong"}, 403, "SignatureDoesNotMatch"),
        ({"access_key": "someone-else"}, 403, "InvalidAccessKeyId"),
        ({"stamp": "2024-01-30T09:41:54Z"}, 400, "RequestExpired"),
        ({"sign": False}, 400, "InvalidHTTPAuthHeader"),
        ({"signed": ("host",)}, 400, "InvalidHTTPAuthHeader"),
    ],
)
def test_auth_failures(start: Start, kwargs: dict[str, Any], status: int, code: str) -> None:
    sim, server = start()
    response = post(server, JOBS, **kwargs)
    assert response.status_code == status
    assert response.json()["code"] == code
    assert response.headers["X-Bce-Error-Code"] == code
    assert sim.requests[-1].status == status


def test_a_date_too_far_ahead_is_expired(start: Start) -> None:
    _, server = start()
    ahead = bce_timestamp(datetime.now(UTC) + timedelta(minutes=10))
    assert post(server, JOBS, stamp=ahead).json()["code"] == "RequestExpired"


def test_signature_covers_the_signed_headers_as_sent(start: Start) -> None:
    sim, server = start()
    response = post(server, JOBS, signed=("content-type", "host", "x-bce-date"))
    assert response.status_code == 200
    recorded = sim.requests[-1]
    assert recorded.action == JOBS and recorded.body == {} and recorded.status == 200
    assert recorded.headers["Authorization"].split("/")[4] == "content-type;host;x-bce-date"


# --- injected faults ---


def test_status_fault_with_retry_after_hits_times_matching_requests(start: Start) -> None:
    sim, server = start()
    sim.inject(
        Fault(kind="status", action=TASKS, status=429, headers={"Retry-After": "3"}, times=2)
    )
    assert post(server, JOBS).status_code == 200  # another action: untouched
    for _ in range(2):
        response = post(server, TASKS, {"jobId": "job-x"})
        assert response.status_code == 429 and response.headers["Retry-After"] == "3"
        assert response.json()["code"] == "TooManyRequests"
    assert post(server, TASKS, {"jobId": "job-x"}).status_code == 200
    assert [r.status for r in sim.requests] == [200, 429, 429, 200]


def test_status_fault_with_an_html_body(start: Start) -> None:
    sim, server = start()
    page = b"<html><body>502 Bad Gateway</body></html>"
    sim.inject(Fault(kind="status", status=502, body=page, headers={"Content-Type": "text/html"}))
    response = post(server, JOBS)
    assert response.status_code == 502 and response.content == page
    assert response.headers["Content-Type"] == "text/html"


def test_faults_serve_the_error_message_a_test_chooses(start: Start) -> None:
    sim, server = start(jobs=1)
    hostile = "x\x1b]0;title\x07\r\nFORGED \x9b"
    sim.inject(Fault(kind="status", action=TASK, status=404, message=hostile))
    assert post(server, TASK, {"taskId": "task-x"}).json()["message"] == hostile
    job_id = sim.jobs()[0]["jobId"]
    sim.job_faults[job_id] = f"500:{hostile}"
    response = post(server, TASKS, {"jobId": job_id})
    assert response.status_code == 500 and response.json()["message"] == hostile
    sim.job_faults[job_id] = "403"
    assert post(server, TASKS, {"jobId": job_id}).json()["message"] == "no permission on this job"


def test_faults_hit_before_auth(start: Start) -> None:
    sim, server = start()
    sim.inject(Fault(kind="status", status=503, code="ServiceUnavailable"))
    response = post(server, JOBS, secret_key="wrong")
    assert response.status_code == 503 and response.json()["code"] == "ServiceUnavailable"


def test_reset_closes_the_connection_without_a_response(start: Start) -> None:
    sim, server = start()
    sim.inject(Fault(kind="reset"))
    with pytest.raises(requests.ConnectionError):
        post(server, JOBS)
    assert post(server, JOBS).status_code == 200
    assert [r.status for r in sim.requests] == [0, 200]


def test_legacy_error_and_raw_body(start: Start) -> None:
    sim, server = start()
    sim.inject(Fault(kind="legacy_error", code=18))
    sim.inject(Fault(kind="raw_body", body=b'{"requestId": "x", "result": {"jobL'))
    legacy = post(server, JOBS)
    assert legacy.status_code == 200 and legacy.json()["error_code"] == 18
    assert isinstance(legacy.json()["error_msg"], str)
    raw = post(server, JOBS)
    assert raw.status_code == 200 and raw.content == b'{"requestId": "x", "result": {"jobL'


def test_slow_body_trickles(start: Start) -> None:
    sim, server = start(jobs=1, tasks_per_job=1)
    sim.inject(Fault(kind="slow_body", body=b'{"a": 1}', interval=0.01))
    began = time.monotonic()
    response = post(server, JOBS)
    assert time.monotonic() - began >= 0.07  # 8 bytes, 0.01 s apart
    assert response.json() == {"a": 1}
    sim.inject(Fault(kind="slow_body", interval=0.0001))
    assert post(server, JOBS).json()["result"]["jobList"] == sim.jobs()


def test_latency(start: Start) -> None:
    _, server = start(latency_ms=50)
    began = time.monotonic()
    post(server, JOBS)
    assert time.monotonic() - began >= 0.05


# --- pagination faults ---


def pages(server: SimulatorServer, count: int, marker: str = "") -> list[dict[str, Any]]:
    """`count` job pages of 5, following nextMarker blindly."""
    out = []
    for _ in range(count):
        out.append(result(server, JOBS, {"maxKeys": 5, "marker": marker}))
        marker = out[-1]["pageInfo"].get("nextMarker", "")
    return out


def test_missing_next_marker(start: Start) -> None:
    sim, server = start(jobs=20)
    sim.pagination_fault = "missing_next_marker"
    info = result(server, JOBS, {"maxKeys": 5})["pageInfo"]
    assert info["isTruncated"] is True and "nextMarker" not in info


def test_repeat_marker(start: Start) -> None:
    sim, server = start(jobs=20)
    sim.pagination_fault = "repeat_marker"
    first, second = pages(server, 2)
    sent = first["pageInfo"]["nextMarker"]
    assert second["pageInfo"]["marker"] == sent
    assert second["pageInfo"]["nextMarker"] == sent and second["pageInfo"]["isTruncated"] is True


def test_marker_cycle(start: Start) -> None:
    sim, server = start(jobs=20)
    sim.pagination_fault = "marker_cycle"
    walk = pages(server, 5)
    markers = [page["pageInfo"]["nextMarker"] for page in walk]
    assert markers[2] == markers[0] and markers[3] == markers[1] and markers[4] == markers[0]
    assert walk[3]["jobList"] == walk[1]["jobList"]


def test_empty_truncated_pages_forever(start: Start) -> None:
    sim, server = start(jobs=20)
    sim.pagination_fault = "empty_truncated_page"
    walk = pages(server, 4)
    assert len(walk[0]["jobList"]) == 5
    markers = [page["pageInfo"]["nextMarker"] for page in walk]
    assert len(set(markers)) == 4
    for page in walk[1:]:
        assert page["jobList"] == [] and page["pageInfo"]["isTruncated"] is True


def test_oversized_page(start: Start) -> None:
    sim, server = start(jobs=20)
    sim.pagination_fault = "oversized_page"
    page = result(server, JOBS, {"maxKeys": 5})
    assert len(page["jobList"]) > 5 and page["pageInfo"]["maxKeys"] == 5
    assert list_all(server, JOBS, "jobList", maxKeys=5) == sim.jobs()


def test_duplicate_across_pages(start: Start) -> None:
    sim, server = start(jobs=20)
    sim.pagination_fault = "duplicate_across_pages"
    first, second, third = pages(server, 3)
    assert second["jobList"][0] == first["jobList"][-1]
    assert third["jobList"][0] == second["jobList"][-1]
    listed = list_all(server, JOBS, "jobList", maxKeys=5)
    assert len(listed) > 20 and {j["jobId"] for j in listed} == {j["jobId"] for j in sim.jobs()}


def test_truncated_as_string(start: Start) -> None:
    sim, server = start(jobs=8)
    sim.pagination_fault = "truncated_as_string"
    first, second = pages(server, 2)
    assert first["pageInfo"]["isTruncated"] == "true"
    assert second["pageInfo"]["isTruncated"] == "false"


def test_pagination_fault_applies_to_one_action_only(start: Start) -> None:
    sim, server = start(jobs=12, tasks_per_job=12)
    sim.pagination_fault, sim.pagination_fault_action = "missing_next_marker", TASKS
    assert result(server, JOBS)["pageInfo"]["nextMarker"]
    job_id = sim.jobs()[0]["jobId"]
    assert "nextMarker" not in result(server, TASKS, {"jobId": job_id})["pageInfo"]


def test_a_walk_that_never_ends_hits_the_page_cap(start: Start) -> None:
    sim, server = start(jobs=20)
    sim.pagination_fault, sim.max_pages = "repeat_marker", 4
    marker = pages(server, 4)[-1]["pageInfo"]["nextMarker"]
    response = post(server, JOBS, {"maxKeys": 5, "marker": marker})
    assert response.status_code == 500 and response.json()["code"] == "InternalError"
    assert post(server, JOBS, {"maxKeys": 5}).status_code == 200  # a fresh walk starts over
    sim.pagination_fault = None  # honest paging is never capped
    assert list_all(server, JOBS, "jobList", maxKeys=1) == sim.jobs()


# --- upstream changes ---


def test_finish_task_completes_a_running_task(start: Start) -> None:
    sim, server = start(jobs=30, tasks_per_job=5, checkpoints=4, seed=8)
    task = next(
        t
        for t in all_tasks(sim)
        if t["runStatus"] == "Running" and t["trainMode"] != "PostPretrain"
    )
    sim.finish_task(task["taskId"])
    tasks = list_all(server, TASKS, "taskList", jobId=task["jobId"], maxKeys=2)
    assert tasks == sim.tasks(task["jobId"])
    done = next(t for t in tasks if t["taskId"] == task["taskId"])
    finish = done.get("finishTime", done.get("finishDate"))
    assert done["runStatus"] == "Done" and finish != SENTINEL_TIME
    assert len(done["checkpointList"]) == 4
    assert done["checkpointList"][: len(task["checkpointList"])] == task["checkpointList"]
    assert set(done["metrics"]) == {"BLEU-4", "ROUGE-1", "ROUGE-2", "ROUGE-L"}


def test_delete_task_and_job(start: Start) -> None:
    sim, server = start(jobs=4, tasks_per_job=3)
    first, second = sim.jobs()[:2]
    gone = sim.tasks(first["jobId"])[1]["taskId"]
    sim.delete_task(gone)
    sim.delete_job(second["jobId"])
    listed = list_all(server, TASKS, "taskList", jobId=first["jobId"])
    assert gone not in {t["taskId"] for t in listed} and len(listed) == 2
    assert listed == sim.tasks(first["jobId"])
    assert second["jobId"] not in {j["jobId"] for j in list_all(server, JOBS, "jobList")}
    assert result(server, TASKS, {"jobId": second["jobId"]})["taskList"] == []
    assert len(sim.jobs()) == 3


def test_rename_job_renames_its_tasks(start: Start) -> None:
    sim, server = start(jobs=3, tasks_per_job=3)
    job_id = sim.jobs()[1]["jobId"]
    sim.put_task(job_id, {**sim.tasks(job_id)[0], "runStatus": "Paused"})
    sim.rename_job(job_id, "新名字 🚀")
    assert list_all(server, JOBS, "jobList")[1]["name"] == "新名字 🚀"
    tasks = list_all(server, TASKS, "taskList", jobId=job_id)
    assert {t["jobName"] for t in tasks} == {"新名字 🚀"}
    assert tasks[0]["runStatus"] == "Paused" and tasks == sim.tasks(job_id)


def test_put_task_replaces_by_id_or_appends_anything(start: Start) -> None:
    sim, server = start(jobs=2, tasks_per_job=3)
    job_id = sim.jobs()[0]["jobId"]
    original = sim.tasks(job_id)
    sim.put_task(job_id, {**original[2], "metrics": {"BLEU-4": "N/A"}})
    sim.put_task(job_id, 42)
    sim.put_task(job_id, {"taskId": "task-new", "runStatus": ""})
    sim.put_task(job_id, {"taskId": "task-new", "runStatus": "Done"})
    listed = list_all(server, TASKS, "taskList", jobId=job_id, maxKeys=2)
    assert listed == sim.tasks(job_id)
    assert listed[:2] == original[:2] and listed[2]["metrics"] == {"BLEU-4": "N/A"}
    assert listed[3:] == [42, {"taskId": "task-new", "runStatus": "Done"}]


def test_put_job_appends_any_json_value(start: Start) -> None:
    sim, server = start(jobs=2)
    sim.put_job(["not", "a", "job"])
    sim.put_job({"jobId": "job-added", "name": "x"})
    sim.put_task("job-added", {"taskId": "task-added"})
    listed = list_all(server, JOBS, "jobList", maxKeys=1)
    assert listed == sim.jobs() and listed[2:] == [
        ["not", "a", "job"],
        {"jobId": "job-added", "name": "x"},
    ]
    assert result(server, TASKS, {"jobId": "job-added"})["taskList"] == [{"taskId": "task-added"}]


def test_the_oracle_returns_copies() -> None:
    sim = Simulator(SimulatorConfig(jobs=2, tasks_per_job=2))
    sim.jobs()[0]["name"] = "changed"
    raw = {"jobId": "job-mine"}
    sim.put_job(raw)
    raw["name"] = "changed later"
    assert sim.jobs()[0]["name"] != "changed" and sim.jobs()[-1] == {"jobId": "job-mine"}


def test_concurrent_requests_are_all_served_and_recorded(start: Start) -> None:
    sim, server = start(jobs=16, tasks_per_job=12, checkpoints=2)
    job_ids = [job["jobId"] for job in sim.jobs()]
    with ThreadPoolExecutor(max_workers=8) as pool:
        listed = list(pool.map(lambda j: list_all(server, TASKS, "taskList", jobId=j), job_ids))
    assert listed == [sim.tasks(job_id) for job_id in job_ids]
    assert sim.api_calls == 16 * 2 and all(r.status == 200 for r in sim.requests)


def test_stats_count_calls_by_action_and_the_most_in_flight(start: Start) -> None:
    """GET /simulator/stats counts what the server received (failures too, itself not), and
    how many requests were in flight at once; `?reset=1` starts afresh."""
    sim, server = start(jobs=8, tasks_per_job=3, checkpoints=1, latency_ms=100)
    job_ids = [job["jobId"] for job in sim.jobs()]
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda j: result(server, TASKS, {"jobId": j}), job_ids[:4]))
    post(server, JOBS, sign=False)  # refused (400), still a call received
    stats = requests.get(f"{server.url}/simulator/stats", timeout=5).json()
    assert stats["calls"] == {TASKS: 4, JOBS: 1} and stats["total"] == 5
    assert stats["max_in_flight"] == 4 == stats["max_in_flight_by_action"][TASKS]
    assert stats["in_flight"] == 0 and stats["busy_s"] >= 5 * 0.1
    reset = requests.get(f"{server.url}/simulator/stats?reset=1", timeout=5).json()
    assert reset["total"] == 5
    after = requests.get(f"{server.url}/simulator/stats", timeout=5).json()
    assert (after["total"], after["max_in_flight"]) == (0, 0)
    assert sim.api_calls == 5  # the stats requests are not recorded as calls


def test_short_body_fault_closes_before_the_promised_length(start: Start) -> None:
    sim, server = start(jobs=3, tasks_per_job=2, checkpoints=1)
    sim.inject(Fault(kind="short_body"))
    with pytest.raises(requests.exceptions.ChunkedEncodingError, match="IncompleteRead"):
        post(server, "DescribeFineTuningJobs")
    assert post(server, "DescribeFineTuningJobs").status_code == 200
