/* The cost of one small call made from C: the baseline the Python wrapper's overhead is
 * measured against (benchmarks/bench_loss.py compiles and runs this).
 *
 *   small_call N C REPEATS  ->  prints "median_ns <value>" for amm_forward_backward_f32
 */
#define _POSIX_C_SOURCE 199309L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "amm_softmax.h"

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static int compare_doubles(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s N C REPEATS\n", argv[0]);
        return 2;
    }
    int64_t n = atoll(argv[1]), c = atoll(argv[2]);
    int repeats = atoi(argv[3]);
    float *cos = malloc(sizeof(float) * (size_t)(n * c));
    float *grad = malloc(sizeof(float) * (size_t)(n * c));
    int64_t *labels = malloc(sizeof(int64_t) * (size_t)n);
    double *times = malloc(sizeof(double) * (size_t)repeats);
    if (!cos || !grad || !labels || !times) return 1;
    uint64_t state = 12345;
    for (int64_t k = 0; k < n * c; k++) {
        state = state * 6364136223846793005ULL + 1442695040888963407ULL;
        cos[k] = (float)((double)(state >> 11) / 9007199254740992.0 * 2.0 - 1.0);
    }
    for (int64_t i = 0; i < n; i++) labels[i] = (i * 7919) % c;

    amm_params p;
    amm_params_init(&p);
    float loss;
    for (int r = 0; r < repeats; r++) {
        double t0 = now_ns();
        int status = amm_forward_backward_f32(&p, cos, n, c, labels, &loss, grad);
        times[r] = now_ns() - t0;
        if (status != AMM_OK) {
            fprintf(stderr, "%s\n", amm_last_error());
            return 1;
        }
    }
    qsort(times, (size_t)repeats, sizeof(double), compare_doubles);
    printf("median_ns %.0f\n", times[repeats / 2]);
    free(cos); free(grad); free(labels); free(times);
    return 0;
}
