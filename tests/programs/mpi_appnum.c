/* mpi_appnum APP: one executable of an MPMD job. Checks that MPI_APPNUM is APP, then counts the
 * ranks of each application across MPI_COMM_WORLD with MPI_Allreduce, so every application must
 * share one world. Rank 0 prints "appnum ok: A ranks of app 0, B of app 1, ..." (up to 8 apps).
 * Exit 1 on a wrong appnum, 2 on a bad argument. Build it twice under two names for a real
 * two-executable MPMD job. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

#define MAX_APPS 8

int main(int argc, char **argv)
{
    int rank, size, flag, i, ok = 1, all_ok;
    int *appnum_attr;
    long want = -1;
    char *end = NULL;
    int mine[MAX_APPS] = {0}, counts[MAX_APPS];

    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (argc > 1)
        want = strtol(argv[1], &end, 10);
    if (argc < 2 || *argv[1] == '\0' || *end != '\0' || want < 0 || want >= MAX_APPS) {
        fprintf(stderr, "mpi_appnum: usage: mpi_appnum APP (0-%d)\n", MAX_APPS - 1);
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_APPNUM, &appnum_attr, &flag);
    if (!flag || *appnum_attr != want) {
        fprintf(stderr, "mpi_appnum: FAIL on rank %d: MPI_APPNUM is %d (set: %d), expected %ld\n", rank,
                flag ? *appnum_attr : -1, flag, want);
        ok = 0;
    }
    mine[want] = 1;
    MPI_Allreduce(mine, counts, MAX_APPS, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_LAND, MPI_COMM_WORLD);
    if (rank == 0 && all_ok) {
        printf("appnum ok: %d ranks", size);
        for (i = 0; i < MAX_APPS; i++)
            if (counts[i])
                printf(", %d of app %d", counts[i], i);
        printf("\n");
    }
    fflush(stdout);
    MPI_Finalize();
    return ok ? 0 : 1;
}
