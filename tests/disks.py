"""Real full disks for the tests: a small tmpfs mounted for one test, and a ballast file that
fills it. Mounting needs root (CI runs as root); elsewhere the tests that need it skip."""

import math
import os
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

CHUNK = 1 << 20
PAGE = 4096


def require_mounting() -> None:
    """Skip, saying why, where this process cannot mount a tmpfs."""
    if os.geteuid() != 0:
        pytest.skip("a real full disk needs a tmpfs, and mounting one needs root (CI is root)")


@contextmanager
def tmpfs(size: str, owner: int = 0) -> Iterator[Path]:
    """A tmpfs of `size` (mount's syntax: 16m) on a fresh directory under /tmp, which every
    user may traverse (the Postgres server must reach a tablespace there); unmounted after."""
    require_mounting()
    mountpoint = Path("/tmp") / f"qfetl-disk-{secrets.token_hex(4)}"
    mountpoint.mkdir(mode=0o755)
    options = f"size={size},mode=0755,uid={owner},gid={owner}"
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mountpoint)],
            check=True,
            capture_output=True,
            text=True,
        )
    except subprocess.CalledProcessError as exc:
        mountpoint.rmdir()
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI runs as root and must mount a tmpfs: {exc.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs here (a container without CAP_SYS_ADMIN?): {exc.stderr}")
    try:
        yield mountpoint
    finally:
        unmount(mountpoint)


def unmount(mountpoint: Path) -> None:
    """Unmount, lazily if something still holds a file there, and remove the directory."""
    done = subprocess.run(["umount", str(mountpoint)], capture_output=True)
    if done.returncode != 0:
        subprocess.run(["umount", "--lazy", str(mountpoint)], check=True)
    mountpoint.rmdir()


def fill(directory: Path, leave: int = 0) -> Path:
    """Fill the filesystem of `directory` with a ballast file, then give back `leave` bytes
    (rounded up to whole pages, tmpfs's unit); returns the ballast, to unlink to free the disk."""
    ballast = directory / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    written = 0
    try:
        for size in (CHUNK, PAGE, 1):
            block = b"\0" * size
            with suppress(OSError):
                while True:
                    written += os.write(fd, block)
    finally:
        os.close(fd)
    assert free_bytes(directory) < PAGE, "the ballast did not fill the disk"
    if leave:
        os.truncate(ballast, max(0, written - math.ceil(leave / PAGE) * PAGE))
    return ballast


def free_bytes(directory: Path) -> int:
    """Bytes a writer may still allocate on the filesystem of `directory`."""
    stats = os.statvfs(directory)
    return stats.f_bavail * stats.f_frsize
