"""A secret searched for in text, in every form a log line, URL or page could print it."""

import json
from collections.abc import Callable
from urllib.parse import quote, quote_plus

from sqlalchemy.engine import URL

# Every 4-character window holds a letter, so a fragment found is a leak, not punctuation
# that any log line has; `%2F` checks that nothing decodes the password twice.
PASSWORD = "Kq@:Vw/?Xz#%2FYj[]Zb \"G'\\Hé中Jm"

ENCODERS: tuple[Callable[[str], str], ...] = (
    lambda c: c,
    lambda c: quote(c, safe=""),
    quote_plus,
    lambda c: URL.create("x", password=c).render_as_string(hide_password=False)[5:-1],
    lambda c: json.dumps(c)[1:-1],
    lambda c: json.dumps(c, ensure_ascii=False)[1:-1],
    lambda c: repr(c)[1:-1] if c not in "'\"" else "\\" + c,
)


def fragments(secret: str) -> set[str]:
    """Every 4 characters of the secret as typed; of its percent-encoded and escaped forms (as a
    URL, repr or a JSON log line prints it), those that hold a letter of the secret itself:
    `%40%`, `\\u00` or the digits of `%2541` alone are in any web page or metrics file."""
    found = {secret[i : i + 4] for i in range(len(secret) - 3)}
    for encode in ENCODERS[1:]:
        pieces = [(encode(c), c) for c in secret]
        text = "".join(piece for piece, _ in pieces)
        marks = [piece == c and c.isalpha() for piece, c in pieces for _ in piece]
        found |= {text[i : i + 4] for i in range(len(text) - 3) if any(marks[i : i + 4])}
    return found


def assert_no_fragment(text: str, secret: str, allowed: tuple[str, ...] = ()) -> None:
    """No fragment of the secret, once the allowed words are taken out."""
    for word in allowed:
        text = text.replace(word, " ")
    for fragment in fragments(secret):
        at = text.find(fragment)
        assert at < 0, f"{fragment!r} of a secret in: {text[max(0, at - 120) : at + 120]!r}"
