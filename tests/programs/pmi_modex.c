/* pmi_modex: a PMI-1 client with no MPI and no libpmi, speaking the wire protocol over the
 * socket inherited as PMI_FD (PMI_RANK / PMI_SIZE name the rank and size). Each rank puts one
 * 64-byte value, fences, gets every other rank's value and checks it, fences and finalizes:
 * the business-card exchange of MPI start-up, alone, as a benchmark of the PMI server.
 * Rank 0 prints one line with timings. Exit 0 on success, 1 on a wrong value or reply,
 * 2 when not started under a PMI-1 server. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define LINE_MAX_PMI 1024 /* PMI-1 clients read replies into 1024 bytes */
#define VALUE_LEN 64

static int pmi_fd = -1;
static long my_rank = -1;

static void fail(int code, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "pmi_modex: FAIL on rank %ld: ", my_rank);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(code);
}

static long env_long(const char *name)
{
    const char *s = getenv(name);
    char *end;
    long v;
    if (s == NULL || *s == '\0')
        fail(2, "%s is not set; start this program with rlaunch (or another PMI-1 launcher)", name);
    v = strtol(s, &end, 10);
    if (*end != '\0' || v < 0)
        fail(2, "%s=%s is not a non-negative number", name, s);
    return v;
}

static void write_all(const char *buf)
{
    size_t len = strlen(buf), off = 0;
    while (off < len) {
        ssize_t n = write(pmi_fd, buf + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            fail(1, "writing to PMI_FD %d: %s", pmi_fd, n < 0 ? strerror(errno) : "closed");
        off += (size_t)n;
    }
}

/* One reply line without its newline. Buffered as MPICH's PMIU_readline is: one read takes
 * whatever the server has sent, later lines come from the buffer. PMI-1 servers send strictly one
 * reply per request, so nothing read ahead belongs to a later request's caller. */
static void read_line(char *buf)
{
    static char in[LINE_MAX_PMI];
    static size_t have, next;
    size_t len = 0;
    for (;;) {
        char c;
        if (next == have) {
            ssize_t n = read(pmi_fd, in, sizeof in);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                fail(1, "reading from PMI_FD %d: %s", pmi_fd, n < 0 ? strerror(errno) : "server closed the connection");
            have = (size_t)n;
            next = 0;
        }
        c = in[next++];
        if (c == '\n')
            break;
        if (len + 1 >= LINE_MAX_PMI)
            fail(1, "PMI reply longer than %d bytes", LINE_MAX_PMI);
        buf[len++] = c;
    }
    buf[len] = '\0';
}

/* The value of KEY in a reply line (values end at the next space), or NULL. */
static const char *field(const char *line, const char *key, char *out, size_t outlen)
{
    size_t klen = strlen(key);
    const char *p = line;
    while (*p) {
        while (*p == ' ')
            p++;
        if (strncmp(p, key, klen) == 0 && p[klen] == '=') {
            size_t n = strcspn(p + klen + 1, " ");
            if (n >= outlen)
                n = outlen - 1;
            memcpy(out, p + klen + 1, n);
            out[n] = '\0';
            return out;
        }
        p += strcspn(p, " ");
    }
    return NULL;
}

/* Sends REQUEST and reads the reply into LINE, checking it is cmd=EXPECT. */
static void request(const char *req, const char *expect, char *line)
{
    char cmd[64];
    write_all(req);
    read_line(line);
    if (field(line, "cmd", cmd, sizeof cmd) == NULL || strcmp(cmd, expect) != 0)
        fail(1, "sent \"%.*s\", expected cmd=%s, got \"%s\"", (int)strcspn(req, "\n"), req, expect, line);
}

static void check_rc(const char *req, const char *line)
{
    char rc[16];
    if (field(line, "rc", rc, sizeof rc) == NULL || strcmp(rc, "0") != 0)
        fail(1, "sent \"%.*s\", got error reply \"%s\"", (int)strcspn(req, "\n"), req, line);
}

/* Rank R's value: its number, then a pattern that differs per rank, VALUE_LEN hex digits. */
static void value_of(long r, char *out)
{
    static const char hex[] = "0123456789abcdef";
    int i, n = snprintf(out, VALUE_LEN + 1, "%08lx", (unsigned long)r);
    for (i = n; i < VALUE_LEN; i++)
        out[i] = hex[(unsigned long)(r * 7 + i * 13 + (r >> 4)) % 16];
    out[VALUE_LEN] = '\0';
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(void)
{
    char line[LINE_MAX_PMI], req[LINE_MAX_PMI], kvs[256], val[LINE_MAX_PMI], want[VALUE_LEN + 1];
    long size, r;
    double t0, t_fence, t_gets, t_end;

    pmi_fd = (int)env_long("PMI_FD");
    my_rank = env_long("PMI_RANK");
    size = env_long("PMI_SIZE");
    if (my_rank >= size)
        fail(2, "PMI_RANK=%ld is not below PMI_SIZE=%ld", my_rank, size);

    t0 = now();
    request("cmd=init pmi_version=1 pmi_subversion=1\n", "response_to_init", line);
    check_rc("init", line);
    request("cmd=get_maxes\n", "maxes", line);
    request("cmd=get_my_kvsname\n", "my_kvsname", line);
    if (field(line, "kvsname", kvs, sizeof kvs) == NULL)
        fail(1, "no kvsname in \"%s\"", line);

    value_of(my_rank, want);
    snprintf(req, sizeof req, "cmd=put kvsname=%s key=modex-%ld value=%s\n", kvs, my_rank, want);
    request(req, "put_result", line);
    check_rc(req, line);
    request("cmd=barrier_in\n", "barrier_out", line);
    t_fence = now();

    for (r = 0; r < size; r++) {
        if (r == my_rank)
            continue;
        snprintf(req, sizeof req, "cmd=get kvsname=%s key=modex-%ld\n", kvs, r);
        request(req, "get_result", line);
        check_rc(req, line);
        value_of(r, want);
        if (field(line, "value", val, sizeof val) == NULL || strcmp(val, want) != 0)
            fail(1, "rank %ld's value is \"%s\", want \"%s\"", r, field(line, "value", val, sizeof val) ? val : "",
                 want);
    }
    t_gets = now();
    request("cmd=barrier_in\n", "barrier_out", line);
    request("cmd=finalize\n", "finalize_ack", line);
    t_end = now();
    close(pmi_fd);

    if (my_rank == 0)
        printf("pmi_modex ok: %ld ranks, 64-byte values; put+fence %.3f ms, %ld gets %.3f ms, total %.3f ms\n", size,
               (t_fence - t0) * 1e3, size - 1, (t_gets - t_fence) * 1e3, (t_end - t0) * 1e3);
    return 0;
}
