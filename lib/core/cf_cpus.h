/* cf_cpus: how many CPUs this process may run on. */
#ifndef CF_CPUS_H
#define CF_CPUS_H

/* The CPUs of this process's affinity mask (taskset, cgroup cpusets,
 * container limits set that way), else the online CPUs; at least 1. What
 * sizes encoder threads, render jobs and default slots, so a node pinned to
 * one core does not run two encoder threads on it. */
int cf_cpu_count(void);

#endif
