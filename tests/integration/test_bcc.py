"""bcc compiles and attaches with the headers the harness chose (a fallback on kernels without
their own), and an independent in-kernel counter confirms churn's declared transitions."""

import ctypes
import os

import pytest

from harness.headers import find_headers
from harness.params import resolve
from harness.system import tracefs_mounted
from harness.workloads import get_workload
from netns import Topology

pytestmark = pytest.mark.root

# Counts sock:inet_sock_set_state per (side, old, new) for TCP sockets bound to 198.18.0.0/15.
# Its arguments come from tracefs, so it is correct with fallback headers.
PROGRAM = rb"""
#include <uapi/linux/in.h>
#include <linux/socket.h>
BPF_HASH(counts, u32, u64, 256);
TRACEPOINT_PROBE(sock, inet_sock_set_state) {
    if (args->protocol != IPPROTO_TCP || args->family != AF_INET)
        return 0;
    if (args->saddr[0] != 198 || (args->saddr[1] & 0xfe) != 18)
        return 0;
    u32 key = ((u32)args->saddr[3] << 16) | ((u32)args->oldstate << 8) | args->newstate;
    counts.increment(key);
    return 0;
}
"""
STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
          6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING",
          12: "NEW_SYN_RECV"}


def test_churn_transitions_match_the_declaration_under_an_independent_tracer():
    from bcc import BPF

    headers = find_headers()
    assert headers.kind in ("exact", "fallback"), headers.detail
    os.environ.update(headers.environment())
    churn = get_workload("churn")
    with tracefs_mounted():
        bpf = BPF(text=PROGRAM)
        try:
            with Topology("test") as topo:
                truth = churn.run(topo, resolve("churn", churn.params, {"connections": "300"}))
            seen = {}
            for key, value in bpf["counts"].items():
                side = "client" if (key.value >> 16) == 1 else "server"
                transition = f"{STATES[(key.value >> 8) & 0xff]}->{STATES[key.value & 0xff]}"
                seen.setdefault(side, {})[transition] = value.value
        finally:
            bpf.cleanup()
    assert truth.generator["connections"] == 300
    for side in ("client", "server"):
        assert seen[side] == truth.expected[side]["transitions"], side
    assert sum(truth.expected["client"]["transitions"].values()) == 5 * 300
