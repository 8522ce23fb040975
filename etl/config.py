"""Settings from options, the environment and `.env`, resolved once at the edge."""

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from dotenv import load_dotenv
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from etl.errors import ConfigError

ACCESS_KEY_VAR = "QIANFAN_ACCESS_KEY"
SECRET_KEY_VAR = "QIANFAN_SECRET_KEY"
BASE_URL_VAR = "QIANFAN_CONSOLE_API_BASE_URL"
DATABASE_URL_VAR = "DATABASE_URL"
DB_SCHEMA_VAR = "QIANFAN_ETL_DB_SCHEMA"

DEFAULT_BASE_URL = "https://qianfan.baidubce.com"
DEFAULT_DATABASE_URL = "sqlite:///qianfan_etl.db"


@dataclass(frozen=True)
class ApiSettings:
    """Where the Qianfan console API is and the IAM key pair that signs requests."""

    base_url: str
    access_key: str
    secret_key: str = field(repr=False)


def load_env_file(path: Path | None = None) -> None:
    """Honour a `.env` file in the working directory, as the official SDK does."""
    load_dotenv(path or Path.cwd() / ".env", override=False)


def api_settings(env: Mapping[str, str] = os.environ) -> ApiSettings:
    """Read the API settings, failing with what to set when something is missing."""
    access_key = env.get(ACCESS_KEY_VAR, "").strip()
    secret_key = env.get(SECRET_KEY_VAR, "").strip()
    missing = [
        name
        for name, value in ((ACCESS_KEY_VAR, access_key), (SECRET_KEY_VAR, secret_key))
        if not value
    ]
    if missing:
        raise ConfigError(
            f"{' and '.join(missing)} not set: export the IAM Access Key / Secret Key of an "
            "account with QianfanReadAccessPolicy (or put them in .env). "
            "QIANFAN_AK/QIANFAN_SK are inference keys and do not work here."
        )
    return ApiSettings(base_url(env.get(BASE_URL_VAR)), access_key, secret_key)


def base_url(value: str | None) -> str:
    """Validate the console API base URL (scheme and host, no trailing slash)."""
    url = (value or DEFAULT_BASE_URL).strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"{BASE_URL_VAR}={url!r} is not an http(s) URL; leave it unset for {DEFAULT_BASE_URL}"
        )
    return url


def database_url(value: str | None) -> URL:
    """Parse DATABASE_URL; a plain postgresql:// URL is driven by psycopg 3."""
    try:
        url = make_url((value or DEFAULT_DATABASE_URL).strip())
    except ArgumentError as exc:
        raise ConfigError(
            f"{DATABASE_URL_VAR} is not a SQLAlchemy URL ({exc}); "
            "use e.g. postgresql://user@host/db or sqlite:///qianfan_etl.db"
        ) from None
    except ValueError:  # SQLAlchemy reads the port with int(); its message quotes the URL
        raise ConfigError(
            f"{DATABASE_URL_VAR} has a port that is not a number; "
            "use e.g. postgresql://user@host:5432/db"
        ) from None
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    if url.get_backend_name() not in ("postgresql", "sqlite"):
        raise ConfigError(
            f"{DATABASE_URL_VAR} names {url.get_backend_name()!r}; "
            "qianfan-etl supports postgresql:// and sqlite:/// URLs"
        )
    return url


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
    """The URL as it may be printed: with the password masked."""
    return url.render_as_string(hide_password=True)


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
