/* mpi_no_finalize [RANK]: every rank calls MPI_Init and a barrier; RANK (default: the last rank)
 * then returns from main with status 0 without MPI_Finalize, the others finalize. A launcher
 * must call the job failed: the rank started MPI and never ended it. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    int rank, size;
    long target;

    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    target = argc > 1 ? strtol(argv[1], NULL, 10) : size - 1;
    if (target < 0 || target >= size)
        target = size - 1;
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == target) {
        printf("rank %d leaves without MPI_Finalize\n", rank);
        fflush(stdout);
        return 0;
    }
    MPI_Finalize();
    return 0;
}
