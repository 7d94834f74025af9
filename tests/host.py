"""What the test hosts do that no observer can help, measured, for the tests that count events.

BPF programs on the 6.18 Firecracker guests never run in the context of the sandbox agent's
threads (PID 1, named tokio-rt-worker), and no miss is counted. TCP work that a softirq does
while it interrupts one of them is therefore invisible to every BPF observer, ours and bcc's
and bpftrace's alike, while ftrace records it. Measured 2026-12-04:
- softirq_entry over 12 s: ftrace 13 in tokio-rt-worker, a bpftrace program 0 (other tasks equal);
- churn at 40,000 connections, 89 trials with the sock and tcp events in ftrace beside the
  tracepoint backend: ftrace counted every server FIN_WAIT1->FIN_WAIT2 (40,000) each time; 7
  trials missed one server close tail in BPF (FIN_WAIT1->FIN_WAIT2, FIN_WAIT2->CLOSE, destroy).
  The 4 missed tails identified by port were each the trial's only one processed in
  tokio-rt-worker's context; no other event was missed.
The kernel's counters still count those connections (TcpExtTW), so the harness reports such a
shortfall as uncounted loss. Tests that compare a BPF observer's counts with the declaration
allow this many connections' tails to be missing per trial, never more, and never extra events.
"""

from __future__ import annotations

BLIND_CONNECTIONS = 2  # per trial; a tail is at most 3 events (two transitions and a destroy)


def assert_short_at_most(seen: dict[str, int], expected: dict[str, int], connections: int = BLIND_CONNECTIONS,
                         what: str = "") -> None:
    """seen matches expected but for at most `connections` tails the host hid: nothing extra."""
    assert set(seen) <= set(expected), (what, sorted(set(seen) - set(expected)))
    short = {key: n - seen.get(key, 0) for key, n in expected.items() if seen.get(key, 0) != n}
    assert all(0 < gap <= connections for gap in short.values()), (what, short)


class HiddenTails:
    """Counts checked one by one against what was declared, each allowed short by what the kernel
    counted as skipped plus at most BLIND_CONNECTIONS connections the host hid; the hidden part
    summed over every count of one observation stays within what that many tails can hold."""

    def __init__(self, connections: int = BLIND_CONNECTIONS) -> None:
        self.connections, self.hidden = connections, 0

    def check(self, got: int, declared: int, counted: int = 0, what: object = "", per_tail: int = 1) -> None:
        """declared - counted - the host's hidden tails <= got <= declared; per_tail is how many
        of this count one hidden tail can hold (1 for a transition or a destroy, 2 for the state
        changes of one server tail)."""
        assert got <= declared, (what, got, declared)
        hidden = max(0, declared - counted - got)
        assert hidden <= self.connections * per_tail, (what, got, declared, counted)
        self.hidden += hidden
        assert self.hidden <= 3 * self.connections, (what, "hidden in all", self.hidden)
