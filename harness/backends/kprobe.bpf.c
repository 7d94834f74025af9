// SPDX-License-Identifier: GPL-2.0
// tpbench `kprobe` and `fentry` backends: the functions behind the seed's TCP events, through bcc.
//
//   tcp_set_state(sk, state)        the pre-4.16 tcplife way: the new state is the argument, the
//                                   old one is read from sk->__sk_common.skc_state at entry
//   inet_sk_set_state(sk, state)    the states tcp_set_state never sets: a passive child's
//                                   SYN_RECV (inet_csk_clone_lock) and a failed listen's CLOSE
//   inet_csk_listen_start(sk)       CLOSE->LISTEN (stored by inet_sk_state_store, an unhookable
//                                   site beside tcp_set_state's own use of it)
//   __tcp_retransmit_skb / tcp_retransmit_skb, tcp_rtx_synack, tcp_v4_send_reset,
//   tcp_send_active_reset, tcp_reset, tcp_v4_destroy_sock, tcp_rcv_established
//
// Every field comes from struct sock (or request_sock / sk_buff) as laid out in the headers bcc
// compiles with: exact headers give exact offsets, fallback headers may not. So with CHECK the
// tracepoints for the same events are attached as witnesses (tracepoint.bpf.c's argument decoding,
// included below with TP_REPORT = witness): the kprobe leaves what it read in `pending`, keyed by
// (socket, kind, CPU), and the tracepoint, which fires later inside the same function, compares
// field by field. Mismatches are counted per kind and field, and the first one kept whole.
//
// Compile-time parameters (-D), besides tcp_events.bpf.h's:
//   FENTRY                 BPF trampoline programs (KFUNC_PROBE; 5.5+, needs BTF) instead of kprobes
//   KHOOK_<name>           compile this hook's program; FN_<name> is its resolved function (fentry
//                          attaches by the program's name, so the name must be the symbol's)
//   CHECK                  attach the witnesses (HOOK_<tracepoint> and TP_* as in tracepoint.bpf.c)

#include "tcp_events.bpf.h"
#include <net/sock.h>
#include <net/inet_sock.h>
#include <net/request_sock.h>
#include <linux/tcp.h>
#include <linux/ip.h>
#include <linux/skbuff.h>

// One body per hook (do_<hook>), entered two ways. bcc rewrites the extra parameters of a
// pt_regs function into register reads only when the function is written out literally (not from
// a macro), so the kprobe entry reads its registers itself with PT_REGS_PARMn.
#ifdef FENTRY
// Token pasting in KFUNC_PROBE would not expand FN_<hook>: one level of indirection does. The
// program is named kfunc__<function>, which is how bcc finds the function to attach to.
#define KFUNC_(fn, args...) KFUNC_PROBE(fn, args)
#define ENTRY1(hook, t1) \
    KFUNC_(FN_##hook, t1 a1) { return do_##hook(ctx, a1); }
#define ENTRY2(hook, t1, t2) \
    KFUNC_(FN_##hook, t1 a1, t2 a2) { return do_##hook(ctx, a1, a2); }
#else
// The loader attaches probe_<hook> to the function kallsyms resolved (never a .isra clone, whose
// registers need not follow the C signature).
#define ENTRY1(hook, t1) \
    int probe_##hook(struct pt_regs *ctx) { return do_##hook(ctx, (t1)PT_REGS_PARM1(ctx)); }
#define ENTRY2(hook, t1, t2)                                                   \
    int probe_##hook(struct pt_regs *ctx)                                      \
    {                                                                          \
        return do_##hook(ctx, (t1)PT_REGS_PARM1(ctx), (t2)PT_REGS_PARM2(ctx)); \
    }
#endif

#ifdef CHECK
// What a kprobe read, waiting for the tracepoint of the same event.
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
// per kind: [0] matched, [1] tracepoint without a kprobe reading, [2] kprobe reading overwritten
// unpaired, then one slot per field that differed (order: FIELD_NAMES in kprobe.py)
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
    if (!sk)
        return; // a socketless RST has no tracepoint on 6.1, and no key to pair by
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

#define TP_REPORT witness
#include "tracepoint.bpf.c"
#define REMEMBER(...) remember(__VA_ARGS__)
#else
#define REMEMBER(...) do {} while (0)
#endif

// The socket's own addresses: sock_common's receive and peer addresses and remote port, and the
// local port as the tracepoints read it, inet_sock's inet_sport. Not skc_num (tcplife's lport):
// tcp_set_state(TCP_CLOSE) unhashes the socket and zeroes inet_num, so at tcp_v4_destroy_sock
// skc_num reads 0 while inet_sport still holds the port; the witness caught exactly that on 6.1
// (399 of 400 destroy events). A request_sock is no inet_sock: its local port is ir_num (skc_num).
// Explicit reads, so kprobe and fentry programs run the same code.
struct sockfields {
    u32 saddr, daddr;
    u16 sport, dport, family;
    u8 state;
};

static __always_inline void read_common(const struct sock *sk, struct sockfields *f)
{
    u16 dport_be = 0;
    bpf_probe_read_kernel(&f->family, sizeof(f->family), &sk->__sk_common.skc_family);
    bpf_probe_read_kernel(&f->state, sizeof(f->state), (const void *)&sk->__sk_common.skc_state);
    bpf_probe_read_kernel(&f->saddr, sizeof(f->saddr), &sk->__sk_common.skc_rcv_saddr);
    bpf_probe_read_kernel(&f->daddr, sizeof(f->daddr), &sk->__sk_common.skc_daddr);
    bpf_probe_read_kernel(&dport_be, sizeof(dport_be), &sk->__sk_common.skc_dport);
    f->dport = bpf_ntohs(dport_be);
}

static __always_inline void read_sock(const struct sock *sk, struct sockfields *f)
{
    u16 sport_be = 0;
    read_common(sk, f);
    bpf_probe_read_kernel(&sport_be, sizeof(sport_be), &((const struct inet_sock *)sk)->inet_sport);
    f->sport = bpf_ntohs(sport_be);
}

static __always_inline void read_request(const struct request_sock *req, struct sockfields *f)
{
    read_common((const struct sock *)req, f);
    bpf_probe_read_kernel(&f->sport, sizeof(f->sport), &req->__req_common.skc_num);
}

static __always_inline int is_tcp(const struct sock *sk)
{
    // 5.6+: sk_protocol is a u16 (before, a bitfield, whose address cannot be taken)
    u16 protocol = 0;
    bpf_probe_read_kernel(&protocol, sizeof(protocol), &sk->sk_protocol);
    return protocol == IPPROTO_TCP;
}

static __always_inline int emit_sock(void *ctx, u8 kind, const struct sock *sk, int newstate_or_minus1,
                                     u32 extra)
{
#ifdef EMPTY
    return PASS_ON;
#endif
    struct sockfields f = {};
    read_sock(sk, &f);
    int oldstate = f.state;
    // retransmit/reset/destroy/probe: old == new == the socket's state, as the tracepoints report
    int newstate = newstate_or_minus1 < 0 ? f.state : newstate_or_minus1;
    if (kind == KIND_RESET_RECEIVED || kind == KIND_SOCK_DESTROY || kind == KIND_PROBE)
        oldstate = newstate = 0; // those tracepoints carry no state (tracepoint.bpf.c passes 0, 0)
    REMEMBER(kind, sk, f.family, f.saddr, f.daddr, f.sport, f.dport, oldstate, newstate, extra);
    return handle(ctx, kind, f.family, f.saddr, f.daddr, f.sport, f.dport, sk, oldstate, newstate,
                  extra);
}

#ifdef KHOOK_state
static __always_inline int do_state(void *ctx, struct sock *sk, int state)
{
    return emit_sock(ctx, KIND_STATE_CHANGE, sk, state, 0);
}
ENTRY2(state, struct sock *, int)
#endif

#ifdef KHOOK_state_other
static __always_inline int do_state_other(void *ctx, struct sock *sk, int state)
{
    if (!is_tcp(sk))
        return PASS_ON; // inet_sk_set_state serves every inet protocol
    return emit_sock(ctx, KIND_STATE_CHANGE, sk, state, 0);
}
ENTRY2(state_other, struct sock *, int)
#endif

#ifdef KHOOK_listen
static __always_inline int do_listen(void *ctx, struct sock *sk)
{
    if (!is_tcp(sk))
        return PASS_ON;
    return emit_sock(ctx, KIND_STATE_CHANGE, sk, TCP_LISTEN, 0);
}
ENTRY1(listen, struct sock *)
#endif

#ifdef KHOOK_retransmit
static __always_inline int do_retransmit(void *ctx, struct sock *sk, struct sk_buff *skb)
{
    // at entry: an attempt. The 6.1 tracepoint fires only for a retransmission that left.
    return emit_sock(ctx, KIND_RETRANSMIT, sk, -1, 0);
}
ENTRY2(retransmit, struct sock *, struct sk_buff *)
#endif

#ifdef KHOOK_synack
static __always_inline int do_synack(void *ctx, const struct sock *sk, struct request_sock *req)
{
#ifdef EMPTY
    return PASS_ON;
#endif
    // sk is the listener; the addresses are the request's (inet_request_sock lives in its
    // sock_common: ir_loc_addr = skc_rcv_saddr, ir_num = skc_num, ir_rmt_port = skc_dport)
    struct sockfields f = {};
    read_request(req, &f);
    REMEMBER(KIND_SYNACK_RETRANSMIT, sk, f.family, f.saddr, f.daddr, f.sport, f.dport, 0, 0, 0);
    return handle(ctx, KIND_SYNACK_RETRANSMIT, f.family, f.saddr, f.daddr, f.sport, f.dport, sk,
                  0, 0, 0);
}
ENTRY2(synack, const struct sock *, struct request_sock *)
#endif

#ifdef KHOOK_send_reset
static __always_inline int do_send_reset(void *ctx, const struct sock *sk, struct sk_buff *skb)
{
#ifdef EMPTY
    return PASS_ON;
#endif
    if (sk)
        return emit_sock(ctx, KIND_RESET_SENT, sk, -1, 0);
    // No socket (a segment to a closed port): the RST answers the segment, so its sender is the
    // segment's destination. Headers from the skb: head + network/transport header offsets.
    unsigned char *head = 0;
    u16 network = 0, transport = 0;
    bpf_probe_read_kernel(&head, sizeof(head), &skb->head);
    bpf_probe_read_kernel(&network, sizeof(network), &skb->network_header);
    bpf_probe_read_kernel(&transport, sizeof(transport), &skb->transport_header);
    struct iphdr ip = {};
    struct tcphdr th = {};
    bpf_probe_read_kernel(&ip, sizeof(ip), head + network);
    bpf_probe_read_kernel(&th, sizeof(th), head + transport);
    return handle(ctx, KIND_RESET_SENT, AF_INET, ip.daddr, ip.saddr, bpf_ntohs(th.dest),
                  bpf_ntohs(th.source), 0, 0, 0, 0);
}
ENTRY2(send_reset, const struct sock *, struct sk_buff *)
#endif

#ifdef KHOOK_active_reset
static __always_inline int do_active_reset(void *ctx, struct sock *sk)
{
    return emit_sock(ctx, KIND_RESET_SENT, sk, -1, 0);
}
ENTRY1(active_reset, struct sock *)
#endif

#ifdef KHOOK_receive_reset
static __always_inline int do_receive_reset(void *ctx, struct sock *sk)
{
    return emit_sock(ctx, KIND_RESET_RECEIVED, sk, -1, 0);
}
ENTRY1(receive_reset, struct sock *)
#endif

#ifdef KHOOK_destroy
static __always_inline int do_destroy(void *ctx, struct sock *sk)
{
    return emit_sock(ctx, KIND_SOCK_DESTROY, sk, -1, 0);
}
ENTRY1(destroy, struct sock *)
#endif

#ifdef KHOOK_probe
static __always_inline int do_probe(void *ctx, struct sock *sk, struct sk_buff *skb)
{
    u32 cwnd = 0;
    bpf_probe_read_kernel(&cwnd, sizeof(cwnd), &((struct tcp_sock *)sk)->snd_cwnd);
    return emit_sock(ctx, KIND_PROBE, sk, -1, cwnd);
}
ENTRY2(probe, struct sock *, struct sk_buff *)
#endif
