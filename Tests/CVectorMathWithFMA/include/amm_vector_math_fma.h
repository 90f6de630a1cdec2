/* The CVectorMath arithmetic compiled for x86-64-v3 (AVX2 with FMA), as the AVX2 and AVX-512
 * kernel builds compile it, for the accuracy tests (Tests/AMMSoftmaxCoreTests/
 * VectorMathTests.swift). Call only where amm_cpu_supports_x86_64_v3() says so. Arrays hold
 * `count` values, a multiple of the vector width (16 floats, 8 doubles). */
#ifndef AMM_VECTOR_MATH_FMA_H
#define AMM_VECTOR_MATH_FMA_H

/* 1 if this file was compiled with fused multiply-adds (it should be). */
int amm_fma_compiled(void);

void amm_fma_exp_f32(const float *x, float *out, long count);
void amm_fma_exp_f64(const double *x, double *out, long count);

/* amm_amm_negative_and_derivative and amm_amm_negative, lane by lane over the arrays; `alone`
   receives the value computed without the derivative. */
void amm_fma_amm_negative_f32(const float *c, long count, float threshold, float cos_t,
                              float sin_t, float bound, float ceiling, float *value,
                              float *derivative, float *alone);
void amm_fma_amm_negative_f64(const double *c, long count, double threshold, double cos_t,
                              double sin_t, double bound, double ceiling, double *value,
                              double *derivative, double *alone);

#endif
