/* Conversions between float and the 16-bit storage types (include/amm_half_precision.h). The
 * loops are branch-free over the elements so that the compiler vectorises them. */
#include "amm_half_precision.h"

#include <string.h>

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

void amm_widen_bf16(const uint16_t *src, float *dst, long count) {
    for (long k = 0; k < count; ++k) dst[k] = float_of((uint32_t)src[k] << 16);
}

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

void amm_widen_f16(const uint16_t *src, float *dst, long count) {
    for (long k = 0; k < count; ++k) dst[k] = widen_f16(src[k]);
}

/* Round to nearest even on the bit pattern: add half an ulp of the target, less one unless the
 * kept part is odd; a NaN keeps its sign and becomes quiet. */
static inline uint16_t narrow_bf16(float f) {
    const uint32_t u = bits_of(f);
    const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    const int nan = (u & 0x7fffffffu) > 0x7f800000u;
    return (uint16_t)(nan ? ((u >> 16) | 0x40u) : rounded);
}

long amm_narrow_bf16(const float *src, uint16_t *dst, long count) {
    long first = -1;
    for (long k = 0; k < count; ++k) {
        const uint16_t h = narrow_bf16(src[k]);
        dst[k] = h;
        const int overflowed = (h & 0x7fffu) == 0x7f80u && (bits_of(src[k]) & 0x7fffffffu) < 0x7f800000u;
        if (overflowed && first < 0) first = k;
    }
    return first;
}

/* f32 -> f16, nearest even: values from 65520 up (and infinities) give an infinity, values
 * below 2^-14 go through the subnormal path, where adding 0.5 (as a float) aligns the
 * mantissa so that the float addition does the rounding. */
static inline uint16_t narrow_f16(float value) {
    uint32_t f = bits_of(value);
    const uint32_t sign = f & 0x80000000u;
    f ^= sign;
    uint16_t out;
    if (f >= (143u << 23)) {                    /* >= 65536, infinity or NaN */
        out = f > 0x7f800000u ? 0x7e00u : 0x7c00u;
    } else if (f < (113u << 23)) {              /* below 2^-14: subnormal or zero */
        const float magic = float_of(126u << 23);   /* 0.5 */
        out = (uint16_t)(bits_of(float_of(f) + magic) - (126u << 23));
    } else {
        const uint32_t odd = (f >> 13) & 1u;
        f += ((uint32_t)(15 - 127) << 23) + 0xfffu + odd;
        out = (uint16_t)(f >> 13);
    }
    return (uint16_t)(out | (sign >> 16));
}

long amm_narrow_f16(const float *src, uint16_t *dst, long count) {
    long first = -1;
    for (long k = 0; k < count; ++k) {
        const uint16_t h = narrow_f16(src[k]);
        dst[k] = h;
        const int overflowed = (h & 0x7fffu) == 0x7c00u && (bits_of(src[k]) & 0x7fffffffu) < 0x7f800000u;
        if (overflowed && first < 0) first = k;
    }
    return first;
}
