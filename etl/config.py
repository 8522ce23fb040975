"""Settings from options, the environment and `.env`, resolved once at the edge."""

import ipaddress
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

from dotenv import dotenv_values
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from etl import redact
from etl.errors import ConfigError
from etl.qianfan.client import BASE_URL_VAR as BASE_URL_VAR  # named where its messages are
from etl.qianfan.client import split_base_url

log = logging.getLogger("etl.config")

ACCESS_KEY_VAR = "QIANFAN_ACCESS_KEY"
SECRET_KEY_VAR = "QIANFAN_SECRET_KEY"
DATABASE_URL_VAR = "DATABASE_URL"
DB_SCHEMA_VAR = "QIANFAN_ETL_DB_SCHEMA"
ALLOW_PLAIN_HTTP_VAR = "QIANFAN_ETL_ALLOW_PLAIN_HTTP"
LOG_FORMAT_VAR = "QIANFAN_ETL_LOG_FORMAT"
# An opt-in must be the operator's own act, not one more line of a file in the directory.
NOT_FROM_DOTENV = frozenset({ALLOW_PLAIN_HTTP_VAR})
# The drivers qianfan-etl is built and tested with (a plain postgresql:// becomes the first).
DRIVERS = frozenset({"postgresql+psycopg", "sqlite", "sqlite+pysqlite"})

DEFAULT_BASE_URL = "https://qianfan.baidubce.com"
DEFAULT_DATABASE_URL = "sqlite:///qianfan_etl.db"
PROXY_VARS = ("https_proxy", "http_proxy", "all_proxy")
# Query parameters of a database URL that carry secrets (psycopg takes libpq's keywords).
SECRET_QUERY_KEYS = frozenset({"password", "sslpassword"})
ENCODING_HINT = (
    "percent-encode special characters in the password (@ %40, / %2F, ? %3F, # %23, "
    "% %25, : %3A, space %20), or leave the password out of the URL and set PGPASSWORD or "
    "use ~/.pgpass"
)


@dataclass(frozen=True)
class ApiSettings:
    """Where the Qianfan console API is and the IAM key pair that signs requests."""

    base_url: str
    access_key: str
    secret_key: str = field(repr=False)


@dataclass(frozen=True)
class EnvFile:
    """A `.env` that was read: the keys it set (never their values) and those it may not."""

    path: Path
    keys: tuple[str, ...]
    ignored: tuple[str, ...] = ()

    def origin(self, name: str) -> str:
        """The variable's name, with this file when the value came from it."""
        return f"{name} (from {self.path})" if name in self.keys else name


def load_env_file(path: Path | None = None) -> EnvFile | None:
    """Honour a `.env` file in the working directory, as the official SDK does, without
    overriding the environment; refuse one that someone else could have written."""
    path = path or Path.cwd() / ".env"
    if not path.is_file():
        return None
    _check_env_file(path)
    try:
        values = dotenv_values(path)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}; fix its permissions") from None
    new = {k: v for k, v in values.items() if v is not None and k not in os.environ}
    used = {k: v for k, v in new.items() if k not in NOT_FROM_DOTENV}
    os.environ.update(used)
    return EnvFile(path, tuple(used), tuple(k for k in new if k not in used))


def _check_env_file(path: Path) -> None:
    """Refuse a `.env` another user owns or one that group or others may write: whoever can
    write it can point the run at another API or database."""
    stat = path.stat()
    if stat.st_uid not in (os.geteuid(), 0):
        raise ConfigError(
            f"{path} is owned by uid {stat.st_uid}, not by this user (uid {os.geteuid()}) or "
            "root, and whoever can write it can point the run at another API or database: "
            f"`chown {os.geteuid()} {path}` if its content is yours, or remove it"
        )
    if stat.st_mode & 0o022:
        writers = " and ".join(
            w for w, bit in (("group", 0o020), ("others", 0o002)) if stat.st_mode & bit
        )
        raise ConfigError(
            f"{path} is writable by {writers} (mode {stat.st_mode & 0o777:o}), and whoever can "
            f"write it can point the run at another API or database: `chmod go-w {path}`"
        )


def api_settings(
    env: Mapping[str, str] = os.environ,
    *,
    allow_plain_http: bool = False,
    env_file: EnvFile | None = None,
) -> ApiSettings:
    """Read the API settings, failing with what to set when something is missing."""
    access_key = env.get(ACCESS_KEY_VAR, "").strip()
    secret_key = env.get(SECRET_KEY_VAR, "").strip()
    missing = [
        name
        for name, value in ((ACCESS_KEY_VAR, access_key), (SECRET_KEY_VAR, secret_key))
        if not value
    ]
    redact.register(secret_key)
    for name, value in proxy_settings(env).items():
        redact.register(*_url_secrets(name, value))
    if missing:
        raise ConfigError(
            f"{' and '.join(missing)} not set: export the IAM Access Key / Secret Key of an "
            "account with QianfanReadAccessPolicy (or put them in .env). "
            "QIANFAN_AK/QIANFAN_SK are inference keys and do not work here."
        )
    source = env_file.origin(BASE_URL_VAR) if env_file else BASE_URL_VAR
    url = base_url(env.get(BASE_URL_VAR), allow_plain_http, source)
    return ApiSettings(url, access_key, secret_key)


def base_url(value: str | None, allow_plain_http: bool = False, source: str = BASE_URL_VAR) -> str:
    """Validate the console API base URL (scheme and host, no trailing slash); plain http://
    only to a loopback host unless allowed."""
    url = (value or DEFAULT_BASE_URL).strip().rstrip("/")
    try:
        parts = split_base_url(url)  # the client's own check, run before anything else starts
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}; leave it unset for {DEFAULT_BASE_URL}") from None
    if parts.scheme == "http" and not is_loopback(parts.hostname or ""):
        if not allow_plain_http:
            raise ConfigError(
                f"{source} is {url}: plain http:// to a host that is not loopback carries the "
                "account's data unencrypted, and anyone on the path could answer instead of the "
                "API; use https://, or pass --allow-plain-http (or set "
                f"{ALLOW_PLAIN_HTTP_VAR}=1 in the environment, not in .env) if it is meant"
            )
        log.warning("plain HTTP to %s, allowed by --allow-plain-http", parts.netloc)
    return url


def is_loopback(host: str) -> bool:
    """Whether the host is this machine by name or address (localhost, 127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def proxy_settings(env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The proxy variables set (either case), as requests and libcurl read them."""
    found = {}
    for name in PROXY_VARS:
        for variant in (name, name.upper()):
            if env.get(variant, "").strip():
                found[variant] = env[variant].strip()
    return found


def _url_secrets(name: str, value: str) -> list[str]:
    """A proxy URL's password, as typed and decoded; refuse one that parses two ways."""
    userinfo = value.partition("://")[2].rpartition("@")[0]
    if any(c in userinfo for c in "@/?#"):
        raise ConfigError(
            f"{name} ({_without_userinfo(value)}) cannot be parsed: its user:password part "
            "holds an unencoded '@', '/', '?' or '#'; percent-encode special characters in it"
        )
    typed, password = _typed_password(value)
    try:
        unquote(userinfo).encode("latin-1")  # what requests' Proxy-Authorization takes
    except UnicodeEncodeError:
        raise ConfigError(
            f"{name} ({_without_userinfo(value)}): proxy authentication carries only Latin-1 "
            "user names and passwords; give the proxy user a password without other characters"
        ) from None
    return [typed, password]


def _typed_password(value: str) -> tuple[str, str]:
    """The password between `user:` and the last `@`, as typed and percent-decoded."""
    typed = value.partition("://")[2].rpartition("@")[0].partition(":")[2]
    return typed, unquote(typed)


def _without_userinfo(value: str) -> str:
    """`scheme://…@host…` with nothing of what stood between `://` and the last `@`."""
    scheme, sep, rest = value.partition("://")
    head, at, tail = rest.rpartition("@")
    if not sep or not scheme.replace("+", "").isalnum():
        return "a value that is not a URL"
    if not at or "?" in head:
        return f"a {scheme}:// URL"
    return f"{scheme}://…@{tail.split('?')[0]}"


def database_url(value: str | None, source: str | None = None) -> URL:
    """Parse DATABASE_URL (or the option named in `source`, for messages); a plain
    postgresql:// URL is driven by psycopg 3."""
    source = source or DATABASE_URL_VAR
    text = (value or DEFAULT_DATABASE_URL).strip()
    redact.register(os.environ.get("PGPASSWORD"))
    try:
        url = make_url(text)
    except ValueError:  # SQLAlchemy reads the port with int()
        raise ConfigError(
            f"{DATABASE_URL_VAR} ({_without_userinfo(text)}) has a port that is not a number; "
            f"use e.g. postgresql://user@host:5432/db, and {ENCODING_HINT}"
        ) from None
    except ArgumentError:
        raise ConfigError(
            f"{source} ({_without_userinfo(text)}) is not a SQLAlchemy URL; "
            f"use e.g. postgresql://user@host/db or sqlite:///qianfan_etl.db, and {ENCODING_HINT}"
        ) from None
    if url.get_backend_name() != "sqlite":
        _check_userinfo(text, url, source)
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    if url.drivername not in DRIVERS:
        raise ConfigError(
            f"{source} asks for {url.drivername}://, which qianfan-etl does not drive: "
            "use postgresql:// (psycopg 3) for Postgres, or sqlite:///FILE"
        )
    return url


def _check_userinfo(text: str, url: URL, source: str) -> None:
    """Refuse a URL whose password SQLAlchemy would split at an unencoded `@`; register it."""
    redact.register(*_typed_password(text))
    parsed = [url.host or "", url.database or "", *map(str, url.query.values())]
    at = text.count("@")
    if at > 1 or (at == 1 and (url.username is None or any("@" in p for p in parsed))):
        raise ConfigError(
            f"{source} ({_without_userinfo(text)}) cannot be parsed unambiguously: "
            f"its user:password part holds an unencoded '@' or '/'; {ENCODING_HINT}"
        )
    redact.register(url.password, *(str(url.query[k]) for k in SECRET_QUERY_KEYS if k in url.query))


def db_schema(value: str | None) -> str | None:
    """Validate a --db-schema name: a plain lower-case Postgres identifier, or None."""
    if value is None or not value.strip():
        return None
    name = value.strip()
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
        raise ConfigError(
            f"--db-schema / {DB_SCHEMA_VAR} {name!r} is not a plain schema name: use lower-case "
            "letters, digits and _ (at most 63, not starting with a digit)"
        )
    return name


def show_url(url: URL) -> str:
    """The URL as it may be printed: password and secret query parameters masked."""
    hidden = {k: redact.MASK for k in SECRET_QUERY_KEYS if k in url.query}
    return url.update_query_dict(hidden).render_as_string(hide_password=True)


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_duration(text: str) -> float:
    """Seconds in a duration such as `90m`, `2h`, `1d`, `1h30m` or `45` (bare: seconds)."""
    value = text.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", value):
        seconds = float(value)
    elif re.fullmatch(f"(?:{_DURATION_PART.pattern})+", value):
        seconds = sum(float(n) * DURATION_UNITS[u] for n, u in _DURATION_PART.findall(value))
    else:
        raise ValueError(
            f"{text!r} is not a duration: use a number with a unit s, m, h, d or w "
            "(e.g. 90m, 2h, 1d, 1h30m; a bare number is seconds)"
        )
    if seconds <= 0:
        raise ValueError(f"{text!r} is not a positive duration")
    return seconds


def show_duration(seconds: float) -> str:
    """A duration for people: `3h05m`, `12m`, `40s`, `2d03h`."""
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
