// SPDX-License-Identifier: GPL-2.0
// tpbench `tracepoint` backend: the seven stable TCP tracepoints, through bcc.
//
//   sock:inet_sock_set_state  (Linux 4.16+; the tcpstates/tcplife way since then)
//   tcp:tcp_retransmit_skb (4.15+)  tcp:tcp_retransmit_synack (4.15+)  tcp:tcp_send_reset (4.15+)
//   tcp:tcp_receive_reset (4.15+)   tcp:tcp_destroy_sock (4.15+)      tcp:tcp_probe (4.16+)
//
// Arguments come from tracefs format files of the running kernel (bcc generates `args` from
// them), so these programs are correct whatever headers bcc compiles with. Layouts do change
// between kernels, so the loader passes each field's size as -DTP_<event>_<field>_SIZE and
// -DTP_<event>_HAS_<field>: e.g. tcp_send_reset's addresses became 28-byte sockaddr buffers
// (without sport/dport/family fields) in 6.10, and gained `enum sk_rst_reason reason`.
//
// Compile-time parameters (-D):
//   HOOK_<event>            attach this tracepoint (no definition: not even loaded)
//   EMPTY                   every program returns at once: the floor of what attaching costs
//   MODE_AGGREGATE          count in per-CPU maps, read once at the end (no per-event output)
//   TRANSPORT_RINGBUF       stream through a BPF ring buffer (else a perf buffer)
//   RINGBUF_PAGES           ring size in pages;  WAKEUP_BATCH: events per forced wake-up
//   BATCH                   with a ring buffer: events staged per CPU and emitted BATCH at a time
//                           (one ringbuf_output per batch instead of a reserve/submit per event)
//   CLIENT_ADDR, SERVER_ADDR  the topology's two addresses, as a native load of network bytes

#include <uapi/linux/ptrace.h>
#include <uapi/linux/in.h>
#include <linux/socket.h>

#ifdef NEED_SK_RST_REASON_STUB
// 6.10+ formats name this enum; fallback (6.1) headers lack it. Only its size (4) matters here.
enum sk_rst_reason { TPBENCH_SK_RST_REASON_NOT_SPECIFIED = 0 };
#endif

enum event_kind {
    KIND_STATE_CHANGE = 0,
    KIND_RETRANSMIT = 1,
    KIND_SYNACK_RETRANSMIT = 2,
    KIND_RESET_SENT = 3,
    KIND_RESET_RECEIVED = 4,
    KIND_SOCK_DESTROY = 5,
    KIND_PROBE = 6,
    NKINDS = 7,
};
#define NSIDES 3   // 0 client, 1 server, 2 neither (a local address that is not the pair's)
#define NSTATES 16 // TCP_ESTABLISHED (1) .. TCP_NEW_SYN_RECV (12), rounded up

// 56 bytes. `sk` is the socket's kernel address: its identity while it lives (0: no socket).
struct event {
    u64 ts_ns;
    u64 sk;
    u32 pid;     // tgid of the current task: in softirq, whichever task was interrupted
    u8 kind;
    u8 side;
    u8 oldstate; // retransmit/reset: the socket's state
    u8 newstate;
    u32 saddr;   // local address (network order); for a socketless RST the sender's
    u32 daddr;
    u16 sport;   // host order
    u16 dport;
    u32 extra;   // retransmit: err; reset_sent: reason; probe: snd_cwnd
    char comm[16];
};

BPF_PERCPU_ARRAY(filtered, u64, NKINDS);  // events of other traffic, skipped in the kernel
#ifdef MODE_AGGREGATE
BPF_PERCPU_ARRAY(kind_counts, u64, NSIDES * NKINDS);
BPF_PERCPU_ARRAY(transition_counts, u64, NSIDES * NSTATES * NSTATES);
#else
BPF_PERCPU_ARRAY(lost, u64, 1);           // output failures: ring full or perf buffer full
#ifdef TRANSPORT_RINGBUF
BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
BPF_PERCPU_ARRAY(unwoken, u64, 1);        // submitted since this CPU last woke the consumer
#if BATCH > 1
// The ring is one buffer shared by all CPUs: every reserve takes its spinlock and bounces its
// cache lines between CPUs, which costs more than the rest of the program. Staging events per CPU
// and emitting them BATCH at a time pays that once per batch. The partial batch left at the end
// is read from this map by the harness at detach, so no event is stranded.
struct batch {
    u32 n;
    u32 pad;
    struct event ev[BATCH];
};
BPF_PERCPU_ARRAY(staging, struct batch, 1);
#endif
#else
BPF_PERF_OUTPUT(events);
#endif
#endif

static __always_inline void bump(u64 *counter)
{
    if (counter)
        (*counter)++; // per-CPU slot: no atomic needed
}

// Every program returns 1: perf_trace_run_bpf_submit() hands the event to perf listeners on the
// same tracepoint only when the BPF program returns non-zero. Returning 0 (as many tools do)
// would silently blind `perf` or any other tracer attached beside us; with no such listener,
// returning 1 costs nothing.
#define PASS_ON 1

static __always_inline int handle(void *ctx, u8 kind, u16 family, u32 saddr, u32 daddr,
                                  u16 sport, u16 dport, const void *sk, int oldstate,
                                  int newstate, u32 extra)
{
    // This topology's traffic only: IPv4 to or from its two addresses (each topology has its own
    // /24), everything else counted apart as filtered.
    if (family != AF_INET || (saddr != CLIENT_ADDR && saddr != SERVER_ADDR &&
                              daddr != CLIENT_ADDR && daddr != SERVER_ADDR)) {
        u32 key = kind;
        bump(filtered.lookup(&key));
        return PASS_ON;
    }
    u32 side = saddr == CLIENT_ADDR ? 0 : saddr == SERVER_ADDR ? 1 : 2;
#ifdef MODE_AGGREGATE
    u32 key = side * NKINDS + kind;
    bump(kind_counts.lookup(&key));
    if (kind == KIND_STATE_CHANGE) {
        u32 transition = (side * NSTATES + (oldstate & (NSTATES - 1))) * NSTATES +
                         (newstate & (NSTATES - 1));
        bump(transition_counts.lookup(&transition));
    }
#else
    u32 zero = 0;
#if defined(TRANSPORT_RINGBUF) && BATCH > 1
    struct batch *b = staging.lookup(&zero);
    if (!b)
        return PASS_ON;
    u32 slot = b->n & (BATCH - 1); // BATCH is a power of two; the mask bounds it for the verifier
    struct event *e = &b->ev[slot];
#elif defined(TRANSPORT_RINGBUF)
    struct event *e = events.ringbuf_reserve(sizeof(struct event));
    if (!e) {
        bump(lost.lookup(&zero));
        return PASS_ON;
    }
#else
    struct event record = {};
    struct event *e = &record;
#endif
    e->ts_ns = bpf_ktime_get_ns();
    e->sk = (u64)sk;
    e->pid = bpf_get_current_pid_tgid() >> 32;
    e->kind = kind;
    e->side = side;
    e->oldstate = oldstate;
    e->newstate = newstate;
    e->saddr = saddr;
    e->daddr = daddr;
    e->sport = sport;
    e->dport = dport;
    e->extra = extra;
    bpf_get_current_comm(&e->comm, sizeof(e->comm));
#if defined(TRANSPORT_RINGBUF) && BATCH > 1
    if (slot + 1 < BATCH) {
        b->n = slot + 1;
        return PASS_ON;
    }
    b->n = 0;
    // flags 0: the kernel wakes the consumer only when it has caught up (adaptive wake-up)
    if (events.ringbuf_output(&b->ev[0], BATCH * sizeof(struct event), 0) != 0) {
        u64 *dropped = lost.lookup(&zero);
        if (dropped)
            *dropped += BATCH;
    }
#elif defined(TRANSPORT_RINGBUF)
    // Waking the consumer on every event costs more than the event itself; wake once per
    // WAKEUP_BATCH events per CPU. The consumer also drains on a short timer, so a quiet tail
    // is never stranded.
    u64 flags = BPF_RB_NO_WAKEUP;
    u64 *pending = unwoken.lookup(&zero);
    if (pending && ++(*pending) >= WAKEUP_BATCH) {
        *pending = 0;
        flags = BPF_RB_FORCE_WAKEUP;
    }
    events.ringbuf_submit(e, flags);
#else
    if (events.perf_submit(ctx, e, sizeof(*e)) != 0)
        bump(lost.lookup(&zero));
#endif
#endif
    return PASS_ON;
}

// IPv4 address from a tracepoint address field: 4 raw bytes, or a 28-byte sockaddr buffer
// (sockaddr_in: family at 0, port at 2, address at 4).
#define ADDR4(dst, field, size)                                        \
    do {                                                               \
        if ((size) == 28)                                              \
            __builtin_memcpy(&(dst), (const u8 *)(field) + 4, 4);      \
        else                                                           \
            __builtin_memcpy(&(dst), (field), 4);                      \
    } while (0)

#ifdef HOOK_inet_sock_set_state
TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
#ifdef EMPTY
    return PASS_ON;
#endif
    if (args->protocol != IPPROTO_TCP)
        return PASS_ON; // the same tracepoint serves other protocols: not ours, not TCP
    u32 s, d;
    ADDR4(s, args->saddr, 4);
    ADDR4(d, args->daddr, 4);
    return handle(args, KIND_STATE_CHANGE, args->family, s, d, args->sport, args->dport,
                  args->skaddr, args->oldstate, args->newstate, 0);
}
#endif

#ifdef HOOK_tcp_retransmit_skb
TRACEPOINT_PROBE(tcp, tcp_retransmit_skb)
{
#ifdef EMPTY
    return PASS_ON;
#endif
    u32 s, d;
    ADDR4(s, args->saddr, TP_tcp_retransmit_skb_saddr_SIZE);
    ADDR4(d, args->daddr, TP_tcp_retransmit_skb_daddr_SIZE);
    u32 err = 0;
#ifdef TP_tcp_retransmit_skb_HAS_err
    err = args->err; // 6.x: non-zero when the retransmission failed to leave
#endif
    return handle(args, KIND_RETRANSMIT, args->family, s, d, args->sport, args->dport,
                  args->skaddr, args->state, args->state, err);
}
#endif

#ifdef HOOK_tcp_retransmit_synack
TRACEPOINT_PROBE(tcp, tcp_retransmit_synack)
{
#ifdef EMPTY
    return PASS_ON;
#endif
    // skaddr is the listener; the addresses are the request's (local first).
    u32 s, d;
    ADDR4(s, args->saddr, TP_tcp_retransmit_synack_saddr_SIZE);
    ADDR4(d, args->daddr, TP_tcp_retransmit_synack_daddr_SIZE);
    return handle(args, KIND_SYNACK_RETRANSMIT, args->family, s, d, args->sport, args->dport,
                  args->skaddr, 0, 0, 0);
}
#endif

#ifdef HOOK_tcp_send_reset
TRACEPOINT_PROBE(tcp, tcp_send_reset)
{
#ifdef EMPTY
    return PASS_ON;
#endif
    // skaddr is NULL for a RST sent without a socket (e.g. to a closed port); the addresses
    // then come from the offending segment, reversed, so saddr is still the RST's sender.
    u32 s, d;
    u16 family, sport, dport;
    ADDR4(s, args->saddr, TP_tcp_send_reset_saddr_SIZE);
    ADDR4(d, args->daddr, TP_tcp_send_reset_daddr_SIZE);
#if TP_tcp_send_reset_saddr_SIZE == 28
    u16 sport_be, dport_be;
    __builtin_memcpy(&family, args->saddr, 2);
    __builtin_memcpy(&sport_be, (const u8 *)args->saddr + 2, 2);
    __builtin_memcpy(&dport_be, (const u8 *)args->daddr + 2, 2);
    sport = bpf_ntohs(sport_be);
    dport = bpf_ntohs(dport_be);
#else
    family = args->family;
    sport = args->sport;
    dport = args->dport;
#endif
    u32 reason = 0;
#ifdef TP_tcp_send_reset_HAS_reason
    reason = args->reason;
#endif
    return handle(args, KIND_RESET_SENT, family, s, d, sport, dport, args->skaddr, args->state,
                  args->state, reason);
}
#endif

#ifdef HOOK_tcp_receive_reset
TRACEPOINT_PROBE(tcp, tcp_receive_reset)
{
#ifdef EMPTY
    return PASS_ON;
#endif
    u32 s, d;
    ADDR4(s, args->saddr, TP_tcp_receive_reset_saddr_SIZE);
    ADDR4(d, args->daddr, TP_tcp_receive_reset_daddr_SIZE);
    return handle(args, KIND_RESET_RECEIVED, args->family, s, d, args->sport, args->dport,
                  args->skaddr, 0, 0, 0);
}
#endif

#ifdef HOOK_tcp_destroy_sock
TRACEPOINT_PROBE(tcp, tcp_destroy_sock)
{
#ifdef EMPTY
    return PASS_ON;
#endif
    u32 s, d;
    ADDR4(s, args->saddr, TP_tcp_destroy_sock_saddr_SIZE);
    ADDR4(d, args->daddr, TP_tcp_destroy_sock_daddr_SIZE);
    return handle(args, KIND_SOCK_DESTROY, args->family, s, d, args->sport, args->dport,
                  args->skaddr, 0, 0, 0);
}
#endif

#ifdef HOOK_tcp_probe
TRACEPOINT_PROBE(tcp, tcp_probe)
{
#ifdef EMPTY
    return PASS_ON;
#endif
    u32 s, d;
    ADDR4(s, args->saddr, TP_tcp_probe_saddr_SIZE);
    ADDR4(d, args->daddr, TP_tcp_probe_daddr_SIZE);
    const void *sk = 0;
#ifdef TP_tcp_probe_HAS_skaddr
    sk = args->skaddr;
#endif
    return handle(args, KIND_PROBE, args->family, s, d, args->sport, args->dport, sk, 0, 0,
                  args->snd_cwnd);
}
#endif
