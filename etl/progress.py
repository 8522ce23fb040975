"""The progress bar of `sync` on a terminal (tqdm, on stderr), cleared however the run ends."""

import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from tqdm import tqdm

from etl.extract import WalkStats
from etl.load import RunCounts

# seconds between redraws: often enough to read as live, rare enough to cost nothing
REDRAW_INTERVAL = 0.2


class _Bar(tqdm):  # type: ignore[type-arg]
    # No monitor thread: the run's own updates redraw the bar.
    monitor_interval = 0
    # A thread lock: tqdm's default adds a multiprocessing lock, a semaphore a run never needs.
    _lock = threading.RLock()


class Progress:
    """Jobs done (fetched, or passed over) of the jobs listed, with a percentage and an ETA once
    the job list is complete; tasks fetched, API calls and elapsed time."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.bar = _Bar(
            desc="sync",
            unit=" jobs",
            file=stream,
            leave=False,
            mininterval=REDRAW_INTERVAL,
            dynamic_ncols=True,
        )

    def update(self, counts: RunCounts, stats: WalkStats) -> None:
        """Show the latest figures (tqdm redraws at most every REDRAW_INTERVAL)."""
        bar = self.bar
        if stats.job_list_done and bar.total is None:
            bar.total = stats.jobs_listed
        bar.set_postfix_str(
            f"{stats.jobs_listed} jobs listed, {stats.tasks_listed} tasks, "
            f"{counts.api_calls} API calls",
            refresh=False,
        )
        bar.update(counts.jobs_seen + stats.jobs_passed - bar.n)

    def write(self, text: str) -> None:
        """Write a log line above the bar, then draw the bar again under it."""
        _Bar.write(text, file=self.stream, end="")

    def flush(self) -> None:
        self.stream.flush()

    def close(self) -> None:
        """Clear the bar. tqdm blanks the length of the frame it last finished; a signal
        can land mid-frame, so the whole line is erased too."""
        self.bar.close()
        self.stream.write("\r\x1b[K")
        self.stream.flush()


@contextmanager
def on_terminal(enabled: bool) -> Iterator[Progress | None]:
    """A Progress on stderr if it is a terminal and `enabled`; log lines go above the bar,
    and the bar is cleared on the way out, an error or a signal's SystemExit included."""
    if not (enabled and sys.stderr.isatty()):
        yield None
        return
    progress = Progress(sys.stderr)
    handlers = _stderr_handlers()
    for handler in handlers:
        handler.setStream(progress)  # type: ignore[arg-type]
    try:
        yield progress
    finally:
        progress.close()
        for handler in handlers:
            handler.setStream(sys.stderr)


def _stderr_handlers() -> list[logging.StreamHandler[TextIO]]:
    """The root logger's handlers that write to stderr."""
    return [
        handler
        for handler in logging.getLogger().handlers
        if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stderr
    ]
