"""Decoding ftrace's per-CPU ring buffer pages (trace_pipe_raw) into the common schema's counts.

No root needed here: the tracefs backend's reader (harness/agents/observers/tracefs_reader.py) feeds pages in,
and tests/unit/test_tracefs_unit.py feeds synthetic ones.

A read() of instances/<name>/per_cpu/cpuN/trace_pipe_raw returns one ring-buffer sub-buffer (a
"page", 4 KiB unless buffer_subbuf_size_kb says otherwise), exactly as the kernel keeps it
(kernel/trace/ring_buffer.c; the layout is published in events/header_page and events/header_event):

  page header   u64 timestamp (offset 0), local_t commit (offset 8), data (offset 16)
                commit's low bits are the data length; ring_buffer_read_page() adds
                RB_MISSED_EVENTS (1 << 31) when events were lost before this page, and
                RB_MISSED_STORED (1 << 30) when it also stored their number (an unsigned long)
                right after the data. `1 << 31` is an int, sign-extended into the 64-bit local_t,
                so only bits 0..29 are length.
  event header  u32: type_len (5 low bits), time_delta (27 bits), then
                type_len 1..28   data of type_len * 4 bytes follows
                type_len 0       u32 length (including itself) follows, then the data
                29 PADDING       time_delta 0: the rest of the page is empty; else u32 length
                                 follows (a discarded event)
                30 TIME_EXTEND, 31 TIME_STAMP: 8 bytes, no data
  data          a trace entry: u16 common_type (the event id, events/<cat>/<name>/id),
                u8 flags, u8 preempt_count, i32 common_pid, then the fields of the event's
                format file at their offsets.
"""

from __future__ import annotations

import socket
import struct
from collections import Counter
from typing import Any, Callable

RB_MISSED_EVENTS = 1 << 31
RB_MISSED_STORED = 1 << 30
COMMIT_LENGTH_MASK = (1 << 30) - 1
TYPE_PADDING, TYPE_TIME_EXTEND, TYPE_TIME_STAMP = 29, 30, 31
MAX_SMALL_TYPE_LEN = 28
AF_INET = 2
IPPROTO_TCP = 6

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_U64 = struct.Struct("<Q")


_NATIVE_U32 = struct.Struct("=I")


def native_u32(address: str) -> int:
    """An IPv4 address as its four network-order bytes read as a native u32: how a u8[4] field
    compares in an ftrace filter (filter_pred_32 on the raw bytes), how a BPF program loads it,
    and how the decoders here read it."""
    return _NATIVE_U32.unpack(socket.inet_aton(address))[0]


def page_header_layout(header_page: str) -> dict[str, int]:
    """events/header_page -> {"commit_offset", "commit_size", "data_offset"}."""
    fields: dict[str, tuple[int, int]] = {}
    for line in header_page.splitlines():
        line = line.strip()
        if not line.startswith("field:"):
            continue
        parts = dict(p.strip().split(":", 1) for p in line.rstrip(";").split(";") if ":" in p)
        name = parts["field"].split()[-1]
        fields.setdefault(name, (int(parts["offset"]), int(parts["size"])))
    return {"commit_offset": fields["commit"][0], "commit_size": fields["commit"][1],
            "data_offset": fields["data"][0]}


DEFAULT_LAYOUT = {"commit_offset": 8, "commit_size": 8, "data_offset": 16}


def entries(page: bytes, layout: dict[str, int] = DEFAULT_LAYOUT) -> tuple[list[tuple[int, int]], int, bool]:
    """(data entries as (start, end) offsets into page, missed-event count stored, missed flag)."""
    commit_offset, data_offset = layout["commit_offset"], layout["data_offset"]
    commit = (_U64 if layout["commit_size"] == 8 else _U32).unpack_from(page, commit_offset)[0]
    length = commit & COMMIT_LENGTH_MASK
    missed_flag = bool(commit & RB_MISSED_EVENTS)
    missed_stored = 0
    end = data_offset + length
    if commit & RB_MISSED_STORED and end + 8 <= len(page):
        missed_stored = _U64.unpack_from(page, end)[0]
    if end > len(page):
        raise ValueError(f"page header says {length} bytes of data, the page holds {len(page) - data_offset}")
    found = []
    p = data_offset
    while p + 4 <= end:
        header = _U32.unpack_from(page, p)[0]
        type_len = header & 0x1F
        if type_len == 0:
            size = _U32.unpack_from(page, p + 4)[0]  # includes its own 4 bytes
            found.append((p + 8, p + 4 + size))
            p += 4 + size
        elif type_len <= MAX_SMALL_TYPE_LEN:
            found.append((p + 4, p + 4 + type_len * 4))
            p += 4 + type_len * 4
        elif type_len == TYPE_PADDING:
            if header >> 5 == 0:
                break  # the rest of the page is unused
            p += 4 + _U32.unpack_from(page, p + 4)[0]
        else:  # TIME_EXTEND, TIME_STAMP
            p += 8
    return found, missed_stored, missed_flag


def _field(fields: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    return next((f for f in fields if f["name"] == name), None)


def make_decoder(tracepoint: str, fields: list[dict[str, Any]]) -> Callable[[bytes, int], tuple]:
    """A function (page, entry start) -> (family, protocol, saddr, daddr, old, new), with saddr and
    daddr as native u32s, for one event's format on the running kernel.

    Address fields are u8[4] (family, sport, dport beside them) on most events, and 28-byte
    sockaddr_in/in6 buffers on tcp_send_reset (6.10+) and tcp_probe: family at 0, address at 4.
    """
    saddr, daddr = _field(fields, "saddr"), _field(fields, "daddr")
    family = _field(fields, "family")
    protocol = _field(fields, "protocol")
    old = _field(fields, "oldstate") or _field(fields, "state")
    new = _field(fields, "newstate") or old
    if saddr is None or daddr is None:
        raise ValueError(f"{tracepoint}: no saddr/daddr in its format")
    s_off = saddr["offset"] + (4 if saddr["size"] == 28 else 0)
    d_off = daddr["offset"] + (4 if daddr["size"] == 28 else 0)
    f_off = family["offset"] if family is not None else saddr["offset"]  # sockaddr's sa_family
    p_off = protocol["offset"] if protocol is not None else None
    o_off = old["offset"] if old is not None else None
    n_off = new["offset"] if new is not None else None
    u16, u32, i32 = _U16.unpack_from, _U32.unpack_from, _I32.unpack_from

    def decode(page: bytes, e: int) -> tuple:
        return (
            u16(page, e + f_off)[0],
            u16(page, e + p_off)[0] if p_off is not None else IPPROTO_TCP,
            u32(page, e + s_off)[0],
            u32(page, e + d_off)[0],
            i32(page, e + o_off)[0] if o_off is not None else 0,
            i32(page, e + n_off)[0] if n_off is not None else 0,
        )

    return decode


def _side(saddr: int, daddr: int, client: int, server: int) -> str:
    """Whose event: its local address, or, when tcp_disconnect() has cleared that (a destroy after
    a SO_LINGER {1,0} close or a failed connect shows saddr 0.0.0.0), the opposite of its peer:
    a topology has two hosts, so a socket whose peer is the server is the client's."""
    if saddr == client or (saddr == 0 and daddr == server):
        return "client"
    if saddr == server or (saddr == 0 and daddr == client):
        return "server"
    return "other"


class PageCounter:
    """Counts a trace_pipe_raw stream per (side, kind, old, new) and per (side, kind, pid), applying
    in user space the same predicate as the BPF backends' handle(): IPv4 to or from one of the
    topology's two addresses; events the kernel filter could not exclude are counted as filtered."""

    def __init__(self, decoders: dict[int, tuple[str, Callable[[bytes, int], tuple]]], client: int, server: int,
                 layout: dict[str, int] = DEFAULT_LAYOUT):
        self.decoders = decoders  # event id -> (kind, decoder)
        self.client, self.server = client, server
        self.layout = layout
        self.counts: Counter = Counter()  # (side, kind, old, new)
        self.attribution: Counter = Counter()  # (side, kind, pid)
        self.filtered: Counter = Counter()  # kind -> events dropped here
        self.not_tcp = 0  # inet_sock_set_state of other protocols (the BPF program ignores them too)
        self.unknown_types: Counter = Counter()
        self.pages = 0
        self.missed_pages = 0
        self.missed_stored = 0
        self.bytes = 0

    def feed(self, page: bytes) -> int:
        """One page; returns the number of events in it."""
        found, missed_stored, missed_flag = entries(page, self.layout)
        self.pages += 1
        self.bytes += len(page)
        self.missed_pages += missed_flag
        self.missed_stored += missed_stored
        decoders, client, server = self.decoders, self.client, self.server
        counts, attribution = self.counts, self.attribution
        for start, _ in found:
            event_type = _U16.unpack_from(page, start)[0]
            entry = decoders.get(event_type)
            if entry is None:
                self.unknown_types[event_type] += 1
                continue
            kind, decode = entry
            family, protocol, saddr, daddr, old, new = decode(page, start)
            if protocol != IPPROTO_TCP:
                self.not_tcp += 1
                continue
            if family != AF_INET or (saddr != client and saddr != server and daddr != client and daddr != server):
                self.filtered[kind] += 1
                continue
            side = _side(saddr, daddr, client, server)
            counts[(side, kind, old, new)] += 1
            attribution[(side, kind, _I32.unpack_from(page, start + 4)[0])] += 1
        return len(found)
