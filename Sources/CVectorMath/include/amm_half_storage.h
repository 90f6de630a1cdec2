/* Cosines and gradients stored in 16 bits (docs/FORMULATION.md, "Half precision"): bfloat16 and
 * IEEE binary16 values held in uint16_t, widened exactly to float on read and rounded to
 * nearest, ties to even, on write, sixteen lanes at a time, inside the row kernels' loops (the
 * one-pass stretch reads them, the gradient pass writes them), so that the caller's memory is
 * the only copy of a 16-bit row that is ever read or written.
 *
 * Integer arithmetic on the bit patterns (and, for f16 subnormals, one exact float operation);
 * for f16, where the build has F16C (the AVX2 and AVX-512 builds), its conversions instead,
 * one instruction per eight values in place of a dozen: they round to nearest even by their
 * immediate operand and read f16 subnormals exactly whatever denormals-are-zero says (tested:
 * python/tests/test_kernel_builds.py, every finite value up to 1.5 on every build against that
 * build's float32 path). The results are the same bits on every build and do not depend on flush-to-zero or
 * denormals-are-zero (a non-default rounding mode of the caller would change the integer f16
 * subnormal rounding only), NaNs aside: F16C keeps a NaN's payload where the integer path
 * gives the default quiet NaN, and a NaN is an error wherever it appears (a cosine or a
 * gradient entry), so no result depends on which. Inline, so that each kernel build compiles them with its own CPU
 * flags. Internal to the library; not part of the C API. */
#ifndef AMM_HALF_STORAGE_H
#define AMM_HALF_STORAGE_H

#include <stdint.h>

#include "amm_vector_math.h"

#if defined(__F16C__)
#include <immintrin.h>
#endif

/* The storage formats, as the row kernels' table passes them. */
enum { AMM_STORAGE_BF16 = 0, AMM_STORAGE_F16 = 1 };

typedef unsigned short amm_u16x16 __attribute__((ext_vector_type(16)));
typedef unsigned int amm_u32x16 __attribute__((ext_vector_type(16)));

/* bf16 -> float: the bits are float's upper half (NaN payloads kept). */
AMM_INLINE amm_f32x16 amm_widen_bf16_f32x16(amm_u16x16 h) {
    return (amm_f32x16)(__builtin_convertvector(h, amm_u32x16) << 16);
}

/* f16 -> float. A subnormal is m 2^-24 with m < 2^10: formed from the integer m (a float
 * product that is exact and normal), not from a float subnormal, which denormals-are-zero
 * would read as 0. */
AMM_INLINE amm_f32x16 amm_widen_f16_f32x16(amm_u16x16 half) {
#if defined(__F16C__)
    __m128i low, high;
    __builtin_memcpy(&low, &half, sizeof low);
    __builtin_memcpy(&high, (const char *)&half + sizeof low, sizeof high);
    const __m256 a = _mm256_cvtph_ps(low), b = _mm256_cvtph_ps(high);
    amm_f32x16 out;
    __builtin_memcpy(&out, &a, sizeof a);
    __builtin_memcpy((char *)&out + sizeof a, &b, sizeof b);
    return out;
#else
    const amm_u32x16 h = __builtin_convertvector(half, amm_u32x16);
    const amm_u32x16 sign = (h & 0x8000u) << 16;
    const amm_u32x16 exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
    const amm_u32x16 normal = ((exponent + 112u) << 23) | (mantissa << 13);
    const amm_u32x16 special = 0x7f800000u | (mantissa << 13); /* inf, NaN */
    const amm_u32x16 subnormal =
        (amm_u32x16)(__builtin_convertvector((amm_i32x16)mantissa, amm_f32x16) * 0x1p-24f);
    const amm_i32x16 zero_exponent = (amm_i32x16)(exponent == 0u);
    const amm_i32x16 top_exponent = (amm_i32x16)(exponent == 31u);
    const amm_u32x16 magnitude = AMM_SELECT(amm_u32x16, amm_i32x16, zero_exponent, subnormal,
                                            AMM_SELECT(amm_u32x16, amm_i32x16, top_exponent,
                                                       special, normal));
    return (amm_f32x16)(sign | magnitude);
#endif
}

/* float -> bf16, nearest even on the bit pattern: add half an ulp of the target, less one
 * unless the kept part is odd; a NaN keeps its sign and becomes quiet (the gradient pass's
 * amm_scale_narrow16 leaves this case out: it reports a NaN instead of storing it). */
AMM_INLINE amm_u16x16 amm_narrow_bf16_f32x16(amm_f32x16 value) {
    const amm_u32x16 u = (amm_u32x16)value;
    const amm_u32x16 rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    const amm_u32x16 quiet = (u >> 16) | 0x40u;
    const amm_i32x16 nan = (amm_i32x16)((u & 0x7fffffffu) > 0x7f800000u);
    return __builtin_convertvector(AMM_SELECT(amm_u32x16, amm_i32x16, nan, quiet, rounded),
                                   amm_u16x16);
}

/* float -> f16, nearest even, every path computed and one selected: from 65520 up an infinity,
 * NaN a quiet NaN, below 2^-14 the subnormal path, where adding 0.5 (as a float) aligns the
 * mantissa so that the float addition does the rounding. */
AMM_INLINE amm_u16x16 amm_narrow_f16_f32x16(amm_f32x16 value) {
#if defined(__F16C__)
    /* The immediate 0: to nearest even, whatever the caller's rounding mode. A NaN keeps its
     * sign and the top of its payload, quiet. */
    __m256 a, b;
    __builtin_memcpy(&a, &value, sizeof a);
    __builtin_memcpy(&b, (const char *)&value + sizeof a, sizeof b);
    const __m128i low = _mm256_cvtps_ph(a, 0), high = _mm256_cvtps_ph(b, 0);
    amm_u16x16 out;
    __builtin_memcpy(&out, &low, sizeof low);
    __builtin_memcpy((char *)&out + sizeof low, &high, sizeof high);
    return out;
#else
    const amm_u32x16 all = (amm_u32x16)value, sign = (all >> 16) & 0x8000u;
    const amm_u32x16 f = all & 0x7fffffffu;
    const amm_i32x16 nan = (amm_i32x16)(f > 0x7f800000u);
    const amm_u32x16 special = AMM_SELECT(amm_u32x16, amm_i32x16, nan, (amm_u32x16)(0x7e00u),
                                          (amm_u32x16)(0x7c00u));
    const amm_u32x16 subnormal = (amm_u32x16)((amm_f32x16)f + 0.5f) - (126u << 23);
    const amm_u32x16 normal = (f + ((amm_u32x16)(15 - 127) << 23) + 0xfffu + ((f >> 13) & 1u))
                              >> 13;
    const amm_i32x16 huge = (amm_i32x16)(f >= (143u << 23));
    const amm_i32x16 tiny = (amm_i32x16)(f < (113u << 23));
    const amm_u32x16 out = AMM_SELECT(amm_u32x16, amm_i32x16, huge, special,
                                      AMM_SELECT(amm_u32x16, amm_i32x16, tiny, subnormal,
                                                 normal));
    return __builtin_convertvector(out | sign, amm_u16x16);
#endif
}

/* Sixteen stored values widened, for `format`. */
AMM_INLINE amm_f32x16 amm_widen_f32x16(amm_u16x16 h, int format) {
    return format == AMM_STORAGE_BF16 ? amm_widen_bf16_f32x16(h) : amm_widen_f16_f32x16(h);
}

AMM_INLINE amm_u16x16 amm_narrow_f32x16(amm_f32x16 v, int format) {
    return format == AMM_STORAGE_BF16 ? amm_narrow_bf16_f32x16(v) : amm_narrow_f16_f32x16(v);
}

/* The exponent bits of the format: all set in an infinity or a NaN. */
AMM_INLINE unsigned amm_storage_exponent_mask(int format) {
    return format == AMM_STORAGE_BF16 ? 0x7f80u : 0x7c00u;
}

/* dst[k] = the float value of src[k] (k < count), exactly. */
AMM_INLINE void amm_widen_row(const uint16_t *src, float *dst, long count, int format) {
    long k = 0;
    for (; k + 16 <= count; k += 16) {
        amm_u16x16 h;
        __builtin_memcpy(&h, src + k, sizeof h);
        const amm_f32x16 v = amm_widen_f32x16(h, format);
        __builtin_memcpy(dst + k, &v, sizeof v);
    }
    if (k < count) {
        amm_u16x16 h = (amm_u16x16)(0);
        __builtin_memcpy(&h, src + k, (unsigned long)(count - k) * sizeof(uint16_t));
        const amm_f32x16 v = amm_widen_f32x16(h, format);
        __builtin_memcpy(dst + k, &v, (unsigned long)(count - k) * sizeof(float));
    }
}

/* One stored value widened, by the integer arithmetic of amm_widen_f16_f32x16 for f16. */
AMM_INLINE float amm_widen_one(uint16_t value, int format) {
    uint32_t bits = (uint32_t)value << 16;
    if (format != AMM_STORAGE_BF16) {
        const uint32_t sign = (uint32_t)(value & 0x8000u) << 16;
        const uint32_t exponent = (value >> 10) & 0x1fu, mantissa = value & 0x3ffu;
        if (exponent == 0) {
            const float subnormal = (float)mantissa * 0x1p-24f;
            __builtin_memcpy(&bits, &subnormal, sizeof bits);
        } else if (exponent == 31) {
            bits = 0x7f800000u | (mantissa << 13);
        } else {
            bits = ((exponent + 112u) << 23) | (mantissa << 13);
        }
        bits |= sign;
    }
    float out;
    __builtin_memcpy(&out, &bits, sizeof out);
    return out;
}

/* One float rounded to the format. */
AMM_INLINE uint16_t amm_narrow_one(float value, int format) {
    const amm_u16x16 h = amm_narrow_f32x16((amm_f32x16)(value), format);
    return h[0];
}

/* The largest float bit pattern (sign cleared) that rounds to a finite value of the format:
 * above it lie the values that round to an infinity (from half an ulp above the largest finite
 * value, ties included: that value's last bit is odd), the infinities and the NaNs. */
AMM_INLINE unsigned amm_storage_finite_limit(int format) {
    return format == AMM_STORAGE_BF16 ? 0x7f7f7fffu : 0x477fefffu;
}

/* Sixteen results of the gradient pass: src[0..16) * factors, rounded; the lanes whose product
 * does not round to a finite value are or-ed into *flagged. bf16 rounds here without the NaN
 * case of amm_narrow_bf16_f32x16: a NaN is flagged, and what it rounds to does not matter. */
AMM_INLINE amm_u16x16 amm_scale_narrow16(const float *src, amm_f32x16 factors, int format,
                                         amm_i32x16 *flagged) {
    amm_f32x16 v;
    __builtin_memcpy(&v, src, sizeof v);
    const amm_u32x16 u = (amm_u32x16)(v * factors);
    *flagged |= (amm_i32x16)((u & 0x7fffffffu) > amm_storage_finite_limit(format));
    if (format == AMM_STORAGE_BF16)
        return __builtin_convertvector((u + 0x7fffu + ((u >> 16) & 1u)) >> 16, amm_u16x16);
    return amm_narrow_f16_f32x16((amm_f32x16)u);
}

/* The gradient pass of one block in 16-bit storage: dst[k] = (src[k] * factor) rounded to the
 * format (the product in float, as the f32 gradient pass forms it, then one rounding), for
 * k < count, with ordinary stores: dst is a scratch row that a GradientStream then streams out
 * while the next row is computed, or, for small calls, the caller's row (streaming stores
 * issued all at once here stalled the core: benchmarks/README.md). A count that is not a
 * multiple of 16 ends with a vector overlapping the one before (the same values written
 * twice). Returns the lowest k other than `skip` whose result is not finite (an infinity, from
 * a product beyond the format's range, or a NaN), or -1; every element is written. */
AMM_INLINE long amm_scale_narrow_block(const float *src, long count, float factor, uint16_t *dst,
                                       int format, long skip) {
    const amm_f32x16 factors = (amm_f32x16)(factor);
    amm_i32x16 flagged = (amm_i32x16)(0);
    if (count < 16) { /* through a zero-padded vector */
        float padded[16] = {0};
        __builtin_memcpy(padded, src, (unsigned long)count * sizeof(float));
        const amm_u16x16 h = amm_scale_narrow16(padded, factors, format, &flagged);
        __builtin_memcpy(dst, &h, (unsigned long)count * sizeof(uint16_t));
    } else {
        long k = 0;
        for (; k + 16 <= count; k += 16) {
            const amm_u16x16 h = amm_scale_narrow16(src + k, factors, format, &flagged);
            __builtin_memcpy(dst + k, &h, sizeof h);
        }
        if (k < count) {
            const amm_u16x16 h = amm_scale_narrow16(src + count - 16, factors, format, &flagged);
            __builtin_memcpy(dst + count - 16, &h, sizeof h);
        }
    }
    if (__builtin_reduce_or(flagged) == 0) return -1;
    /* Rare: find the element again, by the same product. */
    const unsigned limit = amm_storage_finite_limit(format);
    for (long k = 0; k < count; k++) {
        const float product = src[k] * factor;
        unsigned bits;
        __builtin_memcpy(&bits, &product, sizeof bits);
        if (k != skip && (bits & 0x7fffffffu) > limit) return k;
    }
    return -1;
}

#endif
