"""Capture agent: libpcap (pcapy-ng) on one interface, headers decoded and inferred in Python.

    python -m harness.agents.observers.pcap_capture --interface IF --expression EXPR --snaplen N
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
  stdin closed -> the socket is frozen (a reject-all kernel filter: nothing more enters the ring),
  then drained until every packet the kernel counted was read or dropped ->
  {"result": {...}}                          inference, packet counts and pcap_stats()
On a capture that cannot open (no such interface, a bad filter, no permission):
  {"error": "one line"} and exit status 2.

Switched mode (--switched, the toggled measurement, harness/toggle.py): ready with no capture
open; then each "on" line opens the capture (a packet socket, its ring and filter) and answers
{"on": true}; each "off" line freezes and drains the ring as above (live traffic goes on, the
frozen socket takes no more of it), closes the handle (the socket is gone: no tap left on the
interface to cost anything) and answers {"off": true, "captured": n, "received": n, "dropped": n}
for that on-period; stdin closing ends the agent. Packets are decoded as in a trial; no inference
is kept (the toggled windows measure cost, the trials measure fidelity).
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

from harness.decoders.pcap_infer import FlowTracker, decode_ethernet, realtime_to_monotonic
from harness.tcp import FLOW_SAMPLE
from harness.agents.common import cpu_seconds, emit

EXIT_CAPTURE_FAILED = 2
MAX_DRAIN_S = 60.0  # after the stop, for a consumer far behind to work through a full ring
DISPATCH_BATCH = 4096  # packets per dispatch() call, so the loop reads its commands between
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


# A cBPF program of one instruction, "ret #0": the kernel keeps no byte of any packet, and counts none.
_SO_ATTACH_FILTER, _SOL_SOCKET = 26, 1  # asm-generic/socket.h


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


_REJECT_ALL = (_SockFilter * 1)(_SockFilter(0x06, 0, 0, 0))  # BPF_RET | BPF_K, 0
_libc = ctypes.CDLL(None, use_errno=True)


def freeze(fd: int) -> None:
    """Let no more packets into the ring: a reject-all kernel filter, set on the socket directly.

    Not through pcap_setfilter(): libpcap then re-filters every block already in the ring in user
    space, and a packet the new filter rejects there was counted by the kernel (ps_recv) yet never
    reaches the callback. After this, ps_recv stops moving, so a drain to it is exact."""
    program = _SockFprog(1, _REJECT_ALL)
    if _libc.setsockopt(fd, _SOL_SOCKET, _SO_ATTACH_FILTER, ctypes.byref(program), ctypes.sizeof(program)):
        raise OSError(ctypes.get_errno(), "setsockopt(SO_ATTACH_FILTER) of the reject-all filter failed")


class Capture:
    """An activated, filtered, non-blocking libpcap handle whose counters start at its filter.

    libpcap opens the packet socket unfiltered (pcap_activate()) and attaches the filter later
    (pcap_setfilter()); what arrived in between sits in the ring, counted by the kernel, and libpcap
    filters it in user space, so ps_recv would exceed what the callback ever sees (measured in
    switched mode under live churn: 328-399 packets per switch-on). So the socket is frozen at
    once, that prelude is read and counted apart (`before_filter`), and only then is the real
    filter attached: `stats()` counts from there."""

    def __init__(self, pcapy, interface: str, expression: str, snaplen: int, buffer_bytes: int,
                 timeout_ms: int):
        self.timeout_ms = timeout_ms
        self.reader = reader = pcapy.create(interface)
        try:
            reader.set_snaplen(snaplen)
            reader.set_promisc(False)  # a veth gets every packet of its peer anyway; leave the link as it is
            reader.set_timeout(timeout_ms)
            reader.set_buffer_size(buffer_bytes)
            status = reader.activate()  # pcapy-ng returns pcap_activate()'s status instead of raising
            if status < 0:
                raise pcapy.PcapError(ACTIVATE_ERRORS.get(status, f"pcap_activate failed with status {status}"))
            reader.setnonblock(1)
            self.fd = reader.getfd()
            self.baseline, self.delivered = (0, 0), 0
            self.before_filter, _, _ = self.drain(lambda header, data: None)
            self.baseline, self.delivered = reader.stats()[:2], 0
            reader.setfilter(expression)  # libpcap's own dance: a reject-all filter, then this one
        except Exception:
            reader.close()
            raise

    def stats(self) -> tuple[int, int]:
        """(received, dropped) since the filter was attached: pcap_stats(3PCAP)'s ps_recv, ps_drop."""
        received, dropped, _ = self.reader.stats()
        return received - self.baseline[0], dropped - self.baseline[1]

    def dispatch(self, callback) -> int:
        """Packets handed to `callback` from blocks already retired, at most a batch: with a consumer
        slower than the traffic an unbounded dispatch() would never return to read its commands."""
        n = self.reader.dispatch(DISPATCH_BATCH, callback)
        self.delivered += max(n, 0)
        return n

    def drain(self, callback) -> tuple[int, int, int]:
        """Freeze the socket, then hand over everything the kernel counted: (delivered, received, dropped).

        Exact: after the freeze nothing more is counted (a packet already past the old filter on
        another CPU may still be, so the count is read again each round, and the counts returned
        are the ones the decision was made on), and every counted packet sits in a block the kernel
        retires within `timeout_ms`. Done when delivered + dropped reaches received; a ring quiet for
        two retire timeouts (nothing can arrive any more) or MAX_DRAIN_S end it with the
        difference left for the caller to report."""
        freeze(self.fd)
        began = last = time.monotonic()
        quiet_s = 2 * self.timeout_ms / 1000 + 0.1
        while True:
            received, dropped = self.stats()
            if self.delivered + dropped >= received:
                return self.delivered, received, dropped
            select.select([self.fd], [], [], self.timeout_ms / 1000)
            now = time.monotonic()
            if self.dispatch(callback) > 0:
                last = now
            elif now - last > quiet_s or now - began > MAX_DRAIN_S:
                return self.delivered, received, dropped

    def close(self) -> None:
        self.reader.close()


def run(args: argparse.Namespace) -> int:
    """A trial's capture: ready, packets until stdin closes, then the ring frozen and drained, one result line.

    Exit status 0, or EXIT_CAPTURE_FAILED after an error line (the capture cannot open, or the link is not Ethernet).
    """
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
        capture = Capture(pcapy, args.interface, args.expression, args.snaplen, args.buffer_bytes, args.timeout_ms)
    except Exception as exc:  # PcapError, BPFError: libpcap's own words, on one line
        message = " ".join(str(exc).split()) or type(exc).__name__
        emit({"error": f"cannot capture on {args.interface} with filter {args.expression!r}: {message}"})
        return EXIT_CAPTURE_FAILED
    try:
        if capture.reader.datalink() != pcapy.DLT_EN10MB:
            emit({"error": f"{args.interface}: link type {capture.reader.datalink()} is not Ethernet"})
            return EXIT_CAPTURE_FAILED
        stdin = sys.stdin.fileno()
        emit({"ready": True, "pid": os.getpid(), "cpu_s": cpu_seconds(), "libpcap": libpcap_version(pcapy)})
        # dispatch even on a select timeout: a block retired between two polls is never missed
        poll_s = min(0.05, args.timeout_ms / 1000)
        while True:
            readable, _, _ = select.select([capture.fd, stdin], [], [], poll_s)
            capture.dispatch(on_packet)
            if stdin in readable and not os.read(stdin, 4096):
                break
        stopping_since = time.monotonic()
        _, received, dropped = capture.drain(on_packet)
        result = tracker.result()
        result["packets"].update(counts)
        result["pcap_stats"] = {"received": received, "dropped": dropped, "if_dropped": capture.reader.stats()[2],
                                "before_filter": capture.before_filter}
        result["drain_s"] = round(time.monotonic() - stopping_since, 3)
        emit({"result": result})
        return 0
    finally:
        capture.close()


def run_switched(args: argparse.Namespace) -> int:
    """--switched: a capture opened on each "on" line, drained and closed on each "off"; stdin closing ends it.

    Exit status 0, or EXIT_CAPTURE_FAILED after an error line when a capture cannot open.
    """
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

    capture: Capture | None = None
    emit({"ready": True, "pid": os.getpid(), "cpu_s": cpu_seconds(), "libpcap": libpcap_version(pcapy)})
    pending = b""
    try:
        while True:
            watched = [0] if capture is None else [0, capture.fd]
            readable, _, _ = select.select(watched, [], [], 0.05 if capture is not None else None)
            if capture is not None:
                capture.dispatch(on_packet)
            if 0 not in readable:
                continue
            chunk = os.read(0, 4096)
            if not chunk:
                return 0
            pending += chunk
            while b"\n" in pending:
                command, pending = pending.split(b"\n", 1)
                if command == b"on" and capture is None:
                    counts.update(captured=0, not_tcp=0, truncated=0)
                    try:
                        capture = Capture(pcapy, args.interface, args.expression, args.snaplen,
                                          args.buffer_bytes, args.timeout_ms)
                    except Exception as exc:
                        emit({"error": " ".join(str(exc).split()) or type(exc).__name__})
                        return EXIT_CAPTURE_FAILED
                    emit({"on": True})
                elif command == b"off" and capture is not None:
                    # Everything the on-period queued is read before the answer (a consumer behind
                    # works through its backlog here, so its whole cost is charged to this
                    # on-period); traffic goes on meanwhile, but the frozen socket takes no more
                    # of it. Then the handle is closed: no packet socket left to cost anything.
                    _, received, dropped = capture.drain(on_packet)
                    capture.close()
                    emit({"off": True, **counts, "received": received, "dropped": dropped,
                          "before_filter": capture.before_filter})
                    capture = None
    finally:
        if capture is not None:
            capture.close()


def main(argv: list[str] | None = None) -> int:
    """Command line: the interface, filter, snaplen, ring and sides; --switched for the toggled measurement."""
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
