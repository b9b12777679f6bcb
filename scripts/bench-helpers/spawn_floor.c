/* spawn_floor N PROGRAM [ARGS...]: the physical floor for starting a job on one node.
 * Starts N copies of PROGRAM with posix_spawn (all first, as a launcher does), then waits for all
 * of them. No pipes, no environment changes, no process groups: whatever a launcher adds on top of
 * this is its overhead. Exit status: 0 if every copy exited 0, else 1. */
#include <errno.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>

extern char **environ;

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: spawn_floor N PROGRAM [ARGS...]\n");
        return 2;
    }
    char *end;
    long n = strtol(argv[1], &end, 10);
    if (*end != '\0' || n < 1 || n > 1000000) {
        fprintf(stderr, "spawn_floor: N must be a positive number, not '%s'\n", argv[1]);
        return 2;
    }
    int failed = 0;
    for (long i = 0; i < n; i++) {
        pid_t pid;
        int rc = posix_spawn(&pid, argv[2], NULL, NULL, &argv[2], environ);
        if (rc != 0) {
            fprintf(stderr, "spawn_floor: cannot start %s: %s\n", argv[2], strerror(rc));
            return 1;
        }
    }
    for (long i = 0; i < n; i++) {
        int status;
        if (wait(&status) < 0) {
            fprintf(stderr, "spawn_floor: wait: %s\n", strerror(errno));
            return 1;
        }
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            failed = 1;
    }
    return failed;
}
