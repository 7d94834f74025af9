// SPDX-License-Identifier: GPL-2.0
// tpbench: what every bcc-based TCP observer shares, whatever it hooks (tracepoints in
// tracepoint.bpf.c, kprobes/fentry in kprobe.bpf.c): the 56-byte event record, the maps, and
// handle(), which filters by the topology's addresses and then counts (MODE_AGGREGATE) or
// streams (ring buffer with per-CPU batching, or perf buffer). A probe only decodes its hook's
// arguments into handle()'s parameters, so both backends are measured through identical code.
//
// Compile-time parameters (-D), set by harness/backends/bpf_session.py:
//   EMPTY, MODE_AGGREGATE, TRANSPORT_RINGBUF, RINGBUF_PAGES, WAKEUP_BATCH, BATCH,
//   CLIENT_ADDR, SERVER_ADDR  (see tracepoint.bpf.c)
#ifndef TPBENCH_TCP_EVENTS_BPF_H
#define TPBENCH_TCP_EVENTS_BPF_H

#include <uapi/linux/ptrace.h>
#include <uapi/linux/in.h>
#include <linux/socket.h>

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
// This topology's sockets by kernel address -> side. tcp_disconnect() (a SO_LINGER {1,0} close, a
// failed connect) clears a socket's local address before tcp_destroy_sock fires, so addresses
// alone cannot say whose destroy it is (measured: 30,000 per resets trial went to neither side). A socket is
// remembered at birth (its first state change, out of CLOSE or LISTEN, still carries the pair's
// addresses) and forgotten when destroyed; LRU keeps the map bounded whatever the rate.
BPF_TABLE("lru_hash", u64, u8, our_sockets, 65536);
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
// batches a CPU emits per forced consumer wake-up: a quarter of the ring (1,170 for 8 MiB)
#define WAKE_BATCHES (RINGBUF_PAGES * 4096 / 4 / (BATCH * sizeof(struct event)) + 1)
#endif
#else
BPF_PERF_OUTPUT(events);
#endif
#endif

#ifdef NESTABLE
// raw_tp and tp_btf programs are guarded only against themselves, so one of ours may interrupt
// another on the same CPU (a softirq state change inside a process-context one): per-CPU
// counters then need atomic adds, and only the outermost program on a CPU may use its staging
// batch (`nesting` says whether one is using it; a nested program reserves its own record).
#define ADD(counter, n) __sync_fetch_and_add((counter), (n))
#if defined(TRANSPORT_RINGBUF) && BATCH > 1 && !defined(MODE_AGGREGATE)
BPF_PERCPU_ARRAY(nesting, u32, 1);
#endif
#else
// classic tracepoints and kprobes never nest on a CPU (bpf_prog_active): plain per-CPU adds
#define ADD(counter, n) (*(counter) += (n))
#endif

static __always_inline void bump(u64 *counter)
{
    if (counter)
        ADD(counter, 1);
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
    u64 sk_key = (u64)sk;
    u32 side = family != AF_INET ? 2 : saddr == CLIENT_ADDR ? 0 : saddr == SERVER_ADDR ? 1 : 2;
    if (side == 2) {
        // The local address is not the pair's: another host's traffic, or one of ours whose
        // address tcp_disconnect() has cleared (its destroy then shows saddr 0.0.0.0). Only a
        // cleared address consults the socket's identity: a socket whose destroy was missed
        // leaves a stale entry, and the kernel reuses its memory for other sockets (seen: a
        // loopback socket of the host counted as ours when every foreign event was looked up).
        u8 *known = (sk_key && saddr == 0) ? our_sockets.lookup(&sk_key) : 0;
        if (known) {
            side = *known;
        } else if (family == AF_INET && saddr == 0 && daddr == SERVER_ADDR) {
            side = 0; // cleared local address, and a topology has two hosts: the server's peer
        } else if (family == AF_INET && saddr == 0 && daddr == CLIENT_ADDR) {
            side = 1;
        } else if (family != AF_INET || (daddr != CLIENT_ADDR && daddr != SERVER_ADDR)) {
            u32 key = kind;
            bump(filtered.lookup(&key));
            return PASS_ON;
        } // else: a foreign local address talking to the pair: counted, as side "other"
    } else if (sk_key && kind == KIND_STATE_CHANGE && (oldstate == 7 /* TCP_CLOSE */ ||
                                                        oldstate == 10 /* TCP_LISTEN */)) {
        u8 remembered = side;
        our_sockets.update(&sk_key, &remembered);
    }
    if (sk_key && kind == KIND_SOCK_DESTROY)
        our_sockets.delete(&sk_key);
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
    u32 *busy = 0;
#ifdef NESTABLE
    busy = nesting.lookup(&zero);
    if (!busy || *busy)
        b = 0; // interrupting the program that stages on this CPU: a record of its own
    else
        *busy = 1;
    asm volatile("" ::: "memory"); // claim the batch before reading its fill level
#endif
    u32 slot = 0;
    struct event *e;
    if (b) {
        slot = b->n & (BATCH - 1); // BATCH is a power of two; the mask bounds it for the verifier
        e = &b->ev[slot];
    } else {
        e = events.ringbuf_reserve(sizeof(struct event));
        if (!e) {
            bump(lost.lookup(&zero));
            return PASS_ON;
        }
    }
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
    if (!b) {
        events.ringbuf_submit(e, BPF_RB_NO_WAKEUP);
        return PASS_ON;
    }
    if (slot + 1 < BATCH) {
        b->n = slot + 1;
    } else {
        b->n = 0;
        // Wake-ups: the consumer drains on its 20 ms poll timeout by itself; a CPU forces one
        // only after emitting a quarter of the ring since its last (WAKE_BATCHES). The default
        // (adaptive: wake whenever the consumer has caught up, which a C consumer always has)
        // cost ~300 ns per event here, 10 us per batch: the wake-up's irq_work interrupt inside
        // a VM (measured: stream 419 ns/event adaptive, 121 with no wake-ups, 104 with no output
        // at all; churn, 40k connections, 3 trials each).
        u64 flags = BPF_RB_NO_WAKEUP;
        u64 *batches = unwoken.lookup(&zero);
        if (batches && ++(*batches) >= WAKE_BATCHES) {
            *batches = 0;
            flags = BPF_RB_FORCE_WAKEUP;
        }
        if (events.ringbuf_output(&b->ev[0], BATCH * sizeof(struct event), flags) != 0) {
            u64 *dropped = lost.lookup(&zero);
            if (dropped)
                ADD(dropped, BATCH);
        }
    }
    if (busy) {
        asm volatile("" ::: "memory");
        *busy = 0;
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

#endif // TPBENCH_TCP_EVENTS_BPF_H
