"""The progress bar of `sync`, on a real terminal (a pty) and on a pipe."""

import fcntl
import os
import re
import signal
import struct
import subprocess
import termios
from collections.abc import Iterator
from pathlib import Path

import pyte
import pytest
from sqlalchemy.engine import URL

from etl.simulator import Simulator, SimulatorConfig, SimulatorServer
from tests.harness import cli_env, etl_command

COLUMNS, LINES = 160, 24
# slow enough for several frames: 40 jobs, two at a time, 40 ms a call
SLOW = SimulatorConfig(jobs=40, tasks_per_job=3, checkpoints=2, seed=3, latency_ms=40)


@pytest.fixture
def slow_server() -> Iterator[tuple[Simulator, SimulatorServer]]:
    sim = Simulator(SLOW)
    with sim.serve() as server:
        yield sim, server


class Terminal:
    """`qianfan-etl sync` with its stderr on a pty of COLUMNS x LINES (stdout on a pipe)."""

    def __init__(self, env: dict[str, str], cwd: Path, *args: str) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", LINES, COLUMNS, 0, 0))
        command = [*etl_command(env), "sync", "--concurrency", "2", *args]
        self.child = subprocess.Popen(
            command, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=slave,
        )  # fmt: skip
        os.close(slave)
        self.master = master
        self.screen_bytes = b""

    def read_until(self, pattern: bytes) -> None:
        """Read the terminal until `pattern` appears (pytest-timeout ends a hang)."""
        while not re.search(pattern, self.screen_bytes):
            chunk = self._read()
            assert chunk, f"the run ended before {pattern!r}: {self.screen_bytes!r}"

    def finish(self) -> tuple[int, str]:
        """Read to the end; the exit code and stdout."""
        while self._read():
            pass
        os.close(self.master)
        stdout = self.child.stdout.read().decode() if self.child.stdout else ""
        return self.child.wait(), stdout

    def _read(self) -> bytes:
        try:
            chunk = os.read(self.master, 65536)
        except OSError:  # EIO: every writer of the pty has closed it
            chunk = b""
        self.screen_bytes += chunk
        return chunk

    def screen(self) -> list[str]:
        """What a person sees at the end: the bytes rendered by a VT100 emulator."""
        screen = pyte.Screen(COLUMNS, LINES)
        stream = pyte.ByteStream(screen)
        stream.feed(self.screen_bytes.replace(b"\n", b"\r\n"))  # the pty's own onlcr
        return [line.rstrip() for line in screen.display]


def test_the_bar_shows_total_percentage_elapsed_and_eta_then_clears(
    slow_server: tuple[Simulator, SimulatorServer], sqlite_url: URL, tmp_path: Path
) -> None:
    sim, server = slow_server
    terminal = Terminal(cli_env(sim, server, sqlite_url), tmp_path)
    code, stdout = terminal.finish()
    assert code == 0, terminal.screen_bytes
    shown = terminal.screen_bytes.decode()
    assert re.search(r"sync: +\d+%\|.*\| \d+/40 ", shown), shown  # percentage and total
    assert re.search(r"\[\d\d:\d\d<\d\d:\d\d", shown), shown  # elapsed < ETA
    assert re.search(r"40 jobs listed, [1-9]\d* tasks, [1-9]\d* API calls", shown), shown
    frames = [frame for frame in shown.split("\r") if "API calls" in frame]
    tasks = [int(re.findall(r"(\d+) tasks", frame)[0]) for frame in frames]
    assert sum(1 for t in tasks if 0 < t < 120) >= 2, f"tasks count as they are fetched: {tasks}"
    assert not any(terminal.screen()), terminal.screen()  # the bar is cleared: a blank screen
    assert stdout.startswith("sync run 1: 40 jobs"), stdout


def test_ctrl_c_clears_the_bar_before_the_run_stops(
    slow_server: tuple[Simulator, SimulatorServer], sqlite_url: URL, tmp_path: Path
) -> None:
    sim, server = slow_server
    terminal = Terminal(cli_env(sim, server, sqlite_url), tmp_path)
    terminal.read_until(rb"API calls")
    terminal.child.send_signal(signal.SIGINT)
    code, _ = terminal.finish()
    assert code == 130, terminal.screen_bytes
    screen = terminal.screen()
    assert not [line for line in screen if "API calls" in line or " jobs [" in line], screen
    said = [line for line in screen if "interrupted by SIGINT" in line]
    assert len(said) == 1 and re.match(r"\d{4}-\d\d-\d\d .* ERROR ", said[0]), screen


def test_a_warning_is_written_whole_above_the_bar(
    slow_server: tuple[Simulator, SimulatorServer], sqlite_url: URL, tmp_path: Path
) -> None:
    sim, server = slow_server
    failing = sim.jobs()[20]["jobId"]
    sim.job_faults = {failing: "500"}
    terminal = Terminal(cli_env(sim, server, sqlite_url), tmp_path, "--api-attempts", "1")
    code, _ = terminal.finish()
    assert code == 75, terminal.screen_bytes
    warnings = [line for line in terminal.screen() if "WARNING" in line]
    assert len(warnings) == 1, terminal.screen()
    assert re.match(r"\d{4}-\d\d-\d\d .* WARNING etl.extract: job " + failing, warnings[0])
    assert not [line for line in terminal.screen() if "API calls" in line], terminal.screen()


def test_nothing_of_the_bar_reaches_a_pipe(
    slow_server: tuple[Simulator, SimulatorServer], sqlite_url: URL, tmp_path: Path
) -> None:
    sim, server = slow_server
    env = cli_env(sim, server, sqlite_url)
    done = subprocess.run(
        [*etl_command(env), "sync"], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr
    assert done.stdout.startswith("sync run 1: 40 jobs"), done.stdout
