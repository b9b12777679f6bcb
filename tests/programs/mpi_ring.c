/* mpi_ring: a token starts at 0 on rank 0, each rank adds its rank number and passes it on; every
 * rank checks the value it receives (sum of the ranks before it) and rank 0 checks the final
 * N(N-1)/2. Rank 0 prints one line; a wrong token makes that rank exit 1. */
#include <mpi.h>
#include <stdio.h>

int main(int argc, char **argv)
{
    int rank, size, ok = 1, all_ok;
    long long token = 0, want;

    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);

    if (size > 1) {
        int next = (rank + 1) % size, prev = (rank + size - 1) % size;
        if (rank == 0) {
            MPI_Send(&token, 1, MPI_LONG_LONG, next, 0, MPI_COMM_WORLD);
            MPI_Recv(&token, 1, MPI_LONG_LONG, prev, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            want = (long long)size * (size - 1) / 2;
        } else {
            MPI_Recv(&token, 1, MPI_LONG_LONG, prev, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            want = (long long)rank * (rank - 1) / 2;
            if (token != want) {
                fprintf(stderr, "mpi_ring: FAIL on rank %d: got token %lld from rank %d, want %lld\n", rank, token,
                        prev, want);
                ok = 0;
            }
            token += rank;
            MPI_Send(&token, 1, MPI_LONG_LONG, next, 0, MPI_COMM_WORLD);
            want = token;
        }
        if (rank == 0 && token != want) {
            fprintf(stderr, "mpi_ring: FAIL on rank 0: token came back as %lld, want %lld\n", token, want);
            ok = 0;
        }
    }
    MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    if (rank == 0 && all_ok)
        printf("ring ok: token %lld went around %d ranks\n", token, size);
    fflush(stdout);
    MPI_Finalize();
    return ok ? 0 : 1;
}
