/* Shared helpers of the CPU probes: a monotonic clock and the best of several timings. */
#ifndef KVQ_PROBE_COMMON_H
#define KVQ_PROBE_COMMON_H
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double probe_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* Deterministic bytes (xorshift), so every run codes the same data. */
static unsigned probe_state = 2463534242u;
static unsigned probe_rand(void) {
    probe_state ^= probe_state << 13;
    probe_state ^= probe_state >> 17;
    probe_state ^= probe_state << 5;
    return probe_state;
}
static float probe_unit(void) { return (probe_rand() >> 8) * (1.0f / 16777216.0f); }

#endif
