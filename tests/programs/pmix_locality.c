/* pmix_locality: a PMIx client that prints what its server says of its own placement:
 * "locality RANK CPUSET LOCALITY" (PMIX_CPUSET, PMIX_LOCALITY_STRING; "-" when absent). */
#include <pmix.h>
#include <stdio.h>

static const char *get(const pmix_proc_t *me, const char *key, pmix_value_t **v)
{
    if (PMIx_Get(me, key, NULL, 0, v) != PMIX_SUCCESS || (*v)->type != PMIX_STRING)
        return "-";
    return (*v)->data.string;
}

int main(void)
{
    pmix_proc_t me;
    pmix_value_t *a = NULL, *b = NULL;
    if (PMIx_Init(&me, NULL, 0) != PMIX_SUCCESS)
        return 1;
    printf("locality %u %s %s\n", me.rank, get(&me, PMIX_CPUSET, &a), get(&me, PMIX_LOCALITY_STRING, &b));
    fflush(stdout);
    PMIx_Finalize(NULL, 0);
    return 0;
}
