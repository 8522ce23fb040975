"""The Qianfan console v2 client: signed POSTs, timeouts, retries, errors, marker pagination."""

import email.utils
import json
import logging
import random
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import suppress
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NoReturn, Self
from urllib.parse import urlsplit

import orjson
import urllib3

from etl import __version__, redact
from etl.errors import AuthError, ConfigError, ContractError, TransientError
from etl.qianfan import signing

log = logging.getLogger("etl.qianfan")

API_PATH = "/v2/finetuning"
USER_AGENT = f"qianfan-etl/{__version__}"
SIGNED_HEADERS = ("content-type", "host", "x-bce-date")
TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})
TRANSIENT_LEGACY_CODES = frozenset({18, 336100, 500000})
# Old-style codes that mean "not allowed": no permission, IAM authentication failed, access
# token invalid or expired. Retrying cannot help; they exit 77 like a 401/403.
AUTH_LEGACY_CODES = frozenset({6, 14, 110, 111})
CHUNK_SIZE = 64 * 1024
# Connections kept open per host: more than any sensible --concurrency.
POOL_SIZE = 32
MAX_BODY_BYTES = 64 * 1024 * 1024
PAGE_SIZE = 100
MAX_EMPTY_TRUNCATED_PAGES = 3
SNIPPET_CHARS = 200
# A bytes.translate table: each ASCII digit becomes "0", every other byte a space.
_DIGITS_AS_ZERO = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_LONG_DIGIT_RUN = b"0" * 19

AUTH_HINTS = {
    "InvalidAccessKeyId": "QIANFAN_ACCESS_KEY is not a known IAM access key",
    "SignatureDoesNotMatch": "QIANFAN_SECRET_KEY does not match QIANFAN_ACCESS_KEY",
    "AccessDenied": "the key pair in QIANFAN_ACCESS_KEY lacks a Qianfan read policy "
    "(e.g. QianfanReadAccessPolicy)",
    "RequestExpired": "the request signature expired: check this machine's clock (clock skew?)",
}
DEFAULT_AUTH_HINT = "check QIANFAN_ACCESS_KEY / QIANFAN_SECRET_KEY and the account's policies"


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry a transient failure."""

    max_attempts: int = 6
    base_wait: float = 0.5
    max_wait: float = 30.0
    retry_after_cap: float = 120.0

    def backoff(self, attempt: int) -> float:
        """Full-jitter exponential wait after the given failed attempt (1-based)."""
        return random.uniform(0.0, min(self.max_wait, self.base_wait * 2 ** (attempt - 1)))


class _Retriable(Exception):
    """One attempt failed in a way another attempt may fix."""

    def __init__(self, reason: str, retry_after: str | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds a Retry-After header asks for (delay-seconds or HTTP-date); None if unusable."""
    text = (value or "").strip()
    if not text:
        return None
    if text.isdigit():
        return float(text)
    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        return None
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))


class _RateLimiter:
    """Minimum interval between request starts, shared by every thread."""

    def __init__(self, qps: float | None, sleep: Callable[[float], None]) -> None:
        if qps is not None and qps <= 0:
            raise ConfigError(f"qps must be positive, got {qps}")
        self._interval = 0.0 if qps is None else 1.0 / qps
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next = 0.0

    def wait(self) -> None:
        """Reserve the next start slot, then sleep until it comes."""
        if not self._interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self._interval
        if start > now:
            self._sleep(start - now)


class QianfanClient:
    """One signed, retrying session against the fine-tuning API."""

    def __init__(
        self,
        base_url: str,
        access_key: str,
        secret_key: str,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        deadline: float = 120.0,
        retry: RetryPolicy = RetryPolicy(),
        qps: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if retry.max_attempts < 1:
            raise ConfigError(f"max_attempts must be at least 1, got {retry.max_attempts}")
        parts = urlsplit(base_url.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
            raise ConfigError(f"bad Qianfan base URL {base_url!r}: expected http(s)://host[:port]")
        self._url = f"{parts.scheme}://{parts.netloc}{parts.path}{API_PATH}"
        self._path = f"{parts.path}{API_PATH}"
        self._host = parts.netloc
        self._access_key = access_key
        self._secret_key = secret_key
        redact.register(secret_key)
        self._timeout = urllib3.Timeout(connect=connect_timeout, read=read_timeout)
        self._deadline = deadline
        self._retry = retry
        self._sleep = sleep
        self._limiter = _RateLimiter(qps, sleep)
        self._calls = 0
        self._calls_lock = threading.Lock()
        self._http = _connection_pool(parts.scheme, parts.hostname)

    def __enter__(self) -> Self:
        """Use as a context manager that closes the session."""
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Close the session."""
        self.close()

    def close(self) -> None:
        """Release pooled connections."""
        self._http.clear()

    @property
    def api_calls(self) -> int:
        """HTTP attempts sent so far, retries included."""
        with self._calls_lock:
            return self._calls

    def call(self, action: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST one action and return its `result`, retrying transient failures."""
        payload = json.dumps(dict(body), ensure_ascii=False).encode("utf-8")
        attempts = self._retry.max_attempts
        for attempt in range(1, attempts + 1):
            try:
                return self._attempt(action, payload)
            except _Retriable as failure:
                if attempt == attempts:
                    raise TransientError(
                        f"{failure}; gave up after {attempts} attempts, try again later"
                    ) from None
                wait = self._wait_after(action, attempt, failure)
                log.warning(
                    "%s attempt %d/%d failed (%s); retrying in %.2fs",
                    action,
                    attempt,
                    attempts,
                    failure,
                    wait,
                )
                self._sleep(wait)
        raise AssertionError("unreachable: max_attempts must be at least 1")

    def _wait_after(self, action: str, attempt: int, failure: _Retriable) -> float:
        """Retry-After if the server gave a usable one, else jittered backoff."""
        asked = retry_after_seconds(failure.retry_after)
        if asked is None:
            return self._retry.backoff(attempt)
        if asked > self._retry.retry_after_cap:
            raise TransientError(
                f"{action}: the server asked to wait {asked:.0f} s (Retry-After: "
                f"{failure.retry_after}), more than the {self._retry.retry_after_cap:.0f} s cap; "
                f"giving up now ({failure})"
            )
        return asked

    def _attempt(self, action: str, payload: bytes) -> dict[str, Any]:
        """One signed HTTP attempt, read within the deadline and classified."""
        self._limiter.wait()
        with self._calls_lock:
            self._calls += 1
        status, headers, body = self._send(action, payload)
        return _interpret(action, status, headers, body, self._secret_key)

    def _signed_headers(self, action: str) -> dict[str, str]:
        """Fresh x-bce-date and Authorization for one attempt."""
        headers = {
            "Host": self._host,
            "Content-Type": "application/json",
            "x-bce-date": signing.bce_timestamp(),
            "User-Agent": USER_AGENT,
            "Accept-Encoding": "gzip, deflate",
        }
        headers["Authorization"] = signing.authorization(
            self._access_key,
            self._secret_key,
            "POST",
            self._path,
            {"Action": action},
            headers,
            headers["x-bce-date"],
            signed_headers=SIGNED_HEADERS,
        )
        return headers

    def _send(self, action: str, payload: bytes) -> tuple[int, Mapping[str, str], bytes]:
        """POST and read the whole body, mapping transport failures to retriable ones."""
        deadline = time.monotonic() + self._deadline
        url = f"{self._url}?Action={signing.uri_encode(action)}"
        try:
            response = self._http.request(
                "POST",
                url,
                body=payload,
                headers=self._signed_headers(action),
                timeout=self._timeout,
                preload_content=False,
                redirect=False,
            )
            try:
                body = _read_body(response, deadline)
            except BaseException:
                response.close()  # a half-read connection must not go back to the pool
                raise
            finally:
                response.release_conn()
            return response.status, response.headers, body
        except _Retriable as exc:
            raise _Retriable(f"{action}: {exc} ({self._deadline:g} s)") from None
        except urllib3.exceptions.SSLError as exc:
            reason = redact.scrub(str(exc))
            raise AuthError(
                f"{action}: TLS verification failed for {self._host}: {reason}"
            ) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            what = _transport_failure(exc)
            raise _Retriable(f"{action}: {what} talking to {self._host}") from None


# Checked in order: NewConnectionError is also a ConnectTimeoutError.
_TRANSPORT_FAILURES: tuple[tuple[type[Exception], str], ...] = (
    (urllib3.exceptions.ProxyError, "the proxy failed"),
    (urllib3.exceptions.NewConnectionError, "could not connect"),
    (urllib3.exceptions.ConnectTimeoutError, "connecting timed out"),
    (urllib3.exceptions.ReadTimeoutError, "no response within the read timeout"),
    (urllib3.exceptions.ProtocolError, "the connection broke (reset, or closed mid-response)"),
)


def _transport_failure(exc: Exception) -> str:
    """What went wrong on the wire, in words, with the exception's name."""
    what = next((text for kind, text in _TRANSPORT_FAILURES if isinstance(exc, kind)), "failed")
    return f"{what} ({type(exc).__name__})"


def _connection_pool(scheme: str, host: str) -> urllib3.PoolManager:
    """Pooled connections that verify TLS and never retry or redirect on their own, through
    the proxy the environment names for this host (read once, here)."""
    proxies = urllib.request.getproxies()
    proxy = proxies.get(scheme) or proxies.get("all")
    if proxy and not urllib.request.proxy_bypass(host):
        auth = urllib3.util.parse_url(proxy).auth
        headers = urllib3.make_headers(proxy_basic_auth=auth) if auth else None
        return urllib3.ProxyManager(proxy, proxy_headers=headers, maxsize=POOL_SIZE, retries=False)
    return urllib3.PoolManager(maxsize=POOL_SIZE, retries=False)


def _read_body(response: urllib3.BaseHTTPResponse, deadline: float) -> bytes:
    """Stream the body, enforcing the per-attempt deadline and a size cap."""
    chunks: list[bytes] = []
    size = 0
    while chunk := response.read1(CHUNK_SIZE, decode_content=True):
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ContractError(f"response larger than {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
        if time.monotonic() > deadline:
            raise _Retriable("response body not complete within the per-attempt deadline")
    return b"".join(chunks)


def _reject_constant(name: str) -> NoReturn:
    """Refuse NaN/Infinity, which are not JSON."""
    raise ValueError(f"non-standard JSON constant {name}")


def _parse_json(body: bytes) -> Any:
    """Decode a JSON body; ValueError when it is not standard JSON."""
    # orjson reads a page twice as fast, but reads an integer of 19 or more digits (beyond
    # 64 bits) as a float and refuses lone surrogates; the standard library takes those.
    if _LONG_DIGIT_RUN not in body.translate(_DIGITS_AS_ZERO):
        with suppress(orjson.JSONDecodeError):
            return orjson.loads(body)
    return json.loads(body.decode("utf-8"), parse_constant=_reject_constant)


def _snippet(text: str, secret: str) -> str:
    """A short, secret-free excerpt for messages."""
    cleaned = " ".join(text.replace(secret, redact.MASK).split()) if secret else text
    # Scrubbed before it is cut, so that no secret is cut in half and kept.
    return " ".join(redact.scrub(cleaned).split())[:SNIPPET_CHARS]


def _interpret(
    action: str, status: int, headers: Mapping[str, str], body: bytes, secret: str
) -> dict[str, Any]:
    """Turn one HTTP response into a result or the right exception."""
    request_id = headers.get("x-bce-request-id", "-")
    if 200 <= status < 300:
        return _success(action, status, body, request_id, secret)
    code, message, request_id = _error_fields(headers, body, request_id, secret)
    where = (
        f"{action}: HTTP {status} {code or '-'}: {message or '-'} (x-bce-request-id={request_id})"
    )
    if status in TRANSIENT_STATUSES:
        raise _Retriable(where, headers.get("Retry-After"))
    if status in (401, 403) or code in AUTH_HINTS:
        raise AuthError(f"{where}; {AUTH_HINTS.get(code or '', DEFAULT_AUTH_HINT)}")
    raise ContractError(where)


def _success(action: str, status: int, body: bytes, request_id: str, secret: str) -> dict[str, Any]:
    """Validate a 2xx body: a `result` object, or a legacy error_code."""
    where = f"{action}: HTTP {status} (x-bce-request-id={request_id})"
    try:
        payload = _parse_json(body)
    except ValueError:
        excerpt = _snippet(body.decode("utf-8", "replace"), secret)
        raise _Retriable(f"{where}: malformed JSON body {excerpt!r}") from None
    if isinstance(payload, dict) and "error_code" in payload:
        _legacy_error(where, payload, secret)
    if not isinstance(payload, dict) or not isinstance(payload.get("result"), dict):
        excerpt = _snippet(json.dumps(payload, ensure_ascii=False), secret)
        raise ContractError(f"{where}: expected an object with a `result` object, got {excerpt}")
    result: dict[str, Any] = payload["result"]
    return result


def _legacy_error(where: str, payload: dict[str, Any], secret: str) -> NoReturn:
    """Raise for an old-style HTTP 200 {error_code, error_msg} body."""
    code = payload.get("error_code")
    text = _snippet(str(payload.get("error_msg", "")), secret)
    message = f"{where}: error_code {code}: {text}"
    if isinstance(code, int) and code in TRANSIENT_LEGACY_CODES:
        raise _Retriable(message)
    if isinstance(code, int) and code in AUTH_LEGACY_CODES:
        raise AuthError(f"{message}; {DEFAULT_AUTH_HINT}")
    raise ContractError(message)


def _error_fields(
    headers: Mapping[str, str], body: bytes, request_id: str, secret: str
) -> tuple[str | None, str, str]:
    """The BCE code, message and request id of an error response, from body or headers."""
    code = headers.get("X-Bce-Error-Code")
    message = headers.get("X-Bce-Error-Message", "")
    try:
        payload = _parse_json(body) if body.strip() else None
    except ValueError:
        payload = None
    if isinstance(payload, dict):
        code = str(payload["code"]) if payload.get("code") is not None else code
        message = str(payload.get("message") or message)
        request_id = str(payload.get("requestId") or request_id)
    elif body.strip() and not message:
        message = body.decode("utf-8", "replace")
    return code, _snippet(message, secret), request_id


def fetch_pages(
    client: QianfanClient, action: str, body: Mapping[str, Any], list_key: str
) -> Iterator[list[Any]]:
    """Yield each page's list, following nextMarker while isTruncated is true."""
    seen: set[str] = set()
    empty_run = 0
    request: dict[str, Any] = {**body, "maxKeys": PAGE_SIZE}
    while True:
        where = f"{action} {body['jobId']}" if "jobId" in body else action
        items, next_marker = _read_page(where, client.call(action, request), list_key)
        yield items
        if next_marker is None:
            return
        empty_run = 0 if items else empty_run + 1
        if empty_run >= MAX_EMPTY_TRUNCATED_PAGES:
            raise _broken(where, f"{empty_run} empty pages in a row marked truncated")
        if next_marker in seen:
            raise _broken(where, f"nextMarker {next_marker!r} already seen: loop")
        seen.add(next_marker)
        request = {**request, "marker": next_marker}


def _read_page(where: str, result: dict[str, Any], list_key: str) -> tuple[list[Any], str | None]:
    """The items of one page and the marker of the next (None when this was the last)."""
    items = result.get(list_key)
    info = result.get("pageInfo")
    if not isinstance(items, list):
        raise _broken(where, f"result.{list_key} is not a list")
    if not isinstance(info, dict):
        raise _broken(where, "result.pageInfo is not an object")
    if len(items) > PAGE_SIZE:
        raise _broken(where, f"page of {len(items)} items, asked for {PAGE_SIZE}")
    truncated = info.get("isTruncated")
    if not isinstance(truncated, bool):
        raise _broken(where, f"pageInfo.isTruncated is {truncated!r}, not a boolean")
    if not truncated:
        return items, None
    next_marker = info.get("nextMarker")
    if not isinstance(next_marker, str) or not next_marker:
        raise _broken(where, f"isTruncated is true but nextMarker is {next_marker!r}")
    return items, next_marker


def _broken(where: str, detail: str) -> ContractError:
    """A pagination breach: loud, because a partial listing must never pass as complete."""
    return ContractError(
        f"{where}: the API broke its pagination contract ({detail}). The listing is "
        "incomplete, so nothing was soft-deleted; re-run later and report it if it persists."
    )


def fetch_job_pages(client: QianfanClient) -> Iterator[list[Any]]:
    """Every raw job of the account, page by page."""
    return fetch_pages(client, "DescribeFineTuningJobs", {}, "jobList")


def fetch_tasks(client: QianfanClient, job_id: str) -> list[Any]:
    """Every raw task of one job, all pages."""
    pages = fetch_pages(client, "DescribeFineTuningTasks", {"jobId": job_id}, "taskList")
    return [task for page in pages for task in page]
