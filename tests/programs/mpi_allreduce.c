/* mpi_allreduce: MPI_Allreduce(SUM) of a 1000-element vector and a scalar; every rank checks the
 * result against the closed form. Rank 0 prints one line; a rank with a wrong sum prints what it
 * got and exits 1. */
#include <mpi.h>
#include <stdio.h>

#define COUNT 1000

int main(int argc, char **argv)
{
    int rank, size, i, ok = 1, all_ok;
    long long mine[COUNT], sum[COUNT], one, total;

    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);

    /* Element i of rank r is r*COUNT + i, so the sum over ranks is COUNT*N(N-1)/2 + N*i. */
    for (i = 0; i < COUNT; i++)
        mine[i] = (long long)rank * COUNT + i;
    MPI_Allreduce(mine, sum, COUNT, MPI_LONG_LONG, MPI_SUM, MPI_COMM_WORLD);
    for (i = 0; i < COUNT; i++) {
        long long want = (long long)COUNT * size * (size - 1) / 2 + (long long)size * i;
        if (sum[i] != want) {
            fprintf(stderr, "mpi_allreduce: FAIL on rank %d: element %d is %lld, want %lld\n", rank, i, sum[i], want);
            ok = 0;
            break;
        }
    }
    one = rank + 1;
    MPI_Allreduce(&one, &total, 1, MPI_LONG_LONG, MPI_SUM, MPI_COMM_WORLD);
    if (total != (long long)size * (size + 1) / 2) {
        fprintf(stderr, "mpi_allreduce: FAIL on rank %d: sum of rank+1 is %lld, want %lld\n", rank, total,
                (long long)size * (size + 1) / 2);
        ok = 0;
    }
    /* Agree on the verdict so rank 0 does not print "ok" when another rank failed. */
    MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    if (rank == 0 && all_ok)
        printf("allreduce ok: sum=%lld over %d ranks, %d-element vector verified\n", total, size, COUNT);
    fflush(stdout);
    MPI_Finalize();
    return ok ? 0 : 1;
}
