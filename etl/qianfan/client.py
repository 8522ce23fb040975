"""The Qianfan console v2 client: signed POSTs, timeouts, retries, errors (pagination.py pages)."""

import email.utils
import json
import logging
import random
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Container, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NoReturn, Self
from urllib.parse import SplitResult, urlsplit

import orjson
import requests
from requests.adapters import HTTPAdapter

from etl import __version__, redact, stopping
from etl.errors import (
    AuthError,
    ConfigError,
    ContractError,
    EtlError,
    RetriableAPIError,
    TransientError,
)
from etl.qianfan import signing

log = logging.getLogger("etl.qianfan")

BASE_URL_VAR = "QIANFAN_CONSOLE_API_BASE_URL"
API_PATH = "/v2/finetuning"
USER_AGENT = f"qianfan-etl/{__version__}"
SIGNED_HEADERS = ("content-type", "host", "x-bce-date")
# Wall-clock limit on one HTTP attempt, seconds (0: none)
DEFAULT_DEADLINE = 120.0
# --api-deadline 0: no deadline. Finite, so the timers that take it need no special case.
NO_DEADLINE = 365 * 86400.0
CHUNK_SIZE = 64 * 1024
MAX_BODY_BYTES = 64 * 1024 * 1024
DEADLINE_PASSED = "response body not complete within the per-attempt deadline"
SNIPPET_CHARS = 200
# Where a body too deep for json.loads is cut (see _cut_deep): past the deepest record the
# transform takes (etl.canonical.MAX_DEPTH, below a page's three levels), within the parser's.
CUT_DEPTH = 300
# A bytes.translate table: each ASCII digit becomes "0", every other byte a space.
_DIGITS_AS_ZERO = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_LONG_DIGIT_RUN = b"0" * 19


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


def split_base_url(base_url: str) -> SplitResult:
    """The parts of a console API base URL; a ConfigError unless it is http(s)://host[:port]
    (a path allowed), and never with credentials in it."""
    parts = urlsplit(base_url.rstrip("/"))
    if parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
        raise ConfigError(
            f"bad Qianfan base URL {redact.scrub(base_url)!r}: expected http(s)://host[:port]"
        )
    return parts


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
        deadline: float = DEFAULT_DEADLINE,
        retry: RetryPolicy = RetryPolicy(),
        qps: float | None = None,
        sleep: Callable[[float], None] = stopping.sleep,
        concurrency: int = 8,
    ) -> None:
        if retry.max_attempts < 1:
            raise ConfigError(f"max_attempts must be at least 1, got {retry.max_attempts}")
        parts = split_base_url(base_url)
        self._url = f"{parts.scheme}://{parts.netloc}{parts.path}{API_PATH}"
        self._path = f"{parts.path}{API_PATH}"
        self._host = parts.netloc
        self._access_key = access_key
        self._secret_key = secret_key
        redact.register(secret_key)
        self._timeout = (connect_timeout, read_timeout)
        self._deadline = deadline if deadline > 0 else NO_DEADLINE
        self._retry = retry
        self._sleep = sleep
        self._limiter = _RateLimiter(qps, sleep)
        self._calls = 0
        self._calls_lock = threading.Lock()
        self._http = _session(concurrency)
        # proxies and CA bundle as requests reads them from the environment, once per client
        # (per request it would scan the environment twice)
        self._transport = self._http.merge_environment_settings(self._url, {}, True, True, None)
        # verify=True in, so a bundle from the environment or True out: never None, which the
        # adapter (called without the session's defaults) would take as "do not verify"
        self._verify: bool | str = self._transport["verify"] or True
        # Requests go straight to the session's adapter: Session.prepare_request and .send
        # merge cookies, hooks and settings this client never uses, on every call.
        self._adapter = self._http.get_adapter(self._url)
        self._watchdog = _Watchdog(self._deadline)

    def __enter__(self) -> Self:
        """Use as a context manager that closes the session."""
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Close the session."""
        self.close()

    def close(self) -> None:
        """Release pooled connections and stop the watchdog."""
        self._watchdog.close()
        self._http.close()

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
            except RetriableAPIError as failure:
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

    def _wait_after(self, action: str, attempt: int, failure: RetriableAPIError) -> float:
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
            # no Session.prepare_request, so no ~/.netrc credentials in place of the signature
            prepared = requests.PreparedRequest()
            prepared.prepare("POST", url, headers=self._signed_headers(action), data=payload)
            # the adapter never follows a redirect: _interpret reports it
            with self._adapter.send(
                prepared,
                stream=True,
                timeout=self._timeout,
                proxies=self._transport["proxies"],
                verify=self._verify,
                cert=self._transport["cert"],
            ) as response:
                with self._watchdog.guard(response, deadline):
                    body = _read_capped(response)
                if time.monotonic() > deadline:
                    raise RetriableAPIError(DEADLINE_PASSED)
            return response.status_code, response.headers, body
        except RetriableAPIError as exc:
            raise RetriableAPIError(f"{action}: {exc} ({self._deadline:g} s)") from None
        except requests.exceptions.SSLError as exc:
            raise ConfigError(f"{action}: {_tls_failure(exc)} ({self._host}); {TLS_HINT}") from None
        except (requests.RequestException, OSError) as exc:
            if time.monotonic() > deadline:
                raise RetriableAPIError(
                    f"{action}: {DEADLINE_PASSED} ({self._deadline:g} s)"
                ) from None
            raise RetriableAPIError(f"{action}: {_transport_failure(exc, self._host)}") from None


# OpenSSL's reasons for a handshake that met something other than TLS: a plain-HTTP server.
_NOT_TLS_REASONS = frozenset({"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "HTTP_REQUEST"})
TLS_HINT = (
    f"check that {BASE_URL_VAR} names the API with the right scheme (http:// for a server "
    "without TLS, such as the simulator), and for a certificate a private or company CA signed, "
    "set REQUESTS_CA_BUNDLE to that CA's PEM file"
)


def _tls_failure(exc: BaseException) -> str:
    """Why the TLS handshake failed, in words, with OpenSSL's own short reason."""
    cause = _causes(exc)[-1]
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"the server's certificate is not trusted ({cause.verify_message})"
    reason = getattr(cause, "reason", None)
    if reason in _NOT_TLS_REASONS:
        return f"the server does not speak TLS ({reason}: plain HTTP?)"
    return f"the TLS handshake failed ({reason or type(cause).__name__})"


def _session(concurrency: int) -> requests.Session:
    """One session that verifies TLS, never retries or redirects on its own, and takes
    proxies and CA bundles from the environment (trust_env: HTTPS_PROXY, NO_PROXY,
    REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE)."""
    session = requests.Session()
    session.trust_env = True
    # one connection per worker thread, plus the thread that lists jobs
    adapter = HTTPAdapter(pool_maxsize=concurrency + 1, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


# requests wraps the transport's exception: these names, found in the chain of causes, say
# what happened; checked in order, since a failed connect is also a ConnectionError.
_TRANSPORT_FAILURES: tuple[tuple[str, str], ...] = (
    ("ProxyError", "the proxy failed"),
    ("NameResolutionError", "could not resolve the host name"),
    ("NewConnectionError", "could not connect"),
    ("ConnectTimeout", "connecting timed out"),
    ("ReadTimeout", "no response within the read timeout"),
    ("ContentDecodingError", "the body could not be decoded"),
    ("ChunkedEncodingError", "the connection broke (reset, or closed mid-response)"),
    ("ProtocolError", "the connection broke (reset, or closed mid-response)"),
)


# Failures to reach the host at all (no proxy between): most often the base URL is wrong.
_UNREACHED = frozenset({"NameResolutionError", "NewConnectionError", "ConnectTimeout"})


def _transport_failure(exc: BaseException, host: str) -> str:
    """What went wrong on the wire, in words, with the name of the innermost cause."""
    chain = _causes(exc)
    names = {kind.__name__ for cause in chain for kind in type(cause).__mro__}
    found = next((pair for pair in _TRANSPORT_FAILURES if pair[0] in names), ("", "failed"))
    hint = f" (is {BASE_URL_VAR} right?)" if found[0] in _UNREACHED else ""
    return f"{found[1]} ({type(chain[-1]).__name__}) talking to {host}{hint}"


def _causes(exc: BaseException) -> list[BaseException]:
    """The exception and those it wraps (requests and urllib3 keep them in args or reason)."""
    chain = [exc]
    while len(chain) < 8:
        inner = getattr(chain[-1], "reason", None)
        if not isinstance(inner, BaseException):
            inner = next((arg for arg in chain[-1].args if isinstance(arg, BaseException)), None)
        if inner is None or inner in chain:
            break
        chain.append(inner)
    return chain


def _read_capped(response: requests.Response) -> bytes:
    """Stream the body in chunks, refusing one larger than the size cap."""
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(CHUNK_SIZE):
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ContractError(f"response larger than {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class _Watchdog:
    """One thread that shuts the socket of a response still being read at its deadline, so
    a body trickling in byte by byte cannot outlast the per-attempt deadline."""

    def __init__(self, period: float) -> None:
        self._period = min(max(period, 0.01), 3600.0)
        self._guarded: dict[int, tuple[float, requests.Response]] = {}
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    @contextmanager
    def guard(self, response: requests.Response, deadline: float) -> Iterator[None]:
        """Watch this response while the block reads it."""
        with self._wake:
            self._guarded[id(response)] = (deadline, response)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="qianfan-deadline")
                self._thread.daemon = True
                self._thread.start()
        try:
            yield
        finally:
            with self._wake:  # a cut never hits a connection already back in the pool
                self._guarded.pop(id(response), None)

    def close(self) -> None:
        """Stop the thread."""
        with self._wake:
            self._closed = True
            self._wake.notify()

    def _run(self) -> None:
        # Every deadline is "now + period", so waking at the soonest one, or a period from
        # now when nothing is guarded, is never late: guard() needs no notify.
        with self._wake:
            while not self._closed:
                now = time.monotonic()
                for key, (deadline, response) in list(self._guarded.items()):
                    if deadline <= now:
                        _shut(response)
                        del self._guarded[key]
                soonest = min((d for d, _ in self._guarded.values()), default=now + self._period)
                self._wake.wait(max(soonest - now, 0.001))


def _shut(response: requests.Response) -> None:
    """Shut the socket of a response whose deadline passed: a blocked read returns at once."""
    connection = getattr(response.raw, "connection", None)
    sock = getattr(connection, "sock", None)
    if isinstance(sock, socket.socket):
        with suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _reject_constant(name: str) -> NoReturn:
    """Refuse NaN/Infinity, which are not JSON."""
    raise ValueError(f"non-standard JSON constant {name}")


def _no_long_integer(body: bytes) -> bool:
    """Whether the body holds no run of 19 or more digits, so orjson may read it: orjson reads
    a page much faster than the standard library (README, Performance), but reads an integer
    beyond 64 bits as a float (and refuses lone surrogates), which the standard library takes."""
    return _LONG_DIGIT_RUN not in body.translate(_DIGITS_AS_ZERO)


def _parse_json(body: bytes) -> Any:
    """Decode a JSON body; ValueError when it is not standard JSON."""
    if _no_long_integer(body):
        with suppress(orjson.JSONDecodeError):
            return orjson.loads(body)
    text = body.decode("utf-8")
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        return json.loads(_cut_deep(text), parse_constant=_reject_constant)


# A JSON string (escapes included) or a bracket: enough to follow nesting outside strings.
_NESTING_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')


def _cut_deep(text: str, depth: int = CUT_DEPTH) -> str:
    """The JSON text with every object or array opened at `depth` replaced by `[]`.

    Nesting too deep for the parser would lose the whole page; cut at this depth, the record
    holding it is still deeper than the transform takes, so it alone becomes a reject."""
    pieces: list[str] = []
    level, kept_to, cut_at = 0, 0, -1
    for token in _NESTING_TOKEN.finditer(text):
        bracket = token.group()
        if bracket in ("[", "{"):
            level += 1
            if level == depth:
                cut_at = token.start()
        elif bracket in ("]", "}"):
            if level == depth:
                pieces += [text[kept_to:cut_at], "[]"]
                kept_to = token.end()
            level -= 1
    return "".join([*pieces, text[kept_to:]])


def _snippet(text: str, secret: str) -> str:
    """A short, secret-free excerpt for messages."""
    cleaned = " ".join(text.replace(secret, redact.MASK).split()) if secret else text
    # Scrubbed before it is cut, so that no secret is cut in half and kept.
    return " ".join(redact.scrub(cleaned).split())[:SNIPPET_CHARS]


AUTH_HINTS = {
    "InvalidAccessKeyId": "QIANFAN_ACCESS_KEY is not a known IAM access key",
    "SignatureDoesNotMatch": "QIANFAN_SECRET_KEY does not match QIANFAN_ACCESS_KEY",
    "AccessDenied": "the key pair in QIANFAN_ACCESS_KEY lacks a Qianfan read policy "
    "(e.g. QianfanReadAccessPolicy)",
    "RequestExpired": "the request signature expired: check this machine's clock (clock skew?)",
}
DEFAULT_AUTH_HINT = "check QIANFAN_ACCESS_KEY / QIANFAN_SECRET_KEY and the account's policies"


@dataclass(frozen=True)
class ResponseRule:
    """Responses that mean one thing: any of these HTTP statuses, BCE error codes (a v2 error
    body's `code`) or old-style `error_code`s (in an HTTP 200 body) raises `error`."""

    error: type[EtlError]
    statuses: Container[int] = frozenset()
    codes: Container[str] = frozenset()
    legacy_codes: Container[int] = frozenset()

    def matches(self, status: int, code: str | None, legacy_code: int | None) -> bool:
        """Whether a response with these fields falls under this rule."""
        return status in self.statuses or code in self.codes or legacy_code in self.legacy_codes


# What a response that carries no result means: the first rule that matches decides, and one
# that no rule matches broke the contract (65). Beside the table, the client retries a 2xx body
# that is not JSON (cut short on the way) and a failed connection; a failed TLS handshake or
# verification is configuration (78: the URL's scheme or the CA bundle); a body over
# MAX_BODY_BYTES breaks the contract.
RESPONSE_POLICY: tuple[ResponseRule, ...] = (
    # Rate limit and server trouble; old style: 18 QPS limit, 336100 high load, 500000 internal.
    ResponseRule(
        RetriableAPIError,
        statuses=frozenset({429, 500, 502, 503, 504}),
        legacy_codes=frozenset({18, 336100, 500000}),
    ),
    # The API never redirects: the base URL points somewhere else.
    ResponseRule(ConfigError, statuses=range(300, 400)),
    # Not allowed, which retrying cannot help; old style: 6 no permission, 14 IAM authentication
    # failed, 110 and 111 access token invalid or expired.
    ResponseRule(
        AuthError,
        statuses=frozenset({401, 403}),
        codes=frozenset(AUTH_HINTS),
        legacy_codes=frozenset({6, 14, 110, 111}),
    ),
)


def classify(
    status: int, code: str | None = None, legacy_code: int | None = None
) -> type[EtlError]:
    """The error a response without a result raises (RetriableAPIError: try again)."""
    matching = (rule.error for rule in RESPONSE_POLICY if rule.matches(status, code, legacy_code))
    return next(matching, ContractError)


def _interpret(
    action: str, status: int, headers: Mapping[str, str], body: bytes, secret: str
) -> dict[str, Any]:
    """Turn one HTTP response into its `result`, or raise what RESPONSE_POLICY says it means."""
    request_id = headers.get("x-bce-request-id", "-")
    if 200 <= status < 300:
        return _success(action, status, body, request_id, secret)
    code, message, request_id = _error_fields(headers, body, request_id, secret)
    error = classify(status, code)
    if error is ConfigError:
        raise ConfigError(_redirected(action, status, headers.get("Location")))
    where = (
        f"{action}: HTTP {status} {code or '-'}: {message or '-'} (x-bce-request-id={request_id})"
    )
    hint = AUTH_HINTS.get(code or "", DEFAULT_AUTH_HINT)
    raise _failure(error, where, hint, headers.get("Retry-After"))


def _failure(
    error: type[EtlError], message: str, auth_hint: str, retry_after: str | None = None
) -> EtlError:
    """The classified error with its message; one not allowed also says what to check."""
    if error is RetriableAPIError:
        return RetriableAPIError(message, retry_after)
    return error(f"{message}; {auth_hint}" if error is AuthError else message)


def _redirected(action: str, status: int, location: str | None) -> str:
    """What a redirect means here: the base URL is not the API's (http for https, a proxy's or
    a portal's login page). The Location is shown without its query and credentials."""
    parts = urlsplit(location or "")
    shown = f"{parts.scheme}://{parts.hostname}{parts.path}" if parts.hostname else parts.path
    return (
        f"{action}: HTTP {status} redirect to {shown or '(no Location)'}: the API does not "
        f"redirect, so {BASE_URL_VAR} does not point at it (https rather than http? a proxy?)"
    )


def _success(action: str, status: int, body: bytes, request_id: str, secret: str) -> dict[str, Any]:
    """Validate a 2xx body: a `result` object, or a legacy error_code."""
    where = f"{action}: HTTP {status} (x-bce-request-id={request_id})"
    try:
        payload = _parse_json(body)
    except ValueError:
        excerpt = _snippet(body.decode("utf-8", "replace"), secret)
        raise RetriableAPIError(f"{where}: malformed JSON body {excerpt!r}") from None
    if isinstance(payload, dict) and "error_code" in payload:
        _legacy_error(where, status, payload, secret)
    if not isinstance(payload, dict) or not isinstance(payload.get("result"), dict):
        excerpt = _snippet(json.dumps(payload, ensure_ascii=False), secret)
        raise ContractError(f"{where}: expected an object with a `result` object, got {excerpt}")
    result: dict[str, Any] = payload["result"]
    return result


def _legacy_error(where: str, status: int, payload: dict[str, Any], secret: str) -> NoReturn:
    """Raise what an old-style HTTP 200 {error_code, error_msg} body means."""
    code = payload.get("error_code")
    text = _snippet(str(payload.get("error_msg", "")), secret)
    error = classify(status, legacy_code=code if isinstance(code, int) else None)
    raise _failure(error, f"{where}: error_code {code}: {text}", DEFAULT_AUTH_HINT)


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
