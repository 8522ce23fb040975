"""Marker pagination as an object: the state of one listing and the guards that keep a partial
listing from passing as complete (after dlt's `update_state`/`has_next_page` and the Singer
SDK's `BaseAPIPaginator.advance`). No I/O here: the client owns timeouts and retries."""

import logging
from collections.abc import Iterator, Mapping
from typing import Any

from etl.errors import ContractError
from etl.qianfan.client import QianfanClient

log = logging.getLogger("etl.qianfan")

PAGE_SIZE = 100
MAX_EMPTY_TRUNCATED_PAGES = 3


class MarkerPaginator:
    """Where one `marker`/`nextMarker` walk stands: feed it each page, ask for the next request.

    Strict where completeness is in doubt (isTruncated without nextMarker, a marker seen
    before, endless empty truncated pages); tolerant where nothing can hide (a page longer
    than asked, an item repeated across pages): those are logged and counted in `warnings`.
    """

    def __init__(
        self,
        where: str,
        id_key: str | None = None,
        page_size: int = PAGE_SIZE,
        max_empty_pages: int = MAX_EMPTY_TRUNCATED_PAGES,
    ) -> None:
        self.where = where
        self.id_key = id_key
        self.page_size = page_size
        self.max_empty_pages = max_empty_pages
        self.has_next_page = True
        self.marker: str | None = None
        self.oversized_pages = 0
        self.repeated_items = 0
        self._markers: set[str] = set()
        self._ids: set[str] = set()
        self._empty_run = 0

    @property
    def warnings(self) -> int:
        """Irregular but harmless pages and items seen so far."""
        return self.oversized_pages + self.repeated_items

    def request(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The body of the next page's request."""
        marker = {"marker": self.marker} if self.marker is not None else {}
        return {**body, "maxKeys": self.page_size, **marker}

    def update_state(self, items: Any, page_info: Any) -> list[Any]:
        """Check one page, advance to the next marker (or stop) and return the page's items."""
        if not isinstance(items, list):
            raise self._broken("the page's item list is not a list")
        if not isinstance(page_info, dict):
            raise self._broken("result.pageInfo is not an object")
        self._note_irregular(items)
        truncated = page_info.get("isTruncated")
        if not isinstance(truncated, bool):
            raise self._broken(f"pageInfo.isTruncated is {truncated!r}, not a boolean")
        if truncated:
            self._advance(page_info.get("nextMarker"), bool(items))
        else:
            self.has_next_page = False
        return items

    def _advance(self, next_marker: Any, had_items: bool) -> None:
        """Move to nextMarker, refusing a missing or repeated one and endless empty pages."""
        if not isinstance(next_marker, str) or not next_marker:
            raise self._broken(f"isTruncated is true but nextMarker is {next_marker!r}")
        self._empty_run = 0 if had_items else self._empty_run + 1
        if self._empty_run >= self.max_empty_pages:
            raise self._broken(f"{self._empty_run} empty pages in a row marked truncated")
        if next_marker in self._markers:
            raise self._broken(f"nextMarker {next_marker!r} already seen: loop")
        self._markers.add(next_marker)
        self.marker = next_marker

    def _note_irregular(self, items: list[Any]) -> None:
        """Count (and log) a page longer than asked and items already listed."""
        if len(items) > self.page_size:
            self.oversized_pages += 1
            log.warning(
                "%s: page of %d items, asked for %d; accepted (nothing is hidden by it)",
                self.where,
                len(items),
                self.page_size,
            )
        if self.id_key is None:
            return
        ids = [id_of(item, self.id_key) for item in items]
        repeated = sum(1 for item_id in ids if item_id in self._ids)
        self._ids.update(item_id for item_id in ids if item_id is not None)
        if repeated:
            self.repeated_items += repeated
            log.warning(
                "%s: %d items listed again on a later page; the last copy wins",
                self.where,
                repeated,
            )

    def _broken(self, detail: str) -> ContractError:
        """A pagination breach: loud, because a partial listing must never pass as complete."""
        return ContractError(
            f"{self.where}: the API broke its pagination contract ({detail}). The listing is "
            "incomplete, so nothing of it was soft-deleted; re-run later and report it if it "
            "persists."
        )


def id_of(item: Any, key: str) -> str | None:
    """item[key] when item is a dict with a string there (a raw record's id, unchecked)."""
    value = item.get(key) if isinstance(item, dict) else None
    return value if isinstance(value, str) else None


def fetch_pages(
    client: QianfanClient,
    action: str,
    body: Mapping[str, Any],
    list_key: str,
    paginator: MarkerPaginator | None = None,
) -> Iterator[list[Any]]:
    """Yield each page's list, following nextMarker while isTruncated is true."""
    pages = paginator or MarkerPaginator(action)
    while pages.has_next_page:
        result = client.call(action, pages.request(body))
        yield pages.update_state(result.get(list_key), result.get("pageInfo"))
