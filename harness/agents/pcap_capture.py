"""Capture agent: libpcap (pcapy-ng) on one interface, headers decoded and inferred in Python.

    python -m harness.agents.pcap_capture --interface IF --expression EXPR --snaplen N
        --buffer-bytes N --timeout-ms N --side 198.18.7.1=client --side 198.18.7.2=server

Run inside the capturing host's namespace (nsenter), so the interface is the namespace's own and
the process's CPU time is the Python consumer's cost alone (the harness reads it when it reaps us).

The capture is what libpcap does by default on Linux: an AF_PACKET socket with a TPACKET_V3
memory-mapped ring of `--buffer-bytes`, blocks retired after `--timeout-ms`, the filter compiled
to cBPF and attached in the kernel (packets it rejects are never copied), `--snaplen` bytes kept.
pcapy-ng's blocking dispatch() never returns while no packet arrives, whatever the timeout, so the
handle is non-blocking and the loop select()s on its fd (and on stdin, the harness's stop signal).

Protocol (JSON lines on stdout):
  {"ready": true, "pid": ..., "cpu_s": ...}   the filter is attached: traffic may start
  stdin closed -> drain until the ring has been quiet for longer than a block's retire timeout ->
  {"result": {...}}                          inference, packet counts and pcap_stats()
On a capture that cannot open (no such interface, a bad filter, no permission):
  {"error": "one line"} and exit status 2.

Switched mode (--switched, the toggled measurement, harness/toggle.py): ready with no capture
open; then each "on" line opens the capture (a packet socket, its ring and filter) and answers
{"on": true}; each "off" line reads what the ring holds (until every packet the kernel had counted at
the "off" was read or dropped), closes the handle (the socket is gone: no tap left on the interface to cost
anything) and answers {"off": true, "captured": n, "received": n, "dropped": n} for that on-period;
stdin closing ends the agent. Packets are decoded as in a trial; no inference is kept (the
toggled windows measure cost, the trials measure fidelity).
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import os
import select
import signal
import sys
import time

from harness.agents.pcap_infer import FlowTracker, decode_ethernet, realtime_to_monotonic
from harness.flowmatch import FLOW_SAMPLE
from harness.agents.common import cpu_seconds, emit

EXIT_CAPTURE_FAILED = 2
MAX_DRAIN_S = 60.0  # after the stop, for a consumer far behind to work through a full ring
# pcap_activate(3PCAP) error statuses (pcap/pcap.h); pcapy-ng exposes no pcap_geterr() for them.
ACTIVATE_ERRORS = {
    -1: "pcap_activate failed (PCAP_ERROR)",
    -5: "no such device (PCAP_ERROR_NO_SUCH_DEVICE)",
    -8: "permission denied: capturing needs CAP_NET_RAW (PCAP_ERROR_PERM_DENIED)",
    -9: "the interface is not up (PCAP_ERROR_IFACE_NOT_UP)",
}


def libpcap_version(pcapy_module) -> str:
    """The libpcap pcapy-ng's wheel bundles (pcapy has no lib_version()): asked through ctypes."""
    libs = os.path.join(os.path.dirname(pcapy_module.__file__), "pcapy_ng.libs")
    for path in glob.glob(os.path.join(libs, "libpcap*.so*")):
        lib = ctypes.CDLL(path)  # already loaded by pcapy: the same handle
        lib.pcap_lib_version.restype = ctypes.c_char_p
        return lib.pcap_lib_version().decode()
    return "unknown (not a pcapy-ng wheel)"


def open_capture(pcapy, interface: str, expression: str, snaplen: int, buffer_bytes: int, timeout_ms: int):
    """An activated, filtered, non-blocking handle, or pcapy.PcapError with libpcap's message."""
    reader = pcapy.create(interface)
    try:
        reader.set_snaplen(snaplen)
        reader.set_promisc(False)  # a veth gets every packet of its peer anyway; leave the link as it is
        reader.set_timeout(timeout_ms)
        reader.set_buffer_size(buffer_bytes)
        status = reader.activate()  # pcapy-ng returns pcap_activate()'s status instead of raising
        if status < 0:
            raise pcapy.PcapError(ACTIVATE_ERRORS.get(status, f"pcap_activate failed with status {status}"))
        reader.setfilter(expression)
        reader.setnonblock(1)
    except Exception:
        reader.close()
        raise
    return reader


def run(args: argparse.Namespace) -> int:
    # The harness stops us by closing stdin (and kills us if that fails): a terminal's SIGINT to the
    # process group must not cut a drain short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import pcapy

    sides = dict(item.split("=", 1) for item in args.side)
    to_monotonic = realtime_to_monotonic()
    tracker = FlowTracker(sides, flow_sample=FLOW_SAMPLE,
                          timestamp=lambda header: to_monotonic(*header.getts(), 1000))
    counts = {"captured": 0, "wire_bytes": 0, "not_tcp": 0, "truncated": 0}

    def on_packet(header, data):
        counts["captured"] += 1
        wire_length = header.getlen()
        counts["wire_bytes"] += wire_length
        segment = decode_ethernet(data, wire_length)
        if segment.__class__ is str:
            counts[segment] += 1
        else:
            tracker.feed(segment, header)

    try:
        reader = open_capture(pcapy, args.interface, args.expression, args.snaplen, args.buffer_bytes,
                              args.timeout_ms)
    except Exception as exc:  # PcapError, BPFError: libpcap's own words, on one line
        message = " ".join(str(exc).split()) or type(exc).__name__
        emit({"error": f"cannot capture on {args.interface} with filter {args.expression!r}: {message}"})
        return EXIT_CAPTURE_FAILED
    try:
        if reader.datalink() != pcapy.DLT_EN10MB:
            emit({"error": f"{args.interface}: link type {reader.datalink()} is not Ethernet"})
            return EXIT_CAPTURE_FAILED
        fd = reader.getfd()
        stdin = sys.stdin.fileno()
        emit({"ready": True, "pid": os.getpid(), "cpu_s": cpu_seconds(), "libpcap": libpcap_version(pcapy)})
        # A partly filled TPACKET_V3 block reaches user space only when its retire timer fires: quiet
        # for longer than that (and select()ing on the fd meanwhile) means the ring is empty.
        quiet_s = 2 * args.timeout_ms / 1000 + 0.1
        poll_s = min(0.05, args.timeout_ms / 1000)
        stopping_since: float | None = None
        last_packet = time.monotonic()
        watched = [fd, stdin]
        while True:
            readable, _, _ = select.select(watched, [], [], poll_s)
            if stdin in readable and not os.read(stdin, 4096):
                watched = [fd]
                stopping_since = time.monotonic()
            # dispatch even on a select timeout: a block retired between two polls is never missed
            while reader.dispatch(-1, on_packet) > 0:
                last_packet = time.monotonic()
            if stopping_since is None:
                continue
            now = time.monotonic()
            if now - max(last_packet, stopping_since) > quiet_s:
                # The kernel counts a packet when it enters the ring, libpcap sees it when its
                # block retires: a packet that came during the quiet period may still be in an
                # open block. Done when every packet counted was read or dropped (or time is up).
                # The counters reported are this snapshot, the one the decision was made on: read
                # again, they could count a packet that arrived after it (seen: "undrained 1").
                received, dropped, if_dropped = reader.stats()
                if counts["captured"] + dropped >= received or now - stopping_since > MAX_DRAIN_S:
                    break
        result = tracker.result()
        result["packets"].update(counts)
        result["pcap_stats"] = {"received": received, "dropped": dropped, "if_dropped": if_dropped}
        result["drain_s"] = round(time.monotonic() - stopping_since, 3)
        emit({"result": result})
        return 0
    finally:
        reader.close()


def run_switched(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import pcapy

    sides = dict(item.split("=", 1) for item in args.side)
    tracker = FlowTracker(sides, flow_sample=0, timestamp=lambda header: 0)
    counts = {"captured": 0, "not_tcp": 0, "truncated": 0}

    def on_packet(header, data):
        counts["captured"] += 1
        segment = decode_ethernet(data, header.getlen())
        if segment.__class__ is str:
            counts[segment] += 1
        else:
            tracker.feed(segment, header)

    reader = None
    emit({"ready": True, "pid": os.getpid(), "cpu_s": cpu_seconds(), "libpcap": libpcap_version(pcapy)})
    pending = b""
    try:
        while True:
            watched = [0] if reader is None else [0, reader.getfd()]
            readable, _, _ = select.select(watched, [], [], 0.05 if reader is not None else None)
            if reader is not None:
                while reader.dispatch(-1, on_packet) > 0:
                    pass
            if 0 not in readable:
                continue
            chunk = os.read(0, 4096)
            if not chunk:
                return 0
            pending += chunk
            while b"\n" in pending:
                command, pending = pending.split(b"\n", 1)
                if command == b"on" and reader is None:
                    counts.update(captured=0, not_tcp=0, truncated=0)
                    try:
                        reader = open_capture(pcapy, args.interface, args.expression, args.snaplen,
                                              args.buffer_bytes, args.timeout_ms)
                    except Exception as exc:
                        emit({"error": " ".join(str(exc).split()) or type(exc).__name__})
                        return EXIT_CAPTURE_FAILED
                    emit({"on": True})
                elif command == b"off" and reader is not None:
                    # read everything the on-period queued (a consumer behind works through its
                    # backlog here, so its whole cost is charged to this on-period; a block reaches us
                    # when its retire timer fires), then close
                    # Done when every packet the kernel counted was read or dropped, or when the ring
                    # has been quiet for longer than a block's retire timeout (the kernel's count can
                    # include a packet no block will ever hand over: seen in trials, "undrained 1").
                    # Traffic goes on while we drain: the target is what the kernel had counted
                    # when the "off" came (later packets belong to no window, and go with the socket).
                    target = reader.stats()[0]
                    began = last_packet = time.monotonic()
                    quiet_s = 2 * args.timeout_ms / 1000 + 0.1
                    while True:
                        select.select([reader.getfd()], [], [], args.timeout_ms / 1000)
                        while reader.dispatch(-1, on_packet) > 0:
                            last_packet = time.monotonic()
                        received, dropped, _ = reader.stats()
                        now = time.monotonic()
                        if (counts["captured"] + dropped >= target or now - last_packet > quiet_s
                                or now - began > MAX_DRAIN_S):
                            break
                    reader.close()
                    reader = None
                    emit({"off": True, **counts, "received": received, "dropped": dropped})
    finally:
        if reader is not None:
            reader.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pcap_capture", description=__doc__.split("\n\n")[0])
    parser.add_argument("--interface", required=True)
    parser.add_argument("--expression", required=True, help="a pcap-filter(7) expression")
    parser.add_argument("--snaplen", type=int, required=True)
    parser.add_argument("--buffer-bytes", type=int, required=True)
    parser.add_argument("--timeout-ms", type=int, required=True)
    parser.add_argument("--side", action="append", default=[], metavar="ADDRESS=NAME")
    parser.add_argument("--switched", action="store_true", help="open and close on 'on'/'off' lines")
    args = parser.parse_args(argv)
    return run_switched(args) if args.switched else run(args)


if __name__ == "__main__":
    sys.exit(main())
