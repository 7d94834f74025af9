// SPDX-License-Identifier: GPL-2.0
// tpbench: the `tracepoint` backend's C consumer of its BPF ring buffer (libbpf ring_buffer__*).
//
// What libbpf-tools do, and so the fair lower bound of what consuming every event costs (the
// Python consumer shows what a Python tool costs). It inherits the ring buffer map's fd from the
// harness, counts events in fixed arrays (memory does not grow with the event rate) and, when
// its stdin closes, drains the ring once more and prints one JSON object on stdout.
//
// Per-flow matching (harness/analysis/flowmatch.py) needs events, not counts, so it samples: every event of
// a connection whose client port is a multiple of FLOW_SAMPLE is kept (time, side, kind, states,
// port) in a fixed array, the rest of the flows are only counted. A destroy whose socket's
// addresses tcp_disconnect() cleared carries port 0: the socket's kernel address, remembered from
// its earlier events, gives its port back (an event that carries no port for another reason is
// not the flow's as far as its fields say: per-flow matching reports it missing). Both tables are fixed: overflow is counted, never grown.
//
// usage: ringbuf_consumer MAP_FD
#include <bpf/libbpf.h>
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

// The record tracepoint.bpf.c writes; the two must agree (checked here and in the tests).
struct event {
	uint64_t ts_ns;
	uint64_t sk;
	uint32_t pid;
	uint8_t kind, side, oldstate, newstate;
	uint32_t saddr, daddr;
	uint16_t sport, dport;
	uint32_t extra;
	char comm[16];
};
_Static_assert(sizeof(struct event) == 56, "struct event must match tracepoint.bpf.c");

// The model's numbers come from harness/tcp.py's c_defines() as -D flags (harness/cbuild.py)
#if !defined(FLOW_SAMPLE) || !defined(NSTATES) || !defined(KIND_SOCK_DESTROY) || !defined(KIND_PROBE)
#error "FLOW_SAMPLE, NSTATES and KIND_* come from harness/tcp.py's c_defines() (build with harness/cbuild.py)"
#endif
#define NSIDES 3
#define NKINDS (KIND_PROBE + 1) // the last of tcp.EVENT_KINDS
#define ATTR_SLOTS 4096 // distinct (side, kind, pid, comm): bounded; the rest counted as overflow
#define FLOW_EVENTS 65536
#define SK_SLOTS 65536

static uint64_t counts[NSIDES][NKINDS][NSTATES][NSTATES];

struct flow_event {
	uint64_t ts_ns;
	uint16_t port; // the client's port: the flow's key with the server's fixed address and port
	uint8_t side, kind, oldstate, newstate;
};
static struct flow_event flow_events[FLOW_EVENTS];
static uint64_t nflow_events, flow_events_overflow, sk_overflow;

// tcp_v4_connect() enters SYN_SENT before inet_hash_connect() picks the port, so a client's
// CLOSE->SYN_SENT carries port 0 and only the socket's address says whose it is. The sockets
// that share an address (its memory reused) live one after another: connect c1 < SYN_SENT->* s1
// < c2 < s2 ..., so a socket's connect is the latest one on its address before its SYN_SENT->*.
// Per-CPU batches deliver them in any order, so both sides wait: each address keeps its last
// CONNECTS connect times, and each sampled SYN_SENT->* (an "open") takes the latest connect
// before it that has arrived, and any later-arriving connect closer to it. Opens are resolved
// when the consumer exits. (Pairing as they arrive gave a socket's flow the connect of the
// socket before it at the same address: one flow in ~100 runs, under load.)
#define CONNECTS 8
#define OPENS 16384
#define OPEN_WALK 8 // opens on one address a late connect is compared with, newest first

struct sk_port {
	uint64_t sk;
	uint64_t connects[CONNECTS]; // recent port-0 CLOSE->SYN_SENT times at this address (a ring)
	uint32_t next_connect;
	uint32_t last_open;          // 1 + index in opens[] of this address's newest; 0: none
	uint16_t port;               // 0: forgotten (destroyed)
};
static struct sk_port sk_ports[SK_SLOTS];

struct open {
	uint64_t syn_ts;     // the sampled SYN_SENT->* event
	uint64_t connect_ts; // the connect paired with it so far (0: none yet)
	uint32_t prev;       // 1 + index of the previous open at the same address; 0: none
	uint16_t port;
};
static struct open opens[OPENS];
static uint32_t nopens;

static struct sk_port *sk_slot(uint64_t sk, int insert)
{
	uint64_t h = (sk >> 6) * 0x9E3779B97F4A7C15ull >> 48; // slab objects: low bits carry nothing
	for (unsigned probe = 0; probe < 64; probe++) {
		struct sk_port *s = &sk_ports[(h + probe) & (SK_SLOTS - 1)];
		if (s->sk == sk)
			return s;
		if (!s->sk) {
			if (!insert)
				return NULL;
			s->sk = sk;
			return s;
		}
	}
	return NULL;
}

static void keep(uint64_t ts_ns, uint16_t port, uint8_t side, uint8_t kind, uint8_t oldstate, uint8_t newstate)
{
	if (nflow_events >= FLOW_EVENTS) {
		flow_events_overflow++;
		return;
	}
	flow_events[nflow_events++] = (struct flow_event){
		.ts_ns = ts_ns, .port = port, .side = side, .kind = kind, .oldstate = oldstate, .newstate = newstate,
	};
}

#define TCP_SYN_SENT 2
#define TCP_CLOSE 7

static void connect_seen(struct sk_port *s, uint64_t ts)
{
	s->connects[s->next_connect++ % CONNECTS] = ts;
	// the open it may belong to: the earliest at this address that follows it
	struct open *nearest = NULL;
	uint32_t idx = s->last_open;
	for (int step = 0; idx && step < OPEN_WALK; step++) {
		struct open *o = &opens[idx - 1];
		if (o->syn_ts > ts && (!nearest || o->syn_ts < nearest->syn_ts))
			nearest = o;
		idx = o->prev;
	}
	if (nearest && ts > nearest->connect_ts)
		nearest->connect_ts = ts;
}

static void open_seen(struct sk_port *s, uint64_t syn_ts, uint16_t port)
{
	if (nopens >= OPENS) {
		sk_overflow++;
		return;
	}
	struct open *o = &opens[nopens++];
	*o = (struct open){ .syn_ts = syn_ts, .port = port, .prev = s->last_open };
	s->last_open = nopens;
	for (int i = 0; i < CONNECTS; i++)
		if (s->connects[i] < syn_ts && s->connects[i] > o->connect_ts)
			o->connect_ts = s->connects[i];
}

// at exit: each sampled connect, with the port its socket got
static void resolve_opens(void)
{
	for (uint32_t i = 0; i < nopens; i++)
		if (opens[i].connect_ts)
			keep(opens[i].connect_ts, opens[i].port, 0, 0, TCP_CLOSE, TCP_SYN_SENT);
}

static void sample_flow(const struct event *e)
{
	uint16_t port = e->side == 0 ? e->sport : e->side == 1 ? e->dport : 0;
	struct sk_port *s;
	if (e->side == 0 && e->kind == 0 && e->oldstate == TCP_CLOSE && e->newstate == TCP_SYN_SENT && port == 0) {
		if (e->sk && (s = sk_slot(e->sk, 1)))
			connect_seen(s, e->ts_ns);
		else
			sk_overflow++;
		return;
	}
	if (e->side == 0 && e->kind == 0 && e->oldstate == TCP_SYN_SENT && e->sk && port && port % FLOW_SAMPLE == 0) {
		if ((s = sk_slot(e->sk, 1)))
			open_seen(s, e->ts_ns, port);
		else
			sk_overflow++;
	}
	if (port == 0) {
		// Only a destroy is resolved through the socket's address (tcp_disconnect() cleared it).
		// Other events with port 0 are the listener's, or (6.1) a passive child's LISTEN->SYN_RECV,
		// which inet_csk_clone_lock() reports before copying the peer's port: resolving those by
		// address would meet entries that per-CPU batches deliver late (a socket freed on one CPU,
		// its memory reused on the other) and charge them to the wrong flow.
		if (e->kind != KIND_SOCK_DESTROY)
			return;
		s = e->sk ? sk_slot(e->sk, 0) : NULL;
		if (!s || !s->port)
			return;
		port = s->port;
		if (e->kind == KIND_SOCK_DESTROY)
			s->port = 0;
	} else if (port % FLOW_SAMPLE == 0) {
		if (e->sk) {
			s = sk_slot(e->sk, 1);
			if (s)
				s->port = e->kind == KIND_SOCK_DESTROY ? 0 : port;
			else
				sk_overflow++;
		}
	} else {
		return;
	}
	keep(e->ts_ns, port, e->side, e->kind, e->oldstate, e->newstate);
}

static uint64_t events, bad_records, attr_overflow;

struct attribution {
	uint64_t n;
	uint32_t pid;
	uint8_t side, kind, used;
	char comm[16];
};
static struct attribution attrs[ATTR_SLOTS];

static void attribute(const struct event *e)
{
	uint32_t h = e->pid * 2654435761u ^ (uint32_t)e->side << 24 ^ (uint32_t)e->kind << 16;
	for (unsigned i = 0; i < 16; i++)
		h = h * 31 + (uint8_t)e->comm[i];
	for (unsigned probe = 0; probe < 64; probe++) {
		struct attribution *a = &attrs[(h + probe) & (ATTR_SLOTS - 1)];
		if (!a->used) {
			a->used = 1;
			a->pid = e->pid;
			a->side = e->side;
			a->kind = e->kind;
			memcpy(a->comm, e->comm, sizeof(a->comm));
			a->n = 1;
			return;
		}
		if (a->pid == e->pid && a->side == e->side && a->kind == e->kind &&
		    !memcmp(a->comm, e->comm, sizeof(a->comm))) {
			a->n++;
			return;
		}
	}
	attr_overflow++;
}

// A record holds one event, or a batch of them (BATCH > 1 in tracepoint.bpf.c).
static int on_event(void *ctx, void *data, size_t size)
{
	(void)ctx;
	if (size == 0 || size % sizeof(struct event)) {
		bad_records++;
		return 0;
	}
	for (const struct event *e = data; (const char *)e < (const char *)data + size; e++) {
		if (e->side >= NSIDES || e->kind >= NKINDS) {
			bad_records++;
			continue;
		}
		events++;
		counts[e->side][e->kind][e->oldstate & (NSTATES - 1)][e->newstate & (NSTATES - 1)]++;
		attribute(e);
		sample_flow(e);
	}
	return 0;
}

static void print_comm(const char *comm)
{
	putchar('"');
	for (unsigned i = 0; i < 16 && comm[i]; i++) {
		char c = comm[i];
		putchar(c < 0x20 || c > 0x7e || c == '"' || c == '\\' ? '?' : c);
	}
	putchar('"');
}

// Peak resident memory of this program. Not ru_maxrss: exec keeps the high-water mark of the
// forked parent's image (a Python process with LLVM loaded), which would be reported instead.
static long vm_hwm_kib(void)
{
	char line[256];
	long kib = -1;
	FILE *f = fopen("/proc/self/status", "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmHWM: %ld kB", &kib) == 1)
			break;
	fclose(f);
	return kib;
}

// Records the harness read from the BPF side's staging map at detach (each CPU's partial batch)
// arrive on stdin before it closes; they are taken like the ring's, after its last drain.
#define STDIN_MAX (1 << 20)
static char stdin_records[STDIN_MAX];
static size_t nstdin;

static int stdin_closed(void)
{
	struct pollfd p = { .fd = 0, .events = POLLIN };
	char discard[4096];
	if (poll(&p, 1, 0) <= 0)
		return 0;
	ssize_t n = nstdin < STDIN_MAX ? read(0, stdin_records + nstdin, STDIN_MAX - nstdin) : read(0, discard, sizeof(discard));
	if (n <= 0)
		return 1;
	if (nstdin < STDIN_MAX)
		nstdin += (size_t)n;
	else
		bad_records++;
	return 0;
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s MAP_FD\n", argv[0]);
		return 2;
	}
	struct ring_buffer *rb = ring_buffer__new(atoi(argv[1]), on_event, NULL, NULL);
	if (!rb) {
		fprintf(stderr, "ring_buffer__new(fd %s): %s\n", argv[1], strerror(errno));
		return 1;
	}
	printf("{\"ready\": true, \"pid\": %d}\n", getpid());
	fflush(stdout);
	while (!stdin_closed()) {
		// the BPF side wakes us once per WAKEUP_BATCH events; the timeout drains a quiet tail
		int err = ring_buffer__poll(rb, 20);
		if (err < 0 && err != -EINTR) {
			fprintf(stderr, "ring_buffer__poll: %s\n", strerror(-err));
			return 1;
		}
		ring_buffer__consume(rb);
	}
	ring_buffer__consume(rb);
	if (nstdin)
		on_event(NULL, stdin_records, nstdin - nstdin % sizeof(struct event));
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	double cpu = ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
	printf("{\"events\": %llu, \"bad_records\": %llu, \"staged_taken\": %zu, \"cpu_s\": %.6f, \"max_rss_kib\": %ld, \"counts\": [",
	       (unsigned long long)events, (unsigned long long)bad_records, nstdin / sizeof(struct event), cpu, vm_hwm_kib());
	const char *sep = "";
	for (int s = 0; s < NSIDES; s++)
		for (int k = 0; k < NKINDS; k++)
			for (int o = 0; o < NSTATES; o++)
				for (int n = 0; n < NSTATES; n++)
					if (counts[s][k][o][n]) {
						printf("%s[%d, %d, %d, %d, %llu]", sep, s, k, o, n,
						       (unsigned long long)counts[s][k][o][n]);
						sep = ", ";
					}
	printf("], \"attribution\": [");
	sep = "";
	for (int i = 0; i < ATTR_SLOTS; i++)
		if (attrs[i].used) {
			printf("%s[%d, %d, %u, ", sep, attrs[i].side, attrs[i].kind, attrs[i].pid);
			print_comm(attrs[i].comm);
			printf(", %llu]", (unsigned long long)attrs[i].n);
			sep = ", ";
		}
	resolve_opens();
	printf("], \"attribution_overflow\": %llu, \"flow_sample\": %d, \"flow_events\": [",
	       (unsigned long long)attr_overflow, FLOW_SAMPLE);
	for (uint64_t i = 0; i < nflow_events; i++) {
		const struct flow_event *f = &flow_events[i];
		printf("%s[%llu, %u, %u, %u, %u, %u]", i ? ", " : "", (unsigned long long)f->ts_ns, f->side,
		       f->kind, f->oldstate, f->newstate, f->port);
	}
	printf("], \"flow_events_overflow\": %llu, \"flow_sk_overflow\": %llu}\n",
	       (unsigned long long)flow_events_overflow, (unsigned long long)sk_overflow);
	ring_buffer__free(rb);
	return 0;
}
