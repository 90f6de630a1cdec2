/* Half-precision storage (docs/FORMULATION.md, "Half precision"): bfloat16 and IEEE binary16
 * values held in uint16_t, widened exactly to float on read and rounded to nearest, ties to
 * even, on write. Integer arithmetic on the bit patterns (and one float addition, exact, for
 * f16 subnormals), so that the results do not depend on the CPU's F16C or AVX512_BF16
 * support, nor on flush-to-zero or denormals-are-zero (a non-default rounding mode of the
 * caller would change that addition's rounding only). Internal to the library; not part of the C API. */
#ifndef AMM_HALF_PRECISION_H
#define AMM_HALF_PRECISION_H

#include <stdint.h>

/* Not exported from libAMMSoftmax.so: the library's own helpers. */
#define AMM_HALF_INTERNAL __attribute__((visibility("hidden")))

/* dst[k] = the float value of src[k], exactly (NaN payloads kept in the high bits). */
AMM_HALF_INTERNAL void amm_widen_bf16(const uint16_t *src, float *dst, long count);
AMM_HALF_INTERNAL void amm_widen_f16(const uint16_t *src, float *dst, long count);

/* dst[k] = src[k] rounded to the storage type, to nearest with ties to even (NaN stays NaN).
 * Returns the index of the first element whose result is not finite (a finite value beyond the
 * type's range, bf16 about 3.39e38 and f16 65504, rounds to an infinity), or -1 when there is
 * none; every element is written. */
AMM_HALF_INTERNAL long amm_narrow_bf16(const float *src, uint16_t *dst, long count);
AMM_HALF_INTERNAL long amm_narrow_f16(const float *src, uint16_t *dst, long count);

#endif
