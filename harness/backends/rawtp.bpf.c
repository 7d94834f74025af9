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
// rescue program on the same tracepoint. __bpf_trace_run() skips a program that is already
// running on the CPU, and a softirq state change can arrive while a process-context one is being
// traced by the same program: the kernel then counts a recursion miss, and the event is gone.
// The rescue program is a different program, so it runs: it does nothing while this CPU's
// primary is idle (the normal case), and handles the event when the primary is busy, i.e. was
// the one skipped. Lost = the primaries' misses - rescued + the rescue programs' own misses.
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

#ifdef RESCUE
BPF_PERCPU_ARRAY(tracing, u32, NKINDS); // per hook: 1 while this CPU's primary program runs it
BPF_PERCPU_ARRAY(rescued, u64, 1);      // events the rescue programs handled

static __always_inline u32 *primary_flag(u32 hook)
{
    return tracing.lookup(&hook);
}

static __always_inline void count_rescued(void)
{
    u32 zero = 0;
    bump(rescued.lookup(&zero));
}

#define ENTRY(event, hook)                                                 \
    static __always_inline int do_##event(ctx_t *ctx);                     \
    ENTRY_(event, )                                                        \
    {                                                                      \
        u32 *busy = primary_flag(hook);                                    \
        if (busy)                                                          \
            *busy = 1;                                                     \
        int ret = do_##event(ctx);                                         \
        if (busy)                                                          \
            *busy = 0;                                                     \
        return ret;                                                        \
    }                                                                      \
    ENTRY_(event, _rescue)                                                 \
    {                                                                      \
        u32 *busy = primary_flag(hook);                                    \
        if (!busy || !*busy)                                               \
            return PASS_ON; /* the primary ran (or runs) this event */     \
        count_rescued();                                                   \
        return do_##event(ctx);                                            \
    }                                                                      \
    static __always_inline int do_##event(ctx_t *ctx)
#else
#define ENTRY(event, hook) ENTRY_(event, )
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
ENTRY(inet_sock_set_state, KIND_STATE_CHANGE)
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
ENTRY(tcp_retransmit_skb, KIND_RETRANSMIT)
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
ENTRY(tcp_retransmit_synack, KIND_SYNACK_RETRANSMIT)
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
ENTRY(tcp_send_reset, KIND_RESET_SENT)
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
ENTRY(tcp_receive_reset, KIND_RESET_RECEIVED)
{
#ifdef EMPTY
    return PASS_ON;
#endif
    return emit_sock(ctx, KIND_RESET_RECEIVED, (const void *)ARG(0), 0, 0, 0);
}
#endif

#ifdef HOOK_tcp_destroy_sock
// TP_PROTO(struct sock *sk)
ENTRY(tcp_destroy_sock, KIND_SOCK_DESTROY)
{
#ifdef EMPTY
    return PASS_ON;
#endif
    return emit_sock(ctx, KIND_SOCK_DESTROY, (const void *)ARG(0), 0, 0, 0);
}
#endif

#ifdef HOOK_tcp_probe
// TP_PROTO(struct sock *sk, const struct sk_buff *skb); snd_cwnd from struct tcp_sock
ENTRY(tcp_probe, KIND_PROBE)
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
