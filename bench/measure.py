"""Child processes: run one to completion measuring wall time and peak RSS; run the simulator."""

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self
from urllib.request import urlopen

ROOT = Path(__file__).resolve().parent.parent
QIANFAN_ETL = str(Path(sys.executable).parent / "qianfan-etl")
URL_PATTERN = re.compile(r"on (http://127\.0\.0\.1:\d+)")
EXPORT_PATTERN = re.compile(r"(\w+)=(\S+)")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """A measured step failed; the message says which and shows its stderr."""


@dataclass
class Measured:
    """A finished child: output, wall seconds, peak RSS and CPU seconds."""

    stdout: str
    stderr: str
    wall_s: float
    peak_rss_mb: float
    cpu_s: float


def run_measured(argv: list[str], env: dict[str, str], cwd: Path, timeout: float) -> Measured:
    """Run argv to completion: wall time by the monotonic clock, peak RSS and CPU by wait4."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env, cwd=cwd)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        wall = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        stdout, stderr = _read(out), _read(err)
    if proc.returncode != 0:
        why = f"killed after {timeout:g} s" if wall >= timeout else f"exited {proc.returncode}"
        raise BenchError(f"{' '.join(argv[:3])} {why}:\n{stderr[-3000:]}")
    # ru_maxrss is in kilobytes on Linux
    cpu = usage.ru_utime + usage.ru_stime
    return Measured(stdout, stderr, wall, usage.ru_maxrss / 1024, cpu)


def _read(file: IO[bytes]) -> str:
    """All that a child wrote to a temporary file."""
    file.seek(0)
    return file.read().decode("utf-8", "replace")


def run_quietly(argv: list[str], env: dict[str, str], cwd: Path) -> None:
    """Run an untimed preparation step, failing loudly."""
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BenchError(f"{' '.join(argv[:3])} exited {done.returncode}:\n{done.stderr[-3000:]}")


def python_module(module: str, *args: str) -> list[str]:
    """The argv that runs a bench module with this interpreter."""
    return [sys.executable, "-m", module, *args]


@dataclass
class SimulatorProcess:
    """`qianfan-etl simulate` in its own process, on a free port of 127.0.0.1."""

    jobs: int
    tasks_per_job: int
    checkpoints: int
    latency_ms: float
    running_jobs: float | None = None
    url: str = ""
    env: dict[str, str] = field(default_factory=dict)
    _proc: subprocess.Popen[bytes] | None = None
    _stderr: IO[bytes] | None = None

    def __enter__(self) -> Self:
        """Start the simulator and read its URL and credentials from its first lines."""
        self._stderr = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(self._argv(), stdout=subprocess.PIPE, stderr=self._stderr)
        assert self._proc.stdout is not None
        url_line = self._proc.stdout.readline().decode()
        export_line = self._proc.stdout.readline().decode()
        match = URL_PATTERN.search(url_line)
        if match is None:
            self.__exit__(None, None, None)
            raise BenchError(f"simulator did not print its URL: {url_line!r}")
        self.url = match.group(1)
        self.env = dict(EXPORT_PATTERN.findall(export_line))
        return self

    def _argv(self) -> list[str]:
        """The simulate command line."""
        return [
            QIANFAN_ETL,
            "simulate",
            "--port=0",
            f"--jobs={self.jobs}",
            f"--tasks-per-job={self.tasks_per_job}",
            f"--checkpoints={self.checkpoints}",
            f"--latency-ms={self.latency_ms}",
            *([] if self.running_jobs is None else [f"--running-jobs={self.running_jobs}"]),
        ]

    def call_stats(self, reset: bool = False) -> dict[str, Any]:
        """The calls the simulator received (GET /simulator/stats): by action, their total and
        the most in flight at once; `reset` starts the count afresh after reading it."""
        query = "?reset=1" if reset else ""
        with urlopen(f"{self.url}/simulator/stats{query}", timeout=10) as response:
            stats: dict[str, Any] = json.loads(response.read())
        return stats

    def cpu_seconds(self) -> float:
        """User + system CPU the simulator has used so far (from /proc)."""
        assert self._proc is not None
        stat = Path(f"/proc/{self._proc.pid}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Terminate the simulator (it has no state worth a graceful stop)."""
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            if self._proc.stdout is not None:
                self._proc.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
