"""Canonical JSON text and content hashes of raw records, and their cleaning: pure functions.

A record's content hash tells a run whether it changed since it was stored; its JSON text is
what the raw columns hold. Both depend on the data alone (README, "How a run loads").
"""

import hashlib
import json
import marshal
import math
import re
from collections.abc import Iterator
from typing import Any

import orjson

# Objects and arrays nested deeper than this (the record itself is level 1) are rejected: it is
# the most orjson writes, and the recursive walks below stay far inside Python's stack.
MAX_DEPTH = 254
# Content hashes carry this prefix; a stored hash without one is a legacy (marshal) hash.
HASH_PREFIX = "j1:"
# A finished task of a lean listing, enriched from its detail call, is stored under its
# listing's hash with this prefix instead: a hash stored without enrichment never matches it.
LEAN_PREFIX = "l1:"
# A reject whose record cannot be stored keeps this much of its JSON text.
EXCERPT_CHARS = 2000
# In a Python str every surrogate code point is unpaired and cannot be encoded as UTF-8.
_SURROGATE = re.compile("[\ud800-\udfff]")
_CONTAINERS = (dict, list, tuple)
_SHAPES = {"e": "e", "E": "e", "+": "+", "-": "+", ".": "."}


class Untypable(ValueError):
    """A record that cannot be typed or hashed; its message becomes the reject reason."""


class TooDeep(Untypable):
    """A record nested deeper than MAX_DEPTH: no walk may recurse into it."""

    def __init__(self) -> None:
        super().__init__(f"nested deeper than {MAX_DEPTH} levels of objects and arrays")


def clean_text(value: str) -> str:
    """Strip NUL characters and replace lone surrogates with U+FFFD."""
    if value.isascii():  # most text, and it cannot hold a surrogate
        return value.replace("\x00", "")
    return _SURROGATE.sub("\ufffd", value.replace("\x00", ""))


def clean_json(value: Any) -> Any:
    """Deep copy with every string and key cleaned and non-finite floats as their repr."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_key(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return value


def content_hash(raw: Any) -> str:
    """SHA-256 hex of the record's canonical JSON, prefixed with its version (HASH_PREFIX).

    The text is what the standard library's json module writes with sorted keys and no spaces:
    integers in decimal, floats as repr() (the shortest text that reads back as the same double,
    Python's rule since 3.1), strings with only JSON's mandatory escapes. It depends on the data
    alone, so neither a Python nor a library upgrade changes a hash. orjson writes the same
    bytes for most records, several times faster; it is used only where that is proven (see
    _orjson_canonical). Raises TooDeep for a record nested deeper than MAX_DEPTH.
    """
    text = _orjson_canonical(raw)
    if text is None:
        text = _stdlib_canonical(raw)
    return HASH_PREFIX + hashlib.sha256(text).hexdigest()


def legacy_hash(raw: Any) -> str:
    """The hash releases before canonical JSON stored: SHA-256 of marshal format 2."""
    try:
        return hashlib.sha256(marshal.dumps(raw, 2)).hexdigest()
    except ValueError:  # nested too deep for marshal: no stored hash can match it
        return ""


def same_content(stored: str | None, digest: str, raw: Any) -> bool:
    """Whether a stored hash is this record's: equal, or a legacy hash of the same record.

    Legacy hashes stay until their record changes, so moving to canonical JSON writes nothing;
    the marshal hash is computed only for records that still have one."""
    if stored is None:
        return False
    if stored == digest:
        return True
    legacy = not stored.startswith((HASH_PREFIX, LEAN_PREFIX))
    return legacy and legacy_hash(raw) == stored


def lean_hash(raw: Any) -> str | None:
    """The hash a finished lean task is stored under once enriched from this listing; None
    for a record that cannot be hashed (it is set aside when typed)."""
    try:
        return LEAN_PREFIX + content_hash(raw).removeprefix(HASH_PREFIX)
    except Untypable:
        return None


def _orjson_canonical(value: Any) -> bytes | None:
    """orjson's sorted-key text where it is exactly the stdlib's canonical text, else None."""
    if not _ORJSON_AGREES:
        return None
    try:
        data = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # ints beyond 64 bits, lone surrogates, nesting past MAX_DEPTH
        return None
    if _own_notation(data):
        return None
    return data if _has_no_nan(data, value) else None


def _stdlib_canonical(value: Any) -> bytes:
    """The canonical text (see content_hash), from the json module; lone surrogates kept."""
    if _deeper_than(value, MAX_DEPTH):
        raise TooDeep()
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return text.encode("utf-8", "surrogatepass")


# A bytes.translate table: digits become "0", e and E "e", + and - "+", "." stays, the rest " ".
_NUMBER_SHAPE = bytes(
    0x30 if chr(b).isdigit() and b < 128 else ord(_SHAPES.get(chr(b), " ")) for b in range(256)
)


def _own_notation(data: bytes) -> bool:
    """Whether orjson's text may hold a float in a notation of orjson's own: an exponent
    ("1e-7", where repr writes "1e-07") or a tiny float ("0.00005", repr "5e-05")."""
    # Strings merely looking alike ("1e+5" in a name) only cost the slower path. Two C passes,
    # no regex: this runs for every task hashed.
    return b"0.0000" in data or b"0e+0" in data.translate(_NUMBER_SHAPE)


def _orjson_agrees() -> bool:
    """Whether this orjson writes the probes exactly as the canonical stdlib text does
    (floats in plain notation, every ASCII character, non-ASCII text, key order), and writes
    exponents and tiny floats in a form _own_notation sends the stdlib way."""
    floats = [0.0, -0.0, 1.0, 123.0, 0.1, 0.0001, 0.00015000000000000001, 1234.5678, 2.5, 1e15]
    text = "".join(map(chr, range(128))) + "\u00e9\u2028\U0001f642\ufeff"
    probe = {"floats": floats, "text": text, "\ufffd": 1, "\U0001f642": 2, "\u00e9": 3, "B": [True]}
    others = [1e16, -1e16, 1e-7, 2.5e-05, 5e-05, 5e-324, 1.7976931348623157e308, 1e300]
    try:
        same = orjson.dumps(probe, option=orjson.OPT_SORT_KEYS) == _stdlib_canonical(probe)
        return same and all(_own_notation(orjson.dumps([x])) for x in others)
    except TypeError:
        return False


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether objects and arrays nest more than `limit` levels, found without recursion."""
    stack = [(value, 1)] if isinstance(value, _CONTAINERS) else []
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, _CONTAINERS))
    return False


_ORJSON_AGREES = _orjson_agrees()


def cleaned_json(raw: Any) -> tuple[Any, str]:
    """The cleaned record and its JSON text, without a deep copy unless one is needed.

    Raises TooDeep for a record nested deeper than MAX_DEPTH."""
    # Most records are clean: one orjson dump proves it and is the text to store. Only
    # records with a NUL, a lone surrogate, a NaN or infinity, or a huge int pay for the walk.
    text = faithful_json(raw)
    if text is not None and "\\u0000" not in text:
        return raw, text
    if _deeper_than(raw, MAX_DEPTH):  # clean_json recurses
        raise TooDeep()
    cleaned = clean_json(raw)
    return cleaned, json_text(cleaned)


def faithful_json(value: Any) -> str | None:
    """orjson's text for a value, or None where it would not be exact."""
    try:
        data = orjson.dumps(value)  # refuses lone surrogates and ints beyond 64 bits
    except TypeError:
        return None
    return data.decode() if _has_no_nan(data, value) else None


def _has_no_nan(data: bytes, value: Any) -> bool:
    """Whether orjson's text `data` of `value` holds no NaN or infinity, which it writes as null.

    Text with a null proves it by reading back equal: far cheaper than json.dumps, which
    checks as it writes (README, Performance)."""
    return b"null" not in data or orjson.loads(data) == value


def clean_key(key: Any) -> str:
    """A dict key as cleaned text; non-string keys as json.dumps would write them."""
    return clean_text(key if isinstance(key, str) else json.dumps(key))


def json_text(value: Any) -> str:
    """Compact JSON text, keys in the order received (for what orjson cannot write exactly)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> str:
    """The start of a value's JSON text, cleaned, at most `limit` characters (written without
    recursion, so any depth will do)."""
    pieces: list[str] = []
    size = 0
    for piece in _json_pieces(value):
        pieces.append(piece)
        size += len(piece)
        if size > limit:
            return "".join(pieces)[:limit] + "..."
    return "".join(pieces)


class _Punct(str):
    """Punctuation among _json_pieces' values, written as it is."""


def _json_pieces(value: Any) -> Iterator[str]:
    """A value's compact JSON text piece by piece, with a stack of iterators, not recursion."""
    stack: list[Iterator[Any]] = [iter((value,))]
    while stack:
        item = next(stack[-1], stack)  # the stack itself marks an exhausted iterator
        if item is stack:
            stack.pop()
        elif isinstance(item, _Punct):
            yield item
        elif isinstance(item, dict):
            yield "{"
            stack.append(_members(item))
        elif isinstance(item, list | tuple):
            yield "["
            stack.append(_elements(item))
        else:
            yield json_text(clean_json(item))


def _members(value: dict[Any, Any]) -> Iterator[Any]:
    for i, (key, item) in enumerate(value.items()):
        yield _Punct(("," if i else "") + json_text(clean_key(key)) + ":")
        yield item
    yield _Punct("}")


def _elements(value: list[Any] | tuple[Any, ...]) -> Iterator[Any]:
    for i, item in enumerate(value):
        if i:
            yield _Punct(",")
        yield item
    yield _Punct("]")
