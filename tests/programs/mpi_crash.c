/* mpi_crash [RANK]: RANK (default 1) raises SIGSEGV right after MPI_Init; the others block in
 * MPI_Barrier until the launcher kills them. The launcher should report the signal and fail the
 * job. A RANK outside the job is clamped to the last rank. Reaching the end is a failure. */
#include <mpi.h>
#include <signal.h>
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
                fprintf(stderr, "mpi_crash: FAIL: rank %s is not a rank number\n", argv[1]);
            MPI_Finalize();
            return 2;
        }
    }
    if (target >= size)
        target = size - 1;
    if (rank == target) {
        printf("rank %d raising SIGSEGV\n", rank);
        fflush(stdout);
        /* The MPI library may catch SIGSEGV to print a backtrace; restore the default so the
         * process really dies of the signal. */
        signal(SIGSEGV, SIG_DFL);
        raise(SIGSEGV);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    fprintf(stderr, "mpi_crash: FAIL on rank %d: the barrier completed although rank %ld crashed\n", rank, target);
    MPI_Finalize();
    return 1;
}
