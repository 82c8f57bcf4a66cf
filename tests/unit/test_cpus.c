#define _GNU_SOURCE
/* Unit tests for lib/core/cf_cpus.c: the CPU count follows this process's
 * affinity mask, as taskset and cpusets set it. */
#include <sched.h>
#include <unistd.h>

#include "cf_cpus.h"
#include "cf_testutil.h"

static void test_follows_affinity(void **state)
{
    (void)state;
    cpu_set_t all;
    CPU_ZERO(&all);
    assert_int_equal(sched_getaffinity(0, sizeof all, &all), 0);
    assert_int_equal(cf_cpu_count(), CPU_COUNT(&all));

    /* Pinned to one of them: one. */
    int first = -1;
    for (int c = 0; c < CPU_SETSIZE && first < 0; c++)
        if (CPU_ISSET(c, &all))
            first = c;
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(first, &one);
    assert_int_equal(sched_setaffinity(0, sizeof one, &one), 0);
    assert_int_equal(cf_cpu_count(), 1);

    /* Back to the whole mask: never more than the machine has online. */
    assert_int_equal(sched_setaffinity(0, sizeof all, &all), 0);
    assert_int_equal(cf_cpu_count(), CPU_COUNT(&all));
    assert_true(cf_cpu_count() <= sysconf(_SC_NPROCESSORS_ONLN));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_follows_affinity),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
