/* mpi_env: after MPI_Init, every rank prints what rlaunch gave it for hwloc and UCX, on one line:
 * "HWLOC_XMLFILE HWLOC_THISSYSTEM UCX_TLS HEAD" (each "-" when unset; HEAD is the first 5 bytes of
 * the XML file, or "-" when there is none or it cannot be read). The daemon gives these only to
 * MPI programs, so the test program must be one. "mpi_env SECONDS" then waits that long before
 * MPI_Finalize (a live MPI rank for tests that kill its daemon). */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static const char *or_dash(const char *s)
{
    return (s != NULL && *s != '\0') ? s : "-";
}

int main(int argc, char **argv)
{
    char head[6] = "-";
    const char *xml = getenv("HWLOC_XMLFILE");
    FILE *f;

    MPI_Init(&argc, &argv);
    if (xml != NULL && (f = fopen(xml, "r")) != NULL) {
        size_t n = fread(head, 1, 5, f);
        head[n] = '\0';
        fclose(f);
    }
    printf("%s %s %s %s\n", or_dash(xml), or_dash(getenv("HWLOC_THISSYSTEM")), or_dash(getenv("UCX_TLS")), or_dash(head));
    fflush(stdout);
    if (argc > 1)
        sleep((unsigned)atoi(argv[1]));
    MPI_Finalize();
    return 0;
}
