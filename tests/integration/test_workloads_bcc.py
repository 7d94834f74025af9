"""An independent in-kernel counter (bcc, on the stable tracepoints) checks what the workloads
declare: transitions and exact event counts per side, lower bounds, and the events that must equal
a kernel counter. Only sockets on 198.18.0.0/15 are counted, so other traffic on the machine is not."""

import os
import re
import subprocess

import pytest

from harness import counters
from harness.headers import find_headers
from harness.system import tracefs_mounted
from harness.workloads import get_workload
from netns import Topology
from tests.host import BLIND_CONNECTIONS, HiddenTails

pytestmark = pytest.mark.root

# side: 0 client (198.18.0.1), 1 server (198.18.0.2), by the socket's local address; an event whose
# local address is unset (a socket whose connect failed) is given the side of its remote address.
# Other developers run the same workloads on the same addresses at the same time, in their own
# namespaces: an event counts only if its socket (or, for an RST sent with no socket, the device
# its SYN came in on) belongs to one of this test's namespaces, read through offsets taken from the
# running kernel's BTF (the fallback headers' struct layouts are 6.1's, not this kernel's).
PROGRAM = rb"""
#include <uapi/linux/in.h>
#include <linux/socket.h>
enum sk_rst_reason { SK_RST_REASON_NOT_SPECIFIED = 0 };  /* 6.18's type, unknown to 6.1 headers */
/* Per-CPU array slots, no hash: a hash's first insert races between CPUs and loses counts. */
BPF_PERCPU_ARRAY(counts, u64, 4096);
BPF_HASH(namespaces, u32, u8, 8);  /* netns inode numbers of this test's topology */

static __always_inline int in_our_netns_of(const void *net) {
    u32 inum = 0;
    if (!net) return 0;
    bpf_probe_read_kernel(&inum, sizeof inum, (const char *)net + NET_NS_INUM);
    return namespaces.lookup(&inum) != NULL;
}
static __always_inline int our_sock(const void *sk) {
    const void *net = NULL;
    if (!sk) return 0;
    bpf_probe_read_kernel(&net, sizeof net, (const char *)sk + SOCK_NET);
    return in_our_netns_of(net);
}
static __always_inline int our_skb(const void *skb) {
    const void *dev = NULL, *net = NULL;
    if (!skb) return 0;
    bpf_probe_read_kernel(&dev, sizeof dev, (const char *)skb + SKB_DEV);
    if (!dev) return 0;
    bpf_probe_read_kernel(&net, sizeof net, (const char *)dev + DEV_NET);
    return in_our_netns_of(net);
}

static __always_inline int ours(const u8 *a) { return a[0] == 198 && (a[1] & 0xfe) == 18; }
static __always_inline int side_of(const u8 *local, const u8 *remote) {
    if (ours(local)) return local[3] == 1 ? 0 : 1;
    if (ours(remote)) return remote[3] == 1 ? 1 : 0;
    return -1;
}
static __always_inline void count(int side, u32 kind, u32 detail) {
    if (side < 0) return;
    u32 index = ((u32)side << 11) | (kind << 8) | (detail & 0xff);
    u64 *slot = counts.lookup(&index);
    if (slot) __sync_fetch_and_add(slot, 1);  /* a softirq may interrupt us on this CPU */
}
TRACEPOINT_PROBE(sock, inet_sock_set_state) {
    if (args->protocol != IPPROTO_TCP || args->family != AF_INET || !our_sock(args->skaddr)) return 0;
    count(side_of(args->saddr, args->daddr), 1, ((u32)args->oldstate << 4) | args->newstate);
    return 0;
}
TRACEPOINT_PROBE(tcp, tcp_send_reset) {
    /* saddr/daddr are sockaddr_in here: family (2 bytes), port (2), address (4) */
    u8 local[28], remote[28];
    __builtin_memcpy(local, args->saddr, 28);
    __builtin_memcpy(remote, args->daddr, 28);
    if (local[0] != AF_INET) return 0;
    if (args->skaddr ? !our_sock(args->skaddr) : !our_skb(args->skbaddr)) return 0;
    count(side_of(local + 4, remote + 4), 2, 0);
    return 0;
}
TRACEPOINT_PROBE(tcp, tcp_receive_reset) {
    if (args->family != AF_INET || !our_sock(args->skaddr)) return 0;
    count(side_of(args->saddr, args->daddr), 3, 0);
    return 0;
}
TRACEPOINT_PROBE(tcp, tcp_retransmit_skb) {
    if (args->family != AF_INET || !our_sock(args->skaddr)) return 0;
    count(side_of(args->saddr, args->daddr), 4, 0);
    return 0;
}
TRACEPOINT_PROBE(tcp, tcp_retransmit_synack) {
    if (args->family != AF_INET || !our_sock(args->skaddr)) return 0;
    count(side_of(args->saddr, args->daddr), 5, 0);
    return 0;
}
TRACEPOINT_PROBE(tcp, tcp_destroy_sock) {
    if (args->family != AF_INET || !our_sock(args->skaddr)) return 0;
    count(side_of(args->saddr, args->daddr), 6, 0);
    return 0;
}
TRACEPOINT_PROBE(tcp, tcp_probe) {
    if (args->family != AF_INET || !our_sock(args->skaddr)) return 0;
    u8 local[28], remote[28];
    __builtin_memcpy(local, args->saddr, 28);
    __builtin_memcpy(remote, args->daddr, 28);
    count(side_of(local + 4, remote + 4), 7, 0);
    return 0;
}
"""
PROGRAMS = {1: "sock__inet_sock_set_state", 2: "tcp__tcp_send_reset", 3: "tcp__tcp_receive_reset",
            4: "tcp__tcp_retransmit_skb", 5: "tcp__tcp_retransmit_synack", 6: "tcp__tcp_destroy_sock",
            7: "tcp__tcp_probe"}
KINDS = {2: "reset_sent", 3: "reset_received", 4: "retransmit", 5: "synack_retransmit", 6: "sock_destroy",
         7: "probe"}
STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
          6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING",
          12: "NEW_SYN_RECV"}
SIDES = ("client", "server")


def btf_offsets() -> dict[str, int]:
    """Byte offsets of the fields the filter reads, from this kernel's BTF (bpftool)."""
    raw = subprocess.run(["bpftool", "btf", "dump", "file", "/sys/kernel/btf/vmlinux", "format", "raw"],
                         capture_output=True, text=True, check=True).stdout
    types, current = {}, None
    for line in raw.splitlines():
        head = re.match(r"\[(\d+)\] (\w+) '([^']*)'(?: type_id=(\d+))?", line)
        if head:
            current = types[int(head.group(1))] = {"kind": head.group(2), "name": head.group(3),
                                                   "type": int(head.group(4) or 0), "members": []}
            continue
        member = re.match(r"\s+'([^']*)' type_id=(\d+) bits_offset=(\d+)", line)
        if member and current is not None:
            current["members"].append((member.group(1), int(member.group(2)), int(member.group(3))))

    def struct(name):
        return next(i for i, t in types.items() if t["kind"] == "STRUCT" and t["name"] == name)

    def offset(type_id, field):  # bits, looking through anonymous structs and unions
        for name, member_type, bits in types[type_id]["members"]:
            if name == field:
                return bits
            if name == "(anon)":
                inner = offset(member_type, field)
                if inner is not None:
                    return bits + inner
        return None

    return {
        "SOCK_NET": offset(struct("sock_common"), "skc_net") // 8,  # possible_net_t: one pointer
        "NET_NS_INUM": (offset(struct("net"), "ns") + offset(struct("ns_common"), "inum")) // 8,
        "SKB_DEV": offset(struct("sk_buff"), "dev") // 8,
        "DEV_NET": offset(struct("net_device"), "nd_net") // 8,
    }


@pytest.fixture(scope="module")
def tracer():
    from bcc import BPF

    headers = find_headers()
    os.environ.update(headers.environment())
    cflags = [f"-D{name}={value}" for name, value in btf_offsets().items()]
    with tracefs_mounted():
        bpf = BPF(text=PROGRAM, cflags=cflags)
        try:
            yield bpf
        finally:
            bpf.cleanup()


def recursion_misses(tracer) -> dict[str, int]:
    """Per event kind, how often the kernel skipped our program (/proc fdinfo `recursion_misses`):
    a tracepoint that fires while another BPF program runs on the CPU (a softirq retransmitting
    while our tcp_probe program runs in process context) is not delivered to BPF, and the kernel
    counts it. The checks below allow exactly those, and no more."""
    misses = {}
    for kind, program in PROGRAMS.items():
        fd = tracer.load_func(f"tracepoint__{program}", tracer.TRACEPOINT).fd
        for line in open(f"/proc/self/fdinfo/{fd}"):
            key, _, value = line.partition(":")
            if key == "recursion_misses":
                misses["transitions" if kind == 1 else KINDS[kind]] = int(value)
    return misses


def observe(tracer, name, params):
    """Run a workload under the tracer; returns (truth, seen events/transitions, nstat deltas).
    seen["missed"] holds the kernel's recursion misses per kind during the run (both sides)."""
    workload = get_workload(name)
    values = {**{p.name: p.default for p in workload.params}, **params}
    tracer["counts"].clear()
    misses_before = recursion_misses(tracer)
    tracer["namespaces"].clear()
    with Topology("test") as topology:
        for host in topology.hosts:
            inode = os.stat(f"/run/netns/{host.netns}").st_ino
            tracer["namespaces"][tracer["namespaces"].Key(inode)] = tracer["namespaces"].Leaf(1)
        before = {h.role: counters.read_snmp(h) for h in topology.hosts}
        truth = workload.run(topology, values)
        after = {h.role: counters.read_snmp(h) for h in topology.hosts}
    misses_after = recursion_misses(tracer)
    seen = {side: {"events": {}, "transitions": {}} for side in SIDES}
    seen["missed"] = {kind: misses_after[kind] - misses_before[kind] for kind in misses_after}
    for key, per_cpu in tracer["counts"].items():
        total = sum(per_cpu)
        if not total:
            continue
        side, kind, detail = SIDES[key.value >> 11], (key.value >> 8) & 0x7, key.value & 0xff
        if kind == 1:
            name = f"{STATES[detail >> 4]}->{STATES[detail & 0xf]}"
            seen[side]["transitions"][name] = total
        else:
            seen[side]["events"][KINDS[kind]] = total
    nstat = {side: counters.snmp_delta(before[side], after[side]) for side in SIDES}
    return truth, seen, nstat


def assert_declaration_holds(truth, seen, nstat):
    """Exact counts hold to within the kernel's recursion misses of that kind's program and the
    tails this host hides from BPF (tests/host.py): seen short by at most that, never more than
    declared; lower bounds likewise. A program's misses are counted once for the run, over both
    sides and every transition (one skipped run is one event missing from one count), so they are
    one budget per program, spent once; a count compared with a floor and a kernel counter as
    well (synack_retransmit) is one count, charged once."""
    tails = HiddenTails(counted=seen["missed"])  # pools: "transitions" and each event kind
    for side in SIDES:
        declared, got = truth.expected[side], seen[side]
        for name, n in declared["transitions"].items():
            tails.check(got["transitions"].get(name, 0), n, what=(side, name), pool="transitions")
        assert set(got["transitions"]) <= set(declared["transitions"]), side
        for kind, n in declared["events"].items():
            if kind != "state_change":
                tails.check(got["events"].get(kind, 0), n, what=(side, kind), pool=kind, key=(side, kind))
        for name, floor in declared["at_least"].items():
            if name.startswith("Tcp"):
                assert nstat[side].get(name, 0) >= floor, (side, name)
            else:
                tails.at_least(got["events"].get(name, 0), floor, what=(side, name, "at least"), pool=name,
                               key=(side, name))
        for kind, counter in declared["equals_nstat"].items():
            tails.check(got["events"].get(kind, 0), nstat[side].get(counter, 0), what=(side, kind, counter),
                        pool=kind, key=(side, kind))


def test_resets_rsts_are_sent_and_received_on_the_declared_sides(tracer):
    truth, seen, nstat = observe(tracer, "resets", {"aborts": 40, "refused": 25})
    assert_declaration_holds(truth, seen, nstat)
    # the send_reset program's misses are one count for both sides: spent once between them
    tails = HiddenTails(counted=seen["missed"]["reset_sent"])
    tails.check(seen["client"]["events"]["reset_sent"], 40, what="client aborts")
    tails.check(seen["server"]["events"]["reset_sent"], 25, what="server refusals")  # sent in softirq


def test_synack_retransmits_equal_the_servers_syn_retrans_counter(tracer):
    truth, seen, nstat = observe(tracer, "synack", {"connections": 60, "concurrency": 60, "every": 3})
    assert_declaration_holds(truth, seen, nstat)
    assert truth.generator["dropped_synacks"] > 0
    assert (seen["server"]["events"]["synack_retransmit"] + seen["missed"]["synack_retransmit"]
            + BLIND_CONNECTIONS >= truth.generator["dropped_synacks"])  # a timer's softirq: tests/host.py


def test_churn_client_closing_first_and_rr_transitions_hold(tracer):
    truth, seen, nstat = observe(tracer, "churn", {"connections": 300, "closer": "client", "bytes": 64})
    assert_declaration_holds(truth, seen, nstat)
    truth, seen, nstat = observe(tracer, "rr", {"transactions": 2000, "connections": 3})
    assert_declaration_holds(truth, seen, nstat)


def test_loss_retransmits_at_least_every_dropped_segment(tracer):
    """Every dropped segment is retransmitted (RetransSegs counts segments); the tracepoint counts
    skbs, and one retransmitted skb may carry several dropped segments (TCP always builds GSO skbs),
    so it is only bounded by the segment count from above, plus the attempts that failed."""
    truth, seen, nstat = observe(tracer, "loss", {"bytes": 10_000_000, "every": 40, "offloads": False})
    assert_declaration_holds(truth, seen, nstat)
    assert truth.generator["dropped"] > 0
    assert nstat["client"]["TcpRetransSegs"] >= truth.generator["dropped"]
    assert seen["client"]["events"]["retransmit"] + seen["missed"]["retransmit"] >= 1
