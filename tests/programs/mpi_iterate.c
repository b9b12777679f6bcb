/* mpi_iterate [ITERATIONS [SLEEP_MS [RANK [AT]]]]: an MPI program that keeps its state in rlaunch
 * recovery images (issue 17). Iteration i adds the MPI_Allreduce sum of (rank+1)*(i+1) to an
 * accumulator and saves {next iteration, accumulator} as the image of epoch i. On start it loads
 * the latest complete epoch's image (job scope) and resumes there. In generation 0
 * (RLAUNCH_GENERATION) rank RANK (default 1) raises SIGSEGV at iteration AT (default half of
 * ITERATIONS, default 30; SLEEP_MS 50). At the end rank 0 prints "mpi_iterate ok: acc A,
 * resumed at iteration K, generation G" when A is the closed form, else FAIL and exit 1. */
#include <mpi.h>
#include <rlaunch_image.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct image {
    uint64_t next;
    long long acc;
};

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 30, ms = argc > 2 ? atol(argv[2]) : 50;
    long target = argc > 3 ? atol(argv[3]) : 1, at = argc > 4 ? atol(argv[4]) : n / 2;
    int rank, size;
    struct image st = {0, 0};
    uint64_t resumed = 0;
    void *buf;
    size_t len;
    uint64_t epoch;

    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    int rc = rli_load(RLI_SCOPE_JOB, &buf, &len, &epoch);
    if (rc == 1 && len == sizeof st) {
        memcpy(&st, buf, sizeof st);
        resumed = st.next;
        rli_free(buf);
    } else if (rc < 0) {
        fprintf(stderr, "mpi_iterate: FAIL on rank %d: rli_load: %s\n", rank, rli_strerror(rc));
        MPI_Abort(MPI_COMM_WORLD, 3);
    }
    for (; (long)st.next < n; st.next++) {
        long long mine = (long long)(rank + 1) * (long long)(st.next + 1), sum;
        if (rli_generation() == 0 && rank == target && (long)st.next == at) {
            printf("rank %d raising SIGSEGV at iteration %ld\n", rank, at);
            fflush(stdout);
            signal(SIGSEGV, SIG_DFL);
            raise(SIGSEGV);
        }
        MPI_Allreduce(&mine, &sum, 1, MPI_LONG_LONG, MPI_SUM, MPI_COMM_WORLD);
        st.acc += sum;
        struct image next = {st.next + 1, st.acc};
        rc = rli_save(st.next, &next, sizeof next);
        if (rc < 0 && rc != RLI_STANDALONE) {
            fprintf(stderr, "mpi_iterate: FAIL on rank %d: rli_save: %s\n", rank, rli_strerror(rc));
            MPI_Abort(MPI_COMM_WORLD, 4);
        }
        struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
    long long want = (long long)size * (size + 1) / 2 * (n * (n + 1) / 2);
    if (st.acc != want) {
        fprintf(stderr, "mpi_iterate: FAIL on rank %d: acc %lld, want %lld\n", rank, st.acc, want);
        MPI_Finalize();
        return 1;
    }
    if (rank == 0)
        printf("mpi_iterate ok: acc %lld, resumed at iteration %llu, generation %u\n", st.acc, (unsigned long long)resumed, rli_generation());
    fflush(stdout);
    MPI_Finalize();
    return 0;
}
