"""The scope ledger: per listing scope, whether the run read it to its end, what it saw and what
it could not read; it answers what the run may soft-delete and what it must say it held back.

A scope is one listing of a declared resource (etl.resources): the account's (the job list) or
one parent record's (one job's task list); its kind is the resource's `scope_kind`. Deleting by
absence needs a complete listing of the scope: read to its end, every record's id readable.
A record set aside whose id is readable is still seen, so it never makes its scope incomplete;
one whose id cannot be read might be any stored row, so its scope holds back its deletes. Pure:
no I/O, the caller feeds it what the listings and the database said.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field

from etl.resources import BUILT_IN, JOBS, TASKS, Resource

ACCOUNT_KIND = JOBS.scope_kind
JOB_KIND = TASKS.scope_kind


@dataclass(frozen=True, order=True)
class Scope:
    """One listing: of its kind's resource for the account (id ""), or for one parent record
    (its id), as a job's task list is."""

    kind: str
    id: str = ""

    def __str__(self) -> str:
        return f"{self.kind} {self.id}" if self.id else self.kind


ACCOUNT = Scope(ACCOUNT_KIND)


def job_scope(job_id: str) -> Scope:
    """The scope of one job's task list."""
    return Scope(JOB_KIND, job_id)


@dataclass(frozen=True)
class HeldBack:
    """A listed scope that had records without a readable id: `count` stored live rows absent
    from its listing were kept, since any of them may be one it could not read."""

    scope: Scope
    count: int
    unreadable: int
    lists: Resource  # what the scope lists

    @property
    def reason(self) -> str:
        """Why, in words."""
        listed = self.lists
        return f"{self.unreadable} {listed.entity}(s) listed without a readable {listed.id_field}"


@dataclass
class _Entry:
    listed: bool = False
    unreadable: int = 0
    # stored live rows of the scope that its listing lacked (whatever other scopes listed)
    lacked: set[str] = field(default_factory=set)


class Ledger:
    """What a run's listings of these resources said, scope by scope. `deletes=False` (an
    --active-only run): nothing is complete, nothing deleted, nothing held back."""

    def __init__(self, deletes: bool = True, resources: Iterable[Resource] = BUILT_IN) -> None:
        self.deletes = deletes
        self._entries: dict[Scope, _Entry] = {}
        # what each kind of scope lists, and the ids listed of each
        self._lists = {resource.scope_kind: resource for resource in resources}
        self._seen: dict[str, set[str]] = {kind: set() for kind in self._lists}

    def _entry(self, scope: Scope) -> _Entry:
        return self._entries.setdefault(scope, _Entry())

    def saw(self, scope: Scope, ids: Iterable[str]) -> None:
        """The scope listed records with these readable ids (full values)."""
        self._entry(scope)
        self._seen[scope.kind].update(ids)

    def unreadable(self, scope: Scope, count: int = 1) -> None:
        """The scope listed `count` records whose id could not be read."""
        self._entry(scope).unreadable += count

    def listed(self, scope: Scope, lacked: Iterable[str] = ()) -> None:
        """The scope's listing was read to its end; `lacked` are ids stored live in the scope
        that this listing did not have."""
        entry = self._entry(scope)
        entry.listed = True
        entry.lacked.update(lacked)

    def seen(self, scope: Scope, record_id: str) -> bool:
        """Whether any listing of the scope's kind listed this id."""
        return record_id in self._seen[scope.kind]

    def scope_of(self, entity: str, parent_id: str | None) -> Scope | None:
        """The scope that lists records of this entity (for a record with a parent, the
        listing of that parent's id); None for an entity the run does not list."""
        lists = next((r for r in self._lists.values() if r.entity == entity), None)
        if lists is None:
            return None
        if lists.parent is None:
            return Scope(lists.scope_kind)
        return Scope(lists.scope_kind, parent_id) if parent_id is not None else None

    def is_listed(self, scope: Scope) -> bool:
        """Whether the scope's listing was read to its end."""
        entry = self._entries.get(scope)
        return entry is not None and entry.listed

    def complete(self, scope: Scope) -> bool:
        """Whether the run may delete in this scope: listed to its end, every id readable."""
        entry = self._entries.get(scope)
        return self.deletes and entry is not None and entry.listed and not entry.unreadable

    def lacks(self, scope: Scope, record_id: str) -> bool:
        """Whether the scope's complete listing lacked a row stored in it."""
        return self.complete(scope) and record_id in self._entries[scope].lacked

    def covers(self, scope: Scope) -> bool:
        """Whether a listing read to its end says what the scope holds now: its own, or, for a
        job, a complete account listing without that job."""
        if self.is_listed(scope):
            return True
        parent = self._lists[scope.kind].parent
        if parent is None:
            return False
        listing = Scope(parent.scope_kind)
        return self.complete(listing) and not self.seen(listing, scope.id)

    def deletable(self, kind: str) -> list[str]:
        """The stored ids, listed by no scope, that complete scopes of `kind` lacked."""
        seen = self._seen[kind]
        gone = (
            entry.lacked - seen
            for scope, entry in self._entries.items()
            if scope.kind == kind and self.complete(scope)
        )
        return sorted(set().union(*gone))

    def held_back(self) -> list[HeldBack]:
        """Listed scopes whose unreadable records kept their deletes, with the rows kept."""
        if not self.deletes:
            return []
        return [
            HeldBack(
                scope,
                len(entry.lacked - self._seen[scope.kind]),
                entry.unreadable,
                self._lists[scope.kind],
            )
            for scope, entry in sorted(self._entries.items())
            if entry.listed and entry.unreadable
        ]
