"""A watcher that ends the processes of a local Ray instance when the job that started it dies.

A job that started Ray shuts it down when it ends, also on Ctrl-C and SIGTERM. A job killed
outright (SIGKILL, the out-of-memory killer) cannot: Ray's head processes end with it, but its
agents (DashboardAgent, RuntimeEnvAgent) then wait a minute for the dead cluster before they
leave. So the job starts this small process beside the instance: this file run as a script,
which imports only the standard library, in a session of its own (signals to the job's process
group do not reach it). It follows the processes that Ray started, and their children, through
``/proc``; when the job writes ``done`` and closes the pipe, it leaves; when the pipe closes
without it (the job died), it kills those that remain. Linux only; elsewhere nothing is watched.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

DONE = b"done\n"
POLL_SECONDS = 0.25
PROC = Path("/proc")


def processes() -> dict[int, tuple[int, int]]:
    """Every process's parent and start time (``/proc``): ``{pid: (ppid, start)}``."""
    found: dict[int, tuple[int, int]] = {}
    for entry in PROC.glob("[0-9]*/stat"):
        try:
            fields = entry.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # ended meanwhile
        found[int(entry.parent.name)] = (int(fields[1]), int(fields[19]))
    return found


def children(pid: int) -> set[int]:
    """The process's children now."""
    return {child for child, (parent, _) in processes().items() if parent == pid}


def _follow(tracked: dict[int, int]) -> None:
    """Add to ``tracked`` (pid → start time) every child of a tracked process that still runs."""
    table = processes()
    alive = {pid for pid, start in tracked.items() if table.get(pid, (0, -1))[1] == start}
    grown = True
    while grown:
        new = {pid for pid, (parent, _) in table.items() if parent in alive and pid not in alive}
        alive |= new
        grown = bool(new)
        for pid in new:
            tracked[pid] = table[pid][1]


def _kill(tracked: dict[int, int]) -> None:
    table = processes()
    for pid, start in tracked.items():
        if table.get(pid, (0, -1))[1] == start:  # the same process, not a reused pid
            with contextlib.suppress(OSError):  # ended meanwhile
                os.kill(pid, signal.SIGKILL)


def watch(roots: list[int]) -> None:
    """Follow ``roots`` and their children until stdin says ``done`` or closes (then kill)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the job, which cleans up
    table = processes()
    tracked = {pid: table[pid][1] for pid in roots if pid in table}
    stdin = sys.stdin.buffer
    while True:
        _follow(tracked)
        readable, _, _ = select.select([stdin], [], [], POLL_SECONDS)
        if readable:
            if stdin.readline() != DONE:  # closed without a word: the job died
                _follow(tracked)
                _kill(tracked)
            return


class Reaper:
    """The watcher of a job's Ray processes (nothing where ``/proc`` is missing).

    Parameters
    ----------
    roots : list of int
        The processes Ray started in this job (its children that appeared with ``ray.init``).
    """

    def __init__(self, roots: set[int]) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        if roots and PROC.is_dir():
            self.process = subprocess.Popen(
                [sys.executable, "-I", __file__, *map(str, sorted(roots))],
                stdin=subprocess.PIPE,
                start_new_session=True,
            )

    def close(self) -> None:
        """The job shut Ray down itself: let the watcher go without killing anything."""
        if self.process is None or self.process.stdin is None:
            return
        with contextlib.suppress(OSError):  # the watcher is gone already
            self.process.stdin.write(DONE)
            self.process.stdin.close()
        try:
            self.process.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


if __name__ == "__main__":
    watch([int(pid) for pid in sys.argv[1:]])
