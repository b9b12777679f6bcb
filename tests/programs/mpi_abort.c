/* mpi_abort [RANK]: RANK (default 1) calls MPI_Abort(MPI_COMM_WORLD, 7) right after MPI_Init; the
 * others block in MPI_Barrier until the launcher kills them. The launcher should exit with 7.
 * A RANK outside the job is clamped to the last rank. Reaching the end is a failure (exit 1). */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    int rank, size;
    long target = 1;

    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (argc > 1) {
        char *end;
        target = strtol(argv[1], &end, 10);
        if (*argv[1] == '\0' || *end != '\0' || target < 0) {
            if (rank == 0)
                fprintf(stderr, "mpi_abort: FAIL: rank %s is not a rank number\n", argv[1]);
            MPI_Finalize();
            return 2;
        }
    }
    if (target >= size) {
        if (rank == 0)
            fprintf(stderr, "mpi_abort: rank %ld does not exist in a job of %d; rank %d aborts instead\n", target,
                    size, size - 1);
        target = size - 1;
    }
    if (rank == target) {
        printf("rank %d calling MPI_Abort(MPI_COMM_WORLD, 7)\n", rank);
        fflush(stdout);
        MPI_Abort(MPI_COMM_WORLD, 7);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    fprintf(stderr, "mpi_abort: FAIL on rank %d: the barrier completed although rank %ld aborted\n", rank, target);
    MPI_Finalize();
    return 1;
}
