"""TCP socket events inferred from packet headers: what packet capture can know about sockets.

Pure (no I/O): the pcap backend's two consumers feed it the same decoded segments, the Python
capture agent as packets arrive and the tcpdump consumer from its file afterwards, so the two
differ only in how packets reach them. It lives beside the agents because agents import nothing
heavy from the harness (start-up is not what they measure).

The model, per flow (one connection: a 4-tuple from one SYN to the next):
  - The endpoint sending the first SYN is the active opener; the other is passive. Endpoints are
    named by side through their address (the topology's .1 is the client, .2 the server), like the kernel's
    events are named by their socket's local address.
  - Transitions use the names sock:inet_sock_set_state reports, so they compare 1:1 with the
    tracepoint backend: a passive child is cloned from the listener when the handshake's ACK
    arrives (LISTEN->SYN_RECV->ESTABLISHED then; a request sock before it has no transition), and
    a socket entering TIME_WAIT reports <state>->CLOSE (Linux hands TIME_WAIT to a timewait sock,
    which takes no tcp_set_state).
  - A segment the capture saw is taken as delivered: the capture runs on the server's veth, so
    what the client sent has reached the server's interface, and what the server sent leaves on a
    veth that drops nothing. Drops behind the capture point (netfilter, a full accept queue) are
    invisible to packet capture and would show as retransmissions.
  - A segment also proves its sender's state: any non-SYN, non-RST segment means the sender's
    handshake completed (a request sock sends only SYN-ACKs), so a filter that passes only
    SYN/FIN/RST still yields every open transition, implied by the FINs that follow.
  - Each transition happens at most once per flow; anything that does not fit (a segment of an
    unknown flow, a SYN-ACK with a second ISN) is counted as unmatched, never forced into a state.

Never inferred (no packet carries them): pid, comm, socket identity, the listener's own
CLOSE->LISTEN and LISTEN->CLOSE, TIME_WAIT expiry, socket destruction, tcp_probe's sender-side
variables (cwnd, ssthresh, srtt). See INVISIBLE.
"""

from __future__ import annotations

import socket
import struct
from collections import Counter, OrderedDict
from typing import Any, Callable, Mapping, NamedTuple

from harness.tcp import (CLOSE, CLOSE_WAIT, CLOSING, ESTABLISHED, FIN_WAIT1, FIN_WAIT2, LAST_ACK, LISTEN, NEW_SYN_RECV,
                         SIDES, STATE_NUMBERS, SYN_RECV, SYN_SENT, TIME_WAIT, arrow, ends as transition_ends)

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
ETHERTYPE_IPV4, ETHERTYPE_VLAN = 0x0800, 0x8100
ETHERNET_HEADER_BYTES = 14
# Ethernet 14 + IPv4 20 + TCP 20: every field the inference reads (ports, seq, ack, flags, data
# offset; the payload length comes from the IP total length, which truncation never hides).
MIN_SNAPLEN = ETHERNET_HEADER_BYTES + 20 + 20
_ETHERTYPE = struct.Struct("!H")
_IPV4 = struct.Struct("!BxHHHBBH4s4s")  # ver/ihl, total length, id, frag, ttl, proto, csum, src, dst
_TCP = struct.Struct("!HHIIH")  # sport, dport, seq, ack, data offset/flags
_MOD = 1 << 32

# Full sockets (a tcp_sock, which tcp_reset can close): not a request sock, not a timewait sock.
FULL_SOCKET = frozenset(
    {SYN_SENT, SYN_RECV, ESTABLISHED, FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, CLOSING, LAST_ACK}
)
SYNCHRONIZED = FULL_SOCKET - {SYN_SENT, SYN_RECV}
# States whose socket sends an RST only by aborting: the application's abortive close, or an
# orphan receiving data after close().
ABORTABLE = frozenset({ESTABLISHED, CLOSE_WAIT, FIN_WAIT1, FIN_WAIT2})
MAX_HOLES = 64  # unseen sequence ranges remembered per sender (reordering, filtered segments)
# An endpoint done as far as packets can tell (NONE: no socket was ever seen on it).
TERMINAL = frozenset({CLOSE, TIME_WAIT, "NONE"})

INVISIBLE = {
    "pid, comm": "packets carry no process; the tracepoint reports the interrupted task in softirq anyway",
    "socket identity": "no sk pointer, inode or cookie on the wire; flows are keyed by 4-tuple and SYN",
    f"{arrow(CLOSE, LISTEN)}, {arrow(LISTEN, CLOSE)}": "a listener's life sends no packet",
    arrow(TIME_WAIT, CLOSE): "timewait expiry sends no packet (nor is it a tcp_set_state)",
    "sock_destroy": "freeing a socket sends no packet; when a closed socket is freed is not on the wire",
    "probe": "tcp_probe's cwnd, ssthresh, srtt, snd_una are sender-internal",
    "request socks": "a SYN-ACK shows a request sock (NEW_SYN_RECV), which has no state transition",
}
# What a filter passing only SYN/FIN/RST hides on top of that.
INVISIBLE_STATE_FILTER = {
    "retransmit (data)": "the filter drops segments without SYN/FIN/RST, so data retransmissions are unseen "
    "(SYN, SYN-ACK and FIN repeats are seen)",
    f"{arrow(LAST_ACK, CLOSE)}, {arrow(CLOSING, CLOSE)}": "caused by the peer's pure ACK of the last FIN, which the filter drops",
}
ASSUMPTIONS = (
    "a captured segment is taken as delivered: drops behind the capture point (netfilter in a namespace, "
    "a full accept queue) are invisible to packet capture",
    "a non-SYN, non-RST segment proves its sender completed the handshake (a request sock sends only "
    "SYN-ACKs), so open transitions may be implied by later segments",
    "a retransmission is a SYN, SYN-ACK or FIN repeat, or a data segment repeating sequence space its sender "
    "was already seen sending (a reordered segment filling a gap is not one); counted per skb as captured: "
    "GSO packets are not split",
)


# Per-flow sampling (harness/flows.py, matched in harness/analysis/flowmatch.py): sides and states as the
# BPF record numbers them.
SAMPLED_SIDES = {side: number for number, side in enumerate(SIDES)}
MAX_FLOW_EVENTS = 65536


class Segment(NamedTuple):
    src: str
    sport: int
    dst: str
    dport: int
    seq: int
    ack: int
    flags: int
    payload_bytes: int


def realtime_to_monotonic() -> Callable[[int, int, int], int]:
    """Packet times are CLOCK_REALTIME (seconds and a fraction); BPF and the workloads time with
    CLOCK_MONOTONIC. The offset is read once, as the pair of clocks nearest in time of three reads.
    -> convert(seconds, fraction, ns_per_fraction_unit): CLOCK_MONOTONIC ns."""
    import time

    best = None
    for _ in range(3):
        before = time.monotonic_ns()
        real = time.clock_gettime_ns(time.CLOCK_REALTIME)
        after = time.monotonic_ns()
        if best is None or after - before < best[0]:
            best = (after - before, real - (before + after) // 2)
    offset = best[1]
    return lambda seconds, fraction, unit: seconds * 1_000_000_000 + fraction * unit - offset


def decode_ethernet(frame: bytes, wire_length: int) -> Segment | str:
    """A captured Ethernet frame's TCP/IPv4 headers, or why not: "not_tcp" or "truncated"."""
    if len(frame) < ETHERNET_HEADER_BYTES:
        return "truncated"
    (ethertype,) = _ETHERTYPE.unpack_from(frame, 12)
    offset = ETHERNET_HEADER_BYTES
    if ethertype == ETHERTYPE_VLAN:
        if len(frame) < offset + 4:
            return "truncated"
        (ethertype,) = _ETHERTYPE.unpack_from(frame, offset + 2)
        offset += 4
    if ethertype != ETHERTYPE_IPV4:
        return "not_tcp"
    if len(frame) < offset + 20:
        return "truncated"
    version_ihl, total_length, _, fragment, _, protocol, _, src, dst = _IPV4.unpack_from(frame, offset)
    if version_ihl >> 4 != 4 or protocol != 6 or fragment & 0x1FFF:
        return "not_tcp"  # a non-first fragment has no TCP header
    ip_header = (version_ihl & 0x0F) * 4
    tcp_offset = offset + ip_header
    if len(frame) < tcp_offset + 20:
        return "truncated"
    sport, dport, seq, ack, offset_flags = _TCP.unpack_from(frame, tcp_offset)
    tcp_header = (offset_flags >> 12) * 4
    if not total_length:  # BIG TCP / some GSO packets carry 0: the wire length is the truth then
        total_length = wire_length - offset
    payload = max(0, total_length - ip_header - tcp_header)
    return Segment(socket.inet_ntoa(src), sport, socket.inet_ntoa(dst), dport, seq, ack,
                   offset_flags & 0x3F, payload)


def _before(a: int, b: int) -> bool:
    """Sequence number a is before b (RFC 1982 serial arithmetic, as the kernel's before())."""
    return (a - b) % _MOD >= 1 << 31


class _Endpoint:
    __slots__ = ("side", "state", "isn", "next_seq", "next_abs", "holes", "fin_seq", "fin_acked", "got_fin",
                 "active")

    def __init__(self, side: str, state: str, active: bool):
        self.side = side
        self.state = state
        self.active = active
        self.isn: int | None = None
        self.next_seq: int | None = None  # one past the highest sequence number it has sent
        self.next_abs = 0  # the same, unwrapped (relative to the first one seen): no 4 GiB wrap
        self.holes: list[list[int]] = []  # unwrapped [start, end) below next_abs never seen
        self.fin_seq: int | None = None
        self.fin_acked = False
        self.got_fin = False


class _Flow:
    __slots__ = ("active", "passive", "active_addr")

    def __init__(self, active: _Endpoint, passive: _Endpoint, active_addr: tuple[str, int]):
        self.active, self.passive, self.active_addr = active, passive, active_addr

    def ends(self, src: str, sport: int) -> tuple[_Endpoint, _Endpoint]:
        if (src, sport) == self.active_addr:
            return self.active, self.passive
        return self.passive, self.active

    def finished(self) -> bool:
        """Nothing more to learn but stragglers (the last ACK, a repeated FIN): each end is
        terminal or has sent its FIN."""
        return all(e.state in TERMINAL or e.fin_seq is not None for e in (self.active, self.passive))


class FlowTracker:
    """Feed segments in capture order; `result()` gives counts per side in the common schema.

    Memory is bounded: live flows are kept until they finish, finished flows (which may still see
    a retransmitted FIN or the last ACK) in an LRU of `max_finished_flows`, and live flows beyond
    `max_live_flows` are evicted oldest first (counted, never silently).
    """

    def __init__(self, sides: Mapping[str, str], max_finished_flows: int = 65536,
                 max_live_flows: int = 1 << 20, flow_sample: int = 0,
                 timestamp: Callable[[Any], int] | None = None):
        """flow_sample/timestamp: keep every transition of the flows whose client port is a multiple
        of flow_sample, timed by timestamp(when) (CLOCK_MONOTONIC ns) from feed()'s `when`, for
        harness/analysis/flowmatch.py; the clock is read only for those flows."""
        self.sides = dict(sides)
        self.flow_sample = flow_sample if timestamp is not None else 0
        self.timestamp = timestamp
        self.flow_events: list[list[int]] = []
        self.flow_events_overflow = 0
        self._sampled: tuple[int, int] | None = None  # (time, client port) of the segment being fed
        self.max_finished_flows = max_finished_flows
        self.max_live_flows = max_live_flows
        self.live: OrderedDict[tuple, _Flow] = OrderedDict()
        self.finished: OrderedDict[tuple, _Flow] = OrderedDict()
        self.events: dict[str, Counter] = {}
        self.transitions: dict[str, Counter] = {}
        self.opens: dict[str, Counter] = {}
        self.packets: Counter = Counter()
        self.flows: Counter = Counter()

    # --- bookkeeping ------------------------------------------------------------------------
    def side(self, address: str) -> str:
        return self.sides.get(address, "other")

    def _event(self, side: str, kind: str) -> None:
        self.events.setdefault(side, Counter())[kind] += 1

    def _move(self, end: _Endpoint, new: str, reported: str | None = None) -> None:
        """end goes to `new`; the transition is reported as OLD->`reported or new`."""
        name = arrow(end.state, reported or new)
        self.transitions.setdefault(end.side, Counter())[name] += 1
        self._event(end.side, "state_change")
        if self._sampled is not None and end.side in SAMPLED_SIDES:
            if len(self.flow_events) < MAX_FLOW_EVENTS:
                self.flow_events.append([self._sampled[0], SAMPLED_SIDES[end.side], 0,
                                         STATE_NUMBERS.get(end.state, 0), STATE_NUMBERS.get(reported or new, 0),
                                         self._sampled[1]])
            else:
                self.flow_events_overflow += 1
        end.state = new

    def _retract(self, end: _Endpoint, name: str, back_to: str) -> None:
        """Withdraw a transition that a later segment proved wrong (counted in packets)."""
        self.transitions[end.side][name] -= 1
        if not self.transitions[end.side][name]:
            del self.transitions[end.side][name]
        self.events[end.side]["state_change"] -= 1
        self.packets["retracted_transitions"] += 1
        if self._sampled is not None and end.side in SAMPLED_SIDES:
            old, new = (STATE_NUMBERS.get(state, 0) for state in transition_ends(name))
            for index in range(len(self.flow_events) - 1, -1, -1):
                event = self.flow_events[index]
                if (event[1], event[3], event[4], event[5]) == (SAMPLED_SIDES[end.side], old, new, self._sampled[1]):
                    del self.flow_events[index]
                    break
        end.state = back_to

    def _establish(self, end: _Endpoint) -> None:
        if end.state == SYN_SENT:
            self._move(end, ESTABLISHED)
        elif end.state == NEW_SYN_RECV:  # the child is cloned from the listener at the ACK
            end.state = LISTEN
            self._move(end, SYN_RECV)
            self._move(end, ESTABLISHED)
            self.opens.setdefault(end.side, Counter())["passive"] += 1

    def _to_time_wait(self, end: _Endpoint) -> None:
        self._move(end, TIME_WAIT, reported=CLOSE)

    # --- the state machine ------------------------------------------------------------------
    @staticmethod
    def _key(seg: Segment) -> tuple:
        a, b = (seg.src, seg.sport), (seg.dst, seg.dport)
        return a + b if a <= b else b + a

    def feed(self, seg: Segment, when: Any = None) -> None:
        self.packets["tcp"] += 1
        if self.flow_sample:
            side = self.sides.get(seg.src)
            port = seg.sport if side == "client" else seg.dport if side == "server" else 0
            self._sampled = (self.timestamp(when), port) if port and not port % self.flow_sample else None
        flags = seg.flags
        if flags & SYN:
            self.packets["synack" if flags & ACK else "syn"] += 1
        if flags & FIN:
            self.packets["fin"] += 1
        key = self._key(seg)
        flow = self.live.get(key) or self.finished.get(key)
        if flags & RST:
            self.packets["rst"] += 1
            self._reset(flow, seg)
        elif flags & SYN and not flags & ACK:
            self._syn(key, flow, seg)
        elif flow is None:
            self.packets["unmatched"] += 1
        elif flags & SYN:
            self._synack(flow, seg)
        else:
            self._segment(flow, seg)
        flow = self.live.get(key)  # (a SYN may have replaced the flow)
        if flow is not None and flow.finished():
            del self.live[key]
            self.finished[key] = flow
            if len(self.finished) > self.max_finished_flows:
                self.finished.popitem(last=False)

    def _syn(self, key: tuple, flow: _Flow | None, seg: Segment) -> None:
        if flow is not None:
            sender, _ = flow.ends(seg.src, seg.sport)
            if sender is flow.active and sender.state == SYN_SENT and seg.seq == sender.isn:
                self._event(sender.side, "retransmit")  # tcp_retransmit_skb fires for SYNs too
                return
        # A new connection on this 4-tuple (a first SYN, or reuse after TIME_WAIT).
        active = _Endpoint(self.side(seg.src), CLOSE, active=True)
        passive = _Endpoint(self.side(seg.dst), "NONE", active=False)
        active.isn, active.next_seq = seg.seq, (seg.seq + 1) % _MOD
        self._move(active, SYN_SENT)
        self.opens.setdefault(active.side, Counter())["active"] += 1
        self.finished.pop(key, None)
        self.live[key] = _Flow(active, passive, (seg.src, seg.sport))
        self.live.move_to_end(key)
        self.flows["opened"] += 1
        if len(self.live) > self.max_live_flows:
            self.live.popitem(last=False)
            self.flows["evicted_live"] += 1

    def _synack(self, flow: _Flow, seg: Segment) -> None:
        sender, _ = flow.ends(seg.src, seg.sport)
        if sender is not flow.passive:  # simultaneous open: not modelled
            self.packets["unmatched"] += 1
        elif seg.ack != (flow.active.isn + 1) % _MOD:
            # It answers a SYN this capture did not see (a newer connection on the 4-tuple): forget
            # the flow, so that connection's segments are counted unmatched, not pinned on this one.
            self.live.pop(self._key(seg), None)
            self.finished.pop(self._key(seg), None)
            self.packets["unmatched"] += 1
        elif sender.isn is None:
            sender.isn, sender.next_seq = seg.seq, (seg.seq + 1) % _MOD
            if sender.state == "NONE":
                sender.state = NEW_SYN_RECV  # a request sock: no transition of its own
        elif seg.seq == sender.isn:
            # tcp_rtx_synack: on its timer, or in answer to a repeated SYN (both are synack retransmits)
            self._event(sender.side, "synack_retransmit")
        else:
            self.packets["unmatched"] += 1

    def _segment(self, flow: _Flow, seg: Segment) -> None:
        sender, receiver = flow.ends(seg.src, seg.sport)
        flags = seg.flags
        if not flags & ACK or flags & FIN and sender.fin_seq is not None and \
                (seg.seq + seg.payload_bytes) % _MOD != sender.fin_seq:
            # no ACK after a handshake, or a second FIN elsewhere in sequence space: not this
            # connection (its SYN was not seen: dropped by the ring, or before the capture)
            self.packets["unmatched"] += 1
            return
        # The sender is past its handshake; a passive sender proves the active end's ACK arrived.
        if sender.state in (SYN_SENT, NEW_SYN_RECV):
            self._establish(sender)
            if sender is flow.passive:
                self._establish(flow.active)
        if receiver.state in (SYN_SENT, NEW_SYN_RECV):
            if receiver is flow.passive:
                if receiver.isn is not None and not _before(seg.ack, (receiver.isn + 1) % _MOD):
                    self._establish(receiver)  # the handshake's ACK (or anything after it) arrived
            else:
                self._establish(receiver)  # the passive sender established: the active end was
        # The receiver's FIN is acknowledged.
        # (A FIN is its sender's last sequence number: only ack == FIN + 1 acknowledges it, which
        # keeps a straggler of another connection on the same 4-tuple from closing this one.)
        if receiver.fin_seq is not None and not receiver.fin_acked and seg.ack == (receiver.fin_seq + 1) % _MOD:
            receiver.fin_acked = True
            if receiver.state == FIN_WAIT1:
                self._move(receiver, FIN_WAIT2)
            elif receiver.state == CLOSING:
                self._to_time_wait(receiver)
            elif receiver.state == LAST_ACK:
                self._move(receiver, CLOSE)
        # What the segment carries: data and/or a FIN.
        length = seg.payload_bytes + (1 if flags & FIN else 0)
        if length:
            if sender.next_seq is None:
                sender.next_seq = (seg.seq + length) % _MOD
            elif self._repeats(sender, seg.seq, length):
                self._event(sender.side, "retransmit")
        if flags & FIN and sender.fin_seq is None:
            sender.fin_seq = (seg.seq + seg.payload_bytes) % _MOD
            if sender.state == CLOSE_WAIT and receiver.fin_seq is not None and \
                    _before(seg.ack, (receiver.fin_seq + 1) % _MOD):
                # Simultaneous close: this FIN left before the peer's FIN (taken as delivered when
                # seen) arrived, so the sender was never in CLOSE_WAIT. Undo, then replay in order.
                self._retract(sender, arrow(ESTABLISHED, CLOSE_WAIT), back_to=ESTABLISHED)
                self._move(sender, FIN_WAIT1)
                self._move(sender, CLOSING)
            if sender.state == ESTABLISHED:
                self._move(sender, FIN_WAIT1)
            elif sender.state == CLOSE_WAIT:
                self._move(sender, LAST_ACK)
        if flags & FIN and not receiver.got_fin:
            receiver.got_fin = True
            if receiver.state == ESTABLISHED:
                self._move(receiver, CLOSE_WAIT)
            elif receiver.state == FIN_WAIT1:
                self._move(receiver, CLOSING)  # simultaneous close: its own FIN is not acked yet
            elif receiver.state == FIN_WAIT2:
                self._to_time_wait(receiver)

    def _repeats(self, sender: _Endpoint, seq: int, length: int) -> bool:
        """Whether [seq, seq+length) repeats sequence space this sender was seen sending.

        Space skipped over (a gap before a segment further on) is kept as a hole: segments reordered
        on the way to the capture (two CPUs feed a veth's backlog) fill it and are no retransmission;
        only a range already seen is. At most MAX_HOLES per sender, the oldest forgotten first.
        """
        delta = (seq - sender.next_seq + (1 << 31)) % _MOD - (1 << 31)  # signed distance to next_seq
        start = sender.next_abs + delta
        end = start + length
        repeated = False
        if start < sender.next_abs:
            unseen = 0
            kept = []
            for hole in sender.holes:  # fill the holes this segment covers
                low, high = max(hole[0], start), min(hole[1], end)
                if low < high:
                    unseen += high - low
                    if hole[0] < low:
                        kept.append([hole[0], low])
                    if high < hole[1]:
                        kept.append([high, hole[1]])
                else:
                    kept.append(hole)
            sender.holes = kept
            repeated = unseen < min(end, sender.next_abs) - start
        elif start > sender.next_abs:
            sender.holes.append([sender.next_abs, start])
            if len(sender.holes) > MAX_HOLES:
                sender.holes.pop(0)
        if end > sender.next_abs:
            sender.next_abs = end
            sender.next_seq = (seq + length) % _MOD
        return repeated

    def _reset(self, flow: _Flow | None, seg: Segment) -> None:
        # tcp_send_reset fires for every RST a host sends, with a socket or without (closed port)
        self._event(self.side(seg.src), "reset_sent")
        if flow is None:
            self.packets["unmatched_rst"] += 1
            return
        sender, receiver = flow.ends(seg.src, seg.sport)
        if receiver.state in FULL_SOCKET:
            # In SYN_SENT only an RST acknowledging the SYN is accepted (RFC 793, tcp_rcv_synsent_state_process)
            acceptable = receiver.state != SYN_SENT or (
                seg.flags & ACK and receiver.isn is not None and seg.ack == (receiver.isn + 1) % _MOD
            )
            if acceptable:
                self._event(receiver.side, "reset_received")
                self._move(receiver, CLOSE)
        if sender.state in ABORTABLE:
            self._move(sender, CLOSE)  # an abort (SO_LINGER {1,0}, unread data at close ...)
        # An RST from SYN_SENT (answering a stray ACK), a request sock or a timewait sock closes
        # nothing. Nor does one "from" LAST_ACK or CLOSING: the peer's FIN is in, so no data can
        # provoke an abort there; the socket is gone (its last ACK unseen, as under the state
        # filter) and the stack answers for no socket.

    # --- results ----------------------------------------------------------------------------
    def result(self) -> dict[str, Any]:
        sides = sorted(set(self.events) | set(self.transitions) | set(self.opens))
        return {
            "sides": {
                side: {
                    "events": dict(sorted(self.events.get(side, {}).items())),
                    "transitions": dict(sorted(self.transitions.get(side, {}).items())),
                    "opens": dict(sorted(self.opens.get(side, {}).items())),
                }
                for side in sides
            },
            "packets": dict(sorted(self.packets.items())),
            "flows": {**dict(self.flows), "live_at_end": len(self.live), "finished_kept": len(self.finished)},
            **({"flow_events": {"events": self.flow_events, "overflow": self.flow_events_overflow}}
               if self.flow_sample else {}),
        }
