"""The scope ledger: per listing scope, whether the run read it to its end, what it saw and what
it could not read; it answers what the run may soft-delete and what it must say it held back.

A scope is the account (its listing is the job list) or one job (its task list). Deleting by
absence needs a complete listing of the scope: read to its end, every record's id readable.
A record set aside whose id is readable is still seen, so it never makes its scope incomplete;
one whose id cannot be read might be any stored row, so its scope holds back its deletes. Pure:
no I/O, the caller feeds it what the listings and the database said.
"""

from collections.abc import Iterable
from dataclasses import dataclass, field

ACCOUNT_KIND = "account"
JOB_KIND = "job"
# what each kind of scope lists
CHILD_KIND = {ACCOUNT_KIND: "job", JOB_KIND: "task"}
ID_KEY = {ACCOUNT_KIND: "jobId", JOB_KIND: "taskId"}


@dataclass(frozen=True, order=True)
class Scope:
    """The account (id "") or one job (its id)."""

    kind: str
    id: str = ""

    def __str__(self) -> str:
        return self.kind if self.kind == ACCOUNT_KIND else f"{self.kind} {self.id}"


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

    @property
    def reason(self) -> str:
        """Why, in words."""
        child, key = CHILD_KIND[self.scope.kind], ID_KEY[self.scope.kind]
        return f"{self.unreadable} {child}(s) listed without a readable {key}"


@dataclass
class _Entry:
    listed: bool = False
    unreadable: int = 0
    # stored live rows of the scope that its listing lacked (whatever other scopes listed)
    lacked: set[str] = field(default_factory=set)


class Ledger:
    """What a run's listings said, scope by scope. `deletes=False` (an --active-only run):
    nothing is complete, nothing deleted, nothing held back."""

    def __init__(self, deletes: bool = True) -> None:
        self.deletes = deletes
        self._entries: dict[Scope, _Entry] = {}
        self._seen: dict[str, set[str]] = {kind: set() for kind in CHILD_KIND.values()}

    def _entry(self, scope: Scope) -> _Entry:
        return self._entries.setdefault(scope, _Entry())

    def saw(self, scope: Scope, ids: Iterable[str]) -> None:
        """The scope listed records with these readable ids (full values)."""
        self._entry(scope)
        self._seen[CHILD_KIND[scope.kind]].update(ids)

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
        return record_id in self._seen[CHILD_KIND[scope.kind]]

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
        return (
            scope.kind == JOB_KIND and self.complete(ACCOUNT) and not self.seen(ACCOUNT, scope.id)
        )

    def deletable(self, kind: str) -> list[str]:
        """The stored ids, listed by no scope, that complete scopes of `kind` lacked."""
        seen = self._seen[CHILD_KIND[kind]]
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
                scope, len(entry.lacked - self._seen[CHILD_KIND[scope.kind]]), entry.unreadable
            )
            for scope, entry in sorted(self._entries.items())
            if entry.listed and entry.unreadable
        ]
