"""MarkerPaginator without HTTP: plain pageInfo dicts in, decisions out."""

import logging
from typing import Any

import pytest

from etl.errors import ContractError
from etl.qianfan.pagination import MarkerPaginator


def page(size: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"taskId": f"t{n}"} for n in range(start, start + size)]


def info(truncated: Any, next_marker: Any = None) -> dict[str, Any]:
    return {"marker": "", "maxKeys": 100, "isTruncated": truncated, "nextMarker": next_marker}


def walk(paginator: MarkerPaginator, pages: list[tuple[list[Any], dict[str, Any]]]) -> list[Any]:
    """Feed pages until the paginator stops; every request it would send is checked."""
    items: list[Any] = []
    for number, (page_items, page_info) in enumerate(pages):
        assert paginator.has_next_page, f"stopped before page {number}"
        request = paginator.request({"jobId": "job-1"})
        assert request["maxKeys"] == 100 and request["jobId"] == "job-1"
        assert ("marker" in request) == (number > 0)
        items += paginator.update_state(page_items, page_info)
    return items


def test_follows_next_marker_until_not_truncated() -> None:
    paginator = MarkerPaginator("list", "taskId")
    assert paginator.request({}) == {"maxKeys": 100}
    items = walk(paginator, [(page(100), info(True, "a")), (page(100, 100), info(True, "b"))])
    assert paginator.marker == "b" and paginator.request({})["marker"] == "b"
    items += paginator.update_state(page(5, 200), info(False, ""))
    assert not paginator.has_next_page
    assert items == page(205)
    assert paginator.warnings == 0


@pytest.mark.parametrize("next_marker", [None, "", 7])
def test_truncated_without_a_usable_next_marker_is_broken(next_marker: Any) -> None:
    paginator = MarkerPaginator("DescribeFineTuningTasks job-1")
    with pytest.raises(ContractError, match="job-1: the API broke its pagination contract"):
        paginator.update_state(page(3), info(True, next_marker))


def test_a_marker_seen_before_is_a_loop() -> None:
    paginator = MarkerPaginator("list")
    walk(paginator, [(page(1), info(True, "a")), (page(1, 1), info(True, "b"))])
    with pytest.raises(ContractError, match="'a' already seen: loop"):
        paginator.update_state(page(1, 2), info(True, "a"))


def test_endless_empty_truncated_pages_are_broken_but_a_few_pass() -> None:
    paginator = MarkerPaginator("list", max_empty_pages=3)
    walk(paginator, [([], info(True, "a")), ([], info(True, "b")), (page(1), info(True, "c"))])
    paginator.update_state([], info(True, "d"))
    paginator.update_state([], info(True, "e"))
    with pytest.raises(ContractError, match="3 empty pages in a row"):
        paginator.update_state([], info(True, "f"))


@pytest.mark.parametrize(
    ("items", "page_info", "detail"),
    [
        ({"not": "a list"}, info(False), "not a list"),
        ([], None, "pageInfo is not an object"),
        ([], info("false"), "not a boolean"),
        ([], {}, "not a boolean"),
    ],
)
def test_malformed_pages_are_broken(items: Any, page_info: Any, detail: str) -> None:
    with pytest.raises(ContractError, match=detail):
        MarkerPaginator("list").update_state(items, page_info)


def test_a_page_longer_than_asked_is_accepted_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    paginator = MarkerPaginator("DescribeFineTuningTasks job-9", "taskId")
    with caplog.at_level(logging.WARNING, logger="etl.qianfan"):
        items = walk(paginator, [(page(151), info(True, "x")), (page(2, 151), info(False))])
    assert len(items) == 153 and not paginator.has_next_page
    assert (paginator.oversized_pages, paginator.warnings) == (1, 1)
    assert "job-9: page of 151 items, asked for 100" in caplog.text


def test_an_item_repeated_across_pages_is_accepted_and_counted() -> None:
    paginator = MarkerPaginator("list", "taskId")
    items = walk(paginator, [(page(3), info(True, "t2")), ([*page(3, 2), 42], info(False))])
    assert [i["taskId"] for i in items if isinstance(i, dict)] == [
        "t0",
        "t1",
        "t2",
        "t2",
        "t3",
        "t4",
    ]
    assert (paginator.repeated_items, paginator.warnings) == (1, 1)


def test_without_an_id_key_repeats_are_not_counted() -> None:
    paginator = MarkerPaginator("list")
    walk(paginator, [(page(2), info(True, "a")), (page(2), info(False))])
    assert paginator.warnings == 0
