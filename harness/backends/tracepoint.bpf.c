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

// The record, maps and handle() are shared with the kprobe backend: tcp_events.bpf.h (inlined
// by the loader, bpf_source() in bpf_build.py: bcc rewrites map calls only in its main file).
#include "tcp_events.bpf.h"

#ifdef NEED_SK_RST_REASON_STUB
// 6.10+ formats name this enum; fallback (6.1) headers lack it. Only its size (4) matters here.
enum sk_rst_reason { TPBENCH_SK_RST_REASON_NOT_SPECIFIED = 0 };
#endif

// What each probe does with its decoded arguments: handle() here. kprobe.bpf.c includes this
// file with TP_REPORT defined as its witness, which compares the kprobe's struct reads with the
// tracepoint's arguments for the same event instead of emitting it twice.
#ifndef TP_REPORT
#define TP_REPORT handle
#endif

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
    return TP_REPORT(args, KIND_STATE_CHANGE, args->family, s, d, args->sport, args->dport,
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
    return TP_REPORT(args, KIND_RETRANSMIT, args->family, s, d, args->sport, args->dport,
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
    return TP_REPORT(args, KIND_SYNACK_RETRANSMIT, args->family, s, d, args->sport, args->dport,
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
    return TP_REPORT(args, KIND_RESET_SENT, family, s, d, sport, dport, args->skaddr, args->state,
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
    return TP_REPORT(args, KIND_RESET_RECEIVED, args->family, s, d, args->sport, args->dport,
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
    return TP_REPORT(args, KIND_SOCK_DESTROY, args->family, s, d, args->sport, args->dport,
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
    return TP_REPORT(args, KIND_PROBE, args->family, s, d, args->sport, args->dport, sk, 0, 0,
                  args->snd_cwnd);
}
#endif
