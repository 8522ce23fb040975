"""The scope ledger on its own: no HTTP, no database."""

from etl.resources import JOBS, TASKS
from etl.scopes import ACCOUNT, ACCOUNT_KIND, JOB_KIND, HeldBack, Ledger, job_scope

JOB_A, JOB_B = job_scope("job-a"), job_scope("job-b")


def test_a_complete_listing_deletes_what_no_listing_had() -> None:
    ledger = Ledger()
    ledger.saw(ACCOUNT, ["job-a", "job-b"])
    ledger.listed(ACCOUNT, ["job-gone"])
    ledger.saw(JOB_A, ["t1"])
    ledger.listed(JOB_A, ["t-gone", "t-moved"])
    ledger.saw(JOB_B, ["t-moved"])  # listed under another job: not gone
    assert ledger.deletable(ACCOUNT_KIND) == ["job-gone"]
    assert ledger.deletable(JOB_KIND) == ["t-gone"]
    assert ledger.lacks(JOB_A, "t-moved")  # its stored job lacks it: the ownership rule's input
    assert ledger.held_back() == []


def test_an_unreadable_record_holds_back_only_its_own_scope() -> None:
    ledger = Ledger()
    ledger.saw(ACCOUNT, ["job-a", "job-b"])
    ledger.listed(ACCOUNT, ["job-gone"])
    ledger.saw(JOB_A, ["t1"])
    ledger.unreadable(JOB_A)
    ledger.listed(JOB_A, ["t-a-gone", "t-a-gone-too"])
    ledger.saw(JOB_B, ["t2"])
    ledger.listed(JOB_B, ["t-b-gone"])
    assert ledger.deletable(ACCOUNT_KIND) == ["job-gone"]
    assert ledger.deletable(JOB_KIND) == ["t-b-gone"]
    assert not ledger.complete(JOB_A) and ledger.complete(JOB_B)
    assert ledger.held_back() == [HeldBack(JOB_A, 2, 1, TASKS)]
    assert ledger.held_back()[0].reason == "1 task(s) listed without a readable taskId"


def test_an_unreadable_job_holds_back_the_account_even_with_nothing_to_delete() -> None:
    ledger = Ledger()
    ledger.saw(ACCOUNT, ["job-a"])
    ledger.unreadable(ACCOUNT, 2)
    ledger.listed(ACCOUNT, [])
    ledger.saw(JOB_A, ["t1"])
    ledger.listed(JOB_A, ["t-gone"])
    assert ledger.deletable(ACCOUNT_KIND) == []
    assert ledger.deletable(JOB_KIND) == ["t-gone"]  # job scopes keep their own deletes
    assert ledger.held_back() == [HeldBack(ACCOUNT, 0, 2, JOBS)]
    assert str(ACCOUNT) == "account" and str(JOB_A) == "job job-a"


def test_a_scope_not_listed_to_its_end_neither_deletes_nor_holds_back() -> None:
    ledger = Ledger()
    ledger.saw(ACCOUNT, ["job-a"])
    ledger.unreadable(JOB_A)  # its listing failed after a page: never `listed`
    assert ledger.deletable(ACCOUNT_KIND) == [] and ledger.deletable(JOB_KIND) == []
    assert ledger.held_back() == []
    assert not ledger.covers(JOB_A) and not ledger.covers(ACCOUNT)


def test_an_active_only_ledger_deletes_nothing_and_holds_nothing_back() -> None:
    ledger = Ledger(deletes=False)
    ledger.saw(ACCOUNT, ["job-a"])
    ledger.unreadable(ACCOUNT)
    ledger.listed(ACCOUNT, ["job-gone"])
    ledger.listed(JOB_A, ["t-gone"])
    assert ledger.deletable(ACCOUNT_KIND) == [] and ledger.deletable(JOB_KIND) == []
    assert ledger.held_back() == []
    assert not ledger.lacks(JOB_A, "t-gone")


def test_a_job_missing_from_a_complete_account_listing_is_covered() -> None:
    ledger = Ledger()
    ledger.saw(ACCOUNT, ["job-a"])
    ledger.listed(ACCOUNT, ["job-b"])
    assert ledger.covers(ACCOUNT) and ledger.covers(JOB_B)  # gone with its job
    assert not ledger.covers(JOB_A)  # listed in the account, its own task list was not read
    ledger.listed(JOB_A)
    assert ledger.covers(JOB_A)
