"""The process's stop request: a signal sets it, so that every wait ends at once and no batch
commits after it. One process runs one run, so the request is process-wide, like the signal."""

import threading


class Stopped(Exception):
    """A wait or a commit gave way because the run is stopping."""


_requested = threading.Event()


def request() -> None:
    """Ask every wait to end now (the signal handler calls this)."""
    _requested.set()


def requested() -> bool:
    """Whether the run is stopping."""
    return _requested.is_set()


def sleep(seconds: float) -> None:
    """Sleep, or raise Stopped as soon as the run is stopping."""
    if _requested.wait(seconds):
        raise Stopped("the run is stopping")


def wait_for_request(limit: float) -> bool:
    """Wait at most `limit` seconds for a stop request; whether it came."""
    return _requested.wait(limit)
