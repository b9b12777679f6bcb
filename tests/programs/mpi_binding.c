/* mpi_binding: every rank prints "binding RANK CPUS" with the CPUs it may run on
 * (sched_getaffinity, in the kernel's list syntax), after MPI_Init; under Open MPI also what the
 * library believes its binding is (its affinity extension, fed by PMIX_CPUSET), as "ompi LAYOUT". */
#define _GNU_SOURCE
#include <mpi.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#if defined(OPEN_MPI) && OPEN_MPI
#include <mpi-ext.h>
#endif

int main(int argc, char **argv)
{
    int rank, cpu, first = -1, last = -1, n = 0;
    char list[4096] = "";
    cpu_set_t set;

    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    CPU_ZERO(&set);
    sched_getaffinity(0, sizeof set, &set);
    for (cpu = 0; cpu <= CPU_SETSIZE; cpu++) {
        int in = cpu < CPU_SETSIZE && CPU_ISSET(cpu, &set);
        if (in && first < 0)
            first = cpu;
        if (in)
            last = cpu;
        if (!in && first >= 0) {
            n += snprintf(list + n, sizeof list - n, "%s%d", n ? "," : "", first);
            if (last > first)
                n += snprintf(list + n, sizeof list - n, "-%d", last);
            first = -1;
        }
    }
    printf("binding %d %s\n", rank, list);
#ifdef OMPI_HAVE_MPI_EXT_AFFINITY
    {
        char bound[OMPI_AFFINITY_STRING_MAX], current[OMPI_AFFINITY_STRING_MAX], exists[OMPI_AFFINITY_STRING_MAX];
        OMPI_Affinity_str(OMPI_AFFINITY_LAYOUT_FMT, bound, current, exists);
        printf("ompi %d %s\n", rank, bound);
    }
#endif
    fflush(stdout);
    MPI_Finalize();
    return 0;
}
