/* mpi_restart [RANK [GENERATIONS [SECONDS]]]: for --max-restarts with job scope. In each
 * generation (RLAUNCH_GENERATION) below GENERATIONS (default 1) rank RANK (default 1) raises
 * SIGSEGV after MPI_Init (after SECONDS, default 0, from generation 1 on: past the restart-loop
 * guard) while the others wait in a barrier; in a later generation every rank takes part in an
 * MPI_Allreduce, and rank 0 prints "restart ok: generation G, restarts R, sum S over N ranks"
 * when the sum is right. Reaching the barrier's end in a crashing generation is a failure. */
#include <mpi.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    int rank, size;
    long target = argc > 1 ? strtol(argv[1], NULL, 10) : 1;
    long crashing = argc > 2 ? strtol(argv[2], NULL, 10) : 1;
    double delay = argc > 3 ? strtod(argv[3], NULL) : 0;
    const char *g = getenv("RLAUNCH_GENERATION"), *r = getenv("RLAUNCH_RESTARTS");
    long long one, total;

    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (!g || !r) {
        fprintf(stderr, "mpi_restart: FAIL on rank %d: RLAUNCH_GENERATION or RLAUNCH_RESTARTS unset\n", rank);
        MPI_Finalize();
        return 2;
    }
    if (target >= size)
        target = size - 1;
    if (atoi(g) < crashing) {
        if (rank == target) {
            if (atoi(g) > 0)
                usleep((useconds_t)(delay * 1e6));
            printf("rank %d raising SIGSEGV in generation %s\n", rank, g);
            fflush(stdout);
            signal(SIGSEGV, SIG_DFL);
            raise(SIGSEGV);
        }
        MPI_Barrier(MPI_COMM_WORLD);
        fprintf(stderr, "mpi_restart: FAIL on rank %d: the barrier completed although rank %ld crashed\n", rank, target);
        MPI_Finalize();
        return 1;
    }
    one = rank + 1;
    MPI_Allreduce(&one, &total, 1, MPI_LONG_LONG, MPI_SUM, MPI_COMM_WORLD);
    if (total != (long long)size * (size + 1) / 2) {
        fprintf(stderr, "mpi_restart: FAIL on rank %d: sum %lld, want %lld\n", rank, total, (long long)size * (size + 1) / 2);
        MPI_Finalize();
        return 1;
    }
    if (rank == 0)
        printf("restart ok: generation %s, restarts %s, sum %lld over %d ranks\n", g, r, total, size);
    fflush(stdout);
    MPI_Finalize();
    return 0;
}
