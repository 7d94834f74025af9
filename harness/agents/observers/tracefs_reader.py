"""tracefs reader: drains a private ftrace instance's per-CPU trace_pipe_raw and counts events.

    python -m harness.agents.observers.tracefs_reader CONFIG_JSON

Started by harness/backends/tracefs.py in the root namespace (tracefs and its ring buffers are
global). A process of its own, like the pcap capture agent: its CPU time (rusage, read by the
harness when it reaps us) is the consumer's cost alone, and it cannot contend for the runner's GIL.

Why trace_pipe_raw and not trace_pipe: trace_pipe formats every event as text in the kernel
(print fmt, %pI4 ...) and the reader parses it back, both per event; trace_pipe_raw hands out
whole ring-buffer pages as the kernel wrote them (what trace-cmd and perf's ftrace mode read), so
the kernel copies 4 KiB at a time and the decoding is a few struct reads per event
(harness/decoders/tracefs_ring.py). Each CPU's file is opened O_NONBLOCK and drained until EAGAIN,
then the loop sleeps `poll_ms` (select on stdin): a read of a page the writer is still filling
returns what is committed so far, so nothing waits for a page to fill.

Consumers (`consumer` in the config):
  record  what `trace-cmd record` does: pages are copied as they are to a file on tmpfs while
          tracing (one read and one buffered write per 4 KiB page, ~50 events), and decoded after
          the stop. Measured on this 2-vCPU machine at the churn generator's top rate: keeps up.
  live    decode every page as it is read: ~1.5-1.9 us per event in Python, less than the
          ~350k events/s the top rate makes while the generator holds both CPUs: the ring fills
          and the kernel drops (6-25% lost at 200,000 connections with 32 MiB per CPU).

Protocol (JSON lines on stdout):
  {"ready": true, "pid": ..., "cpu_s": ...}     every CPU's file is open
  stdin closed (the harness has already set tracing_on to 0) -> drain every CPU to EAGAIN ->
  {"result": {...}}                              counts, pages, bytes, missed-event markers
On a failure: {"error": "one line"} and exit status 2.
"""

from __future__ import annotations

import errno
import json
import os
import select
import signal
import sys
import tempfile
import time

from harness.decoders.tracefs_ring import PageCounter, make_decoder
from harness.agents.common import cpu_seconds, emit

EXIT_FAILED = 2


def drain(fds: list[int], page_size: int, sink) -> int:
    """Read every CPU's ring until it is empty, each page to sink(page); returns pages read."""
    pages = 0
    for fd in fds:
        while True:
            try:
                page = os.read(fd, page_size)
            except BlockingIOError:
                break
            if not page:
                break
            sink(page)
            pages += 1
    return pages


def run(config: dict) -> int:
    """Drain every CPU's trace_pipe_raw each poll_ms until stdin closes, once more after, then one result line.

    `config` is the backend's JSON (instance, cpus, events, layout, consumer, ...); the record consumer decodes
    after the stop. Exit status 0, or EXIT_FAILED after an error line.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the harness stops us through stdin
    decoders = {int(event_id): (spec["kind"], make_decoder(spec["tracepoint"], spec["fields"]))
                for event_id, spec in config["events"].items()}
    counter = PageCounter(decoders, config["client"], config["server"], config["layout"])
    fds = []
    try:
        for cpu in config["cpus"]:
            path = os.path.join(config["instance"], "per_cpu", f"cpu{cpu}", "trace_pipe_raw")
            fds.append(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
    except OSError as exc:
        emit({"error": f"cannot open {exc.filename}: {exc.strerror}"})
        return EXIT_FAILED
    page_size = config["page_size"]
    poll_s = config["poll_ms"] / 1000
    record = None
    if config["consumer"] == "record":
        # tmpfs: copying costs no disk I/O; unlinked at once, so nothing outlives this process
        record = tempfile.TemporaryFile(dir="/dev/shm" if os.path.isdir("/dev/shm") else None,
                                        buffering=1 << 20)

        def sink(page: bytes) -> None:
            record.write(page if len(page) == page_size else page.ljust(page_size, b"\0"))
    else:
        sink = counter.feed
    stdin = sys.stdin.fileno()
    emit({"ready": True, "pid": os.getpid(), "cpu_s": cpu_seconds()})
    polls = 0
    max_pages_per_poll = 0
    try:
        while True:
            readable, _, _ = select.select([stdin], [], [], poll_s)
            if readable and not os.read(stdin, 4096):
                break
            pages = drain(fds, page_size, sink)
            polls += 1
            max_pages_per_poll = max(max_pages_per_poll, pages)
        stopped = time.monotonic()
        drain(fds, page_size, sink)  # tracing is off: this ends
        drain_s = time.monotonic() - stopped
        cpu_at_stop = cpu_seconds()
        decode_s = 0.0
        if record is not None:
            record.seek(0)
            started = time.monotonic()
            while True:
                page = record.read(page_size)
                if not page:
                    break
                counter.feed(page)
            decode_s = time.monotonic() - started
            record.close()
    except OSError as exc:
        if exc.errno == errno.EINTR:
            raise
        emit({"error": f"reading trace_pipe_raw: {exc.strerror}"})
        return EXIT_FAILED
    finally:
        for fd in fds:
            os.close(fd)
    emit({"result": {
        "counts": [[side, kind, old, new, n] for (side, kind, old, new), n in counter.counts.items()],
        "attribution": [[side, kind, pid, n] for (side, kind, pid), n in counter.attribution.most_common(50)],
        "filtered_user_space": dict(counter.filtered),
        "not_tcp": counter.not_tcp,
        "unknown_types": {str(k): v for k, v in counter.unknown_types.items()},
        "pages": counter.pages,
        "bytes": counter.bytes,
        "missed_pages": counter.missed_pages,
        "missed_stored": counter.missed_stored,
        "polls": polls,
        "max_pages_per_poll": max_pages_per_poll,
        "drain_s": round(drain_s, 4),
        "cpu_s_at_stop": round(cpu_at_stop, 4),
        "decode_after_stop_s": round(decode_s, 4),
    }})
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command line: one argument, the config as JSON (a usage line and EXIT_FAILED otherwise)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m harness.agents.observers.tracefs_reader CONFIG_JSON", file=sys.stderr)
        return EXIT_FAILED
    return run(json.loads(args[0]))


if __name__ == "__main__":
    sys.exit(main())
