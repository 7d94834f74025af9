// A live libpcap consumer in C: what a C capture tool costs, for a like-for-like comparison with
// the tracepoint backend's C ring-buffer consumer (ringbuf_consumer.c). Run inside the capturing
// host's namespace (nsenter); built by harness/backends/pcap.py with gcc and -lpcap (libpcap-dev).
//
//   pcap_consumer IFACE EXPRESSION SNAPLEN BUFFER_BYTES TIMEOUT_MS CLIENT_ADDR SERVER_ADDR
//
// The capture is libpcap's default on Linux, as the Python agent opens it: an AF_PACKET socket
// with a TPACKET_V3 ring of BUFFER_BYTES, blocks retired after TIMEOUT_MS, the filter compiled to
// cBPF and attached in the kernel, SNAPLEN bytes kept, non-blocking, poll()ed with stdin.
// Every packet is decoded as it is read (Ethernet, IPv4, TCP) and counted by direction and by
// what its flags say about connection state: SYN, SYN-ACK, FIN, RST, other.
//
// Switched protocol (JSON lines; the same as harness/agents/pcap_capture.py --switched):
//   {"ready": true, "pid": N, "libpcap": "..."}   nothing open yet
//   "on"  -> opens the capture      -> {"on": true}
//   "off" -> reads the ring until every packet the kernel had counted at the "off" was read or
//            dropped (or the ring was quiet for longer than two block timeouts), closes the handle (no packet
//            socket left) -> {"off": true, "captured": n, "received": n, "dropped": n,
//            "not_tcp": n, "counts": {"client": {"syn": n, ...}, "server": {...}}}
//   stdin closed -> exit 0.
#include <arpa/inet.h>
#include <errno.h>
#include <pcap/pcap.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

enum { SYN, SYNACK, FIN, RST, OTHER, NKINDS };
static const char *kind_names[NKINDS] = {"syn", "synack", "fin", "rst", "other"};

struct state {
	uint32_t client, server; // network byte order
	uint64_t captured, not_tcp, counts[3][NKINDS]; // [0] from client, [1] from server, [2] other
};

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void on_packet(u_char *user, const struct pcap_pkthdr *h, const u_char *p)
{
	struct state *s = (struct state *)user;
	s->captured++;
	if (h->caplen < 14 + 20 || p[12] != 0x08 || p[13] != 0x00 || (p[14] >> 4) != 4 || p[23] != 6) {
		s->not_tcp++;
		return;
	}
	unsigned ihl = (p[14] & 0x0f) * 4;
	if (h->caplen < 14 + ihl + 14) {
		s->not_tcp++;
		return;
	}
	uint32_t src;
	memcpy(&src, p + 14 + 12, 4);
	uint8_t flags = p[14 + ihl + 13];
	int side = src == s->client ? 0 : src == s->server ? 1 : 2;
	int kind = flags & 0x04 ? RST : (flags & 0x02) ? ((flags & 0x10) ? SYNACK : SYN) : (flags & 0x01) ? FIN : OTHER;
	s->counts[side][kind]++;
}

static pcap_t *open_capture(const char *iface, const char *expression, int snaplen, int buffer, int timeout_ms,
			    char *error)
{
	pcap_t *p = pcap_create(iface, error);
	if (!p)
		return NULL;
	struct bpf_program filter;
	if (pcap_set_snaplen(p, snaplen) || pcap_set_promisc(p, 0) || pcap_set_timeout(p, timeout_ms) ||
	    pcap_set_buffer_size(p, buffer) || pcap_activate(p) < 0 ||
	    pcap_compile(p, &filter, expression, 1, PCAP_NETMASK_UNKNOWN) ||
	    pcap_setfilter(p, &filter) || pcap_setnonblock(p, 1, error)) {
		snprintf(error, PCAP_ERRBUF_SIZE, "%s", pcap_geterr(p));
		pcap_close(p);
		return NULL;
	}
	pcap_freecode(&filter);
	return p;
}

int main(int argc, char **argv)
{
	if (argc != 8) {
		fprintf(stderr, "usage: %s IFACE EXPRESSION SNAPLEN BUFFER_BYTES TIMEOUT_MS CLIENT SERVER\n", argv[0]);
		return 2;
	}
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) // dies with its runner
		return 1;
	signal(SIGINT, SIG_IGN); // the harness stops us by closing stdin
	const char *iface = argv[1], *expression = argv[2];
	int snaplen = atoi(argv[3]), buffer = atoi(argv[4]), timeout_ms = atoi(argv[5]);
	struct state s = {0};
	if (inet_pton(AF_INET, argv[6], &s.client) != 1 || inet_pton(AF_INET, argv[7], &s.server) != 1) {
		fprintf(stderr, "bad address\n");
		return 2;
	}
	printf("{\"ready\": true, \"pid\": %d, \"libpcap\": \"%s\"}\n", getpid(), pcap_lib_version());
	fflush(stdout);
	pcap_t *p = NULL;
	char error[PCAP_ERRBUF_SIZE], line[64];
	size_t have = 0;
	for (;;) {
		struct pollfd fds[2] = {{.fd = 0, .events = POLLIN}, {.fd = p ? pcap_get_selectable_fd(p) : -1, .events = POLLIN}};
		poll(fds, p ? 2 : 1, p ? timeout_ms : -1);
		if (p)
			while (pcap_dispatch(p, -1, on_packet, (u_char *)&s) > 0)
				;
		if (!(fds[0].revents & (POLLIN | POLLHUP)))
			continue;
		ssize_t n = read(0, line + have, sizeof line - have - 1);
		if (n <= 0)
			break;
		have += (size_t)n;
		char *nl;
		while ((nl = memchr(line, '\n', have))) {
			*nl = 0;
			if (!strcmp(line, "on") && !p) {
				memset(s.counts, 0, sizeof s.counts);
				s.captured = s.not_tcp = 0;
				p = open_capture(iface, expression, snaplen, buffer, timeout_ms, error);
				if (!p) {
					printf("{\"error\": \"cannot capture on %s: %s\"}\n", iface, error);
					fflush(stdout);
					return 2;
				}
				printf("{\"on\": true}\n");
			} else if (!strcmp(line, "off") && p) {
				// Traffic goes on while we drain: the target is what the kernel had counted when
				// the "off" came; later packets are the next window's and die with the socket.
				struct pcap_stat st = {0};
				pcap_stats(p, &st);
				unsigned target = st.ps_recv;
				double began = now_s(), last = began;
				for (;;) {
					struct pollfd fd = {.fd = pcap_get_selectable_fd(p), .events = POLLIN};
					poll(&fd, 1, timeout_ms);
					uint64_t before = s.captured;
					while (pcap_dispatch(p, -1, on_packet, (u_char *)&s) > 0)
						;
					if (s.captured != before)
						last = now_s();
					pcap_stats(p, &st);
					double t = now_s();
					if (s.captured + st.ps_drop >= target || t - last > 2 * timeout_ms / 1e3 + 0.1 ||
					    t - began > 60)
						break;
				}
				pcap_close(p);
				p = NULL;
				printf("{\"off\": true, \"captured\": %llu, \"received\": %u, \"dropped\": %u, "
				       "\"not_tcp\": %llu, \"counts\": {",
				       (unsigned long long)s.captured, st.ps_recv, st.ps_drop, (unsigned long long)s.not_tcp);
				static const char *sides[3] = {"client", "server", "other"};
				for (int d = 0; d < 3; d++) {
					printf("%s\"%s\": {", d ? ", " : "", sides[d]);
					for (int k = 0; k < NKINDS; k++)
						printf("%s\"%s\": %llu", k ? ", " : "", kind_names[k],
						       (unsigned long long)s.counts[d][k]);
					printf("}");
				}
				printf("}}\n");
			}
			fflush(stdout);
			have -= (size_t)(nl + 1 - line);
			memmove(line, nl + 1, have);
		}
		if (have >= sizeof line - 1)
			have = 0; // a line too long to be a command
	}
	if (p)
		pcap_close(p);
	return 0;
}
