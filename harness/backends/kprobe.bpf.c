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
// Token pasting would not expand FN_<hook>: one level of indirection does. The program is named
// fentry__<function>, which bcc does not attach by itself (kfunc__ it would, all or nothing):
// kprobe.py loads and attaches each one, keeping those the kernel accepts.
#define FENTRY_PROG(fn, args...) BPF_PROG(fentry__##fn, ##args)
#define KFUNC_(fn, args...) FENTRY_PROG(fn, args)
// fentry programs must return 0 (the verifier enforces it from 6.x: "R0 has smin=1 smax=1 should
// have been in [0, 0]" on 6.12), whatever handle() passes on for tracepoints.
#define ENTRY1(hook, t1) \
    KFUNC_(FN_##hook, t1 a1) { do_##hook(ctx, a1); return 0; }
#define ENTRY2(hook, t1, t2) \
    KFUNC_(FN_##hook, t1 a1, t2 a2) { do_##hook(ctx, a1, a2); return 0; }
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
#include "witness.bpf.h"
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
    if (f->state == TCP_TIME_WAIT || f->state == TCP_NEW_SYN_RECV) {
        // not a full socket (no inet_sock behind sock_common): its local port is skc_num, which
        // is what 6.10+'s tcp_send_reset reports for it (from the segment being answered)
        bpf_probe_read_kernel(&f->sport, sizeof(f->sport), &sk->__sk_common.skc_num);
        return;
    }
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
    // 6.10+ fires tcp_send_reset for this RST too, inside this function (witness.bpf.h pairs it)
    REMEMBER(KIND_RESET_SENT, 0, AF_INET, ip.daddr, ip.saddr, bpf_ntohs(th.dest), bpf_ntohs(th.source), 0, 0, 0);
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
