/* mpi_hello: every rank prints "hello from rank R of N on HOST".
 * When the launcher exports RLAUNCH_RANK / RLAUNCH_SIZE, the rank and size MPI reports must match
 * them: a mismatch means the PMI server handed out the wrong identity. Exit 0 on success, 1 on a
 * mismatch (after MPI_Finalize, so the other ranks are not left hanging). */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

/* 1 and *out set when NAME holds a whole non-negative number, 0 when unset, -1 when garbled. */
static int env_int(const char *name, long *out)
{
    const char *s = getenv(name);
    char *end;
    if (s == NULL || *s == '\0')
        return 0;
    *out = strtol(s, &end, 10);
    return (*end == '\0' && *out >= 0) ? 1 : -1;
}

int main(int argc, char **argv)
{
    int rank, size, len, ok = 1;
    long want;
    char host[MPI_MAX_PROCESSOR_NAME];

    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Get_processor_name(host, &len);

    switch (env_int("RLAUNCH_RANK", &want)) {
    case 1:
        if (want != rank) {
            fprintf(stderr, "mpi_hello: FAIL: MPI says rank %d but RLAUNCH_RANK=%ld on %s\n", rank, want, host);
            ok = 0;
        }
        break;
    case -1:
        fprintf(stderr, "mpi_hello: FAIL: RLAUNCH_RANK=%s is not a rank number\n", getenv("RLAUNCH_RANK"));
        ok = 0;
        break;
    }
    switch (env_int("RLAUNCH_SIZE", &want)) {
    case 1:
        if (want != size) {
            fprintf(stderr, "mpi_hello: FAIL: MPI says size %d but RLAUNCH_SIZE=%ld on %s (rank %d)\n", size, want,
                    host, rank);
            ok = 0;
        }
        break;
    case -1:
        fprintf(stderr, "mpi_hello: FAIL: RLAUNCH_SIZE=%s is not a size\n", getenv("RLAUNCH_SIZE"));
        ok = 0;
        break;
    }
    if (ok)
        printf("hello from rank %d of %d on %s\n", rank, size, host);
    fflush(stdout);
    MPI_Finalize();
    return ok ? 0 : 1;
}
