"""The redaction function and the URL rules, without a database or a network."""

import logging
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from sqlalchemy.exc import OperationalError

from etl import config, redact
from etl.errors import ConfigError
from etl.readout import JsonFormatter
from tests.leaks import PASSWORD, assert_no_fragment


@pytest.fixture(autouse=True)
def clean_registry() -> Iterator[None]:
    redact.forget()
    yield
    redact.forget()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "to postgresql://etl:pa@ss/w0rd@db:5432/x failed",
            "to postgresql://etl:***@db:5432/x failed",
        ),
        ("proxy http://:t0ken@127.0.0.1:3128 down", "proxy http://:***@127.0.0.1:3128 down"),
        ("host=db password='it\\'s x' user=etl", "host=db password=*** user=etl"),
        ("?sslmode=require&password=hunter22&x=1", "?sslmode=require&password=***&x=1"),
        ("http://127.0.0.1:8080/v2 has no userinfo", "http://127.0.0.1:8080/v2 has no userinfo"),
    ],
)
def test_scrub_masks_userinfo_and_password_parameters(text: str, expected: str) -> None:
    assert redact.scrub(text) == expected


def test_registered_secrets_are_masked_in_every_printed_form() -> None:
    redact.register(PASSWORD)
    for form in (PASSWORD, repr(PASSWORD), '"Kq%40%3AVw%2F%3FXz%23%252FYj"', PASSWORD.encode()):
        text = redact.scrub(f"before {form} after")
        assert text.startswith("before ") and text.endswith(" after")
    assert_no_fragment(redact.scrub(f"x {PASSWORD} {PASSWORD!r} y"), PASSWORD)


def test_a_secret_inside_a_longer_word_is_that_word() -> None:
    redact.register("local", "abc")  # "abc": too short to search for without mangling text
    assert redact.scrub("local@localhost: local, abc") == "***@localhost: ***, abc"


def test_describe_keeps_no_sql_parameters_and_is_bounded() -> None:
    redact.register("s3cret-value")
    error = OperationalError(
        "INSERT INTO t VALUES (%(v)s)", {"v": "row-data-xyz"}, Exception("boom s3cret-value")
    )
    text = redact.describe(error)
    assert "boom ***" in text and "row-data-xyz" not in text and "INSERT" not in text
    assert len(redact.describe(Exception("x" * 10_000))) == redact.MAX_STORED_CHARS


def test_log_records_are_scrubbed_for_every_formatter() -> None:
    redact.register(PASSWORD)
    try:
        raise ValueError(f"driver said {PASSWORD}")
    except ValueError as exc:
        info = (type(exc), exc, exc.__traceback__)
    for formatter in (logging.Formatter("%(message)s"), JsonFormatter()):
        record = logging.LogRecord("etl", logging.ERROR, __file__, 1, "%s", (PASSWORD,), info)
        assert redact.RedactingFilter().filter(record)
        assert_no_fragment(formatter.format(record), PASSWORD)


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://etl:{PASSWORD}@db.internal:5432/analytics",
        "postgresql://etl:Xy12@Zw34@db.internal/analytics",
        "postgresql://e/tl:Xy12Zw34@db.internal/analytics",
        "postgresql://etl:Xy12:Zw34@db.internal:Pq/analytics",
        "etl:Xy12Zw34@db.internal/analytics",
    ],
)
def test_a_database_url_that_parses_two_ways_is_refused_without_its_userinfo(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config.database_url(url)
    message = str(caught.value)
    assert caught.value.exit_code == 78 and "percent-encode" in message and "PGPASSWORD" in message
    for secret in (PASSWORD, "Xy12Zw34", "Xy12@Zw34", "Xy12:Zw34"):
        assert_no_fragment(message, secret)


def test_an_encoded_password_parses_and_is_shown_masked() -> None:
    url = config.database_url("postgresql://etl:p%40ss%2Fw0rd@db/x?password=Qq99Rr88")
    assert url.password == "p@ss/w0rd"
    assert config.show_url(url) == "postgresql+psycopg://etl:***@db/x?password=%2A%2A%2A"
    assert redact.scrub("p@ss/w0rd and p%40ss%2Fw0rd and Qq99Rr88") == "*** and *** and ***"


def test_a_proxy_url_that_parses_two_ways_is_refused() -> None:
    env = {
        "QIANFAN_ACCESS_KEY": "a",
        "QIANFAN_SECRET_KEY": "b",
        "HTTPS_PROXY": f"http://u:{PASSWORD}@p:3128",
    }
    with pytest.raises(ConfigError) as caught:
        config.api_settings(env)
    assert "HTTPS_PROXY" in str(caught.value) and caught.value.exit_code == 78
    assert_no_fragment(str(caught.value), PASSWORD)


def test_a_proxy_password_beyond_latin_1_is_refused() -> None:
    proxy = "http://u:" + quote("Px9中Wm", safe="") + "@127.0.0.1:3128"
    env = {"QIANFAN_ACCESS_KEY": "a", "QIANFAN_SECRET_KEY": "b", "https_proxy": proxy}
    with pytest.raises(ConfigError, match="Latin-1") as caught:
        config.api_settings(env)
    assert caught.value.exit_code == 78 and "Px9" not in str(caught.value)


def test_a_malformed_log_call_is_logged_without_its_arguments() -> None:
    record = logging.LogRecord("etl", logging.ERROR, __file__, 1, "%d items", ("Sk9-secret",), None)
    assert redact.RedactingFilter().filter(record)
    assert "Sk9" not in logging.Formatter("%(message)s").format(record)
