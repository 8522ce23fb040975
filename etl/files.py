"""Replacing a file whole: the metrics file and the report page are read by others while cron
rewrites them, so a reader (or a power cut) sees the old file or the new one, never a torn one."""

import os
import secrets
from contextlib import suppress
from pathlib import Path


def replace_file(path: Path, data: bytes) -> None:
    """Write `data` to a new temporary file beside `path`, fsync it, rename it into place, then
    fsync the directory. The file's mode follows the umask; the temporary file never outlives
    a failure. An OSError (a full disk among them) is the caller's to explain."""
    # Hidden and not *.prom, so node_exporter's textfile collector never reads it half-written.
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    # O_EXCL: never another's file; mode 0o666 less the umask, as for any file one writes.
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
            stream.flush()
            # Delayed allocation (ext4, XFS, NFS) may tell of a full disk only here: before
            # the rename, so the old file stays.
            os.fsync(stream.fileno())
        os.replace(temp, path)
    except BaseException:
        with suppress(OSError):
            temp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable where the platform and filesystem allow it."""
    with suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
