/* churn agent in C: the same command line, behaviour and JSON lines as harness/agents/traffic/churn.py.
 *
 * Why C: a Python churn client reached ~57% of a minimal C pair's rate on this machine (2 vCPUs,
 * where interpreter time competes with the softirq work of the veth). The generator must not be
 * the bottleneck of the thing it measures, so the hot loop is C; the Python agent stays as the
 * readable reference (generator=python).
 *
 * server: listen on ADDRESS:PORT, accept COUNT connections; per connection read BYTES, write BYTES
 *         back, then close at once (--closer server) or after the client's FIN (--closer client).
 *         Stops early when stdin closes. Result: {"accepted", "closed", "errors", "pid", "stopped_early"}.
 * client: CONCURRENCY forked workers share COUNT connections (connect, send BYTES, read BYTES,
 *         close first or read to EOF then close), paced to --rate connections/s in total if given.
 *         Result: {"connections", "failures", "duration_ns", "pids", "latency_log2_ns", "cpu_ticks",
 *         "flows"}: flows is the per-flow ground truth for a sample of the connections, those whose
 *         client port is a multiple of FLOW_SAMPLE ([port, CLOCK_MONOTONIC ns at connect()], at most
 *         FLOW_SLOTS per worker, the rest counted in "flows_overflow"), for harness/analysis/flowmatch.py.
 *
 * Live mode (--count 0 on both sides): no end of its own; the client's workers connect until the
 * harness closes the client's stdin (harness/workloads/live.py, the toggled measurement).
 * --counter FILE: each worker adds every finished connection to its own 64-bit slot of FILE
 *         (mmap'd, one cache line per worker so the workers never share a line): the harness reads
 *         the live operation count without a syscall into this process or a process per sample.
 * Every process sets PR_SET_PDEATHSIG: a worker dies with its client, an agent with its runner,
 * even when the runner is SIGKILLed (no generator may outlive its run and skew the next one).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_ERRNO 256
#define BUCKETS 64
#define MAX_WORKERS 256
#ifndef FLOW_SAMPLE /* harness/tcp.py's, passed by harness/cbuild.py as -DFLOW_SAMPLE=N */
#error "FLOW_SAMPLE comes from harness/tcp.py's c_defines() (build with harness/cbuild.py)"
#endif
#define FLOW_SLOTS 4096

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int bit_length(uint64_t v) { return v ? 64 - __builtin_clzll(v) : 0; }

static const char *errname(int e) {
    const char *name = strerrorname_np(e);
    return name ? name : "EUNKNOWN";
}

static void cpu_ticks(char *out, size_t size) {
    static const char *fields[] = {"user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"};
    unsigned long long v[8] = {0};
    FILE *f = fopen("/proc/stat", "r");
    if (!f || fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4],
                     &v[5], &v[6], &v[7]) != 8) {
        fprintf(stderr, "cannot read /proc/stat\n");
        exit(1);
    }
    fclose(f);
    size_t n = 0;
    n += snprintf(out + n, size - n, "{");
    for (int i = 0; i < 8; i++)
        n += snprintf(out + n, size - n, "%s\"%s\": %llu", i ? ", " : "", fields[i], v[i]);
    /* every task's runtime in ns, where cgroup v1 cpuacct exists (see harness/counters.py) */
    unsigned long long task_ns;
    f = fopen("/sys/fs/cgroup/cpuacct/cpuacct.usage", "r");
    if (f) {
        if (fscanf(f, "%llu", &task_ns) == 1)
            n += snprintf(out + n, size - n, ", \"task_ns\": %llu", task_ns);
        fclose(f);
    }
    /* the run's own group (harness/system.py run_cgroup), which this agent inherited: the rest
       of task_ns is the host's CPU that is not the run's */
    char line[512], path[600];
    f = fopen("/proc/self/cgroup", "r");
    while (f && fgets(line, sizeof line, f)) {
        char *group = strstr(line, ":cpuacct:/tpbench-");
        if (!group) continue;
        group += strlen(":cpuacct:");
        group[strcspn(group, "\n")] = 0;
        snprintf(path, sizeof path, "/sys/fs/cgroup/cpuacct%s/cpuacct.usage", group);
        FILE *g = fopen(path, "r");
        if (g) {
            if (fscanf(g, "%llu", &task_ns) == 1)
                n += snprintf(out + n, size - n, ", \"run_ns\": %llu", task_ns);
            fclose(g);
        }
        break;
    }
    if (f) fclose(f);
    snprintf(out + n, size - n, "}");
}

static struct sockaddr_in target;
static long count, size; /* count 0: live mode, until stdin closes */
static const char *counter_path;
#define COUNTER_STRIDE 8 /* uint64 slots per worker: one 64-byte cache line each */

/* Die with the parent (the runner, or the client for a worker), including the race where it died
 * before the prctl: then the parent is already someone else. */
static void die_with_parent(pid_t parent) {
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent) _exit(1);
}
static int closer_is_client, concurrency = 1;
static double rate;

static void write_all(int fd, const char *buf, long len) {
    while (len > 0) {
        ssize_t n = write(fd, buf, (size_t)len);
        if (n < 0) {
            if (errno == EINTR) continue;
            return;
        }
        buf += n;
        len -= n;
    }
}

/* ---------------------------------------------------------------- server */

struct conn {
    long to_read;
    int waiting_for_eof;
};

static int serve(void) {
    int one = 1, listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(listener, (struct sockaddr *)&target, sizeof target) || listen(listener, 4096)) {
        fprintf(stderr, "bind/listen: %s\n", strerror(errno));
        return 1;
    }
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = listener};
    epoll_ctl(ep, EPOLL_CTL_ADD, listener, &ev);
    ev.data.fd = 0;
    epoll_ctl(ep, EPOLL_CTL_ADD, 0, &ev);
    char *response = malloc(size ? (size_t)size : 1);
    memset(response, 'r', size ? (size_t)size : 1);
    static char buf[65536];
    static struct conn conns[1 << 16]; /* indexed by fd */
    long errors[MAX_ERRNO + 2] = {0};  /* +0..255 errno, 256 early_eof, 257 unexpected_data */
    int fast = size == 0 && !closer_is_client;
    long accepted = 0, closed = 0;
    int stop = 0;
    printf("{\"ready\": true, \"pid\": %d}\n", getpid());
    fflush(stdout);
    struct epoll_event events[256];
    long limit = count ? count : LONG_MAX;
    while (closed < limit && !stop) {
        int n = epoll_wait(ep, events, 256, -1);
        if (n < 0 && errno == EINTR) continue;
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == 0) {
                if (read(0, buf, sizeof buf) <= 0) stop = 1; /* the harness closed our stdin */
                continue;
            }
            if (fd == listener) {
                while (accepted < limit) {
                    int c = accept4(listener, NULL, NULL, 0);
                    if (c < 0) break;
                    accepted++;
                    if (fast) {
                        close(c);
                        closed++;
                        continue;
                    }
                    if (c >= (int)(sizeof conns / sizeof conns[0])) {
                        fprintf(stderr, "fd %d out of range\n", c);
                        return 1;
                    }
                    conns[c].to_read = size;
                    conns[c].waiting_for_eof = size == 0;
                    struct epoll_event cev = {.events = EPOLLIN, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
                }
                continue;
            }
            struct conn *cn = &conns[fd];
            ssize_t got = read(fd, buf, sizeof buf);
            if (got < 0 && errno == EAGAIN) continue;
            if (got <= 0) {
                if (got < 0)
                    errors[errno < MAX_ERRNO ? errno : 0]++;
                else if (!cn->waiting_for_eof || cn->to_read)
                    errors[MAX_ERRNO]++;
                epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
                close(fd);
                closed++;
                continue;
            }
            if (cn->waiting_for_eof) {
                errors[MAX_ERRNO + 1]++;
                continue;
            }
            cn->to_read -= got;
            if (cn->to_read <= 0) { /* the whole request is in: answer (blocking socket) */
                write_all(fd, response, size);
                if (!closer_is_client) {
                    epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
                    close(fd);
                    closed++;
                } else {
                    cn->waiting_for_eof = 1;
                }
            }
        }
    }
    close(listener);
    printf("{\"accepted\": %ld, \"closed\": %ld, \"errors\": {", accepted, closed);
    const char *sep = "";
    for (int e = 0; e < MAX_ERRNO + 2; e++) {
        if (!errors[e]) continue;
        const char *name = e == MAX_ERRNO ? "early_eof" : e == MAX_ERRNO + 1 ? "unexpected_data" : errname(e);
        printf("%s\"%s\": %ld", sep, name, errors[e]);
        sep = ", ";
    }
    printf("}, \"pid\": %d, \"stopped_early\": %s}\n", getpid(), count && closed < count ? "true" : "false");
    return 0;
}

/* ---------------------------------------------------------------- client */

struct flow {
    uint64_t start_ns;
    uint16_t port;
};

struct report {
    int pid;
    long made;
    long nflows, flows_overflow;
    struct flow flows[FLOW_SLOTS];
    uint64_t begin_ns, end_ns;
    long failures[MAX_ERRNO + 1]; /* MAX_ERRNO: short response */
    long histogram[BUCKETS];
};

static void worker(struct report *r, long share, uint64_t interval_ns, int start_fd, volatile int *stop,
                   volatile uint64_t *counter) {
    char *request = malloc(size ? (size_t)size : 1);
    memset(request, 'q', size ? (size_t)size : 1);
    static char buf[65536];
    r->pid = getpid();
    (void)read(start_fd, buf, 1); /* EOF when the parent closes its end: the start signal */
    uint64_t begin = now_ns();
    r->begin_ns = begin;
    for (long i = 0; share ? i < share : !*stop; i++) {
        if (interval_ns) {
            uint64_t due = begin + (uint64_t)i * interval_ns, t = now_ns();
            if (due > t) {
                struct timespec d = {(time_t)((due - t) / 1000000000ull), (long)((due - t) % 1000000000ull)};
                nanosleep(&d, NULL);
            }
        }
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        uint64_t t0 = now_ns();
        int failed = 0;
        if (connect(fd, (struct sockaddr *)&target, sizeof target) != 0) {
            failed = errno;
        } else {
            struct sockaddr_in local;
            socklen_t len = sizeof local;
            if (getsockname(fd, (struct sockaddr *)&local, &len) == 0 && ntohs(local.sin_port) % FLOW_SAMPLE == 0) {
                if (r->nflows < FLOW_SLOTS)
                    r->flows[r->nflows++] = (struct flow){.start_ns = t0, .port = ntohs(local.sin_port)};
                else
                    r->flows_overflow++;
            }
        }
        if (!failed && size) {
            write_all(fd, request, size);
            long remaining = size;
            while (remaining > 0) {
                ssize_t n = read(fd, buf, remaining < (long)sizeof buf ? (size_t)remaining : sizeof buf);
                if (n <= 0) {
                    failed = n < 0 ? errno : MAX_ERRNO;
                    break;
                }
                remaining -= n;
            }
        }
        if (!failed && !closer_is_client) {
            ssize_t n;
            while ((n = read(fd, buf, sizeof buf)) > 0) /* until the server's FIN */
                ;
            if (n < 0) failed = errno;
        }
        if (failed) {
            r->failures[failed < MAX_ERRNO ? failed : MAX_ERRNO]++;
        } else {
            r->made++;
            r->histogram[bit_length(now_ns() - t0)]++;
            if (counter) __atomic_store_n(counter, (uint64_t)r->made, __ATOMIC_RELAXED);
        }
        close(fd); /* --closer client: nothing unread, so this sends a FIN */
    }
    r->end_ns = now_ns();
}

static int client(void) {
    int workers = !count || concurrency < count ? concurrency : (int)count;
    struct report *reports = mmap(NULL, sizeof(struct report) * (size_t)workers, PROT_READ | PROT_WRITE,
                                  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    volatile int *stop = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (reports == MAP_FAILED || stop == MAP_FAILED) return 1;
    memset(reports, 0, sizeof(struct report) * (size_t)workers);
    volatile uint64_t *counters = NULL;
    if (counter_path) {
        size_t bytes = (size_t)workers * COUNTER_STRIDE * sizeof(uint64_t);
        int fd = open(counter_path, O_RDWR);
        if (fd < 0 || ftruncate(fd, (off_t)bytes) != 0) {
            fprintf(stderr, "counter %s: %s\n", counter_path, strerror(errno));
            return 1;
        }
        counters = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        close(fd);
        if (counters == MAP_FAILED) return 1;
    }
    uint64_t interval_ns = rate > 0 ? (uint64_t)(workers * 1e9 / rate) : 0;
    int start[2];
    if (pipe(start)) return 1;
    int pids[MAX_WORKERS];
    fflush(stdout);
    pid_t parent = getpid();
    for (int w = 0; w < workers; w++) {
        long share = count ? count / workers + (w < count % workers) : 0;
        pids[w] = fork();
        if (pids[w] == 0) {
            die_with_parent(parent);
            close(start[1]);
            worker(&reports[w], share, interval_ns, start[0], stop, counters ? counters + w * COUNTER_STRIDE : NULL);
            _exit(0);
        }
    }
    close(start[0]);
    printf("{\"ready\": true, \"pid\": %d, \"workers\": [", getpid());
    for (int w = 0; w < workers; w++) printf("%s%d", w ? ", " : "", pids[w]);
    printf("]}\n");
    fflush(stdout);
    char before[512], after[512];
    cpu_ticks(before, sizeof before); /* system-wide: brackets the loop */
    close(start[1]);
    if (!count) { /* live mode: connect until the harness closes our stdin */
        char byte;
        while (read(0, &byte, 1) > 0)
            ;
        __atomic_store_n(stop, 1, __ATOMIC_RELAXED);
    }
    int status, crashed = 0;
    while (wait(&status) > 0)
        if (!WIFEXITED(status) || WEXITSTATUS(status)) crashed++;
    cpu_ticks(after, sizeof after);
    if (crashed) {
        fprintf(stderr, "%d client workers failed\n", crashed);
        return 1;
    }
    long made = 0, failures[MAX_ERRNO + 1] = {0}, histogram[BUCKETS] = {0};
    uint64_t begin = UINT64_MAX, end = 0;
    for (int w = 0; w < workers; w++) {
        made += reports[w].made;
        if (reports[w].begin_ns < begin) begin = reports[w].begin_ns;
        if (reports[w].end_ns > end) end = reports[w].end_ns;
        for (int e = 0; e <= MAX_ERRNO; e++) failures[e] += reports[w].failures[e];
        for (int b = 0; b < BUCKETS; b++) histogram[b] += reports[w].histogram[b];
    }
    printf("{\"connections\": %ld, \"failures\": {", made);
    const char *sep = "";
    for (int e = 0; e <= MAX_ERRNO; e++) {
        if (!failures[e]) continue;
        printf("%s\"%s\": %ld", sep, e == MAX_ERRNO ? "short_response" : errname(e), failures[e]);
        sep = ", ";
    }
    printf("}, \"duration_ns\": %llu, \"pids\": [", (unsigned long long)(end - begin));
    for (int w = 0; w < workers; w++) printf("%s%d", w ? ", " : "", reports[w].pid);
    printf("], \"latency_log2_ns\": {");
    sep = "";
    for (int b = 0; b < BUCKETS; b++) {
        if (!histogram[b]) continue;
        printf("%s\"%d\": %ld", sep, b, histogram[b]);
        sep = ", ";
    }
    printf("}, \"cpu_ticks\": {\"before\": %s, \"after\": %s}, \"flow_sample\": %d, \"flows\": [",
           before, after, FLOW_SAMPLE);
    sep = "";
    long flows_overflow = 0;
    for (int w = 0; w < workers; w++) {
        flows_overflow += reports[w].flows_overflow;
        for (long f = 0; f < reports[w].nflows; f++) {
            printf("%s[%u, %llu]", sep, reports[w].flows[f].port, (unsigned long long)reports[w].flows[f].start_ns);
            sep = ", ";
        }
    }
    printf("], \"flows_overflow\": %ld}\n", flows_overflow);
    return 0;
}

int main(int argc, char **argv) {
    static struct option options[] = {
        {"address", required_argument, 0, 'a'}, {"port", required_argument, 0, 'p'},
        {"count", required_argument, 0, 'n'},   {"concurrency", required_argument, 0, 'c'},
        {"closer", required_argument, 0, 'x'},  {"bytes", required_argument, 0, 'b'},
        {"rate", required_argument, 0, 'r'},    {"counter", required_argument, 0, 'k'},
        {0, 0, 0, 0},
    };
    const char *address = NULL;
    int port = 0, opt;
    while ((opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
        switch (opt) {
        case 'a': address = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'n': count = atol(optarg); break;
        case 'c': concurrency = atoi(optarg); break;
        case 'x': closer_is_client = !strcmp(optarg, "client"); break;
        case 'b': size = atol(optarg); break;
        case 'r': rate = atof(optarg); break;
        case 'k': counter_path = optarg; break;
        default: return 2;
        }
    }
    if (optind >= argc || !address || !port || count < 0 || concurrency < 1 || concurrency > MAX_WORKERS) {
        fprintf(stderr, "usage: churn server|client --address A --port P --count N (0: until stdin closes) "
                        "[--concurrency C] [--closer server|client] [--bytes B] [--rate R] [--counter FILE]\n");
        return 2;
    }
    memset(&target, 0, sizeof target);
    target.sin_family = AF_INET;
    target.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, address, &target.sin_addr) != 1) {
        fprintf(stderr, "bad address %s\n", address);
        return 2;
    }
    /* the runner's death (even SIGKILL) ends us: set before anything else, checked against a race */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) return 1;
    if (!strcmp(argv[optind], "server")) return serve();
    if (!strcmp(argv[optind], "client")) return client();
    fprintf(stderr, "role must be server or client\n");
    return 2;
}
