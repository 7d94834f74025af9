// SPDX-License-Identifier: GPL-2.0
// tpbench: the `tracepoint` backend's C consumer of its BPF ring buffer (libbpf ring_buffer__*).
//
// What libbpf-tools do, and so the fair lower bound of what consuming every event costs (the
// Python consumer shows what a Python tool costs). It inherits the ring buffer map's fd from the
// harness, counts events in fixed arrays (memory does not grow with the event rate) and, when
// its stdin closes, drains the ring once more and prints one JSON object on stdout.
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

#define NSIDES 3
#define NKINDS 7
#define NSTATES 16
#define ATTR_SLOTS 4096 // distinct (side, kind, pid, comm): bounded; the rest counted as overflow

static uint64_t counts[NSIDES][NKINDS][NSTATES][NSTATES];
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

static int stdin_closed(void)
{
	struct pollfd p = { .fd = 0, .events = POLLIN };
	char buf[64];
	if (poll(&p, 1, 0) <= 0)
		return 0;
	return read(0, buf, sizeof(buf)) <= 0;
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
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	double cpu = ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
	printf("{\"events\": %llu, \"bad_records\": %llu, \"cpu_s\": %.6f, \"max_rss_kib\": %ld, \"counts\": [",
	       (unsigned long long)events, (unsigned long long)bad_records, cpu, vm_hwm_kib());
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
	printf("], \"attribution_overflow\": %llu}\n", (unsigned long long)attr_overflow);
	ring_buffer__free(rb);
	return 0;
}
