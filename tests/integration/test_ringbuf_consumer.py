"""ringbuf_consumer.c's per-flow sampling, fed records in the orders per-CPU batches deliver them.

A client's CLOSE->SYN_SENT carries port 0 (tcp_v4_connect() enters SYN_SENT before it picks the
port): the consumer pairs it with the socket's SYN_SENT->* by the socket's kernel address. The
sockets at one address follow one another, and batches from two CPUs arrive in any order, so the
pairing must take the latest connect before the SYN_SENT->*, whichever arrived first. The records
go in on the consumer's stdin (the path staged records take at detach), over an empty ring."""

import ctypes
import json
import os
import struct
import subprocess

import pytest

from harness.backends.ringbuf import consumer_binary

pytestmark = pytest.mark.root

_EVENT = struct.Struct("<QQIBBBBIIHHI16s")  # tcp_events.bpf.h's struct event, 56 bytes
CLOSE, SYN_SENT, ESTABLISHED = 7, 2, 1
SK = 0xFFFF888012345600
SAMPLED, OTHER = 64 * 700, 64 * 700 + 1  # client ports: a multiple of FLOW_SAMPLE is sampled


def _record(ts: int, old: int, new: int, sport: int, sk: int = SK) -> bytes:
    return _EVENT.pack(ts, sk, 1, 0, 0, old, new, 0, 0, sport, 7000, 0, b"churn")


def _ringbuf_fd() -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    attr = struct.pack("<IIII", 27, 0, 0, 1 << 16) + bytes(112)  # BPF_MAP_TYPE_RINGBUF, 64 KiB
    buf = ctypes.create_string_buffer(attr, len(attr))
    fd = libc.syscall(321, 0, buf, len(attr))  # bpf(BPF_MAP_CREATE)
    assert fd >= 0, os.strerror(ctypes.get_errno())
    return fd


def _flow_events(records: list[bytes]) -> list[list[int]]:
    fd = _ringbuf_fd()
    try:
        process = subprocess.Popen([str(consumer_binary()), str(fd)], pass_fds=(fd,), stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert json.loads(process.stdout.readline())["ready"]
        out, err = process.communicate(b"".join(records), timeout=30)
    finally:
        os.close(fd)
    assert process.returncode == 0, err
    report = json.loads(out)
    assert report["events"] == len(records) and report["staged_taken"] == len(records)
    return sorted(report["flow_events"])


def _connects(events: list[list[int]]) -> list[tuple[int, int]]:
    """(ts, port) of the kept CLOSE->SYN_SENT events."""
    return [(ts, port) for ts, side, kind, old, new, port in events if (old, new) == (CLOSE, SYN_SENT)]


def test_a_connect_read_before_its_socket_chose_a_port_gets_that_port():
    events = _flow_events([_record(100, CLOSE, SYN_SENT, 0), _record(150, SYN_SENT, ESTABLISHED, SAMPLED)])
    assert _connects(events) == [(100, SAMPLED)]


def test_a_late_connect_of_the_socket_before_at_the_same_address_is_not_taken():
    # socket A (unsampled port) connected at 10, was established at 20, closed; socket B, same
    # memory, connected at 100, established at 150 on the other CPU, whose batch came first
    records = [_record(150, SYN_SENT, ESTABLISHED, SAMPLED), _record(10, CLOSE, SYN_SENT, 0),
               _record(20, SYN_SENT, ESTABLISHED, OTHER), _record(100, CLOSE, SYN_SENT, 0)]
    assert _connects(_flow_events(records)) == [(100, SAMPLED)]


def test_the_latest_connect_before_the_open_wins_whatever_the_order():
    records = [_record(100, CLOSE, SYN_SENT, 0), _record(10, CLOSE, SYN_SENT, 0),
               _record(150, SYN_SENT, ESTABLISHED, SAMPLED), _record(300, CLOSE, SYN_SENT, 0)]
    assert _connects(_flow_events(records)) == [(100, SAMPLED)]


def test_unsampled_flows_keep_nothing_and_other_addresses_do_not_mix():
    records = [_record(100, CLOSE, SYN_SENT, 0), _record(150, SYN_SENT, ESTABLISHED, OTHER),
               _record(120, CLOSE, SYN_SENT, 0, sk=SK + 0x1000), _record(160, SYN_SENT, ESTABLISHED, SAMPLED, sk=SK + 0x1000)]
    assert _connects(_flow_events(records)) == [(120, SAMPLED)]
