"""Errors that end a run, each carrying its exit code (sysexits; README, 'Exit codes')."""

EXIT_OK = 0
EXIT_DATA = 65
EXIT_UNAVAILABLE = 69
EXIT_TEMPFAIL = 75
EXIT_NOPERM = 77
EXIT_CONFIG = 78


class EtlError(Exception):
    """An expected failure: its message tells the user what happened and what to do."""

    exit_code = 1


class ContractError(EtlError):
    """Upstream data broke the API contract (broken pagination, too many rejects)."""

    exit_code = EXIT_DATA


class StaleError(EtlError):
    """`status --max-age`: the data is stale, or the latest run did not succeed, or none ran."""

    exit_code = EXIT_UNAVAILABLE


class TransientError(EtlError):
    """The API or the database could not be reached after retries; try again later."""

    exit_code = EXIT_TEMPFAIL


class LockBusyError(TransientError):
    """Another run holds the lock on this database."""


class LockLostError(TransientError):
    """This run's lock session ended, so another run may hold the lock now."""


class AuthError(EtlError):
    """The API or the database refused our credentials or permissions."""

    exit_code = EXIT_NOPERM


class ConfigError(EtlError):
    """Missing credentials, a bad URL, or a schema not at the code's Alembic head."""

    exit_code = EXIT_CONFIG
