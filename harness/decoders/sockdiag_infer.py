"""What successive socket snapshots say about state transitions (no root needed; unit-tested).

A snapshot is {socket cookie: TCP state}. Between two snapshots a socket can:
  - appear: first seen, in some state (its earlier transitions happened unseen);
  - change state: one observed change "OLD->NEW" (the states in between, if any, unseen: a poll
    sees SYN_SENT then FIN_WAIT2 without the ESTABLISHED and FIN_WAIT1 between);
  - disappear: closed (to CLOSE, or to TIME_WAIT, which the poller does not list) from its last
    seen state.
A connection that opened and closed between two polls leaves no trace at all: those are counted
by comparing the sockets ever seen with the kernel's own open counters (ActiveOpens on the
client, PassiveOpens on the server: /proc/net/snmp, per namespace).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from ..tcp import LISTEN, STATE_NUMBERS, state_name, transition

TCP_LISTEN = STATE_NUMBERS[LISTEN]


class SnapshotDiff:
    """Feeds snapshots in order; keeps counts only (bounded by the distinct states, plus the
    cookies of sockets alive now and a count of those seen)."""

    def __init__(self) -> None:
        self.previous: dict[int, int] = {}
        self.transitions: Counter = Counter()  # "OLD->NEW" observed between two snapshots
        self.first_seen: Counter = Counter()  # state a socket was first seen in
        self.disappeared: Counter = Counter()  # last state seen before it vanished
        self.connections_seen = 0  # distinct non-listening sockets
        self.listeners_seen = 0
        self.snapshots = 0
        self.max_sockets = 0

    def feed(self, snapshot: dict[int, int]) -> None:
        previous = self.previous
        for cookie, state in snapshot.items():
            old = previous.get(cookie)
            if old is None:
                self.first_seen[state_name(state)] += 1
                if state == TCP_LISTEN:
                    self.listeners_seen += 1
                else:
                    self.connections_seen += 1
            elif old != state:
                self.transitions[transition(old, state)] += 1
        for cookie, state in previous.items():
            if cookie not in snapshot:
                self.disappeared[state_name(state)] += 1
        self.previous = snapshot
        self.snapshots += 1
        self.max_sockets = max(self.max_sockets, len(snapshot))

    def result(self) -> dict[str, Any]:
        return {
            "transitions": dict(self.transitions),
            "first_seen": dict(self.first_seen),
            "disappeared": dict(self.disappeared),
            "connections_seen": self.connections_seen,
            "listeners_seen": self.listeners_seen,
            "snapshots": self.snapshots,
            "max_sockets_per_snapshot": self.max_sockets,
        }


def parse_tcp_snmp(text: str) -> dict[str, int]:
    """The Tcp: lines of /proc/net/snmp (a header line of names, then a line of values)."""
    lines = [line.split() for line in text.splitlines() if line.startswith("Tcp:")]
    names, values = lines[0][1:], lines[1][1:]
    wanted = ("ActiveOpens", "PassiveOpens", "AttemptFails", "EstabResets")
    table = dict(zip(names, values))
    return {name: int(table[name]) for name in wanted}


def read_tcp_snmp() -> dict[str, int]:
    """This process's namespace's counters (/proc/net follows the reader's network namespace)."""
    return parse_tcp_snmp(Path("/proc/net/snmp").read_text())


def misses(opened: int, seen: int) -> dict[str, Any]:
    """Connections the kernel opened that no poll saw (each of them lived between two polls)."""
    missed = max(0, opened - seen)
    return {"opened": opened, "seen": seen, "missed": missed,
            "miss_rate": round(missed / opened, 4) if opened else None}
