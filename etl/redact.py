"""The one place that knows this process's secrets and keeps them out of every output."""

import json
import logging
import re
import threading
from urllib.parse import quote, quote_plus

from sqlalchemy.exc import StatementError

MASK = "***"
# Stored error texts (etl_runs.error, etl_rejects.reason, …) are cut to this many characters.
MAX_STORED_CHARS = 2000
# Shorter values are not searched for in text: they would mask half of every message, and a
# 3-character fragment is below what the leak tests look for.
MIN_SECRET_CHARS = 4

# `scheme://user:password@`: the password up to the last `@` of a run without spaces, so one
# with an unencoded `@`, `/` or `:` is masked whole; the user name stays, to help operators.
_USERINFO = re.compile(r"(?P<user>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@]*:)\S*@")
# libpq conninfo `password=…` (quoted or not) and URL query `password=…`.
_PASSWORD_PARAM = re.compile(
    r"(?P<key>\b(?:ssl)?password\s*=\s*)(?:'(?:[^'\\]|\\.)*'|[^\s&;,)]+)", re.IGNORECASE
)

_lock = threading.Lock()
_secrets: set[str] = set()
_pattern: re.Pattern[str] | None = None


def register(*values: str | None) -> None:
    """Remember secrets of this process (keys, passwords) and the forms they are printed in."""
    global _pattern
    with _lock:
        for value in values:
            if value:
                _secrets.update(v for v in _forms(value) if len(v) >= MIN_SECRET_CHARS)
        if _secrets:
            _pattern = re.compile("|".join(_bounded(s) for s in sorted(_secrets, key=len)[::-1]))


def _forms(value: str) -> set[str]:
    """The value raw, percent-encoded, and escaped as repr, JSON and libpq quote it."""
    return {
        value,
        quote(value, safe=""),
        quote_plus(value, safe=""),
        repr(value)[1:-1],
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
        value.replace("\\", "\\\\").replace("'", "\\'"),
    }


def _bounded(secret: str) -> str:
    """A pattern for the secret that does not match inside a longer word."""
    # The password `local` inside `localhost` is the host name, not the secret: masking it
    # would mangle the message and point at the password.
    head = r"(?<![^\W_])" if secret[0].isalnum() else ""
    tail = r"(?![^\W_])" if secret[-1].isalnum() else ""
    return head + re.escape(secret) + tail


def forget() -> None:
    """Drop every registered secret (tests)."""
    global _pattern
    with _lock:
        _secrets.clear()
        _pattern = None


def scrub(text: str) -> str:
    """The text without registered secrets, URL userinfo or `password=` values."""
    text = _USERINFO.sub(rf"\g<user>{MASK}@", text)
    text = _PASSWORD_PARAM.sub(rf"\g<key>{MASK}", text)
    pattern = _pattern
    return pattern.sub(MASK, text) if pattern is not None else text


def bounded(text: str, limit: int = MAX_STORED_CHARS) -> str:
    """The text scrubbed and cut to `limit` characters, for storing."""
    text = scrub(text)
    return text if len(text) <= limit else text[: limit - 12] + " [truncated]"


def describe(exc: BaseException) -> str:
    """An exception as it may be stored or shown: scrubbed, bounded, without SQL parameters."""
    if isinstance(exc, StatementError):
        # str() of a StatementError appends the statement and its parameters (row data).
        text = str(exc.args[0]) if exc.args else type(exc).__name__
    else:
        text = str(exc) or type(exc).__name__
    return bounded(text)


class RedactingFilter(logging.Filter):
    """Scrubs each record's message and traceback before any formatter sees them."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Replace the message and exception text by their scrubbed forms."""
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a malformed call: keep its text, never its arguments
            message = f"{record.msg} (log arguments did not fit the format)"
        record.msg = scrub(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        return True
