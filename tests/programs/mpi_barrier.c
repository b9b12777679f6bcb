/* mpi_barrier [ITERATIONS]: MPI_Barrier in a loop (default 100 times); rank 0 prints the time per
 * barrier. Exits 2 on a bad argument. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    int rank, size, i;
    long iters = 100;
    double t0, t1;

    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (argc > 1) {
        char *end;
        iters = strtol(argv[1], &end, 10);
        if (*argv[1] == '\0' || *end != '\0' || iters < 1 || iters > 100000000) {
            if (rank == 0)
                fprintf(stderr, "mpi_barrier: FAIL: iteration count %s is not a number from 1 to 100000000\n",
                        argv[1]);
            MPI_Finalize();
            return 2;
        }
    }
    MPI_Barrier(MPI_COMM_WORLD);
    t0 = MPI_Wtime();
    for (i = 0; i < iters; i++)
        MPI_Barrier(MPI_COMM_WORLD);
    t1 = MPI_Wtime();
    if (rank == 0)
        printf("barrier ok: %ld iterations on %d ranks in %.3f s (%.1f us each)\n", iters, size, t1 - t0,
               (t1 - t0) * 1e6 / iters);
    fflush(stdout);
    MPI_Finalize();
    return 0;
}
