/* The CVectorMath arithmetic compiled for one kernel build's CPU, for the accuracy tests
 * (Tests/AMMSoftmaxCoreTests/VectorMathTests.swift). Included by each probe target's header with
 * AMM_PROBE(name) defined to that build's prefix; call a probe only where the CPU supports its
 * build (amm_cpu_supports_x86_64_v3 / v4). Arrays hold `count` values, a multiple of the vector
 * width (16 floats, 8 doubles). No include guard: each probe target includes it once. */

/* 1 if the probe was compiled with fused multiply-adds. */
int AMM_PROBE(compiled_with_fma)(void);

void AMM_PROBE(exp_f32)(const float *x, float *out, long count);
void AMM_PROBE(exp_f64)(const double *x, double *out, long count);

/* amm_angular_negative_and_derivative and amm_angular_negative over the arrays; `alone`
   receives the value computed without the derivative. */
void AMM_PROBE(amm_negative_f32)(const float *c, long count, float threshold, float cos_t,
                                 float sin_t, float bound, float ceiling, float *value,
                                 float *derivative, float *alone);
void AMM_PROBE(amm_negative_f64)(const double *c, long count, double threshold, double cos_t,
                                 double sin_t, double bound, double ceiling, double *value,
                                 double *derivative, double *alone);
