"""Text for a terminal or a log line: data never drives the terminal or starts a line of its own."""

import json
import re
from typing import Any

# C0 but tab, DEL, C1, and the two Unicode line breaks (which str.splitlines and many log
# viewers honour): ESC starts terminal commands, CR and LF would let data forge a line.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
# The same characters but the C0 ones, which json.dumps escapes itself.
_JSON_UNESCAPED = re.compile("[\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r"}
INDENT = "    "


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe(text: str) -> str:
    """The text on one line with its control characters shown escaped: ESC as `\\x1b`."""
    return _CONTROL.sub(_escape, text)


def indented(block: str) -> str:
    """A multi-line block (a traceback) under a record: its own line breaks kept, each line
    escaped and indented, so none of them can pass for a record of its own."""
    return "\n".join(INDENT + safe(line) for line in block.rstrip("\n").split("\n"))


def dumps(value: Any) -> str:
    """JSON text with non-ASCII kept readable, and DEL, C1 and line separators as `\\u`
    escapes: exact JSON still, and no raw control character reaches the terminal."""
    text = json.dumps(value, ensure_ascii=False)
    # Outside strings JSON text is ASCII, so every match is inside a string, where \u is exact.
    return _JSON_UNESCAPED.sub(lambda match: f"\\u{ord(match.group()):04x}", text)
