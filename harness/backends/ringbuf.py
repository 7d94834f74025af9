"""The ring-buffer consumers: what reads the bcc backends' events in user space (stream mode).

Three, all counting as events arrive (bounded memory: one counter per distinct (side, kind,
transition, pid, comm)): PythonConsumer, bcc's callbacks in a thread of this process (ring or perf
buffer); CConsumer, ringbuf_consumer.c in its own process through libbpf; PyProcessConsumer,
agents/observers/ringbuf_py_consumer.py in its own process (the toggled measurement's). The
session (bpf_session.py) starts one and stops it at detach.
"""

from __future__ import annotations

import ctypes
import json
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from .. import cbuild
from ..system import die_with_runner
from .bpf_build import BackendError

EVENT_SIZE = 56
_KEY = struct.Struct("<I4B")  # pid, kind, side, oldstate, newstate: bytes 16..24 of an event
POLL_TIMEOUT_MS = 20


def count_key(counts: Counter, attribution: Counter, key: bytes, n: int) -> None:
    """key: bytes 16..24 (pid, kind, side, old, new) and 40..56 (comm) of an event."""
    pid, kind, side, old, new = _KEY.unpack_from(key)
    counts[(side, kind, old, new)] += n
    attribution[(side, kind, pid, key[8:].split(b"\0", 1)[0].decode(errors="replace"))] += n


def consumer_binary() -> Path:
    """The C consumer (ringbuf_consumer.c, built by harness/cbuild.py with libbpf); BackendError if it cannot be."""
    try:
        return cbuild.binary("ringbuf_consumer")
    except cbuild.BuildError as exc:
        raise BackendError(str(exc)) from None


class PythonConsumer:
    """A thread in this process: bcc's callbacks, one per event. What a Python tool costs."""

    name = "python"

    def __init__(self, bpf: Any, transport: str, per_cpu_pages: int, wakeup_batch: int):
        self.counts: dict[bytes, int] = {}
        self.lost_callback = 0
        self.cpu_s = 0.0
        self.stop_flag = threading.Event()
        self.begin = 0.0
        table = bpf["events"]
        if transport == "ringbuf":
            table.open_ring_buffer(self._on_event)
            poll, consume = bpf.ring_buffer_poll, bpf.ring_buffer_consume
        else:
            table.open_perf_buffer(self._on_event, page_cnt=per_cpu_pages, lost_cb=self._on_lost,
                                   wakeup_events=wakeup_batch)
            poll, consume = bpf.perf_buffer_poll, bpf.perf_buffer_consume
        self.thread = threading.Thread(target=self._run, args=(poll, consume),
                                       name="tpbench-tracepoint-consumer", daemon=True)
        self.thread.start()

    def _on_event(self, ctx: Any, data: int, size: int) -> None:
        raw = ctypes.string_at(data, size)  # one event, or a batch of them
        counts = self.counts
        for offset in range(0, size - EVENT_SIZE + 1, EVENT_SIZE):
            key = raw[offset + 16 : offset + 24] + raw[offset + 40 : offset + 56]  # pid..new + comm
            counts[key] = counts.get(key, 0) + 1

    def _on_lost(self, count: int) -> None:
        self.lost_callback += count

    def cpu_so_far(self) -> float:
        """The consumer thread's CPU since it started (read from another thread)."""
        return time.clock_gettime(time.pthread_getcpuclockid(self.thread.ident)) - self.begin

    def _run(self, poll: Any, consume: Any) -> None:
        self.begin = begin = time.thread_time()
        while not self.stop_flag.is_set():
            poll(POLL_TIMEOUT_MS)  # wakes on batched forced wake-ups ...
            consume()  # ... and drains what was queued without one
        consume()
        self.cpu_s = time.thread_time() - begin

    def stop(self) -> dict[str, Any]:
        if self.thread.is_alive():
            self.stop_flag.set()
            self.thread.join()
        counts, attribution = Counter(), Counter()
        for key, n in self.counts.items():
            count_key(counts, attribution, key, n)
        return {"counts": counts, "attribution": attribution, "cpu_s": self.cpu_s,
                "lost_callback": self.lost_callback}


class CConsumer:
    """ringbuf_consumer.c in its own process, reading the ring through libbpf: what libbpf-tools cost.

    Like every observer process tpbench starts (tcpdump, the capture agent, the peers' tools), it
    runs in a session of its own: with CONFIG_SCHED_AUTOGROUP (on here) a session is a scheduling
    group, so each observer competes with the workload as a tool started from another terminal
    does. Had one observer shared the workload's group and another not, their backlogs and losses
    would differ by scheduling alone (tcpstates-bpfcc at churn 20k: in the workload's session it lost
    31-57% of its rows to its perf buffer and cost +85 us per connection; in a session of its own,
    6-18% and +125-140 us, run by tpbench 0.2% and +140 us)."""

    name = "c"

    def __init__(self, bpf: Any):
        fd = bpf["events"].map_fd
        self.process = subprocess.Popen([str(consumer_binary()), str(fd)], pass_fds=(fd,),
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, start_new_session=True,
                                        preexec_fn=die_with_runner)
        ready = self.process.stdout.readline()
        if not ready:
            error = self.process.stderr.read().strip()
            self.process.wait()
            raise BackendError(f"the C consumer did not start: {error}")

    def stop(self, staged: bytes = b"") -> dict[str, Any]:
        """Hand it the staged records, then close its stdin: it drains the ring and reports."""
        if staged:  # a few KiB: within the pipe's buffer
            self.process.stdin.buffer.write(staged)
            self.process.stdin.flush()
        out, err = self.process.communicate(timeout=30)
        if self.process.returncode != 0:
            raise BackendError(f"the C consumer failed ({self.process.returncode}): {err.strip()}")
        report = json.loads(out)
        return {
            "counts": Counter({(s, k, o, n): c for s, k, o, n, c in report["counts"]}),
            "attribution": Counter({(s, k, pid, comm): c for s, k, pid, comm, c in report["attribution"]}),
            "cpu_s": report["cpu_s"],
            "lost_callback": 0,
            "max_rss_kib": report["max_rss_kib"],
            "staged_taken": report["staged_taken"],
            "bad_records": report["bad_records"],
            "events_read": report["events"],
            "attribution_overflow": report["attribution_overflow"],
            "flow_events": {"events": report["flow_events"], "overflow": report["flow_events_overflow"],
                            "sk_overflow": report["flow_sk_overflow"]},
        }

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()


class PyProcessConsumer:
    """agents/observers/ringbuf_py_consumer.py: libbpf's ring_buffer__poll calling a Python function per record
    (the path bcc's RingBuf takes), in a process of its own. Used by the toggled measurement, which
    must attribute the consumer's CPU and wait for its backlog at each switch-off."""

    name = "python"

    def __init__(self, bpf: Any):
        fd = bpf["events"].map_fd
        self.process = subprocess.Popen([sys.executable, "-m", "harness.agents.observers.ringbuf_py_consumer", str(fd)],
                                        pass_fds=(fd,), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, start_new_session=True,
                                        preexec_fn=die_with_runner)
        if not self.process.stdout.readline():
            error = self.process.stderr.read().strip()
            self.process.wait()
            raise BackendError(f"the Python consumer did not start: {error}")

    def drain(self) -> None:
        self.process.stdin.write("drain\n")
        self.process.stdin.flush()
        if not self.process.stdout.readline():
            raise BackendError(f"the Python consumer stopped: {self.process.stderr.read().strip()}")

    def stop(self) -> dict[str, Any]:
        out, err = self.process.communicate(timeout=60)
        if self.process.returncode != 0:
            raise BackendError(f"the Python consumer failed ({self.process.returncode}): {err.strip()}")
        report = json.loads(out.strip().splitlines()[-1])
        counts, attribution = Counter(), Counter()
        for key, n in report["keys"].items():
            count_key(counts, attribution, bytes.fromhex(key), n)
        return {"counts": counts, "attribution": attribution, "cpu_s": report["cpu_s"], "lost_callback": 0,
                "max_rss_kib": report["max_rss_kib"]}

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()
