/* The probes' definitions (see probe_declarations.h), for the AMM_PROBE prefix of the including
 * file, compiled with that target's CPU flags. */
#include <string.h>

#include "amm_vector_math.h"

int AMM_PROBE(compiled_with_fma)(void) {
#if defined(__FMA__)
    return 1;
#else
    return 0;
#endif
}

void AMM_PROBE(exp_f32)(const float *x, float *out, long count) {
    for (long j = 0; j + 16 <= count; j += 16) {
        amm_f32x16 v, e;
        memcpy(&v, x + j, sizeof v);
        e = amm_exp_f32x16(v);
        memcpy(out + j, &e, sizeof e);
    }
}

void AMM_PROBE(exp_f64)(const double *x, double *out, long count) {
    for (long j = 0; j + 8 <= count; j += 8) {
        amm_f64x8 v, e;
        memcpy(&v, x + j, sizeof v);
        e = amm_exp_f64x8(v);
        memcpy(out + j, &e, sizeof e);
    }
}

#define AMM_DEFINE_NEGATIVE_PROBE(SUFFIX, NAME, V, S, WIDTH)                                     \
void NAME(const S *c, long count, S threshold, S cos_t, S sin_t, S bound, S ceiling, S *value,  \
          S *derivative, S *alone) {                                                            \
    for (long j = 0; j + WIDTH <= count; j += WIDTH) {                                          \
        V v, a;                                                                                  \
        memcpy(&v, c + j, sizeof v);                                                             \
        amm_angular_negative_and_derivative_##SUFFIX(v, threshold, cos_t, sin_t, bound, ceiling, \
                                                     value + j, derivative + j);                 \
        a = amm_angular_negative_##SUFFIX(v, threshold, cos_t, sin_t, bound);                    \
        memcpy(alone + j, &a, sizeof a);                                                         \
    }                                                                                            \
}
AMM_DEFINE_NEGATIVE_PROBE(f32x16, AMM_PROBE(amm_negative_f32), amm_f32x16, float, 16)
AMM_DEFINE_NEGATIVE_PROBE(f64x8, AMM_PROBE(amm_negative_f64), amm_f64x8, double, 8)
