/* iterate: an iterative program that keeps its state in rlaunch recovery images (issue 17).
 *
 *   iterate [ITERATIONS [SLEEP_MS [IMAGE_BYTES [SCOPE [MODE]]]]]
 *
 * ITERATIONS (10), SLEEP_MS per iteration (0), IMAGE_BYTES of state (4096), SCOPE job|rank
 * (job): what to load on start, MODE:
 *   save      rli_save every iteration, epoch = iteration (default)
 *   poll      a provider (rli_set_provider) and rli_poll every iteration instead
 *   none      neither saves nor polls (a rank that never answers a request)
 *   neighbor  as save, then waits for the next rank's last image (rli_load_rank) and prints it
 *
 * The state after iteration i is a pure function of (rank, i), so a run resumed from any image
 * ends with the checksum of an undisturbed run: "rank R checksum X iterations N". */
#include <rlaunch_image.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct image {
    uint64_t next; /* the iteration to run next */
    uint64_t bytes;
};

static unsigned char *state;
static uint64_t state_bytes, next_iter;
static unsigned char *img;

static uint64_t fnv(const unsigned char *p, uint64_t n) {
    uint64_t h = 1469598103934665603ull;
    for (uint64_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

static void step(unsigned rank, uint64_t iter) {
    for (uint64_t i = 0; i < state_bytes; i++) state[i] = (unsigned char)(state[i] * 31u + iter + rank + i);
}

/* The image of the state now: header then state. */
static size_t make_image(void) {
    struct image h = {next_iter, state_bytes};
    memcpy(img, &h, sizeof h);
    memcpy(img + sizeof h, state, state_bytes);
    return sizeof h + state_bytes;
}

static int provider(void *ctx, uint64_t *epoch, const void **buf, size_t *len) {
    (void)ctx;
    /* *epoch stays rlaunch's number of the request: every rank answers the same round with the
     * same epoch, wherever it is in its iterations (the image says where). */
    (void)epoch;
    *len = make_image();
    *buf = img;
    return 0;
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (ms > 0 && nanosleep(&ts, &ts) != 0) {}
}

int main(int argc, char **argv) {
    uint64_t iterations = argc > 1 ? strtoull(argv[1], 0, 10) : 10;
    long sleep = argc > 2 ? atol(argv[2]) : 0;
    state_bytes = argc > 3 ? strtoull(argv[3], 0, 10) : 4096;
    int scope = argc > 4 && strcmp(argv[4], "rank") == 0 ? RLI_SCOPE_RANK : RLI_SCOPE_JOB;
    const char *mode = argc > 5 ? argv[5] : "save";
    const char *r = getenv("RLAUNCH_RANK"), *s = getenv("RLAUNCH_SIZE");
    unsigned rank = r ? (unsigned)atoi(r) : 0, size = s ? (unsigned)atoi(s) : 1;
    state = calloc(state_bytes ? state_bytes : 1, 1);
    img = malloc(sizeof(struct image) + state_bytes);
    if (!state || !img) return 3;

    void *buf;
    size_t len;
    uint64_t epoch;
    int rc = rli_load(scope, &buf, &len, &epoch);
    if (rc < 0) {
        fprintf(stderr, "rank %u: rli_load: %s\n", rank, rli_strerror(rc));
        return 4;
    }
    if (rc == 1) {
        struct image h;
        if (len < sizeof h || (memcpy(&h, buf, sizeof h), h.bytes != state_bytes || len != sizeof h + h.bytes)) {
            fprintf(stderr, "rank %u: image of epoch %llu has %zu bytes, not an image of %llu bytes of state\n", rank,
                    (unsigned long long)epoch, len, (unsigned long long)state_bytes);
            return 5;
        }
        memcpy(state, (char *)buf + sizeof h, state_bytes);
        next_iter = h.next;
        rli_free(buf);
        printf("rank %u restored epoch %llu restarts %u\n", rank, (unsigned long long)epoch, rli_restarts());
    } else {
        printf("rank %u fresh start restarts %u\n", rank, rli_restarts());
    }
    fflush(stdout);
    if (strcmp(mode, "poll") == 0) rli_set_provider(provider, 0);

    int standalone_said = 0, refused_said = 0;
    for (; next_iter < iterations;) {
        uint64_t i = next_iter;
        step(rank, i);
        next_iter = i + 1;
        if (strcmp(mode, "save") == 0 || strcmp(mode, "neighbor") == 0) {
            rc = rli_save(i, img, make_image());
        } else if (strcmp(mode, "poll") == 0) {
            rc = rli_poll();
            if (rc == 1) {
                printf("rank %u sent an image at iteration %llu\n", rank, (unsigned long long)i);
                fflush(stdout);
            }
        } else {
            rc = 0;
        }
        if (rc == RLI_STANDALONE && !standalone_said++) {
            printf("rank %u standalone: %s\n", rank, rli_strerror(rc));
        } else if (rc == RLI_ETOOBIG && !refused_said++) {
            printf("rank %u image refused: %s\n", rank, rli_strerror(rc));
        } else if (rc < 0 && rc != RLI_STANDALONE && rc != RLI_ETOOBIG) {
            fprintf(stderr, "rank %u: iteration %llu: %s\n", rank, (unsigned long long)i, rli_strerror(rc));
            return 6;
        }
        fflush(stdout);
        sleep_ms(sleep);
    }

    if (strcmp(mode, "neighbor") == 0 && size > 1) {
        unsigned other = (rank + 1) % size;
        /* Each try moves the whole image: not too often. */
        for (int tries = 0; tries < 600; tries++) {
            rc = rli_load_rank(other, &buf, &len, &epoch);
            if (rc < 0) {
                fprintf(stderr, "rank %u: rli_load_rank(%u): %s\n", rank, other, rli_strerror(rc));
                return 7;
            }
            if (rc == 1 && epoch + 1 == iterations) break;
            if (rc == 1) rli_free(buf);
            rc = 0;
            sleep_ms(50);
        }
        if (rc != 1) {
            fprintf(stderr, "rank %u: rank %u's last image never came\n", rank, other);
            return 8;
        }
        printf("rank %u sees rank %u epoch %llu checksum %016llx\n", rank, other, (unsigned long long)epoch,
               (unsigned long long)fnv((unsigned char *)buf + sizeof(struct image), len - sizeof(struct image)));
        rli_free(buf);
    }
    printf("rank %u checksum %016llx iterations %llu\n", rank, (unsigned long long)fnv(state, state_bytes),
           (unsigned long long)iterations);
    return 0;
}
