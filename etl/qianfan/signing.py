"""bce-auth-v1 request signing, Baidu Cloud's AK/SK scheme (the tests check it against the SDK)."""

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from urllib.parse import quote

AUTH_VERSION = "bce-auth-v1"
DEFAULT_EXPIRATION = 300
DEFAULT_SIGNED_HEADERS = ("host", "x-bce-date")


def uri_encode(value: str, keep_slash: bool = False) -> str:
    """Percent-encode every byte but A-Z a-z 0-9 - . _ ~ (and '/' if asked)."""
    return quote(value, safe="/" if keep_slash else "~")


def bce_timestamp(now: datetime | None = None) -> str:
    """The `x-bce-date` form of a UTC time: YYYY-MM-DDTHH:MM:SSZ."""
    return (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def canonical_request(
    method: str, path: str, query: Mapping[str, str], headers: Mapping[str, str]
) -> str:
    """METHOD, path, sorted query and sorted headers, one per line."""
    canonical_query = "&".join(sorted(f"{uri_encode(k)}={uri_encode(v)}" for k, v in query.items()))
    canonical_headers = "\n".join(
        sorted(
            f"{uri_encode(name.strip().lower())}:{uri_encode(value.strip())}"
            for name, value in headers.items()
            if value.strip()
        )
    )
    return "\n".join(
        [method.upper(), uri_encode(path, keep_slash=True), canonical_query, canonical_headers]
    )


def signature(
    secret_key: str,
    auth_prefix: str,
    method: str,
    path: str,
    query: Mapping[str, str],
    headers: Mapping[str, str],
) -> str:
    """hex(HMAC(hex(HMAC(SK, prefix)), canonical request))."""
    signing_key = hmac.new(secret_key.encode(), auth_prefix.encode(), hashlib.sha256).hexdigest()
    request = canonical_request(method, path, query, headers)
    return hmac.new(signing_key.encode(), request.encode(), hashlib.sha256).hexdigest()


def authorization(
    access_key: str,
    secret_key: str,
    method: str,
    path: str,
    query: Mapping[str, str],
    headers: Mapping[str, str],
    timestamp: str,
    expiration: int = DEFAULT_EXPIRATION,
    signed_headers: Iterable[str] = DEFAULT_SIGNED_HEADERS,
) -> str:
    """The `Authorization` header value for one request."""
    names = sorted({name.lower() for name in signed_headers})
    lowered = {name.lower(): value for name, value in headers.items()}
    chosen = {name: lowered[name] for name in names if lowered.get(name, "").strip()}
    prefix = f"{AUTH_VERSION}/{access_key}/{timestamp}/{expiration}"
    digest = signature(secret_key, prefix, method, path, query, chosen)
    return f"{prefix}/{';'.join(sorted(chosen))}/{digest}"
