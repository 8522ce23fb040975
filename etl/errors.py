"""Errors that end a run or cost a job, each with its exit code (sysexits; README, 'Exit codes')."""

EXIT_OK = 0
EXIT_DATA = 65
EXIT_UNAVAILABLE = 69
EXIT_IOERR = 74  # sysexits EX_IOERR: here, a full disk
EXIT_TEMPFAIL = 75
EXIT_NOPERM = 77
EXIT_CONFIG = 78
EXIT_SIGINT = 130


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


class RetriableAPIError(TransientError):
    """One API attempt failed in a way another attempt may fix; the client retries it and
    raises a plain TransientError once the attempts run out, so this one never leaves it."""

    def __init__(self, message: str, retry_after: str | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class LockBusyError(TransientError):
    """Another run holds the lock on this database."""


class LockLostError(TransientError):
    """This run's lock session ended, so another run may hold the lock now."""


class DiskFullError(EtlError):
    """The disk under the database (or the report) is full: a person must free space."""

    exit_code = EXIT_IOERR


class AuthError(EtlError):
    """The API or the database refused our credentials or permissions."""

    exit_code = EXIT_NOPERM


class ConfigError(EtlError):
    """Missing credentials, a bad URL, or a schema not at the code's Alembic head."""

    exit_code = EXIT_CONFIG


# What costs one job rather than the run: a job's task listing that broke the contract or ran
# out of retries leaves that job's stored rows as they are, and the walk goes on with the other
# jobs (README, "Failure behaviour"). Any other error (not allowed, misconfigured) ends the run, and
# so does a streak of transient job failures (extract's circuit breaker). A failed detail call
# of a Running task costs only that task's live progress, whatever the error.
JOB_LEVEL_ERRORS: tuple[type[EtlError], ...] = (ContractError, TransientError)


def exit_code_of(exc: BaseException | None) -> int:
    """The exit code the process ends with for this exception (as the CLI maps them)."""
    if exc is None:
        return EXIT_OK
    if isinstance(exc, EtlError):
        return exc.exit_code
    if isinstance(exc, SystemExit):
        return exc.code if isinstance(exc.code, int) else 1
    return EXIT_SIGINT if isinstance(exc, KeyboardInterrupt) else 1
