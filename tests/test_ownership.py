"""The ownership rule on its own: no HTTP, no database. The end-to-end cases (a task listed
under two jobs, a task moving job) are in test_isolation.py."""

from types import SimpleNamespace
from typing import Any

from etl.ownership import Claims, JobTasks, outranked, owned
from etl.scopes import ACCOUNT, Ledger, job_scope
from etl.transform import TaskRows, Unchanged


def _rows(task_id: str, job_id: str) -> TaskRows:
    return TaskRows(task={"task_id": task_id, "job_id": job_id})


def _stored(job_id: str, deleted: bool = False) -> Any:
    return SimpleNamespace(job_id=job_id, deleted_at="then" if deleted else None)


def test_of_one_batch_s_claims_the_smallest_job_id_wins_and_the_first_of_equals() -> None:
    first, second = _rows("t1", "job-b"), _rows("t1", "job-b")
    low = _rows("t1", "job-a")
    listed: list[JobTasks] = [("job-b", [first]), ("job-c", [_rows("t1", "job-c")])]
    listed.append(("job-b", [second]))
    chosen = owned(listed)
    assert len(chosen) == 1 and chosen[0] is first  # equal rows: the first by identity
    assert owned([*listed, ("job-a", [low, _rows("t2", "job-a")])])[0] is low


def test_a_task_listed_by_a_job_ranking_after_its_live_stored_job_is_held() -> None:
    tasks: list[TaskRows | Unchanged] = [
        _rows("t-later", "job-b"),  # stored under job-a, live: held
        _rows("t-earlier", "job-a"),  # stored under job-b: job-a ranks first, written
        _rows("t-gone", "job-b"),  # stored under job-a, soft-deleted: written
        Unchanged(task_id="t-same", content_hash="h"),  # listed by its own job
    ]
    stored = {
        "t-later": _stored("job-a"),
        "t-earlier": _stored("job-b"),
        "t-gone": _stored("job-a", deleted=True),
        "t-same": _stored("job-a"),
    }
    assert outranked(tasks, stored) == [(tasks[0], "job-a")]


def test_claims_keep_the_best_claim_until_a_batch_writes_the_task() -> None:
    claims = Claims()
    claims.note(set(), [(_rows("t1", "job-c"), "job-a")])
    claims.note(set(), [(_rows("t1", "job-b"), "job-a"), (_rows("t2", "job-c"), "job-a")])
    claims.note(set(), [(_rows("t1", "job-d"), "job-a")])
    assert {task_id: rows.task["job_id"] for task_id, (rows, _) in claims.held.items()} == {
        "t1": "job-b",
        "t2": "job-c",
    }
    claims.note({"t2"}, [])  # a job ranking before the claim listed and wrote it
    assert list(claims.held) == ["t1"]


def test_a_held_task_goes_only_where_its_stored_job_let_it_go() -> None:
    claims = Claims()
    claims.note(set(), [(_rows("t-left", "job-b"), "job-a"), (_rows("t-kept", "job-b"), "job-a")])
    ledger = Ledger()
    ledger.saw(ACCOUNT, ["job-a", "job-b"])
    ledger.saw(job_scope("job-a"), ["t-kept"])
    ledger.listed(job_scope("job-a"), ["t-left"])
    assert [rows.task_id for rows in claims.winners(ledger)] == ["t-left"]


def test_a_stored_job_that_was_not_listed_keeps_its_task_unless_the_account_lacks_it() -> None:
    claims = Claims()
    claims.note(set(), [(_rows("t1", "job-b"), "job-a")])
    failed = Ledger()  # job-a is in the account, its task list failed
    failed.saw(ACCOUNT, ["job-a", "job-b"])
    failed.listed(ACCOUNT)
    assert claims.winners(failed) == []
    restricted = Ledger()  # a --job-id run: the account was not listed
    restricted.saw(ACCOUNT, ["job-b"])
    assert claims.winners(restricted) == []
    gone = Ledger()  # a complete account listing without job-a
    gone.saw(ACCOUNT, ["job-b"])
    gone.listed(ACCOUNT, ["job-a"])
    assert [rows.task_id for rows in claims.winners(gone)] == ["t1"]
