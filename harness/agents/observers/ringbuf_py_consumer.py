"""The tracepoint backend's Python consumer as its own process: what a Python tool's consumer costs.

A bcc tool reading a BPF ring buffer (bcc's RingBuf.open_ring_buffer) runs libbpf's
ring_buffer__poll, which calls a Python function through ctypes once per record. This agent does
exactly that, on the ring buffer map fd it inherits (usage: ringbuf_py_consumer MAP_FD), without
the rest of bcc, so that its CPU is a process of its own that the toggled measurement can
attribute (bcc's callbacks inside tpbench could not be told apart from tpbench's own work).

Protocol, as the C consumer's (ringbuf_consumer.c): one JSON line {"ready": true, "pid": n} once
the ring is open; a line on stdin ("drain") is answered once the ring is empty (the toggled
measurement's switch-off waits for it, so no backlog is consumed in another arm's window); when
stdin closes, one more drain and one JSON line with the counts. Counts are
kept by the raw 24-byte key (pid, kind, side, old, new, comm) as the in-process consumer keeps
them: memory is bounded by the distinct keys, not by the event rate. Standard library only.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import resource
import select
import sys

EVENT_SIZE = 56  # struct event in tcp_events.bpf.h (ringbuf_consumer.c checks the same)
POLL_TIMEOUT_MS = 20
SAMPLE_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)


def main(argv: list[str]) -> int:
    """Command line: `ringbuf_py_consumer MAP_FD` (argv[0] included); 2 on bad usage, 1 on a libbpf error."""
    if len(argv) != 2:
        print("usage: ringbuf_py_consumer MAP_FD", file=sys.stderr)
        return 2
    name = ctypes.util.find_library("bpf") or "libbpf.so.1"
    libbpf = ctypes.CDLL(name, use_errno=True)
    libbpf.ring_buffer__new.restype = ctypes.c_void_p
    libbpf.ring_buffer__new.argtypes = [ctypes.c_int, SAMPLE_FN, ctypes.c_void_p, ctypes.c_void_p]
    libbpf.ring_buffer__poll.argtypes = [ctypes.c_void_p, ctypes.c_int]
    libbpf.ring_buffer__consume.argtypes = [ctypes.c_void_p]
    libbpf.ring_buffer__consume.restype = ctypes.c_int
    libbpf.ring_buffer__free.argtypes = [ctypes.c_void_p]
    counts: dict[bytes, int] = {}
    records = [0]

    def on_event(ctx: int, data: int, size: int) -> int:
        raw = ctypes.string_at(data, size)  # one event, or a batch of them
        records[0] += 1
        for offset in range(0, size - EVENT_SIZE + 1, EVENT_SIZE):
            key = raw[offset + 16: offset + 24] + raw[offset + 40: offset + 56]  # pid..new + comm
            counts[key] = counts.get(key, 0) + 1
        return 0

    callback = SAMPLE_FN(on_event)  # kept referenced for the ring's lifetime
    ring = libbpf.ring_buffer__new(int(argv[1]), callback, None, None)
    if not ring:
        print(f"ring_buffer__new(fd {argv[1]}): {os.strerror(ctypes.get_errno())}", file=sys.stderr)
        return 1
    print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
    while True:
        if select.select([sys.stdin], [], [], 0)[0]:
            line = sys.stdin.readline()
            if not line:
                break
            while libbpf.ring_buffer__consume(ring) > 0:  # "drain": the ring emptied, then answer
                pass
            print(json.dumps({"drained": True, "records": records[0]}), flush=True)
            continue
        err = libbpf.ring_buffer__poll(ring, POLL_TIMEOUT_MS)
        if err < 0 and err != -4:  # -EINTR
            print(f"ring_buffer__poll: {os.strerror(-err)}", file=sys.stderr)
            return 1
        libbpf.ring_buffer__consume(ring)
    libbpf.ring_buffer__consume(ring)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"keys": {key.hex(): n for key, n in counts.items()}, "records": records[0],
                      "cpu_s": round(usage.ru_utime + usage.ru_stime, 6), "max_rss_kib": usage.ru_maxrss}), flush=True)
    libbpf.ring_buffer__free(ring)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
