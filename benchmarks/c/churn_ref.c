/* The machine's reference for connection churn: a minimal C client/server pair.
 *
 * server ADDRESS PORT COUNT: accept COUNT connections, closing each at once (the server closes
 *     first, as tpbench's churn does by default, so the client never runs out of ports).
 * client ADDRESS PORT COUNT WORKERS: WORKERS forked processes share COUNT connections; each
 *     connects, reads until the server's FIN, closes. Prints one JSON line: connections made,
 *     failures, and the wall time from the start signal to the last worker's end (CLOCK_MONOTONIC).
 *
 * Measured the same way as the Python churn agent (same topology, same worker count, same server
 * behaviour), so the ratio between them is the cost of the Python generator alone.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static struct sockaddr_in target(const char *address, int port) {
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    if (inet_pton(AF_INET, address, &sa.sin_addr) != 1) {
        fprintf(stderr, "bad address %s\n", address);
        exit(2);
    }
    return sa;
}

static int serve(const char *address, int port, long count) {
    struct sockaddr_in sa = target(address, port);
    int one = 1, listener = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(listener, (struct sockaddr *)&sa, sizeof sa) || listen(listener, 4096)) {
        perror("bind/listen");
        return 1;
    }
    printf("{\"ready\": true, \"pid\": %d}\n", getpid());
    fflush(stdout);
    long accepted = 0;
    while (accepted < count) {
        int fd = accept(listener, NULL, NULL);
        if (fd < 0) {
            perror("accept");
            return 1;
        }
        close(fd);
        accepted++;
    }
    close(listener);
    printf("{\"accepted\": %ld}\n", accepted);
    return 0;
}

struct shared {
    volatile long made, failed;
    volatile uint64_t begin_ns, end_ns;
};

static int client(const char *address, int port, long count, int workers) {
    struct sockaddr_in sa = target(address, port);
    struct shared *sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    memset((void *)sh, 0, sizeof *sh);
    int start[2];
    if (pipe(start)) {
        perror("pipe");
        return 1;
    }
    for (int w = 0; w < workers; w++) {
        long share = count / workers + (w < count % workers);
        if (fork() == 0) {
            char buf[4096];
            long made = 0, failed = 0;
            close(start[1]);
            (void)read(start[0], buf, 1); /* EOF when the parent closes its end: the start signal */
            for (long i = 0; i < share; i++) {
                int fd = socket(AF_INET, SOCK_STREAM, 0);
                if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) {
                    while (read(fd, buf, sizeof buf) > 0)
                        ;
                    made++;
                } else {
                    failed++;
                }
                close(fd);
            }
            uint64_t end = now_ns();
            __atomic_fetch_add(&sh->made, made, __ATOMIC_RELAXED);
            __atomic_fetch_add(&sh->failed, failed, __ATOMIC_RELAXED);
            uint64_t old = sh->end_ns;
            while (old < end && !__atomic_compare_exchange_n(&sh->end_ns, &old, end, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
                ;
            _exit(0);
        }
    }
    printf("{\"ready\": true, \"pid\": %d}\n", getpid());
    fflush(stdout);
    sh->begin_ns = now_ns();
    close(start[1]);
    while (wait(NULL) > 0)
        ;
    printf("{\"connections\": %ld, \"failures\": %ld, \"duration_ns\": %llu}\n", sh->made, sh->failed,
           (unsigned long long)(sh->end_ns - sh->begin_ns));
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 5 && !strcmp(argv[1], "server"))
        return serve(argv[2], atoi(argv[3]), atol(argv[4]));
    if (argc >= 6 && !strcmp(argv[1], "client"))
        return client(argv[2], atoi(argv[3]), atol(argv[4]), atoi(argv[5]));
    fprintf(stderr, "usage: churn_ref server ADDRESS PORT COUNT | client ADDRESS PORT COUNT WORKERS\n");
    return 2;
}
