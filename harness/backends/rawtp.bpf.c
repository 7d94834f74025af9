// SPDX-License-Identifier: GPL-2.0
// tpbench `tracepoint` backend, flavours raw_tp and tp_btf: the same seven tracepoints, entered
// with their TP_PROTO arguments (pointers) instead of the record the kernel assembles for
// classic tracepoint programs.
//
//   raw_tp   BPF_PROG_TYPE_RAW_TRACEPOINT (4.17+), attached with BPF_RAW_TRACEPOINT_OPEN by name
//   tp_btf   BPF_PROG_TYPE_TRACING / BPF_TRACE_RAW_TP (5.5+, needs BTF), attached by BTF id
//
// Why it matters: classic tracepoint (and kprobe) programs run through trace_call_bpf(), which
// skips a program whenever any BPF program is already running on the CPU (the per-CPU
// bpf_prog_active), so a softirq state change arriving while a process-context one is being
// traced is lost. These two run through __bpf_trace_run(), which guards each program only
// against itself (prog->active): programs on different hooks nest, which is why handle() is
// built with NESTABLE here (tcp_events.bpf.h).
//
// Every field is read through the pointers, at offsets from the running kernel's BTF (passed by
// the loader as -DOFF_<name>; see harness/btf.py), never from the headers bcc compiles with: on
// the hosts here those are 6.1's, and struct sock, inet_sock, tcp_sock and sk_buff moved since.
// The reads mirror each tracepoint's TP_fast_assign (include/trace/events/{sock,tcp}.h), so the
// same events carry the same values as the `tp` flavour; with CHECK the classic tracepoints are
// attached after these as witnesses (witness.bpf.h) and compare every event field by field.
//
// Compile-time parameters (-D), besides tcp_events.bpf.h's and the OFF_* offsets:
//   FLAVOUR_TP_BTF          tp_btf entries (else raw_tp)
//   HOOK_<event>            this tracepoint's program; TP_<event>_... as in tracepoint.bpf.c
//                           (the formats say which TP_PROTO the kernel has: err, reason)
//   CHECK                   the witnesses
//   RESCUE                  a rescue program beside each primary (not with EMPTY)

#include "tcp_events.bpf.h"
#include <uapi/linux/ip.h>
#include <uapi/linux/tcp.h>

#ifdef CHECK
#define WITNESS_SAME_CALL 1
#include "witness.bpf.h"
#define TP_REPORT witness
#include "tracepoint.bpf.c"
#define REMEMBER(...) remember(__VA_ARGS__)
#else
#define REMEMBER(...) do {} while (0)
#endif

// Entries: one body per hook (do_<event>), entered by a primary program and, with RESCUE, a
// rescue program on the same tracepoint, attached after it. __bpf_trace_run() skips a program
// that is already running on the CPU (prog->active), and a softirq state change can arrive while
// a process-context one is being traced by the same program: the kernel then counts a recursion
// miss, and the event is gone unless the rescue program, a different program, handles it.
//
// The rescue must know whether its primary ran for *this* event. A "primary busy" flag set in
// the primary's body cannot say: prog->active is raised before the body's first instruction and
// lowered after its last, and a nested event that arrives in those gaps finds the flag clear
// although its primary was skipped (measured: ~30% of the misses). So each primary, first thing,
// pushes the event's identity (its TP_PROTO arguments) onto a small per-CPU stack, and the
// rescue looks for it from the top: found, the primary ran (pop it and everything above it);
// not found, the primary was skipped, and the rescue handles the event. Every case nests:
//   A's primary, [B arrives: primary skipped, B not on the stack: rescued], A's rescue pops A
//   A's primary pushes A, [B: primary pushes B, rescue pops B], A's rescue pops A
//   A's rescue starts, [B: primary pushes B, B's rescue skipped], A's rescue finds A below B
// so rescued == the primaries' misses, and the Python side reports any difference. A rescue
// program's own miss loses nothing (its primary was idle, so it ran the event) but can leave
// that event on the stack (B above, had it come after A's pop), where a later skipped event
// with the same arguments would find it (a socket's memory is reused at once). Such entries are
// dead by construction: events nest only across stacks (a softirq runs on the CPU's IRQ stack,
// over a task stack), so an entry whose arguments were on the stack the new event's are on
// (the same THREAD_SIZE-aligned 16 KiB) belongs to a call that has returned, and the next
// primary on that stack drops it before pushing.
// Names keep bcc from attaching them by itself (the loader attaches them, then the witnesses,
// which must fire after the observer).
#ifdef FLAVOUR_TP_BTF
typedef u64 ctx_t;
#define ARG(i) (ctx[i])
#define ENTRY_(event, role) int tpbtf##role##__##event(u64 *ctx)
#else
typedef struct bpf_raw_tracepoint_args ctx_t;
#define ARG(i) (ctx->args[i])
#define ENTRY_(event, role) int rawtp##role##__##event(struct bpf_raw_tracepoint_args *ctx)
#endif
// An event's identity: its arguments (a tracepoint with N arguments may read only N).
#define ARGS1 (u64)ARG(0), 0, 0
#define ARGS2 (u64)ARG(0), (u64)ARG(1), 0
#define ARGS3 (u64)ARG(0), (u64)ARG(1), (u64)ARG(2)

#ifdef RESCUE
#define PENDING 4 // live entries: at most 2 (process context, then softirq)
#define STACK_REGION(addr) ((addr) >> 14)
struct pending {
    u64 ident[PENDING];
    u64 where[PENDING]; // the address of the event's arguments, i.e. which kernel stack
    u64 scratch[4][4];  // per nesting level: see as_numbers()
    u32 nesting;
    u32 depth;
};
BPF_PERCPU_ARRAY(entered, struct pending, NKINDS); // per hook: events its primary has entered
BPF_PERCPU_ARRAY(rescued, u64, 1);                 // events the rescue programs handled

// Pointers as numbers: the verifier allows no arithmetic on a context or (tp_btf) a typed
// pointer, so they are stored in the map and loaded back as plain values (root may store
// pointers). A program can be interrupted between the store and the load by one on the same hook
// that does the same, so each level of nesting has its slot; nesting is last-in first-out, so a
// plain per-CPU count of the levels in use is exact (measured: one shared slot gave 4 rescues in
// 24 40k trials for events whose primary had run, their identity read back from a nested event).
static __always_inline u64 as_numbers(struct pending *p, u64 out[4], u64 a0, u64 a1, u64 a2, u64 ctx)
{
    volatile u32 *nesting = &p->nesting; // volatile: the compiler must not merge its two stores
    u32 level = *nesting;
    *nesting = level + 1;
    volatile u64 *slot = p->scratch[level & 3];
    slot[0] = a0;
    slot[1] = a1;
    slot[2] = a2;
    slot[3] = ctx;
    out[0] = slot[0];
    out[1] = slot[1];
    out[2] = slot[2];
    out[3] = slot[3];
    *nesting = level;
    return out[0] ^ (out[1] * 0x9E3779B97F4A7C15ULL) ^ (out[2] << 40);
}

static __always_inline void push_pending(u32 hook, const void *ctx, u64 a0, u64 a1, u64 a2)
{
    struct pending *p = entered.lookup(&hook);
    if (!p)
        return;
    u64 numbers[4];
    u64 ident = as_numbers(p, numbers, a0, a1, a2, (u64)ctx);
    u64 where = numbers[3];
    u64 here = STACK_REGION(where);
    u32 depth = p->depth;
#pragma unroll
    for (int i = PENDING - 1; i >= 0; i--) // entries of returned calls on this stack
        if ((u32)i + 1 == depth && STACK_REGION(p->where[i]) == here)
            depth = i;
    if (depth >= PENDING) { // full (cannot happen while the invariant holds): the oldest goes
#pragma unroll
        for (int i = 0; i < PENDING - 1; i++) {
            p->ident[i] = p->ident[i + 1];
            p->where[i] = p->where[i + 1];
        }
        depth = PENDING - 1;
    }
    p->ident[depth & (PENDING - 1)] = ident;
    p->where[depth & (PENDING - 1)] = where;
    p->depth = depth + 1;
}

// 1 if the primary entered this event (it is then popped, with whatever sits above it)
static __always_inline int pop_pending(u32 hook, u64 a0, u64 a1, u64 a2)
{
    struct pending *p = entered.lookup(&hook);
    if (!p)
        return 1;
    u64 numbers[4];
    u64 ident = as_numbers(p, numbers, a0, a1, a2, 0);
    u32 depth = p->depth;
#pragma unroll
    for (int i = PENDING - 1; i >= 0; i--) {
        if ((u32)i < depth && p->ident[i] == ident) {
            p->depth = i;
            return 1;
        }
    }
    return 0;
}

static __always_inline void count_rescued(void)
{
    u32 zero = 0;
    bump(rescued.lookup(&zero));
}

#define ENTRY(event, hook, args)                                           \
    static __always_inline int do_##event(ctx_t *ctx);                     \
    ENTRY_(event, )                                                        \
    {                                                                      \
        push_pending(hook, ctx, args);                                     \
        return do_##event(ctx);                                            \
    }                                                                      \
    ENTRY_(event, _rescue)                                                 \
    {                                                                      \
        if (pop_pending(hook, args))                                       \
            return PASS_ON; /* the primary ran this event */               \
        count_rescued();                                                   \
        return do_##event(ctx);                                            \
    }                                                                      \
    static __always_inline int do_##event(ctx_t *ctx)
#else
#define ENTRY(event, hook, args) ENTRY_(event, )
#endif

#define RD(dst, base, offset) bpf_probe_read_kernel(&(dst), sizeof(dst), (const u8 *)(base) + (offset))

struct sockfields {
    u32 saddr, daddr;
    u16 sport, dport, family;
    u8 state;
};

// What TP_STORE_ADDRS / tcp_event_sk read: inet_sock's inet_saddr and inet_sport (not
// sock_common's rcv_saddr and skc_num, which tcp_set_state(TCP_CLOSE) clears before
// tcp_destroy_sock fires), sock_common's daddr, dport, family and state. Two reads: the head of
// sock_common and the few bytes of inet_sock that hold both of its fields.
static __always_inline void read_sock(const void *sk, struct sockfields *f)
{
    u8 common[COMMON_SPAN] = {};
    u8 inet[INET_SPAN] = {};
    u16 port_be = 0;
    bpf_probe_read_kernel(common, sizeof(common), sk);
    __builtin_memcpy(&f->daddr, common + OFF_skc_daddr, 4);
    __builtin_memcpy(&port_be, common + OFF_skc_dport, 2);
    f->dport = bpf_ntohs(port_be);
    __builtin_memcpy(&f->family, common + OFF_skc_family, 2);
    f->state = common[OFF_skc_state];
    bpf_probe_read_kernel(inet, sizeof(inet), (const u8 *)sk + INET_BASE);
    __builtin_memcpy(&f->saddr, inet + OFF_inet_saddr - INET_BASE, 4);
    __builtin_memcpy(&port_be, inet + OFF_inet_sport - INET_BASE, 2);
    f->sport = bpf_ntohs(port_be);
}

static __always_inline int emit_sock(void *ctx, u8 kind, const void *sk, int oldstate, int newstate,
                                     u32 extra)
{
    struct sockfields f = {};
    read_sock(sk, &f);
    if (oldstate < 0) // retransmit, send_reset: old == new == the socket's state
        oldstate = newstate = f.state;
    REMEMBER(kind, sk, f.family, f.saddr, f.daddr, f.sport, f.dport, oldstate, newstate, extra);
    return handle(ctx, kind, f.family, f.saddr, f.daddr, f.sport, f.dport, sk, oldstate, newstate,
                  extra);
}

#ifdef HOOK_inet_sock_set_state
// TP_PROTO(const struct sock *sk, const int oldstate, const int newstate)
ENTRY(inet_sock_set_state, KIND_STATE_CHANGE, ARGS3)
{
#ifdef EMPTY
    return PASS_ON;
#endif
    const void *sk = (const void *)ARG(0);
    u16 protocol = 0;
    RD(protocol, sk, OFF_sk_protocol);
    if (protocol != IPPROTO_TCP)
        return PASS_ON;
    return emit_sock(ctx, KIND_STATE_CHANGE, sk, (int)ARG(1), (int)ARG(2), 0);
}
#endif

#ifdef HOOK_tcp_retransmit_skb
// TP_PROTO(const struct sock *sk, const struct sk_buff *skb[, int err])  (err: 6.x formats)
ENTRY(tcp_retransmit_skb, KIND_RETRANSMIT, ARGS2)
{
#ifdef EMPTY
    return PASS_ON;
#endif
    u32 err = 0;
#ifdef TP_tcp_retransmit_skb_HAS_err
    err = (u32)ARG(2);
#endif
    return emit_sock(ctx, KIND_RETRANSMIT, (const void *)ARG(0), -1, -1, err);
}
#endif

#ifdef HOOK_tcp_retransmit_synack
// TP_PROTO(const struct sock *sk, const struct request_sock *req): the listener, and the request
// whose sock_common holds the addresses (ir_loc_addr = skc_rcv_saddr, ir_num = skc_num)
ENTRY(tcp_retransmit_synack, KIND_SYNACK_RETRANSMIT, ARGS2)
{
#ifdef EMPTY
    return PASS_ON;
#endif
    const void *sk = (const void *)ARG(0);
    const void *req = (const void *)ARG(1);
    u8 common[COMMON_SPAN] = {};
    u16 family = 0, dport_be = 0, sport = 0;
    u32 saddr = 0, daddr = 0;
    RD(family, sk, OFF_skc_family);
    bpf_probe_read_kernel(common, sizeof(common), req);
    __builtin_memcpy(&saddr, common + OFF_skc_rcv_saddr, 4);
    __builtin_memcpy(&daddr, common + OFF_skc_daddr, 4);
    __builtin_memcpy(&sport, common + OFF_skc_num, 2);
    __builtin_memcpy(&dport_be, common + OFF_skc_dport, 2);
    REMEMBER(KIND_SYNACK_RETRANSMIT, sk, family, saddr, daddr, sport, bpf_ntohs(dport_be), 0, 0, 0);
    return handle(ctx, KIND_SYNACK_RETRANSMIT, family, saddr, daddr, sport, bpf_ntohs(dport_be), sk,
                  0, 0, 0);
}
#endif

#ifdef HOOK_tcp_send_reset
// 6.10+: TP_PROTO(const struct sock *sk, const struct sk_buff *skb, enum sk_rst_reason reason),
// and sk may be NULL or not a full socket (TIME_WAIT, NEW_SYN_RECV): the addresses then come from
// the segment being answered, reversed. Before: TP_PROTO(sk, skb), everything from sk.
ENTRY(tcp_send_reset, KIND_RESET_SENT, ARGS2)
{
#ifdef EMPTY
    return PASS_ON;
#endif
    const void *sk = (const void *)ARG(0);
#if TP_tcp_send_reset_saddr_SIZE == 28
    const void *skb = (const void *)ARG(1);
    u32 reason = (u32)ARG(2);
    u8 state = 0;
    if (sk)
        RD(state, sk, OFF_skc_state);
    if (sk && state != 6 /* TCP_TIME_WAIT */ && state != 12 /* TCP_NEW_SYN_RECV */)
        return emit_sock(ctx, KIND_RESET_SENT, sk, state, state, reason);
    if (!skb)
        return PASS_ON;
    unsigned char *head = 0, *data = 0;
    u16 network = 0, protocol = 0;
    RD(head, skb, OFF_skb_head);
    RD(data, skb, OFF_skb_data);
    RD(network, skb, OFF_skb_network_header);
    RD(protocol, skb, OFF_skb_protocol);
    if (protocol != bpf_htons(0x0800 /* ETH_P_IP */))
        return PASS_ON; // an IPv6 segment: the family handle() filters out anyway
    struct iphdr ip = {};
    struct tcphdr th = {};
    bpf_probe_read_kernel(&ip, sizeof(ip), head + network);
    bpf_probe_read_kernel(&th, sizeof(th), data);
    REMEMBER(KIND_RESET_SENT, sk, AF_INET, ip.daddr, ip.saddr, bpf_ntohs(th.dest),
             bpf_ntohs(th.source), state, state, reason);
    return handle(ctx, KIND_RESET_SENT, AF_INET, ip.daddr, ip.saddr, bpf_ntohs(th.dest),
                  bpf_ntohs(th.source), sk, state, state, reason);
#else
    if (!sk)
        return PASS_ON;
    return emit_sock(ctx, KIND_RESET_SENT, sk, -1, -1, 0);
#endif
}
#endif

#ifdef HOOK_tcp_receive_reset
// TP_PROTO(struct sock *sk)
ENTRY(tcp_receive_reset, KIND_RESET_RECEIVED, ARGS1)
{
#ifdef EMPTY
    return PASS_ON;
#endif
    return emit_sock(ctx, KIND_RESET_RECEIVED, (const void *)ARG(0), 0, 0, 0);
}
#endif

#ifdef HOOK_tcp_destroy_sock
// TP_PROTO(struct sock *sk)
ENTRY(tcp_destroy_sock, KIND_SOCK_DESTROY, ARGS1)
{
#ifdef EMPTY
    return PASS_ON;
#endif
    return emit_sock(ctx, KIND_SOCK_DESTROY, (const void *)ARG(0), 0, 0, 0);
}
#endif

#ifdef HOOK_tcp_probe
// TP_PROTO(struct sock *sk, const struct sk_buff *skb); snd_cwnd from struct tcp_sock
ENTRY(tcp_probe, KIND_PROBE, ARGS2)
{
#ifdef EMPTY
    return PASS_ON;
#endif
    const void *sk = (const void *)ARG(0);
    u32 cwnd = 0;
    RD(cwnd, sk, OFF_snd_cwnd);
    struct sockfields f = {};
    read_sock(sk, &f);
    const void *key = 0; // the event's socket as the `tp` flavour reports it: no skaddr before 6.x
#ifdef TP_tcp_probe_HAS_skaddr
    key = sk;
#endif
    REMEMBER(KIND_PROBE, sk, f.family, f.saddr, f.daddr, f.sport, f.dport, 0, 0, cwnd);
    return handle(ctx, KIND_PROBE, f.family, f.saddr, f.daddr, f.sport, f.dport, key, 0, 0, cwnd);
}
#endif
