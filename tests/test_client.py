"""The Qianfan client: signing, Retry-After, retries and pagination against the simulator."""

import calendar
import email.utils
import http.server
import logging
import ssl
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from baidubce import utils as bce_utils
from baidubce.auth import bce_v1_signer
from baidubce.auth.bce_credentials import BceCredentials
from hypothesis import given, settings
from hypothesis import strategies as st

from etl.errors import AuthError, ConfigError, ContractError, RetriableAPIError, TransientError
from etl.extract import listing_pages
from etl.qianfan import QianfanClient, RetryPolicy, signing
from etl.qianfan.client import classify, retry_after_seconds
from etl.resources import JOBS as JOB_LIST
from etl.resources import TASKS as TASK_LIST
from etl.simulator import Fault, Simulator, SimulatorConfig
from etl.transform import Reject, job_to_row
from tests.harness import free_port
from tests.relay import ForwardProxy, self_signed, tls_front

AK = "example-access-key-id"
SK = "example-secret-access-key"
STAMP = "2024-01-30T09:41:54Z"
VECTOR_HEADERS = {
    "Host": "qianfan.baidubce.com",
    "Content-Type": "application/json",
    "x-bce-date": STAMP,
}
VECTOR_A = (
    "bce-auth-v1/example-access-key-id/2024-01-30T09:41:54Z/1800/content-type;host;x-bce-date/"
    "2c687a8e1f3a6d579f37bee3d1e3acc14a34c89713b8c31c2b9f89000aed82a0"
)
VECTOR_B = (
    "bce-auth-v1/example-access-key-id/2024-01-30T09:41:54Z/300/host;x-bce-date/"
    "6e38046f964348b5ab381c01a4e01a69bca0c5818d9beee69b6303606c315f73"
)


def test_signing_vector_a() -> None:
    """Signing vector A: tasks action, 1800 s, content-type signed too."""
    query = {"Action": "DescribeFineTuningTasks"}
    names = ("content-type", "host", "x-bce-date")
    auth = signing.authorization(
        AK, SK, "POST", "/v2/finetuning", query, VECTOR_HEADERS, STAMP, 1800, names
    )
    assert auth == VECTOR_A


def test_signing_vector_b() -> None:
    """Signing vector B: jobs action, 300 s, host and x-bce-date."""
    query = {"Action": "DescribeFineTuningJobs"}
    auth = signing.authorization(AK, SK, "POST", "/v2/finetuning", query, VECTOR_HEADERS, STAMP)
    assert auth == VECTOR_B


def sdk_sign(
    path: str, query: dict[str, str], headers: dict[str, str], names: list[str], expiry: int
) -> str:
    """The bce-python-sdk signer, used only as a test oracle."""
    credentials = BceCredentials(AK, SK)
    stamp = calendar.timegm(time.strptime(STAMP, "%Y-%m-%dT%H:%M:%SZ"))
    result = bce_v1_signer.sign(
        credentials,
        b"POST",
        bce_utils.normalize_string(path.encode(), False),
        {k.encode(): v.encode() for k, v in headers.items()},
        {k.encode(): v.encode() for k, v in query.items()},
        stamp,
        expiry,
        [name.encode() for name in sorted(names)],
    )
    return str(result.decode())


header_text = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Zs", "Zl", "Zp")),
    min_size=1,
    max_size=20,
).map(lambda value: f" {value} ")


@settings(max_examples=200, deadline=None)
@given(
    path=st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30),
    query=st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=12), max_size=4),
    host=header_text,
    content_type=header_text,
    with_content_type=st.booleans(),
    expiry=st.integers(1, 100_000),
)
def test_signing_agrees_with_the_sdk(
    path: str,
    query: dict[str, str],
    host: str,
    content_type: str,
    with_content_type: bool,
    expiry: int,
) -> None:
    """Our signer and bce-python-sdk's agree on random paths, queries and header values."""
    query = {k: v for k, v in query.items() if "\x00" not in k + v}
    headers = {"Host": host, "Content-Type": content_type, "x-bce-date": STAMP}
    names = ["host", "x-bce-date"] + (["content-type"] if with_content_type else [])
    sdk_headers = headers if with_content_type else {"Host": host, "x-bce-date": STAMP}
    ours = signing.authorization(AK, SK, "POST", "/" + path, query, headers, STAMP, expiry, names)
    assert ours == sdk_sign("/" + path, query, sdk_headers, names, expiry)


def test_retry_after_delay_seconds() -> None:
    """Delay-seconds form, with surrounding spaces."""
    assert retry_after_seconds(" 7 ") == 7.0
    assert retry_after_seconds("0") == 0.0


def test_retry_after_http_date() -> None:
    """HTTP-date form counts from now; dates in the past mean no wait."""
    now = datetime(2024, 1, 30, 9, 41, 54, tzinfo=UTC).timestamp()
    assert retry_after_seconds("Tue, 30 Jan 2024 09:42:04 GMT", now) == 10.0
    assert retry_after_seconds("Tue, 30 Jan 2024 09:40:00 GMT", now) == 0.0
    ahead = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28.0 <= (retry_after_seconds(ahead) or 0.0) <= 30.0


@pytest.mark.parametrize("value", [None, "", "soon", "-5", "1.5", "Tue, 99 Foo 2024", "12abc"])
def test_retry_after_garbage_is_ignored(value: str | None) -> None:
    """Unusable values mean 'no header' (jittered backoff), never a crash."""
    assert retry_after_seconds(value) is None


def test_backoff_is_full_jitter_capped() -> None:
    """Waits stay within [0, min(max_wait, base * 2**n)] and vary."""
    policy = RetryPolicy(base_wait=1.0, max_wait=5.0)
    waits = [policy.backoff(attempt) for attempt in range(1, 8) for _ in range(20)]
    assert all(0.0 <= wait <= 5.0 for wait in waits)
    assert all(0.0 <= policy.backoff(1) <= 1.0 for _ in range(50))
    assert len(set(waits)) > 10
    assert RetryPolicy(base_wait=0.0).backoff(5) == 0.0


@pytest.mark.parametrize(
    "url", ["ftp://example.com", "qianfan.baidubce.com", "https://", "https://ak:sk@host"]
)
def test_bad_base_url_is_a_config_error(url: str) -> None:
    """Only http(s)://host[:port] URLs, never credentials in the URL."""
    with pytest.raises(ConfigError) as caught:
        QianfanClient(url, AK, SK)
    assert SK not in str(caught.value)


def test_connection_refused_is_retried_then_transient() -> None:
    """Nothing listening: every attempt fails fast, then TransientError (75) with the host."""
    port = free_port()
    sleeps: list[float] = []
    retry = RetryPolicy(max_attempts=3, base_wait=0.0)
    with QianfanClient(
        f"http://127.0.0.1:{port}", AK, SK, retry=retry, sleep=sleeps.append
    ) as client:
        with pytest.raises(TransientError) as caught:
            client.call("DescribeFineTuningJobs", {})
        assert client.api_calls == 3
    assert sleeps == [0.0, 0.0]
    assert f"could not connect (NewConnectionError) talking to 127.0.0.1:{port}" in str(
        caught.value
    )
    assert "3 attempts" in str(caught.value)
    assert caught.value.exit_code == 75


def test_untrusted_certificate_is_a_config_error_without_retry(tmp_path: Path) -> None:
    """TLS is always verified: a server with a self-signed certificate gets one attempt, and the
    error names the settings that fix it."""
    cert, key = self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with client_for(f"https://127.0.0.1:{server.server_port}") as client:
            with pytest.raises(ConfigError, match=r"not trusted.*REQUESTS_CA_BUNDLE"):
                client.call("DescribeFineTuningJobs", {})
            assert client.api_calls == 1
    finally:
        server.shutdown()
        server.server_close()


# --- against the simulator -------------------------------------------------------------------

SIM_AK = "sim-access-key"
SIM_SK = "sim-secret-key"
JOBS = "DescribeFineTuningJobs"
TASKS = "DescribeFineTuningTasks"


@pytest.fixture
def sim() -> Simulator:
    """A small simulated account."""
    return Simulator(SimulatorConfig(jobs=3, tasks_per_job=4, checkpoints=2))


@pytest.fixture
def url(sim: Simulator) -> Iterator[str]:
    """The simulator served on a loopback port."""
    with sim.serve() as server:
        yield server.url


def client_for(
    url: str,
    sleeps: list[float] | None = None,
    *,
    access_key: str = SIM_AK,
    secret_key: str = SIM_SK,
    attempts: int = 4,
    **options: Any,
) -> QianfanClient:
    """A client with zero backoff whose sleeps are recorded instead of slept."""
    recorded = sleeps if sleeps is not None else []
    retry = RetryPolicy(max_attempts=attempts, base_wait=0.0, retry_after_cap=60.0)
    options.setdefault("sleep", recorded.append)
    return QianfanClient(url, access_key, secret_key, retry=retry, **options)


def header(request: Any, name: str) -> str:
    """A recorded request's header, case-insensitively."""
    lowered = {key.lower(): value for key, value in dict(request.headers).items()}
    return str(lowered.get(name.lower(), ""))


def assert_freshly_signed(request: Any) -> None:
    """The recorded request carries a valid signature over its own x-bce-date."""
    auth = header(request, "Authorization")
    _, access_key, stamp, expiry, names, _digest = auth.split("/")
    assert access_key == SIM_AK
    assert stamp == header(request, "x-bce-date")
    assert abs(time.time() - calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))) < 60
    headers = {name: header(request, name) for name in names.split(";")}
    expected = signing.authorization(
        SIM_AK,
        SIM_SK,
        "POST",
        "/v2/finetuning",
        {"Action": request.action},
        headers,
        stamp,
        int(expiry),
        names.split(";"),
    )
    assert auth == expected


def test_job_listing_equals_the_oracle_across_pages() -> None:
    """More than two pages of jobs come back complete and in order."""
    sim = Simulator(SimulatorConfig(jobs=230, tasks_per_job=1, checkpoints=0))
    with sim.serve() as server, client_for(server.url) as client:
        pages = list(listing_pages(client, JOB_LIST)[1])
        assert [job for page in pages for job in page] == sim.jobs()
        assert len(pages) >= 3
        assert client.api_calls == len(sim.requests) == len(pages)
    first = sim.requests[0]
    assert first.action == JOBS and first.body.get("maxKeys") == 100
    assert header(first, "User-Agent").startswith("qianfan-etl/")
    assert header(first, "Content-Type") == "application/json"
    assert all(request.body.get("marker") for request in sim.requests[1:])


def test_task_listing_equals_the_oracle_across_pages() -> None:
    """A job with more than 100 tasks is listed completely."""
    sim = Simulator(SimulatorConfig(jobs=1, tasks_per_job=250, checkpoints=1))
    job_id = sim.jobs()[0]["jobId"]
    with sim.serve() as server, client_for(server.url) as client:
        pages = listing_pages(client, TASK_LIST, job_id)[1]
        assert [task for page in pages for task in page] == sim.tasks(job_id)
    assert [request.body.get("jobId") for request in sim.requests] == [job_id] * 3
    for request in sim.requests:
        assert_freshly_signed(request)


def test_wrong_secret_is_an_auth_error_without_retry(sim: Simulator, url: str) -> None:
    """A wrong SK: AuthError (77) naming the variable, exactly one request, no secret leaked."""
    wrong = "not-the-secret-key-123"
    with client_for(url, secret_key=wrong) as client, pytest.raises(AuthError) as caught:
        client.call(JOBS, {})
    message = str(caught.value)
    assert caught.value.exit_code == 77
    assert len(sim.requests) == 1
    assert "QIANFAN_SECRET_KEY" in message and "403" in message
    assert wrong not in message and "bce-auth-v1" not in message


def test_unknown_access_key_is_an_auth_error(sim: Simulator, url: str) -> None:
    """An unknown AK names QIANFAN_ACCESS_KEY and is not retried."""
    with client_for(url, access_key="who-is-this") as client, pytest.raises(AuthError) as caught:
        client.call(JOBS, {})
    assert "QIANFAN_ACCESS_KEY" in str(caught.value)
    assert SIM_SK not in str(caught.value)
    assert len(sim.requests) == 1


def test_request_expired_hints_at_the_clock(sim: Simulator, url: str) -> None:
    """RequestExpired is an AuthError that says to check the clock."""
    sim.inject(Fault(kind="status", status=400, code="RequestExpired"))
    with client_for(url) as client, pytest.raises(AuthError) as caught:
        client.call(JOBS, {})
    assert "clock" in str(caught.value)
    assert len(sim.requests) == 1


def test_429_retry_after_seconds_is_honoured_and_re_signed(sim: Simulator, url: str) -> None:
    """429 + Retry-After: 2 waits exactly 2 s, then a freshly signed retry succeeds."""
    sim.inject(Fault(kind="status", status=429, headers={"Retry-After": "2"}))
    sleeps: list[float] = []
    with client_for(url, sleeps) as client:
        result = client.call(JOBS, {"maxKeys": 100})
    assert result["jobList"] == sim.jobs()
    assert sleeps == [2.0]
    assert [request.status for request in sim.requests] == [429, 200]
    for request in sim.requests:
        assert_freshly_signed(request)


def test_429_retry_after_http_date(sim: Simulator, url: str) -> None:
    """An HTTP-date Retry-After is turned into the seconds until then."""
    when = email.utils.formatdate(time.time() + 3, usegmt=True)
    sim.inject(Fault(kind="status", status=429, headers={"Retry-After": when}))
    sleeps: list[float] = []
    with client_for(url, sleeps) as client:
        client.call(JOBS, {})
    assert len(sleeps) == 1 and 1.0 <= sleeps[0] <= 3.0


def test_retry_after_beyond_the_cap_gives_up_at_once(sim: Simulator, url: str) -> None:
    """Retry-After: 86400 is never slept: TransientError naming the wait, one request."""
    sim.inject(Fault(kind="status", status=429, headers={"Retry-After": "86400"}, times=5))
    sleeps: list[float] = []
    with client_for(url, sleeps) as client, pytest.raises(TransientError) as caught:
        client.call(JOBS, {})
    assert "86400" in str(caught.value)
    assert sleeps == [] and len(sim.requests) == 1


def test_garbage_retry_after_falls_back_to_backoff(sim: Simulator, url: str) -> None:
    """Retry-After: soon is ignored, the call still retries."""
    sim.inject(Fault(kind="status", status=503, headers={"Retry-After": "soon"}))
    sleeps: list[float] = []
    with client_for(url, sleeps) as client:
        client.call(JOBS, {})
    assert sleeps == [0.0]


def test_5xx_burst_then_success(sim: Simulator, url: str) -> None:
    """500, 502, 503 and 504 in a row are all retried."""
    for status in (500, 502, 503, 504):
        sim.inject(Fault(kind="status", status=status, code="InternalError"))
    sleeps: list[float] = []
    with client_for(url, sleeps, attempts=5) as client:
        assert client.call(JOBS, {})["jobList"] == sim.jobs()
        assert client.api_calls == 5
    assert len(sleeps) == 4


def test_html_502_page_is_retried(sim: Simulator, url: str) -> None:
    """A gateway's HTML 502 page is a transient error."""
    page = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
    sim.inject(Fault(kind="status", status=502, body=page, times=2))
    with client_for(url) as client:
        client.call(JOBS, {})
        assert client.api_calls == 3


def test_connection_reset_is_retried(sim: Simulator, url: str) -> None:
    """A socket closed without a response is retried (POST explicitly allowed)."""
    sim.inject(Fault(kind="reset", times=2))
    with client_for(url) as client:
        assert client.call(JOBS, {})["jobList"] == sim.jobs()
        assert client.api_calls == 3


def test_exhausted_retries_are_transient(sim: Simulator, url: str) -> None:
    """503 forever: TransientError (75) with the attempt count, status and request id."""
    sim.inject(Fault(kind="status", status=503, code="ServiceUnavailable", times=99))
    with client_for(url, attempts=3) as client, pytest.raises(TransientError) as caught:
        client.call(JOBS, {})
    message = str(caught.value)
    assert caught.value.exit_code == 75
    assert "3 attempts" in message and "503" in message and JOBS in message
    assert "x-bce-request-id=" in message
    assert len(sim.requests) == 3


def test_other_4xx_is_a_contract_error(sim: Simulator, url: str) -> None:
    """A 400 validation error is not retried: ContractError (65)."""
    sim.inject(Fault(kind="status", status=400, code="InvalidParameter"))
    with client_for(url) as client, pytest.raises(ContractError) as caught:
        client.call(JOBS, {})
    assert "InvalidParameter" in str(caught.value)
    assert len(sim.requests) == 1


def test_slow_body_hits_the_deadline(sim: Simulator, url: str) -> None:
    """A body trickling past the per-attempt deadline is cut off and retried, then 75."""
    body = b'{"requestId": "slow", "result": {"jobList": [], "pageInfo": {}}}'
    sim.inject(Fault(kind="slow_body", body=body, interval=0.05, times=2))
    with client_for(url, attempts=2, deadline=0.3) as client:
        with pytest.raises(TransientError) as caught:
            client.call(JOBS, {})
        assert client.api_calls == 2
    assert "deadline" in str(caught.value)


@pytest.mark.parametrize(
    "body",
    [
        b'{"result":',
        b'{"requestId": "r", "result": {"jobList": [{"jobId": "job-',
        b'{"requestId": "r", "result": {"jobList": [], "pageInfo": {"isTruncated": NaN}}}',
        b"<html>maintenance</html>",
        b"",
    ],
)
def test_malformed_json_on_200_is_retried(sim: Simulator, url: str, body: bytes) -> None:
    """Broken, truncated, NaN-bearing or HTML 200 bodies are retried; the retry succeeds."""
    sim.inject(Fault(kind="raw_body", body=body))
    with client_for(url) as client:
        assert client.call(JOBS, {})["jobList"] == sim.jobs()
        assert client.api_calls == 2


@pytest.mark.parametrize(
    ("literal", "value"),
    [
        (b"123456789012345678901234567890", 123456789012345678901234567890),
        (b"-9223372036854775809", -9223372036854775809),
        (b"18446744073709551615", 18446744073709551615),
        (b'"\\ud800x"', "\ud800x"),
        (b'"\\u0000"', "\x00"),
        (b"1e400", float("inf")),
        (b"0.1", 0.1),
    ],
)
def test_page_values_are_decoded_exactly(
    sim: Simulator, url: str, literal: bytes, value: Any
) -> None:
    """Integers beyond 64 bits stay exact, lone surrogates and overflowing floats decode as
    the standard library reads them: the fast decoder never changes a value."""
    body = b'{"requestId": "r", "result": {"jobList": [{"jobId": "j", "x": %s}], ' % literal
    sim.inject(Fault(kind="raw_body", body=body + b'"pageInfo": {"isTruncated": false}}}'))
    with client_for(url) as client:
        found = client.call(JOBS, {})["jobList"][0]["x"]
    assert type(found) is type(value) and found == value


def test_200_without_result_is_a_contract_error(sim: Simulator, url: str) -> None:
    """Valid JSON of the wrong shape is not retried."""
    sim.inject(Fault(kind="raw_body", body=b'{"requestId": "r", "result": []}'))
    with client_for(url) as client, pytest.raises(ContractError):
        client.call(JOBS, {})
    assert len(sim.requests) == 1


@pytest.mark.parametrize("code", [18, 336100, 500000])
def test_legacy_transient_code_is_retried(sim: Simulator, url: str, code: int) -> None:
    """HTTP 200 {error_code: 18/336100/500000} is retried."""
    sim.inject(Fault(kind="legacy_error", code=code, times=2))
    with client_for(url) as client:
        client.call(JOBS, {})
        assert client.api_calls == 3


def test_other_legacy_code_is_a_contract_error(sim: Simulator, url: str) -> None:
    """Any other legacy error_code fails at once with the code in the message."""
    sim.inject(Fault(kind="legacy_error", code=100))
    with client_for(url) as client, pytest.raises(ContractError) as caught:
        client.call(JOBS, {})
    assert "error_code 100" in str(caught.value)
    assert len(sim.requests) == 1


@pytest.mark.parametrize("code", [6, 14, 110, 111])
def test_legacy_permission_codes_are_auth_errors(sim: Simulator, url: str, code: int) -> None:
    """No permission, IAM failure, invalid or expired token: not allowed, never retried."""
    sim.inject(Fault(kind="legacy_error", code=code))
    with client_for(url) as client, pytest.raises(AuthError) as caught:
        client.call(JOBS, {})
    assert f"error_code {code}" in str(caught.value) and "QIANFAN_ACCESS_KEY" in str(caught.value)
    assert len(sim.requests) == 1


@pytest.mark.parametrize(
    ("status", "code", "legacy_code", "error"),
    [
        (429, None, None, RetriableAPIError),
        (503, "InternalError", None, RetriableAPIError),
        (501, None, None, ContractError),
        (302, "AccessDenied", None, ConfigError),
        (403, None, None, AuthError),
        (400, "SignatureDoesNotMatch", None, AuthError),
        (400, "InappropriateJSON", None, ContractError),
        (404, None, None, ContractError),
        (200, None, 336100, RetriableAPIError),
        (200, None, 110, AuthError),
        (200, None, 100, ContractError),
    ],
)
def test_classify_reads_the_response_policy(
    status: int, code: str | None, legacy_code: int | None, error: type[Exception]
) -> None:
    """Status, BCE code and legacy error_code decide: retry, or which error ends the call."""
    assert classify(status, code, legacy_code) is error


def test_retries_are_logged_without_secrets(
    sim: Simulator, url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Each retry is a WARNING on etl.qianfan, free of the SK and the signature."""
    sim.inject(Fault(kind="status", status=500, times=2))
    with caplog.at_level(logging.WARNING, logger="etl.qianfan"), client_for(url) as client:
        client.call(JOBS, {})
    records = [r for r in caplog.records if r.name == "etl.qianfan"]
    assert len(records) == 2 and all(r.levelno == logging.WARNING for r in records)
    assert not any(SIM_SK in r.getMessage() or "bce-auth-v1" in r.getMessage() for r in records)


BROKEN_PAGINATION = [
    "missing_next_marker",
    "repeat_marker",
    "marker_cycle",
    "empty_truncated_page",
    "truncated_as_string",
]


@pytest.mark.parametrize("mode", BROKEN_PAGINATION)
def test_broken_pagination_is_a_contract_error(mode: str) -> None:
    """Every broken-pagination mode fails loudly instead of returning a partial listing."""
    sim = Simulator(SimulatorConfig(jobs=350, tasks_per_job=1, checkpoints=0))
    sim.pagination_fault = mode
    sim.pagination_fault_action = JOBS
    with sim.serve() as server, client_for(server.url) as client:
        with pytest.raises(ContractError) as caught:
            list(listing_pages(client, JOB_LIST)[1])
        assert client.api_calls < 50
    assert caught.value.exit_code == 65


def test_a_page_longer_than_asked_is_tolerated() -> None:
    """151 jobs on a page for maxKeys=100 hide nothing: every job comes back, once."""
    sim = Simulator(SimulatorConfig(jobs=350, tasks_per_job=1, checkpoints=0))
    sim.pagination_fault = "oversized_page"
    with sim.serve() as server, client_for(server.url) as client:
        pages = list(listing_pages(client, JOB_LIST)[1])
    assert max(len(page) for page in pages) == 151
    assert [job for page in pages for job in page] == sim.jobs()


def test_duplicate_across_pages_is_tolerated() -> None:
    """The same job on two pages is not an error (the loader keeps the last one)."""
    sim = Simulator(SimulatorConfig(jobs=250, tasks_per_job=1, checkpoints=0))
    sim.pagination_fault = "duplicate_across_pages"
    with sim.serve() as server, client_for(server.url) as client:
        jobs = [job for page in listing_pages(client, JOB_LIST)[1] for job in page]
    ids = [job["jobId"] for job in jobs]
    assert len(ids) > len(set(ids))
    assert set(ids) == {job["jobId"] for job in sim.jobs()}


def test_qps_limit_spaces_requests(url: str) -> None:
    """qps=10: each later request asks to wait; four threads share one limiter."""
    sleeps: list[float] = []
    with client_for(url, sleeps, qps=10.0) as client:
        for _ in range(3):
            client.call(JOBS, {})
    assert len(sleeps) == 2 and all(wait >= 0.05 for wait in sleeps)


def test_qps_limit_is_shared_by_threads(sim: Simulator, url: str) -> None:
    """Eight calls from four threads at qps=40 take at least 7 intervals in total."""
    with client_for(url, qps=40.0, sleep=time.sleep) as client:
        started = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda _: client.call(JOBS, {}), range(8)))
        elapsed = time.monotonic() - started
        assert client.api_calls == 8 == len(sim.requests)
    assert elapsed >= 7 * 0.025 * 0.8


def test_netrc_never_replaces_the_signature(
    sim: Simulator, url: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password something\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    with client_for(url) as client:
        client.call("DescribeFineTuningJobs", {})
    assert header(sim.requests[-1], "Authorization").startswith("bce-auth-v1/")


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """An environment with no proxy or CA bundle settings of the machine's own."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "REQUESTS_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    return monkeypatch


def test_http_proxy_from_the_environment_carries_the_call(
    sim: Simulator, url: str, no_proxy_env: pytest.MonkeyPatch
) -> None:
    """HTTP_PROXY routes the call through the proxy; NO_PROXY covering the host bypasses it."""
    with ForwardProxy().running() as proxy:
        no_proxy_env.setenv("HTTP_PROXY", proxy.url)
        with client_for(url, attempts=1) as client:
            assert client.call(JOBS, {})["jobList"] == sim.jobs()
        assert proxy.seen == [f"POST {url}/v2/finetuning?Action={JOBS} HTTP/1.1"]
        no_proxy_env.setenv("NO_PROXY", "127.0.0.1")
        with client_for(url, attempts=1) as client:
            assert client.call(JOBS, {})["jobList"] == sim.jobs()
        assert len(proxy.seen) == 1
    assert_freshly_signed(sim.requests[0])


def test_https_proxy_and_ca_bundle_from_the_environment(
    sim: Simulator, url: str, tmp_path: Path, no_proxy_env: pytest.MonkeyPatch
) -> None:
    """REQUESTS_CA_BUNDLE trusts a self-signed server; HTTPS_PROXY tunnels to it (CONNECT)."""
    cert, key = self_signed(tmp_path)
    with tls_front(cert, key, int(url.rsplit(":", 1)[1])) as https_url:
        with client_for(https_url, attempts=1) as client, pytest.raises(ConfigError):
            client.call(JOBS, {})
        no_proxy_env.setenv("REQUESTS_CA_BUNDLE", str(cert))
        with client_for(https_url, attempts=1) as client:
            assert client.call(JOBS, {})["jobList"] == sim.jobs()
        with ForwardProxy().running() as proxy:
            no_proxy_env.setenv("HTTPS_PROXY", proxy.url)
            with client_for(https_url, attempts=1) as client:
                assert client.call(JOBS, {})["jobList"] == sim.jobs()
            assert [line.rsplit(" ", 1)[0] for line in proxy.seen] == [
                f"CONNECT {https_url.removeprefix('https://')}"
            ]
            no_proxy_env.setenv("NO_PROXY", "127.0.0.1")
            with client_for(https_url, attempts=1) as client:
                assert client.call(JOBS, {})["jobList"] == sim.jobs()
            assert len(proxy.seen) == 1


def test_curl_ca_bundle_is_honoured_too(
    sim: Simulator, url: str, tmp_path: Path, no_proxy_env: pytest.MonkeyPatch
) -> None:
    """CURL_CA_BUNDLE, the other variable requests reads, trusts the server as well."""
    cert, key = self_signed(tmp_path)
    no_proxy_env.setenv("CURL_CA_BUNDLE", str(cert))
    with (
        tls_front(cert, key, int(url.rsplit(":", 1)[1])) as https_url,
        client_for(https_url, attempts=1) as client,
    ):
        assert client.call(JOBS, {})["jobList"] == sim.jobs()


def test_dead_proxy_is_named_and_retried(url: str, no_proxy_env: pytest.MonkeyPatch) -> None:
    """A proxy that is not there: a transient failure that says the proxy failed."""
    no_proxy_env.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")
    with client_for(url, attempts=2) as client, pytest.raises(TransientError) as caught:
        client.call(JOBS, {})
    assert "the proxy failed" in str(caught.value)
    assert client.api_calls == 2


def test_body_shorter_than_its_content_length_is_retried(sim: Simulator, url: str) -> None:
    """A connection that closes mid-body is a transient fault, never a short page."""
    sim.inject(Fault(kind="short_body", times=2))
    with client_for(url, attempts=3) as client:
        assert client.call(JOBS, {})["jobList"] == sim.jobs()
        assert client.api_calls == 3
    sim.inject(Fault(kind="short_body", times=3))
    with client_for(url, attempts=3) as client, pytest.raises(TransientError) as caught:
        client.call(JOBS, {})
    assert "gave up after 3 attempts" in str(caught.value)


@pytest.mark.parametrize("extra", [b"", b', "big": 123456789012345678901234567890'])
def test_a_page_too_deep_for_the_parser_keeps_its_other_records(
    sim: Simulator, url: str, extra: bytes
) -> None:
    """One record nested past every parser's limit costs that record, not its page."""
    deep = b'{"a":' * 3000 + b"1" + b"}" * 3000
    jobs = b'[{"jobId": "j1", "x": "[{]\\"{"}, {"jobId": "j2", "x": %s}, {"jobId": "j3"}]' % deep
    body = b'{"requestId": "r", "result": {"jobList": %s, ' % jobs
    body += b'"pageInfo": {"isTruncated": false}}%s}' % extra
    sim.inject(Fault(kind="raw_body", body=body))
    with client_for(url) as client:
        found = client.call(JOBS, {})["jobList"]
    assert [job["jobId"] for job in found] == ["j1", "j2", "j3"]
    assert found[0]["x"] == '[{]"{'
    rejected = job_to_row(found[1])
    assert isinstance(rejected, Reject) and rejected.reason.startswith("nested deeper than")
