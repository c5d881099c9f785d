/* bench_hvc with 1000 distinct translation blocks between calls. */
#define BENCH_BLOCKS 1
#include "bench_hvc.c"
