/* pmi2_client: a PMI-2 client with no MPI and no libpmi2, over the socket inherited as PMI_FD
 * (PMI_RANK / PMI_SIZE name the rank and size). fullinit, kvs-put of a value holding ';' (sent
 * escaped as ';;'), kvs-fence, kvs-get of every rank's key, info-getjobattr PMI_process_mapping,
 * finalize; every reply is checked. Rank 0 prints one line. Exit 0 on success, 1 on a wrong
 * reply, 2 when not started under a PMI server. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MSG_MAX 4096
#define HDR 6 /* every PMI-2 message starts with its length in 6 characters */

static int pmi_fd = -1;
static long my_rank = -1;

static void fail(int code, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "pmi2_client: FAIL on rank %ld: ", my_rank);
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
        fail(2, "%s is not set; start this program with rlaunch (or another PMI-2 launcher)", name);
    v = strtol(s, &end, 10);
    if (*end != '\0' || v < 0)
        fail(2, "%s=%s is not a non-negative number", name, s);
    return v;
}

static void write_all(const char *buf, size_t len)
{
    size_t off = 0;
    while (off < len) {
        ssize_t n = write(pmi_fd, buf + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            fail(1, "writing to PMI_FD %d: %s", pmi_fd, n < 0 ? strerror(errno) : "closed");
        off += (size_t)n;
    }
}

static void read_exact(char *buf, size_t len)
{
    size_t off = 0;
    while (off < len) {
        ssize_t n = read(pmi_fd, buf + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            fail(1, "reading from PMI_FD %d: %s", pmi_fd, n < 0 ? strerror(errno) : "server closed the connection");
        off += (size_t)n;
    }
}

/* Sends BODY framed: the length left-aligned in 6 characters, as MPICH's client writes it. */
static void send_msg(const char *body)
{
    char hdr[32];
    size_t len = strlen(body);
    if (len >= MSG_MAX)
        fail(1, "PMI-2 message of %zu bytes is too long", len);
    snprintf(hdr, sizeof hdr, "%-6u", (unsigned)len);
    write_all(hdr, HDR);
    write_all(body, len);
}

/* Reads one framed message into BODY (NUL-terminated). */
static void recv_msg(char *body)
{
    char hdr[HDR + 1], *end;
    long len;
    read_exact(hdr, HDR);
    hdr[HDR] = '\0';
    len = strtol(hdr, &end, 10);
    while (*end == ' ')
        end++;
    if (*end != '\0' || len <= 0 || len >= MSG_MAX)
        fail(1, "bad PMI-2 length header \"%s\"", hdr);
    read_exact(body, (size_t)len);
    body[len] = '\0';
}

/* The unescaped value of KEY in a `k=v;k=v;` message (";;" stands for ';'), or NULL. */
static const char *get(const char *msg, const char *key, char *out, size_t outlen)
{
    size_t klen = strlen(key);
    const char *p = msg;
    while (*p) {
        int match = strncmp(p, key, klen) == 0 && p[klen] == '=';
        size_t n = 0;
        p = strchr(p, '=');
        if (p == NULL)
            return NULL;
        p++;
        for (;;) {
            if (*p == '\0')
                break;
            if (*p == ';') {
                if (p[1] != ';') {
                    p++;
                    break;
                }
                p++;
            }
            if (match && n + 1 < outlen)
                out[n++] = *p;
            p++;
        }
        if (match) {
            out[n] = '\0';
            return out;
        }
    }
    return NULL;
}

/* Sends BODY, reads the reply, checks it is cmd=EXPECT with rc=0. */
static void request(const char *body, const char *expect, char *reply)
{
    char v[64];
    send_msg(body);
    recv_msg(reply);
    if (get(reply, "cmd", v, sizeof v) == NULL || strcmp(v, expect) != 0)
        fail(1, "sent \"%s\", expected cmd=%s, got \"%s\"", body, expect, reply);
    if (get(reply, "rc", v, sizeof v) == NULL || strcmp(v, "0") != 0)
        fail(1, "sent \"%s\", got error reply \"%s\"", body, reply);
}

static void expect_field(const char *reply, const char *key, const char *want)
{
    char v[MSG_MAX];
    if (get(reply, key, v, sizeof v) == NULL || strcmp(v, want) != 0)
        fail(1, "reply \"%s\": %s should be \"%s\"", reply, key, want);
}

int main(void)
{
    char line[1024], body[MSG_MAX], reply[MSG_MAX], v[MSG_MAX], want[64], map[MSG_MAX];
    long size, r;
    size_t n = 0;

    pmi_fd = (int)env_long("PMI_FD");
    my_rank = env_long("PMI_RANK");
    size = env_long("PMI_SIZE");

    /* The opening exchange is one PMI-1 line each way. */
    write_all("cmd=init pmi_version=2 pmi_subversion=0\n", strlen("cmd=init pmi_version=2 pmi_subversion=0\n"));
    for (;;) {
        read_exact(line + n, 1);
        if (line[n] == '\n' || n + 2 >= sizeof line)
            break;
        n++;
    }
    line[n] = '\0';
    if (strcmp(line, "cmd=response_to_init pmi_version=2 pmi_subversion=0 rc=0") != 0)
        fail(1, "init reply \"%s\"", line);

    snprintf(body, sizeof body, "cmd=fullinit;pmirank=%ld;threaded=FALSE;", my_rank);
    request(body, "fullinit-response", reply);
    snprintf(v, sizeof v, "%ld", my_rank);
    expect_field(reply, "rank", v);
    snprintf(v, sizeof v, "%ld", size);
    expect_field(reply, "size", v);

    /* The value holds ';' to exercise the escaping both ways. */
    snprintf(body, sizeof body, "cmd=kvs-put;key=p2-%ld;value=v;;%ld;;x;", my_rank, my_rank);
    request(body, "kvs-put-response", reply);
    request("cmd=kvs-fence;", "kvs-fence-response", reply);
    for (r = 0; r < size; r++) {
        snprintf(body, sizeof body, "cmd=kvs-get;srcid=%ld;key=p2-%ld;", r, r);
        request(body, "kvs-get-response", reply);
        expect_field(reply, "found", "TRUE");
        snprintf(want, sizeof want, "v;%ld;x", r);
        expect_field(reply, "value", want);
    }

    request("cmd=info-getjobattr;key=PMI_process_mapping;", "info-getjobattr-response", reply);
    if (get(reply, "found", v, sizeof v) == NULL)
        fail(1, "reply \"%s\" has no found=", reply);
    if (strcmp(v, "TRUE") == 0) {
        if (get(reply, "value", map, sizeof map) == NULL || strncmp(map, "(vector,", 8) != 0)
            fail(1, "PMI_process_mapping reply \"%s\" is not a vector", reply);
    } else if (strcmp(v, "FALSE") == 0) {
        strcpy(map, "(none)");
    } else {
        fail(1, "reply \"%s\": found is neither TRUE nor FALSE", reply);
    }

    request("cmd=finalize;", "finalize-response", reply);
    close(pmi_fd);
    if (my_rank == 0)
        printf("pmi2_client ok: %ld ranks exchanged keys, process mapping %s\n", size, map);
    return 0;
}
