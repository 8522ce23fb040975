"""Transform: whole-row examples, parsing tables, reject reasons and hostile-input properties."""

import copy
import hashlib
import json
import marshal
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etl.canonical import (
    EXCERPT_CHARS,
    HASH_PREFIX,
    MAX_DEPTH,
    _orjson_canonical,
    _stdlib_canonical,
    clean_json,
    clean_text,
    cleaned_json,
    content_hash,
    excerpt,
    legacy_hash,
    same_content,
)
from etl.transform import (
    MAX_ID_BYTES,
    Reject,
    TaskRows,
    Unchanged,
    job_to_row,
    parse_percent,
    parse_time,
    prepare_task,
    task_to_rows,
    tasks_to_rows,
    typed_ahead,
)

JOB_ID = "job-7q2w"


def _done_task() -> dict[str, Any]:
    """A finished SFT task as the seed page spells its fields."""
    return {
        "taskId": "task-abc123",
        "jobId": JOB_ID,
        "jobName": "客服问答",
        "jobDescription": "",
        "model": "ERNIE-Speed-8K",
        "trainMode": "SFT",
        "parameterScale": "LoRA",
        "runStatus": "Done",
        "createTime": "2024-01-16T09:48:35Z",
        "finishTime": "2024-01-16T11:02:07Z",
        "metrics": {"BLEU-4": "17.03%", "ROUGE-1": "35.2%", "ROUGE-2": "N/A", "ROUGE-L": 30},
        "checkpointList": [
            {"step": 10, "perplexity": 3.5, "trainingLoss": 1.25},
            {"step": 20, "perplexity": "2.75", "trainingLoss": 0.5},
        ],
    }


def _task_rows(raw: dict[str, Any]) -> TaskRows:
    result = task_to_rows(raw, JOB_ID)
    assert isinstance(result, TaskRows), result
    return result


def _reject(raw: Any) -> Reject:
    result = task_to_rows(raw, JOB_ID)
    assert isinstance(result, Reject), result
    return result


# --- whole rows ---------------------------------------------------------------------------


def test_done_task_rows() -> None:
    raw = _done_task()
    rows = _task_rows(raw)
    assert rows.task == {
        "task_id": "task-abc123",
        "job_id": JOB_ID,
        "job_name": "客服问答",
        "job_description": "",
        "model": "ERNIE-Speed-8K",
        "train_mode": "SFT",
        "parameter_scale": "LoRA",
        "run_status": "Done",
        "create_time": datetime(2024, 1, 16, 9, 48, 35, tzinfo=UTC),
        "finish_time": datetime(2024, 1, 16, 11, 2, 7, tzinfo=UTC),
        "error_code": None,
        "error_message": None,
        "raw": raw,
        "content_hash": content_hash(raw),
    }
    assert rows.metrics == [
        {"task_id": "task-abc123", "metric_name": "BLEU-4", "value_percent": 17.03,
         "value_raw": "17.03%"},
        {"task_id": "task-abc123", "metric_name": "ROUGE-1", "value_percent": 35.2,
         "value_raw": "35.2%"},
        {"task_id": "task-abc123", "metric_name": "ROUGE-2", "value_percent": None,
         "value_raw": "N/A"},
        {"task_id": "task-abc123", "metric_name": "ROUGE-L", "value_percent": 30.0,
         "value_raw": "30"},
    ]  # fmt: skip
    assert rows.checkpoints == [
        {"task_id": "task-abc123", "step": 10, "training_loss": 1.25, "perplexity": 3.5},
        {"task_id": "task-abc123", "step": 20, "training_loss": 0.5, "perplexity": 2.75},
    ]


def test_sdk_field_names_create_date_finish_date() -> None:
    raw = _done_task()
    raw["createDate"] = raw.pop("createTime")
    raw["finishDate"] = raw.pop("finishTime")
    task = _task_rows(raw).task
    assert task["create_time"] == datetime(2024, 1, 16, 9, 48, 35, tzinfo=UTC)
    assert task["finish_time"] == datetime(2024, 1, 16, 11, 2, 7, tzinfo=UTC)
    assert task["raw"] == raw


def test_seed_names_win_when_both_present() -> None:
    raw = _done_task() | {
        "createDate": "2020-01-01T00:00:00Z",
        "finishDate": "2020-01-02T00:00:00Z",
    }
    task = _task_rows(raw).task
    assert task["create_time"] == datetime(2024, 1, 16, 9, 48, 35, tzinfo=UTC)
    assert task["finish_time"] == datetime(2024, 1, 16, 11, 2, 7, tzinfo=UTC)


def test_running_task_with_sentinel_finish_time() -> None:
    raw = {
        "taskId": "task-run1",
        "jobId": JOB_ID,
        "jobName": "j",
        "jobDescription": "d",
        "model": "ERNIE-Lite-8K",
        "trainMode": "PostPretrain",
        "parameterScale": "FullFineTuning",
        "runStatus": "Running",
        "createTime": "2024-02-01T08:00:00+08:00",
        "finishTime": "0000-00-00T00:00:00Z",
        "checkpointList": [{"step": 5, "perplexity": 9.5, "trainingLoss": 2.0}],
    }
    rows = _task_rows(raw)
    assert rows.task == {
        "task_id": "task-run1",
        "job_id": JOB_ID,
        "job_name": "j",
        "job_description": "d",
        "model": "ERNIE-Lite-8K",
        "train_mode": "PostPretrain",
        "parameter_scale": "FullFineTuning",
        "run_status": "Running",
        "create_time": datetime(2024, 2, 1, 0, 0, 0, tzinfo=UTC),
        "finish_time": None,
        "error_code": None,
        "error_message": None,
        "raw": raw,
        "content_hash": content_hash(raw),
    }
    assert rows.metrics == []
    assert rows.checkpoints == [
        {"task_id": "task-run1", "step": 5, "training_loss": 2.0, "perplexity": 9.5}
    ]


def test_failed_task_with_error() -> None:
    raw = {
        "taskId": "task-f1",
        "jobId": "job-other",  # the listing's job id is what counts
        "jobName": "j",
        "runStatus": "Failed",
        "createTime": "2024-03-01T00:00:00Z",
        "finishTime": "2024-03-01T00:05:00.250Z",
        "errorCode": 500103,
        "errorMessage": "dataset format invalid",
        "metrics": None,
        "checkpointList": None,
    }
    rows = _task_rows(raw)
    assert rows.task == {
        "task_id": "task-f1",
        "job_id": JOB_ID,
        "job_name": "j",
        "job_description": None,
        "model": None,
        "train_mode": None,
        "parameter_scale": None,
        "run_status": "Failed",
        "create_time": datetime(2024, 3, 1, tzinfo=UTC),
        "finish_time": datetime(2024, 3, 1, 0, 5, 0, 250000, tzinfo=UTC),
        "error_code": 500103,
        "error_message": "dataset format invalid",
        "raw": raw,
        "content_hash": content_hash(raw),
    }
    assert (rows.metrics, rows.checkpoints) == ([], [])


@pytest.mark.parametrize(
    ("value", "expected"),
    [(500103, 500103), ("500103", 500103), (" 42 ", 42), (True, None), ("E500", None),
     (1.5, None), (None, None), (2**63, None), ([1], None)],
)  # fmt: skip
def test_error_code(value: Any, expected: int | None) -> None:
    assert _task_rows({"taskId": "t", "errorCode": value}).task["error_code"] == expected


def test_job_row() -> None:
    raw = {
        "jobId": "job-1",
        "name": "demo",
        "description": "desc",
        "model": "ERNIE-Speed-8K",
        "trainMode": "SFT",
        "createDate": "2024-01-15T12:00:00Z",
        "somethingNew": {"x": 1},
    }
    assert job_to_row(raw) == {
        "job_id": "job-1",
        "name": "demo",
        "description": "desc",
        "model": "ERNIE-Speed-8K",
        "train_mode": "SFT",
        "create_time": datetime(2024, 1, 15, 12, 0, tzinfo=UTC),
        "raw": raw,
        "content_hash": content_hash(raw),
    }


def test_job_fields_of_the_wrong_type_become_null() -> None:
    row = job_to_row({"jobId": "job-1", "name": 123, "createTime": 1705400000})
    assert isinstance(row, dict)
    assert (row["name"], row["create_time"]) == (None, None)
    assert row["raw"] == {"jobId": "job-1", "name": 123, "createTime": 1705400000}


def test_task_fields_of_the_wrong_type_become_null() -> None:
    raw = {"taskId": "t", "jobName": 123, "runStatus": ["Done"], "model": None, "createTime": 0}
    task = _task_rows(raw).task
    assert [task[k] for k in ("job_name", "run_status", "model", "create_time")] == [None] * 4
    assert task["raw"] == raw


def test_unknown_run_status_stored_verbatim() -> None:
    for status in ("Paused", "done", ""):
        assert _task_rows({"taskId": "t", "runStatus": status}).task["run_status"] == status


# --- parsing tables -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("17.03%", 17.03),
        (" 17.03 % ", 17.03),
        ("17.03", 17.03),
        ("0%", 0.0),
        ("100%", 100.0),
        ("1e-3", 0.001),
        (" 0.5 ", 0.5),
        ("-2.5%", -2.5),
        (17.03, 17.03),
        (30, 30.0),
        ("N/A", None),
        ("", None),
        ("-", None),
        ("%", None),
        ("17.03%%", None),
        ("1,234.5", None),
        ("1_000", None),
        ("abc", None),
        ("NaN", None),
        ("nan%", None),
        ("inf", None),
        ("-Infinity", None),
        ("1e400%", None),
        (float("nan"), None),
        (float("inf"), None),
        (10**400, None),
        (True, None),
        (None, None),
        ({"v": 1}, None),
    ],
)
def test_parse_percent(value: Any, expected: float | None) -> None:
    assert parse_percent(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-01-16T09:48:35Z", datetime(2024, 1, 16, 9, 48, 35, tzinfo=UTC)),
        ("2024-01-16T17:48:35+08:00", datetime(2024, 1, 16, 9, 48, 35, tzinfo=UTC)),
        ("2024-01-16T09:48:35.123456Z", datetime(2024, 1, 16, 9, 48, 35, 123456, tzinfo=UTC)),
        ("2024-01-16T09:48:35.5+00:00", datetime(2024, 1, 16, 9, 48, 35, 500000, tzinfo=UTC)),
        ("2024-01-16T09:48:35", datetime(2024, 1, 16, 9, 48, 35, tzinfo=UTC)),
        ("0000-00-00T00:00:00Z", None),
        ("", None),
        ("yesterday", None),
        ("2024-13-40T00:00:00Z", None),
        ("0001-01-01T00:00:00+08:00", None),
        (None, None),
        (0, None),
        (1705400000, None),
        (["2024-01-16T09:48:35Z"], None),
    ],
)
def test_parse_time(value: Any, expected: datetime | None) -> None:
    parsed = parse_time(value)
    assert parsed == expected
    if parsed is not None:
        assert parsed.utcoffset() == timedelta(0)


# --- rejects ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "source_id", "reason"),
    [
        (["task-1"], None, "task is not an object: ['task-1']"),
        ("task-1", None, "task is not an object: 'task-1'"),
        (None, None, "task is not an object: None"),
        ({"jobName": "x"}, None, "taskId is missing"),
        ({"taskId": None}, None, "taskId is missing"),
        ({"taskId": 17}, None, "taskId is not a string: 17"),
        ({"taskId": ""}, None, "taskId is empty"),
        ({"taskId": "\x00\x00"}, None, "taskId is empty"),
        ({"taskId": "t", "metrics": ["BLEU-4"]}, "t", "metrics is not an object: ['BLEU-4']"),
        ({"taskId": "t", "metrics": "17%"}, "t", "metrics is not an object: '17%'"),
        ({"taskId": "t", "checkpointList": {"step": 1}}, "t",
         "checkpointList is not a list: {'step': 1}"),
        ({"taskId": "t", "checkpointList": [{"step": 1}, 2]}, "t",
         "checkpointList[1] is not an object: 2"),
        ({"taskId": "t", "checkpointList": [{"step": 1}, {}, {}, {"step": "abc"}]}, "t",
         "checkpointList[1].step is not an integer: None"),
        ({"taskId": "t", "checkpointList": [{"step": 1}, {"step": 2}, {"step": 3},
                                           {"step": "abc"}]}, "t",
         "checkpointList[3].step is not an integer: 'abc'"),
        ({"taskId": "t", "checkpointList": [{"step": 1.5}]}, "t",
         "checkpointList[0].step is not an integer: 1.5"),
        ({"taskId": "t", "checkpointList": [{"step": True}]}, "t",
         "checkpointList[0].step is not an integer: True"),
        ({"taskId": "t", "checkpointList": [{"step": float("nan")}]}, "t",
         "checkpointList[0].step is not an integer: nan"),
        ({"taskId": "t", "checkpointList": [{"step": 123456789012345678901234567890}]}, "t",
         "checkpointList[0].step is out of range: 123456789012345678901234567890"),
    ],
)  # fmt: skip
def test_task_rejects(raw: Any, source_id: str | None, reason: str) -> None:
    reject = _reject(raw)
    assert reject == Reject(entity="task", source_id=source_id, reason=reason, raw=clean_json(raw))


@pytest.mark.parametrize(
    ("raw", "source_id", "reason"),
    [
        ([1], None, "job is not an object: [1]"),
        ({"name": "x"}, None, "jobId is missing"),
        ({"jobId": ["j"]}, None, "jobId is not a string: ['j']"),
        ({"jobId": ""}, None, "jobId is empty"),
    ],
)
def test_job_rejects(raw: Any, source_id: str | None, reason: str) -> None:
    assert job_to_row(raw) == Reject(
        entity="job", source_id=source_id, reason=reason, raw=clean_json(raw)
    )


def test_reject_keeps_the_cleaned_raw_and_short_reason() -> None:
    raw = {"taskId": "t\x00", "metrics": ["x" * 1000, "\ud800"]}
    reject = _reject(raw)
    assert reject.source_id == "t"
    assert reject.raw == {"taskId": "t", "metrics": ["x" * 1000, "\ufffd"]}
    assert len(reject.reason) < 120


def test_absent_or_null_children_are_fine() -> None:
    extras: list[dict[str, Any]] = [
        {},
        {"metrics": None},
        {"checkpointList": None},
        {"metrics": {}},
    ]
    for extra in extras:
        rows = _task_rows({"taskId": "t"} | extra)
        assert (rows.metrics, rows.checkpoints) == ([], [])


# --- duplicates ---------------------------------------------------------------------------


def test_duplicate_steps_collapse_last_wins_sorted() -> None:
    raw = {
        "taskId": "t",
        "checkpointList": [
            {"step": 20, "trainingLoss": 1.0, "perplexity": 1.0},
            {"step": "10", "trainingLoss": 2.0, "perplexity": 2.0},
            {"step": 20.0, "trainingLoss": 3.0, "perplexity": "NaN"},
            {"step": 7, "trainingLoss": "oops", "extra": True},
        ],
    }
    assert _task_rows(raw).checkpoints == [
        {"task_id": "t", "step": 7, "training_loss": None, "perplexity": None},
        {"task_id": "t", "step": 10, "training_loss": 2.0, "perplexity": 2.0},
        {"task_id": "t", "step": 20, "training_loss": 3.0, "perplexity": None},
    ]


def test_duplicate_task_ids_collapse_last_wins() -> None:
    first = {"taskId": "a", "runStatus": "Running"}
    other = {"taskId": "b", "runStatus": "Done"}
    last = {"taskId": "a", "runStatus": "Done"}
    rows, rejects = tasks_to_rows([first, other, last, 42], JOB_ID)
    assert [(r.task["task_id"], r.task["run_status"]) for r in rows] == [
        ("a", "Done"),
        ("b", "Done"),
    ]
    assert rejects == [
        Reject(entity="task", source_id=None, reason="task is not an object: 42", raw=42)
    ]


def test_duplicate_task_id_last_copy_wins_even_when_rejected() -> None:
    good = {"taskId": "a"}
    bad = {"taskId": "a", "metrics": []}
    rows, rejects = tasks_to_rows([good, bad], JOB_ID)
    assert (rows, [r.source_id for r in rejects]) == ([], ["a"])
    rows, rejects = tasks_to_rows([bad, good], JOB_ID)
    assert ([r.task["task_id"] for r in rows], rejects) == (["a"], [])


def test_metric_names_equal_after_cleaning_collapse() -> None:
    raw = {"taskId": "t", "metrics": {"BLEU\x00-4": "1%", "BLEU-4": "2%"}}
    assert _task_rows(raw).metrics == [
        {"task_id": "t", "metric_name": "BLEU-4", "value_percent": 2.0, "value_raw": "2%"}
    ]


def test_metric_value_raw_forms() -> None:
    metrics = {"a": 0.31, "b": True, "c": None, "d": [1, "x"], "e": float("nan"), "f": "x\x00"}
    rows = _task_rows({"taskId": "t", "metrics": metrics}).metrics
    assert {r["metric_name"]: r["value_raw"] for r in rows} == {
        "a": "0.31",
        "b": "true",
        "c": None,
        "d": '[1, "x"]',
        "e": "NaN",
        "f": "x",
    }
    assert all(r["value_percent"] in (None, 0.31) for r in rows)


# --- hostile strings ----------------------------------------------------------------------


def test_unknown_fields_preserved_in_raw() -> None:
    raw = _done_task() | {"runProgress": "40%", "vdlLink": "http://x", "new": {"deep": [1, None]}}
    raw["metrics"]["Exact-Match"] = "1%"
    raw["checkpointList"][0]["lr"] = 0.0001
    rows = _task_rows(raw)
    assert rows.task["raw"] == raw
    assert "Exact-Match" in [m["metric_name"] for m in rows.metrics]
    assert rows.task["content_hash"] != content_hash(_done_task())


def test_nul_and_lone_surrogates_cleaned_in_columns_and_raw() -> None:
    raw = {
        "taskId": "task-\x00x",
        "jobName": "a\x00b\ud800c",
        "errorMessage": "\udfff",
        "metrics": {"BLEU\ud83d": "1\x00%"},
        "nested": [{"k\x00": "\udc80\x00"}],
    }
    rows = _task_rows(raw)
    assert (rows.task["task_id"], rows.task["job_name"], rows.task["error_message"]) == (
        "task-x",
        "ab\ufffdc",
        "\ufffd",
    )
    assert rows.metrics == [
        {"task_id": "task-x", "metric_name": "BLEU\ufffd", "value_percent": 1.0, "value_raw": "1%"}
    ]
    assert rows.task["raw"] == {
        "taskId": "task-x",
        "jobName": "ab\ufffdc",
        "errorMessage": "\ufffd",
        "metrics": {"BLEU\ufffd": "1%"},
        "nested": [{"k": "\ufffd"}],
    }


def test_clean_text_keeps_valid_pairs_and_emoji() -> None:
    assert clean_text("😀 ok") == "😀 ok"
    assert clean_text("\ud83d\ude00") == "\ufffd\ufffd"  # a str never holds a real pair


def test_clean_json_input_untouched_and_non_finite_floats_as_text() -> None:
    raw = {"a": [float("inf"), float("-inf"), float("nan"), 1.5, 2, True, None], "b\x00": "c"}
    before = copy.deepcopy(raw)
    assert clean_json(raw) == {"a": ["inf", "-inf", "nan", 1.5, 2, True, None], "b": "c"}
    assert repr(raw) == repr(before)


def test_long_description_kept_whole() -> None:
    text = "长" * 10_000 + "x" * 10_000
    rows = _task_rows({"taskId": "t", "jobDescription": text})
    assert rows.task["job_description"] == text
    assert rows.task["raw"]["jobDescription"] == text


def test_sql_looking_strings_verbatim() -> None:
    name = "x'); DROP TABLE finetune_tasks; -- \\ % _ $1 :name"
    rows = _task_rows({"taskId": "t'--", "jobName": name})
    assert (rows.task["task_id"], rows.task["job_name"]) == ("t'--", name)


def test_cjk_emoji_rtl_and_combining_verbatim() -> None:
    name = "微调任务 🚀🧪 مرحبا \u200f e\u0301 \x1b[31m\n"
    job = job_to_row({"jobId": "job-😀", "name": name})
    assert isinstance(job, dict)
    assert (job["job_id"], job["name"]) == ("job-😀", name)


def test_content_hash_is_of_the_record_as_received() -> None:
    assert content_hash({"a": 1, "b": "x"}) == content_hash(json.loads('{"a": 1, "b": "x"}'))
    assert content_hash({"a": 1}) != content_hash({"a": 2})
    assert content_hash({"a": 1}) != content_hash({"a": 1.0})
    assert content_hash({"a": "x\x00"}) != content_hash({"a": "x"})
    assert content_hash([{"step": 1}]) != content_hash([{"step": 1}, {"step": 1}])
    assert content_hash({"a": 1, "b": 2}) == content_hash({"b": 2, "a": 1})  # keys sorted


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        (None, "null"),
        ({"b": [1, 1.0, -0.0, 0.1], "a": True}, '{"a":true,"b":[1,1.0,-0.0,0.1]}'),
        ([2.5e-05, 1e16, 1e-07, 0.0001, 1e15], "[2.5e-05,1e+16,1e-07,0.0001,1000000000000000.0]"),
        (
            {"é": "\n\x1f\x7f\u2028😀", "B": 2**70},
            '{"B":1180591620717411303424,"é":"\\n\\u001f\x7f\u2028😀"}',
        ),
        ({"x": float("inf"), "y": "\ud800"}, '{"x":Infinity,"y":"\ud800"}'),
    ],
)
def test_content_hash_is_sha256_of_canonical_json(raw: Any, canonical: str) -> None:
    """The definition, pinned: a library or interpreter that changed it fails here."""
    digest = hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()
    assert content_hash(raw) == HASH_PREFIX + digest


def test_a_legacy_hash_of_the_same_record_counts_as_the_same_content() -> None:
    raw, other = _done_task(), {**_done_task(), "runStatus": "Failed"}
    legacy = hashlib.sha256(marshal.dumps(raw, 2)).hexdigest()  # what releases before stored
    assert legacy_hash(raw) == legacy
    assert same_content(legacy, content_hash(raw), raw)
    assert not same_content(legacy, content_hash(other), other)
    assert not same_content(content_hash(other), content_hash(raw), raw)
    unchanged, _ = tasks_to_rows([raw], JOB_ID, known={raw["taskId"]: legacy})
    assert unchanged == [Unchanged(task_id=raw["taskId"], content_hash=legacy)]
    changed, _ = tasks_to_rows([other], JOB_ID, known={raw["taskId"]: legacy})
    assert changed[0].task["content_hash"] == content_hash(other)


def _nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = {"deeper": value}
    return value


@pytest.mark.parametrize("depth", [MAX_DEPTH, 600, 5000])
def test_deep_nesting_is_a_reject_with_a_bounded_excerpt(depth: int) -> None:
    raw = {**_done_task(), "unknown": _nested(depth - 1)}  # the task itself is a level
    if depth <= MAX_DEPTH:
        assert isinstance(task_to_rows(raw, JOB_ID), TaskRows)
        assert isinstance(job_to_row({"jobId": "j", "x": _nested(depth - 1)}), dict)
        return
    for result in (task_to_rows(raw, JOB_ID), typed_ahead(prepare_task(raw), JOB_ID).typed):
        assert isinstance(result, Reject)
        assert result.source_id == raw["taskId"]
        assert result.reason == f"nested deeper than {MAX_DEPTH} levels of objects and arrays"
        assert isinstance(result.raw, str) and len(result.raw) <= EXCERPT_CHARS + 3
        assert result.raw.startswith('{"taskId":"task-abc123"')
    job = job_to_row({"jobId": "job-deep", "x": _nested(depth)})
    assert isinstance(job, Reject) and job.source_id == "job-deep"
    rows, rejects = tasks_to_rows([raw, _done_task() | {"taskId": "t2"}], JOB_ID)
    assert [r.task["task_id"] for r in rows] == ["t2"] and len(rejects) == 1


def test_excerpt_is_the_start_of_the_json_text() -> None:
    value = {"a": [1, 2.5, None, "x\x00"], "b": {"c": True}}
    assert excerpt(value) == '{"a":[1,2.5,null,"x"],"b":{"c":true}}'
    assert excerpt(value, limit=11) == '{"a":[1,2.5...'


@pytest.mark.parametrize(
    ("where", "value", "rejected"),
    [
        ("taskId", "t" * MAX_ID_BYTES, False),
        ("taskId", "t" * (MAX_ID_BYTES + 1), True),
        ("taskId", "😀" * (MAX_ID_BYTES // 4 + 1), True),  # counted in UTF-8 bytes
        ("taskId", "t" * 3000, True),
        ("metric", "m" * 3000, True),
        ("metric", "é" * (MAX_ID_BYTES // 2), False),
    ],
)
def test_keys_longer_than_an_index_takes_are_rejected(
    where: str, value: str, rejected: bool
) -> None:
    raw = _done_task()
    if where == "taskId":
        raw["taskId"] = value
    else:
        raw["metrics"] = {value: "1%"}
    result = task_to_rows(raw, JOB_ID)
    assert isinstance(result, Reject) == rejected
    if isinstance(result, Reject):
        assert "bytes long, more than the 1024 a key may have" in result.reason
        assert result.source_id == raw["taskId"]  # the full id: the loader cuts what it shows
        assert result.raw == raw


def test_a_job_id_longer_than_an_index_takes_is_rejected() -> None:
    job = job_to_row({"jobId": "j" * 3000, "name": "n"})
    assert isinstance(job, Reject) and job.reason.startswith("jobId is 3000 bytes long")


# --- properties ---------------------------------------------------------------------------

# Plain st.text() almost never draws NUL and never a lone surrogate: mix them in.
texts = st.text(st.sampled_from(["\x00", "\ud800", "\udfff", "a", "长", "😀"]) | st.characters())
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | texts,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=20,
)
metric_values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(),
    texts,
    st.sampled_from(["N/A", "", "-", "1e-3", "17.03%", " 0.5 ", "NaN", "1e400%"]),
    st.none(),
)
hostile_text = st.one_of(texts, st.sampled_from(["\x00", "\ud800", "a\x00\udfffb", "", "t"]))
maybe = st.one_of(hostile_text, json_values)
times = st.one_of(
    st.datetimes(timezones=st.none() | st.just(UTC)).map(datetime.isoformat),
    st.sampled_from(["0000-00-00T00:00:00Z", "2024-01-16T09:48:35Z", "2024-13-40", ""]),
    json_values,
)
steps = st.one_of(
    st.integers(min_value=-5, max_value=50),
    st.integers(min_value=0, max_value=50).map(str),
    st.integers(min_value=0, max_value=50).map(float),
)
checkpoints = st.lists(
    st.fixed_dictionaries(
        {"step": steps},
        optional={"trainingLoss": metric_values, "perplexity": metric_values, "x": json_values},
    ),
    max_size=6,
)
tasks = st.fixed_dictionaries(
    {"taskId": hostile_text},
    optional={
        "jobName": maybe,
        "jobDescription": maybe,
        "runStatus": maybe,
        "model": maybe,
        "createTime": times,
        "createDate": times,
        "finishTime": times,
        "finishDate": times,
        "errorCode": st.one_of(st.integers(), texts, json_values),
        "errorMessage": maybe,
        "metrics": st.one_of(st.dictionaries(hostile_text, metric_values, max_size=5), maybe),
        "checkpointList": st.one_of(checkpoints, maybe),
    },
)
PROPERTY = settings(max_examples=200, deadline=None)


def _walk(value: Any) -> list[Any]:
    """Every scalar and every dict key inside a value."""
    if isinstance(value, dict):
        return [x for k, v in value.items() for x in [k, *_walk(v)]]
    if isinstance(value, list):
        return [x for v in value for x in _walk(v)]
    return [value]


def _assert_storable(value: Any) -> None:
    """Every string is NUL-free UTF-8 and every float finite, as Postgres needs."""
    for item in _walk(value):
        if isinstance(item, str):
            assert "\x00" not in item
            item.encode("utf-8")
        elif isinstance(item, float):
            assert math.isfinite(item)


def _check(result: TaskRows | Reject, raw: Any) -> None:
    assert isinstance(result, TaskRows | Reject)
    if isinstance(result, Reject):
        _assert_storable([result.source_id, result.reason, result.raw])
        assert result.raw == clean_json(raw)
        json.dumps(result.raw, allow_nan=False)
        return
    task = result.task
    _assert_storable([task, result.metrics, result.checkpoints])
    json.dumps(task["raw"], allow_nan=False)
    assert task["content_hash"] == content_hash(raw)  # of the record as received
    assert task["task_id"]
    for key in ("create_time", "finish_time"):
        assert task[key] is None or task[key].utcoffset() == timedelta(0)


@PROPERTY
@given(json_values)
def test_property_any_json_value(raw: Any) -> None:
    result = task_to_rows(raw, JOB_ID)
    _check(result, raw)
    job = job_to_row(raw)
    _assert_storable(job.raw if isinstance(job, Reject) else job)


@PROPERTY
@given(tasks)
def test_property_hostile_tasks(raw: dict[str, Any]) -> None:
    result = task_to_rows(raw, JOB_ID)
    _check(result, raw)
    assert task_to_rows(raw, JOB_ID) == result  # deterministic; rows never hold a NaN
    if isinstance(result, TaskRows):
        metrics = raw.get("metrics") or {}
        assert len(result.metrics) == len({clean_text(k) for k in metrics})
        steps = {int(c["step"]) for c in raw.get("checkpointList") or []}
        assert len(result.checkpoints) == len(steps)
        assert [c["step"] for c in result.checkpoints] == sorted(steps)


@PROPERTY
@given(st.lists(tasks, max_size=6))
def test_property_tasks_to_rows_one_result_per_id(raws: list[dict[str, Any]]) -> None:
    rows, rejects = tasks_to_rows(raws, JOB_ID)
    ids = [r.task["task_id"] for r in rows] + [r.source_id for r in rejects if r.source_id]
    assert len(ids) == len(set(ids))
    assert len(rows) + len(rejects) <= len(raws)


@given(json_values)
def test_property_hash_is_deterministic_and_json_text_matches_the_cleaned_value(raw: Any) -> None:
    assert content_hash(raw) == content_hash(copy.deepcopy(raw))
    fast = _orjson_canonical(raw)
    assert fast is None or fast == _stdlib_canonical(raw)  # orjson only where it agrees
    cleaned, text = cleaned_json(raw)
    assert cleaned == clean_json(raw)
    assert json.loads(text) == cleaned
    text.encode("utf-8")  # storable: no lone surrogate survives


def test_typed_ahead_tasks_give_the_same_rows_and_still_skip_when_unchanged() -> None:
    raw = _done_task()
    ahead = typed_ahead(prepare_task(raw), JOB_ID)
    assert ahead.typed == task_to_rows(raw, JOB_ID)
    rows, rejects = tasks_to_rows([ahead], JOB_ID)
    assert (rows, rejects) == ([task_to_rows(raw, JOB_ID)], [])
    unchanged, _ = tasks_to_rows([ahead], JOB_ID, known={raw["taskId"]: content_hash(raw)})
    assert unchanged == [Unchanged(task_id=raw["taskId"], content_hash=content_hash(raw))]


def test_typical_tasks_hash_on_the_fast_path() -> None:
    """The cheap orjson path serves ordinary records (floats, hex ids, model names with E-)."""
    raw = {**_done_task(), "model": "ERNIE-3.5-8K", "taskId": "task-3e5f", "x": [1e-3, 12.5]}
    assert _orjson_canonical(raw) == _stdlib_canonical(raw)
    assert _orjson_canonical({"x": 1e-7}) is None  # orjson writes 1e-7, repr 1e-07
