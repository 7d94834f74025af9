"""Helper processes of the backends (capture agents, tcpdump, readers, pollers): reading their
answers without hanging, reaping them with their CPU time, and killing them on every error path."""

from __future__ import annotations

import os
import select
import subprocess
import time
from pathlib import Path



def read_line(stream, timeout_s: float, what: str, error: type[Exception] = RuntimeError) -> str:
    """One line from a pipe within timeout_s (`error` if none comes); '' at EOF."""
    deadline = time.monotonic() + timeout_s
    buffer = b""
    fd = stream.fileno()
    while not buffer.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise error(f"no {what} within {timeout_s:.0f} s")
        readable, _, _ = select.select([fd], [], [], remaining)
        if not readable:
            continue
        chunk = os.read(fd, 1)  # byte by byte: nothing past the line may be taken from the pipe
        if not chunk:
            break
        buffer += chunk
    return buffer.decode(errors="replace")


def reap(process: subprocess.Popen, timeout_s: float) -> dict[str, float] | None:
    """Wait for the process, returning its CPU time from wait4's rusage (None if it was not ours
    to reap any more). Sets Popen's returncode, so Popen never waits on a reaped pid."""
    if process.returncode is not None:
        return None
    deadline = time.monotonic() + timeout_s
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            return {"user": round(usage.ru_utime, 4), "system": round(usage.ru_stime, 4),
                    "total": round(usage.ru_utime + usage.ru_stime, 4)}
        if time.monotonic() > deadline:
            raise subprocess.TimeoutExpired(process.args, timeout_s)
        time.sleep(0.01)


def kill(process: subprocess.Popen | None) -> None:
    """SIGKILL and reap, closing pipes: the end of every error path."""
    if process is None:
        return
    if process.returncode is None:
        try:
            process.kill()
        except ProcessLookupError:
            pass
        try:
            reap(process, 10)
        except (subprocess.TimeoutExpired, ChildProcessError):
            pass
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None and not stream.closed:
            stream.close()


def process_cpu_s(pid: int) -> float | None:
    """utime + stime of a live process from /proc/<pid>/stat (fields 14 and 15, in clock ticks)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def task_runtime_ns(pids: list[int]) -> int:
    """ns-exact runtime of every thread of these processes (schedstat's first field)."""
    total = 0
    for pid in pids:
        for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
            try:
                total += int(stat.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue  # a thread that just exited
    return total


class DeferredCpu:
    """The CPU an observer's own processes spend after the measured loop (draining, decoding,
    parsing): marked when the loop ends (Attachment.loop_ended), taken from their final CPU
    total (wait4's rusage, which the kernel derives from the same exact runtime) at the end."""

    def __init__(self) -> None:
        self.at_loop_end: dict[str, float] = {}

    def mark(self, name: str, pid: int | None) -> None:
        if pid is not None:
            self.at_loop_end[name] = task_runtime_ns([pid]) / 1e9

    def since(self, name: str, total_s: float | None) -> float | None:
        start = self.at_loop_end.get(name)
        return None if start is None or total_s is None else round(max(0.0, total_s - start), 6)
