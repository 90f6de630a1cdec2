/* Conversions between float and the 16-bit storage types (include/amm_half_precision.h). The
 * loops are branch-free over the elements so that the compiler vectorises them. */
#include "amm_half_precision.h"

#include <string.h>

/* An AVX2 copy of each loop beside the baseline one, chosen on each call by the CPU's features
 * (SSE2 alone made the conversions a large part of the 16-bit path: benchmarks/README.md).
 * Not target_clones: its ifunc resolvers run before ThreadSanitizer's runtime is ready and
 * crash that build. */
#if defined(__x86_64__) && (defined(__clang__) || defined(__GNUC__))
#define AMM_DISPATCHED(RET, NAME, PARAMS, ARGS, BODY)                                            \
    __attribute__((target("avx2"))) static RET NAME##_avx2 PARAMS BODY                          \
    static RET NAME##_baseline PARAMS BODY                                                        \
    RET NAME PARAMS {                                                                             \
        return __builtin_cpu_supports("avx2") ? NAME##_avx2 ARGS : NAME##_baseline ARGS;          \
    }
#else
#define AMM_DISPATCHED(RET, NAME, PARAMS, ARGS, BODY) RET NAME PARAMS BODY
#endif

static inline uint32_t bits_of(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static inline float float_of(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

AMM_DISPATCHED(void, amm_widen_bf16, (const uint16_t *src, float *dst, long count),
               (src, dst, count), {
    for (long k = 0; k < count; ++k) dst[k] = float_of((uint32_t)src[k] << 16);
})

/* An f16 subnormal is m * 2^-24 with m < 2^10: formed from the integer, not from a float
 * subnormal, which denormals-are-zero would read as 0. */
static inline float widen_f16(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
    const uint32_t normal = ((exponent + 112u) << 23) | (mantissa << 13);
    const uint32_t special = 0x7f800000u | (mantissa << 13); /* inf, NaN */
    const uint32_t subnormal = bits_of((float)mantissa * 0x1p-24f);
    const uint32_t magnitude = exponent == 0 ? subnormal : exponent == 31 ? special : normal;
    return float_of(sign | magnitude);
}

AMM_DISPATCHED(void, amm_widen_f16, (const uint16_t *src, float *dst, long count),
               (src, dst, count), {
    for (long k = 0; k < count; ++k) dst[k] = widen_f16(src[k]);
})

/* Round to nearest even on the bit pattern: add half an ulp of the target, less one unless the
 * kept part is odd; a NaN keeps its sign and becomes quiet. */
static inline uint16_t narrow_bf16(float f) {
    const uint32_t u = bits_of(f);
    const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    const uint32_t quiet = (u >> 16) | 0x40u;
    return (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? quiet : rounded);
}

/* f32 -> f16, nearest even, every path computed and one selected (so that the loop is vector
 * code): from 65520 up an infinity, NaN a quiet NaN, below 2^-14 the subnormal path, where
 * adding 0.5 (as a float) aligns the mantissa so that the float addition does the rounding. */
static inline uint16_t narrow_f16(float value) {
    const uint32_t all = bits_of(value), sign = (all >> 16) & 0x8000u;
    const uint32_t f = all & 0x7fffffffu;
    const uint32_t special = f > 0x7f800000u ? 0x7e00u : 0x7c00u;
    const uint32_t subnormal = bits_of(float_of(f) + 0.5f) - (126u << 23);
    const uint32_t normal = (f + ((uint32_t)(15 - 127) << 23) + 0xfffu + ((f >> 13) & 1u)) >> 13;
    const uint32_t out = f >= (143u << 23) ? special : f < (113u << 23) ? subnormal : normal;
    return (uint16_t)(out | sign);
}

/* The two loops leave no infinity or NaN unnoticed: a flag is or-ed over the whole row (vector
 * code), and only a flagged row is searched for its first such element. */
#define AMM_NARROW_LOOP(NAME, NARROW, EXPONENT_MASK)                                             \
    AMM_DISPATCHED(long, NAME, (const float *src, uint16_t *dst, long count), (src, dst, count), { \
        uint32_t flagged = 0;                                                                     \
        for (long k = 0; k < count; ++k) {                                                        \
            const uint16_t h = NARROW(src[k]);                                                    \
            dst[k] = h;                                                                           \
            flagged |= (h & EXPONENT_MASK) == EXPONENT_MASK;                                      \
        }                                                                                         \
        if (!flagged) return -1;                                                                  \
        for (long k = 0; k < count; ++k)                                                          \
            if ((dst[k] & EXPONENT_MASK) == EXPONENT_MASK) return k;                              \
        return -1;                                                                                \
    })

AMM_NARROW_LOOP(amm_narrow_bf16, narrow_bf16, 0x7f80u)
AMM_NARROW_LOOP(amm_narrow_f16, narrow_f16, 0x7c00u)
