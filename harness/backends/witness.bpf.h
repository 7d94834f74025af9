// SPDX-License-Identifier: GPL-2.0
// tpbench: the witness, shared by the observers that read struct fields themselves (kprobe and
// fentry in kprobe.bpf.c; raw_tp and tp_btf in rawtp.bpf.c). The observer leaves what it read in
// `pending`, keyed by (socket, kind, CPU), with remember(); the classic tracepoint for the same
// event, attached after it (tracepoint.bpf.c's decoding with TP_REPORT = witness), fires later
// on the same CPU and compares field by field. Mismatches are counted per kind and field, and
// the first one is kept whole (witness.py's summarize_check reads them).
#ifndef TPBENCH_WITNESS_BPF_H
#define TPBENCH_WITNESS_BPF_H

// What the observer read, waiting for the tracepoint of the same event.
struct pending_key {
    u64 sk;
    u32 kind;
    u32 cpu;
};
struct reading {
    u32 saddr, daddr;
    u16 sport, dport;
    u16 family;
    u8 oldstate, newstate;
    u32 extra;
};
// LRU: readings the tracepoint never claims (a 6.1 RST from a TIME_WAIT socket) age out instead
// of filling the map
BPF_TABLE("lru_hash", struct pending_key, struct reading, pending, 16384);
// per kind: [0] matched, [1] tracepoint without an observer reading, [2] observer reading overwritten
// unpaired, then one slot per field that differed (order: FIELD_NAMES in witness.py)
#define CHECK_SLOTS 11
BPF_PERCPU_ARRAY(check_counts, u64, NKINDS * CHECK_SLOTS);
struct mismatch {
    u32 kind;
    u32 fields;  // bit per differing field
    struct reading kprobe, tracepoint;
};
BPF_ARRAY(first_mismatch, struct mismatch, 1);

static __always_inline int ours(u16 family, u32 saddr, u32 daddr)
{
    return family == AF_INET && (saddr == CLIENT_ADDR || saddr == SERVER_ADDR ||
                                 daddr == CLIENT_ADDR || daddr == SERVER_ADDR);
}

static __always_inline void count_check(u32 kind, u32 slot)
{
    u32 key = kind * CHECK_SLOTS + slot;
    bump(check_counts.lookup(&key));
}

static __always_inline void remember(u8 kind, const void *sk, u16 family, u32 saddr, u32 daddr,
                                     u16 sport, u16 dport, int oldstate, int newstate, u32 extra)
{
#ifndef WITNESS_SAME_CALL
#if TP_tcp_send_reset_saddr_SIZE == 28
    // 6.10+ formats: tcp_send_reset fires for a socketless RST too, inside tcp_v4_send_reset
    // right after the kprobe at its entry, on the same CPU: (0, kind, CPU) pairs them
    if (!sk && kind != KIND_RESET_SENT)
        return;
#else
    if (!sk)
        return; // a socketless RST has no tracepoint on 6.1, and no key to pair by
#endif
#endif
    // WITNESS_SAME_CALL (raw_tp, tp_btf): observer and witness run in the same tracepoint call,
    // back to back on one CPU, so (0, kind, CPU) pairs a socketless RST as well
    struct pending_key key = {.sk = (u64)sk, .kind = kind, .cpu = bpf_get_smp_processor_id()};
#ifndef TP_tcp_probe_HAS_skaddr
    // tcp_probe has no skaddr before 6.x: pair by (kind, CPU) alone. Safe: the tracepoint fires
    // at the top of tcp_rcv_established, right after this kprobe, on the same CPU.
    if (kind == KIND_PROBE)
        key.sk = 0;
#endif
    struct reading *stale = pending.lookup(&key);
    if (stale && ours(stale->family, stale->saddr, stale->daddr))
        count_check(kind, 2);
    struct reading r = {.saddr = saddr, .daddr = daddr, .sport = sport, .dport = dport,
                        .family = family, .oldstate = oldstate, .newstate = newstate,
                        .extra = extra};
    pending.update(&key, &r);
}

// The tracepoint's view of the same event (TP_REPORT in tracepoint.bpf.c): compare, never emit.
static __always_inline int witness(void *args, u8 kind, u16 family, u32 saddr, u32 daddr,
                                   u16 sport, u16 dport, const void *sk, int oldstate,
                                   int newstate, u32 extra)
{
    struct pending_key key = {.sk = (u64)sk, .kind = kind, .cpu = bpf_get_smp_processor_id()};
    struct reading *k = pending.lookup(&key);
    if (!ours(family, saddr, daddr)) {
        if (k)
            pending.delete(&key);
        return PASS_ON;
    }
    if (!k) {
        count_check(kind, 1);
        return PASS_ON;
    }
    u32 fields = 0;
    if (k->oldstate != (u8)oldstate) fields |= 1 << 0;
    if (k->newstate != (u8)newstate) fields |= 1 << 1;
    if (k->saddr != saddr) fields |= 1 << 2;
    if (k->daddr != daddr) fields |= 1 << 3;
    if (k->sport != sport) fields |= 1 << 4;
    if (k->dport != dport) fields |= 1 << 5;
    if (k->family != family) fields |= 1 << 6;
    // extra means the same on both sides only for tcp_probe (snd_cwnd, from struct tcp_sock)
    if (kind == KIND_PROBE && k->extra != extra) fields |= 1 << 7;
    if (!fields) {
        count_check(kind, 0);
    } else {
#pragma unroll
        for (u32 i = 0; i < 8; i++)
            if (fields & (1 << i))
                count_check(kind, 3 + i);
        u32 zero = 0;
        struct mismatch *m = first_mismatch.lookup(&zero);
        if (m && m->fields == 0) {
            m->kind = kind;
            m->tracepoint.saddr = saddr;
            m->tracepoint.daddr = daddr;
            m->tracepoint.sport = sport;
            m->tracepoint.dport = dport;
            m->tracepoint.family = family;
            m->tracepoint.oldstate = oldstate;
            m->tracepoint.newstate = newstate;
            m->tracepoint.extra = extra;
            __builtin_memcpy(&m->kprobe, k, sizeof(*k));
            m->fields = fields;
        }
    }
    pending.delete(&key);
    return PASS_ON;
}

#endif // TPBENCH_WITNESS_BPF_H
