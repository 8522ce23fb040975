"""What the `qianfan-etl` process owns, apart from its commands: `.env` read first, logging set
up on stderr, uncaught errors logged (scrubbed), signals turned into exit codes, and the exit of
a run a signal stopped."""

import logging
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType, TracebackType
from typing import NoReturn

import click

from etl import config, readout, redact, stopping
from etl.errors import ConfigError

log = logging.getLogger("etl")


def run(cli: click.Group) -> None:
    """Run the command line as the console script: `.env` first, then click."""
    env_file = _read_env_file()
    sys.excepthook = _log_uncaught
    if not logging.getLogger().handlers:
        setup_logging(os.environ.get(config.LOG_FORMAT_VAR, "text"), 0, False)
    try:
        cli(prog_name="qianfan-etl", obj=env_file)
    except SystemExit as exc:
        if stopping.requested():
            _exit_now(exc.code)
        raise


def setup_logging(log_format: str, verbose: int, quiet: bool) -> None:
    """Log to stderr, as text or JSON lines, at the level -v/-q ask for."""
    level = (
        logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    )
    # -v is about this program: libraries stay at WARNING (SQLAlchemy at INFO logs every query)
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(redact.RedactingFilter())
    json_lines = log_format == "json"
    handler.setFormatter(readout.JsonFormatter() if json_lines else readout.TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(level, logging.WARNING))
    logging.getLogger("etl").setLevel(level)
    logging.captureWarnings(True)


@contextmanager
def signals_as_exit() -> Iterator[None]:
    """SIGTERM/SIGINT raise SystemExit(143/130), so transactions roll back, the lock is freed
    and the run is recorded as failed (click would turn KeyboardInterrupt into exit 1)."""
    signals = (signal.SIGTERM, signal.SIGINT)
    previous = {signum: signal.signal(signum, _raise_exit) for signum in signals}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _raise_exit(signum: int, _frame: FrameType | None) -> None:
    stopping.request()  # every wait of the workers ends, and no batch commits after this
    raise SystemExit(128 + signum)


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    """A traceback goes through the log handler, so it is scrubbed like every other line."""
    log.critical("unexpected error (a bug: please report it)", exc_info=(kind, exc, tb))


def _read_env_file() -> config.EnvFile | None:
    """The `.env` read, or exit 78 saying why it is refused."""
    try:
        return config.load_env_file()
    except ConfigError as exc:
        setup_logging(os.environ.get(config.LOG_FORMAT_VAR, "text"), 0, False)
        log.error("%s", exc)
        sys.exit(exc.exit_code)


def _exit_now(code: object) -> NoReturn:
    """End a run a signal stopped without joining its fetch workers: its batch is rolled back,
    its lock freed and its run recorded, and a worker still blocked in a slow read holds
    nothing (the interpreter would wait for it, up to the read timeout)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 1)
