"""The witness's Python half: what witness.bpf.h counted, as fidelity results.

Observers that read struct fields themselves (kprobe and fentry; the tracepoint backend's raw_tp
and tp_btf flavours) can attach the classic tracepoints for the same events as witnesses, which
compare every event field by field in the kernel. This module turns those counters into the
observation's details.fidelity: per kind matched, unpaired either way, fields differing, and the
fidelity errors they prove.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

from ..tcp import EVENT_KINDS

# witness.bpf.h's check slots per kind: matched, tracepoint unpaired, observer unpaired, then fields
FIELD_NAMES = ("oldstate", "newstate", "saddr", "daddr", "sport", "dport", "family", "snd_cwnd")
CHECK_SLOTS = 3 + len(FIELD_NAMES)
_READING = struct.Struct("<IIHHHBBI")  # struct reading: saddr daddr sport dport family old new extra
_PENDING_KEY = struct.Struct("<QII")


# Where the kernel cannot count skipped runs, this many unpaired events of a kind (at most, or this
# share of its matched ones) are taken as silent loss rather than a code path one side misses: a
# missed path shows on every socket that takes it (hundreds per trial), a skipped run on a handful.
SILENT_LOSS_MAX = 3
SILENT_LOSS_SHARE = 0.005


def summarize_check(counts: list[int], unclaimed: dict[str, int], attached_kinds: set[str],
                    conditional: dict[str, str], first_mismatch: dict[str, Any] | None,
                    observer_skips_counted: bool = True, witness_skips_counted: bool = True,
                    observer_counted_lost: dict[str, int] | None = None) -> dict[str, Any]:
    """The witness's counters -> per-kind results and the fidelity errors they prove.

    counts: kprobe.bpf.c's check_counts, NKINDS x CHECK_SLOTS. unclaimed: kprobe readings of this
    topology still waiting at detach (no tracepoint came for them), per kind. *_skips_counted: whether
    this kernel counts the runs it skips of the observer's and of the witnesses' programs
    (recursion_misses: 6.7+ for kprobe and classic tracepoint programs, the witnesses' type). Before
    that, on 6.1, such a side can skip a run nested with another BPF program without a trace, so a few
    events it missed of a kind the two sides otherwise agree on are reported as probable silent loss
    (a note, and `probable_silent_loss`), not as a code path it misses. observer_counted_lost: per
    kind, the events the observer counted lost (a kprobe's: its kprobes' nmissed, where the kprobe
    layer drops a re-entered kprobe before BPF runs, plus its programs' recursion_misses): that many
    events the tracepoint alone saw are a counted loss, a note; more are an error.
    """
    per_kind: dict[str, Any] = {}
    errors: list[str] = []
    notes: list[str] = []
    silent: dict[str, int] = {}

    def silent_loss(kind: str, side: str, n: int, matched: int, counted: bool) -> bool:
        if counted or not matched or n > max(SILENT_LOSS_MAX, SILENT_LOSS_SHARE * matched):
            return False
        silent[kind] = silent.get(kind, 0) + n
        notes.append(f"{kind}: {n} events the {side} missed of {matched + n}, probably lost silently (a run skipped "
                     "where neither the kernel's recursion_misses nor this backend counts it)")
        return True
    for index, kind in enumerate(EVENT_KINDS):
        if kind not in attached_kinds:
            continue
        row = counts[index * CHECK_SLOTS:(index + 1) * CHECK_SLOTS]
        fields = {name: n for name, n in zip(FIELD_NAMES, row[3:]) if n}
        entry = {"matched": row[0], "tracepoint_only": row[1], "kprobe_only": row[2] + unclaimed.get(kind, 0),
                 "fields_differing": fields}
        per_kind[kind] = entry
        compared = entry["matched"] + (max(fields.values()) if fields else 0)
        for name, n in fields.items():
            errors.append(f"{kind}: {name} read from the struct differs from the tracepoint's in {n} of "
                          f"{compared} events")
        lost = (observer_counted_lost or {}).get(kind, 0)
        if entry["tracepoint_only"] and entry["tracepoint_only"] <= lost:
            notes.append(f"{kind}: the tracepoint saw {entry['tracepoint_only']} events no probed function reported, "
                         f"within the {lost} the observer counted lost")
        elif entry["tracepoint_only"] and not silent_loss(kind, "probed functions", entry["tracepoint_only"],
                                                           entry["matched"], observer_skips_counted):
            errors.append(f"{kind}: the tracepoint saw {entry['tracepoint_only']} events no probed function "
                          "reported (a code path the functions miss)")
        if entry["kprobe_only"]:
            text = f"{kind}: {entry['kprobe_only']} events reported by a function with no tracepoint event"
            if kind in conditional:
                notes.append(f"{text} (expected: {conditional[kind]})")
            elif not silent_loss(kind, "witness tracepoint", entry["kprobe_only"], entry["matched"],
                                     witness_skips_counted):
                errors.append(text)
    result = {"checked": True, "per_kind": per_kind, "errors": errors, "notes": notes}
    if not (observer_skips_counted and witness_skips_counted):
        result["probable_silent_loss"] = silent
    if first_mismatch:
        result["first_mismatch"] = first_mismatch
    return result


def _unclaimed(bpf: Any, addresses: tuple[str, str]) -> dict[str, int]:
    """kprobe readings of this topology's sockets that no tracepoint claimed, per kind."""
    unclaimed: dict[str, int] = {}
    for key, value in bpf["pending"].items():
        _sk, kind, _cpu = _PENDING_KEY.unpack(bytes(key))
        reading = _reading(bytes(value))
        if reading["family"] == socket.AF_INET and {reading["saddr"], reading["daddr"]} & set(addresses):
            unclaimed[EVENT_KINDS[kind]] = unclaimed.get(EVENT_KINDS[kind], 0) + 1
    return unclaimed


def _reading(raw: bytes) -> dict[str, Any]:
    saddr, daddr, sport, dport, family, old, new, extra = _READING.unpack_from(raw)
    return {"saddr": socket.inet_ntoa(struct.pack("=I", saddr)), "daddr": socket.inet_ntoa(struct.pack("=I", daddr)),
            "sport": sport, "dport": dport, "family": family, "oldstate": old, "newstate": new, "extra": extra}


def witness_fidelity(session: Any, witness_stats: dict[str, Any], witnesses: list[str], attached_kinds: set[str],
                     checked_kinds: set[str], conditional: dict[str, str], reason: str,
                     observer_skips_counted: bool = True, witness_skips_counted: bool = True,
                     observer_counted_lost: dict[str, int] | None = None) -> dict[str, Any]:
    """details.fidelity of a session whose program was built with CHECK (or why it was not)."""
    if not witnesses:
        return {"checked": False, "reason": reason}
    bpf = session.bpf
    table = bpf["check_counts"]
    counts = [int(table.sum(table.Key(i)).value) for i in range(len(EVENT_KINDS) * CHECK_SLOTS)]
    unclaimed = _unclaimed(bpf, (session.topology.client.address, session.topology.server.address))
    raw = bytes(bpf["first_mismatch"][bpf["first_mismatch"].Key(0)])
    kind, fields = struct.unpack_from("<II", raw)
    first = None
    if fields:
        first = {"kind": EVENT_KINDS[kind],
                 "fields": [n for i, n in enumerate(FIELD_NAMES) if fields & (1 << i)],
                 "kprobe": _reading(raw[8:8 + _READING.size]),
                 "tracepoint": _reading(raw[8 + _READING.size:8 + 2 * _READING.size])}
    fidelity = summarize_check(counts, unclaimed, checked_kinds, conditional, first, observer_skips_counted,
                               witness_skips_counted, observer_counted_lost)
    fidelity["unchecked_kinds"] = sorted(attached_kinds - checked_kinds)
    runs = sum(p["run_cnt"] for p in witness_stats.values())
    ns = sum(p["run_time_ns"] for p in witness_stats.values())
    fidelity["witness_bpf_stats"] = {"programs": witness_stats, "run_cnt": runs, "run_time_ns": ns}
    return fidelity
