/* "Instant on": every rank finds every other rank's TCP endpoint in the table rlaunch wrote
 * (RLAUNCH_ENDPOINTS, layout in man/rlaunch-endpoints.7), listens on its own, connects to rank+1
 * and passes a token around the ring. No PMI, no exchange between ranks: only the table.
 *
 * Each rank prints one line:
 *   rank R node N local L nic NIC endpoint IP:PORT table PATH dev D ino I files F
 * where F counts the files of this job (rlaunch-<jobid>-*.tbl) in the table's directory, so the
 * caller can check "one file per node, shared by its ranks". Rank 0 then prints
 *   ring ok size S token T
 * Exit status 0 on success; any failure prints "ring_endpoints: rank R: ..." and exits 1.
 *
 * Build: cc -O2 -o ring_endpoints ring_endpoints.c
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct rlaunch_tbl_header {
    char magic[8];
    uint32_t version, header_size, node_record_size, nic_record_size, rank_record_size;
    uint32_t fabric, node_count, nic_count, rank_count, this_node;
    uint64_t node_offset, nic_offset, rank_offset, file_size;
    uint32_t body_crc32;
    uint32_t reserved[3];
};

struct rlaunch_tbl_node {
    uint32_t node, local_ranks, first_nic, nic_count;
    uint16_t port_base, reserved0;
    uint32_t reserved1;
    char hostname[256];
    uint64_t reserved2;
};

struct rlaunch_tbl_nic {
    uint8_t kind, ib_port;
    uint16_t gid_index, lid;
    uint8_t gid_type, ip_family;
    uint32_t mtu, speed_mbps;
    uint8_t ip[16], gid[16], hwaddr[20];
    uint8_t hwaddr_len, link_layer;
    uint16_t reserved0;
    uint64_t port_guid, subnet_prefix;
    char ifname[16];
    char ibdev[64];
    uint8_t reserved1[24];
};

struct rlaunch_tbl_rank {
    uint32_t node, local_rank;
};

static int me = -1;

static void die(const char *fmt, const char *arg) {
    fprintf(stderr, "ring_endpoints: rank %d: ", me);
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n");
    exit(1);
}

static uint32_t crc32_ieee(const uint8_t *p, size_t n) {
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
    }
    return c ^ 0xFFFFFFFFu;
}

struct table {
    const uint8_t *base;
    size_t size;
    const struct rlaunch_tbl_header *h;
};

/* The checks of rlaunch-endpoints(7), "VALIDATION". */
static void open_table(const char *path, struct table *t, struct stat *st) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        die("cannot open the endpoint table %s", path);
    if (fstat(fd, st) != 0 || st->st_size < 96)
        die("endpoint table %s is too short", path);
    t->size = (size_t)st->st_size;
    t->base = mmap(NULL, t->size, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (t->base == MAP_FAILED)
        die("cannot map %s", path);
    t->h = (const struct rlaunch_tbl_header *)t->base;
    const struct rlaunch_tbl_header *h = t->h;
    if (memcmp(h->magic, "RLNCHTBL", 8) != 0 || h->version != 1)
        die("%s: not a version-1 rlaunch endpoint table", path);
    if (h->file_size != t->size || h->header_size < 96)
        die("%s: size fields do not match the file", path);
    if (crc32_ieee(t->base + h->header_size, t->size - h->header_size) != h->body_crc32)
        die("%s: checksum mismatch", path);
    if (h->node_record_size < sizeof(struct rlaunch_tbl_node) || h->nic_record_size < sizeof(struct rlaunch_tbl_nic) ||
        h->rank_record_size < sizeof(struct rlaunch_tbl_rank))
        die("%s: records smaller than version 1", path);
    if (h->node_offset + (uint64_t)h->node_count * h->node_record_size > t->size ||
        h->nic_offset + (uint64_t)h->nic_count * h->nic_record_size > t->size ||
        h->rank_offset + (uint64_t)h->rank_count * h->rank_record_size > t->size)
        die("%s: a section lies outside the file", path);
}

static const void *rec(const struct table *t, uint64_t off, uint32_t size, uint32_t i) {
    return t->base + off + (uint64_t)size * i;
}

/* The rule of "FINDING A RANK'S ENDPOINT". */
static void endpoint_of(const struct table *t, uint32_t r, struct sockaddr_storage *sa, socklen_t *len,
                        const struct rlaunch_tbl_node **node_out, const struct rlaunch_tbl_nic **nic_out,
                        const struct rlaunch_tbl_rank **rank_out) {
    const struct rlaunch_tbl_header *h = t->h;
    if (r >= h->rank_count)
        die("%s", "rank outside the table");
    const struct rlaunch_tbl_rank *rank = rec(t, h->rank_offset, h->rank_record_size, r);
    if (rank->node >= h->node_count)
        die("%s", "rank record names a missing node");
    const struct rlaunch_tbl_node *node = rec(t, h->node_offset, h->node_record_size, rank->node);
    if (node->nic_count == 0 || node->first_nic + node->nic_count > h->nic_count || rank->local_rank >= node->local_ranks)
        die("%s", "node record out of range");
    const struct rlaunch_tbl_nic *nic =
        rec(t, h->nic_offset, h->nic_record_size, node->first_nic + rank->local_rank % node->nic_count);
    uint16_t port = (uint16_t)(node->port_base + rank->local_rank);
    memset(sa, 0, sizeof *sa);
    if (nic->ip_family == 4) {
        struct sockaddr_in *in = (struct sockaddr_in *)sa;
        in->sin_family = AF_INET;
        in->sin_port = htons(port);
        memcpy(&in->sin_addr, nic->ip, 4);
        *len = sizeof *in;
    } else if (nic->ip_family == 6) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)sa;
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons(port);
        memcpy(&in6->sin6_addr, nic->ip, 16);
        *len = sizeof *in6;
    } else {
        die("%s", "the rank's NIC has no IP address");
    }
    if (node_out)
        *node_out = node;
    if (nic_out)
        *nic_out = nic;
    if (rank_out)
        *rank_out = rank;
}

static void fmt_addr(const struct sockaddr_storage *sa, char *out, size_t n) {
    char ip[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (sa->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &in->sin_addr, ip, sizeof ip);
        port = ntohs(in->sin_port);
        snprintf(out, n, "%s:%d", ip, port);
    } else {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof ip);
        port = ntohs(in6->sin6_port);
        snprintf(out, n, "[%s]:%d", ip, port);
    }
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void write_all(int fd, const void *p, size_t n) {
    const char *c = p;
    while (n > 0) {
        ssize_t w = write(fd, c, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            die("%s", "send failed");
        c += w;
        n -= (size_t)w;
    }
}

static void read_all(int fd, void *p, size_t n) {
    char *c = p;
    while (n > 0) {
        ssize_t r = read(fd, c, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            die("%s", "receive failed (peer closed)");
        c += r;
        n -= (size_t)r;
    }
}

/* Files of this job next to the table: one per node, so exactly one here. */
static int count_job_files(const char *path, const char *jobid) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash)
        return -1;
    *slash = 0;
    char prefix[256];
    snprintf(prefix, sizeof prefix, "rlaunch-%s-", jobid);
    DIR *d = opendir(dir[0] ? dir : "/");
    if (!d)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        size_t l = strlen(e->d_name);
        if (strncmp(e->d_name, prefix, strlen(prefix)) == 0 && l > 4 && strcmp(e->d_name + l - 4, ".tbl") == 0)
            n++;
    }
    closedir(d);
    return n;
}

int main(void) {
    const char *rank_s = getenv("RLAUNCH_RANK"), *path = getenv("RLAUNCH_ENDPOINTS");
    const char *jobid = getenv("RLAUNCH_JOBID"), *nic_env = getenv("RLAUNCH_NIC");
    if (!rank_s || !jobid)
        die("%s", "RLAUNCH_RANK/RLAUNCH_JOBID not set: start me with rlaunch");
    me = atoi(rank_s);
    if (!path)
        die("%s", "RLAUNCH_ENDPOINTS not set (was --fabric off given?)");
    struct table t;
    struct stat st;
    open_table(path, &t, &st);
    uint32_t size = t.h->rank_count;
    if (getenv("RLAUNCH_SIZE") && (uint32_t)atoi(getenv("RLAUNCH_SIZE")) != size)
        die("%s", "the table's rank count differs from RLAUNCH_SIZE");

    struct sockaddr_storage mine, next;
    socklen_t mine_len, next_len;
    const struct rlaunch_tbl_node *node;
    const struct rlaunch_tbl_nic *nic;
    const struct rlaunch_tbl_rank *rr;
    endpoint_of(&t, (uint32_t)me, &mine, &mine_len, &node, &nic, &rr);
    endpoint_of(&t, ((uint32_t)me + 1) % size, &next, &next_len, NULL, NULL, NULL);
    if (nic_env && strcmp(nic_env, nic->ifname) != 0 && nic->ibdev[0] == 0)
        die("RLAUNCH_NIC %s is not the NIC the table gives this rank", nic_env);

    int ls = socket(mine.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    char addr[128];
    fmt_addr(&mine, addr, sizeof addr);
    if (bind(ls, (struct sockaddr *)&mine, mine_len) != 0 || listen(ls, 16) != 0)
        die("cannot listen on my assigned endpoint %s", addr);

    printf("rank %d node %u local %u nic %s endpoint %s table %s dev %lu ino %lu files %d\n", me, rr->node,
           rr->local_rank, nic->ifname, addr, path, (unsigned long)st.st_dev, (unsigned long)st.st_ino,
           count_job_files(path, jobid));
    fflush(stdout);

    /* The successor may not listen yet: it starts at its own pace. Retry, bounded. */
    int out = -1;
    double deadline = now() + 30.0;
    for (;;) {
        out = socket(next.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (connect(out, (struct sockaddr *)&next, next_len) == 0)
            break;
        close(out);
        if (now() > deadline) {
            fmt_addr(&next, addr, sizeof addr);
            die("cannot connect to rank+1 at %s", addr);
        }
        usleep(2000);
    }
    setsockopt(out, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    int in = accept(ls, NULL, NULL);
    if (in < 0)
        die("%s", "accept failed");

    uint32_t token;
    if (me == 0) {
        token = 1;
        write_all(out, &token, sizeof token);
        read_all(in, &token, sizeof token);
        if (token != size)
            die("%s", "the token came back with the wrong count");
        printf("ring ok size %u token %u\n", size, token);
    } else {
        read_all(in, &token, sizeof token);
        token++;
        write_all(out, &token, sizeof token);
    }
    close(in);
    close(out);
    close(ls);
    munmap((void *)t.base, t.size);
    return 0;
}
