/* Vector arithmetic the row kernels need and Swift's SIMD types do not give reliably.
 *
 * Why C: Swift's SIMD arithmetic is loops over the lanes that LLVM must turn back into vector
 * instructions, which it does unreliably (and a vector's squareRoot() calls sqrtf lane by lane),
 * whereas clang's vector extensions are vector instructions by construction. Here: the
 * exponential, the amm re-weighting of hard negatives (with an IEEE square root, sqrtps /
 * vsqrtps, and a division) and "is any lane greater".
 *
 * Bits: every operation is an IEEE operation on each lane (+, -, *, /, sqrt, fused
 * multiply-add, comparisons and selections). The compiler's contraction into fused
 * multiply-adds is switched off below; instead AMM_MUL_ADD names each a * b + c that is fused
 * where the CPU has FMA. So the builds with FMA (AVX2, AVX-512) compute the same bits as each
 * other, and the baseline build (SSE2), which rounds the product first, may differ from them in
 * the last bit. The functions are inline, in this header, so that each kernel build (baseline
 * x86-64, AVX2, AVX-512) generates them with its own CPU flags. Internal to the library; not
 * part of the C API. */
#ifndef AMM_VECTOR_MATH_H
#define AMM_VECTOR_MATH_H

/* The helpers below pass 64-byte vectors to each other; the builds without AVX-512 would pass
 * them in memory, were the helpers not all inlined. Clang warns of that ABI at every call,
 * and does so when it generates code, after any push/pop of the diagnostic state: so the
 * warning is off for the rest of the including file (these headers are the library's own). */
#pragma clang diagnostic ignored "-Wpsabi"

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#pragma STDC FP_CONTRACT OFF
#pragma clang fp contract(off)

typedef float amm_f32x16 __attribute__((ext_vector_type(16)));
typedef int amm_i32x16 __attribute__((ext_vector_type(16)));
typedef double amm_f64x8 __attribute__((ext_vector_type(8)));
typedef long amm_i64x8 __attribute__((ext_vector_type(8)));

#define AMM_INLINE static inline __attribute__((always_inline))

/* Copies one 64-byte line from src (any alignment) to dst (64-byte aligned) with non-temporal
 * stores (one vmovntps, two, or four movntps): the line goes to memory without being read into
 * the cache first, its bytes unchanged, whatever they encode. Weakly ordered: the writer calls
 * amm_store_fence before the memory is handed over. */
AMM_INLINE void amm_stream_line(const void *src, void *dst) {
    amm_f32x16 line;
    __builtin_memcpy(&line, src, sizeof line);
    __builtin_nontemporal_store(line, (amm_f32x16 *)dst);
}
AMM_INLINE void amm_store_fence(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_sfence();
#else
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
#endif
}

/* Whether a > b in some lane. */
AMM_INLINE int amm_any_greater_f32x16(amm_f32x16 a, amm_f32x16 b) {
    return __builtin_reduce_or(a > b) != 0;
}
AMM_INLINE int amm_any_greater_f64x8(amm_f64x8 a, amm_f64x8 b) {
    return __builtin_reduce_or(a > b) != 0;
}

/* mask ? a : b, for a mask of comparison results (all bits set or clear in each lane). */
#define AMM_SELECT(V, I, mask, a, b) ((V)(((I)(a) & (mask)) | ((I)(b) & ~(mask))))

/* a * b + c: one fused multiply-add where the instruction set has it (the AVX2 and AVX-512
 * builds), else a product and a sum. Written out wherever it is wanted, never contracted by the
 * compiler, so that the builds with FMA compute the same bits as each other. */
#if defined(__FMA__)
#define AMM_MUL_ADD(a, b, c) __builtin_elementwise_fma((a), (b), (c))
#else
#define AMM_MUL_ADD(a, b, c) ((a) * (b) + (c))
#endif

/* e^x (see VectorExp.swift for the method, domain and accuracy): the two polynomials and
 * reductions of VectorExp.swift, with each a * b + c fused where the builds have FMA. */
AMM_INLINE amm_f32x16 amm_exp_f32x16(amm_f32x16 x) {
    typedef amm_f32x16 V;
    const V t = AMM_MUL_ADD(x, (V)(1.44269504088896341f), (V)(12582912.0f));
    const V k = t - (V)(12582912.0f);
    const V r = AMM_MUL_ADD(k, (V)(2.12194440e-4f), AMM_MUL_ADD(k, (V)(-0.693359375f), x));
    /* q(r) = 0.5 + c3 r + c4 r^2 + c5 r^3 + c6 r^4 by Estrin's scheme: two short chains
     * instead of Horner's one long one (the loops are bound by the exponential's latency). */
    const V r2 = r * r;
    const V low = AMM_MUL_ADD(r, (V)(1.666654348373413e-1f), (V)(0.5f));
    const V high = AMM_MUL_ADD(r, (V)(8.366229012608528e-3f), (V)(4.1666775941848755e-2f));
    const V q = AMM_MUL_ADD(AMM_MUL_ADD(r2, (V)(1.3903069775551558e-3f), high), r2, low);
    const V er = AMM_MUL_ADD(q, r2, r + (V)(1.0f));
#if defined(__AVX512F__)
    /* er * 2^k in one instruction (exact, as the product below is for normal results). */
    const V e = (V)_mm512_scalef_ps((__m512)er, (__m512)k);
#else
    const amm_i32x16 scale = (((amm_i32x16)t - 0x4B400000) + 127) << 23;
    const V e = er * (V)scale;
#endif
    return AMM_SELECT(V, amm_i32x16, x < (V)(-87.33654f), (V)(0.0f), e);
}

AMM_INLINE amm_f64x8 amm_exp_f64x8(amm_f64x8 x) {
    typedef amm_f64x8 V;
    const V t = AMM_MUL_ADD(x, (V)(1.4426950408889634074), (V)(6755399441055744.0));
    const V k = t - (V)(6755399441055744.0);
    const V r = AMM_MUL_ADD(k, (V)(-1.90821492927058770002e-10),
                            AMM_MUL_ADD(k, (V)(-0.693147180369123816490), x));
    /* Taylor series of e^r to r^13 / 13!: truncation below 2e-18 for |r| <= ln(2)/2. */
    V p = AMM_MUL_ADD(r, (V)(1.0 / 6227020800.0), (V)(1.0 / 479001600.0));
    p = AMM_MUL_ADD(p, r, (V)(1.0 / 39916800.0));
    p = AMM_MUL_ADD(p, r, (V)(1.0 / 3628800.0));
    p = AMM_MUL_ADD(p, r, (V)(1.0 / 362880.0));
    p = AMM_MUL_ADD(p, r, (V)(1.0 / 40320.0));
    p = AMM_MUL_ADD(p, r, (V)(1.0 / 5040.0));
    p = AMM_MUL_ADD(p, r, (V)(1.0 / 720.0));
    p = AMM_MUL_ADD(p, r, (V)(1.0 / 120.0));
    p = AMM_MUL_ADD(p, r, (V)(1.0 / 24.0));
    p = AMM_MUL_ADD(p, r, (V)(1.0 / 6.0));
    p = AMM_MUL_ADD(p, r, (V)(0.5));
    const V er = AMM_MUL_ADD(p, r * r, r) + (V)(1.0);
#if defined(__AVX512F__)
    const V e = (V)_mm512_scalef_pd((__m512d)er, (__m512d)k);
#else
    const amm_i64x8 scale = (((amm_i64x8)t - 0x4338000000000000L) + 1023) << 52;
    const V e = er * (V)scale;
#endif
    return AMM_SELECT(V, amm_i64x8, x < (V)(-708.3964185322641), (V)(0.0), e);
}

/* The negative logit g and dg/dc of docs/FORMULATION.md ("Negative logit", amm kind, whose
 * margin is an angle: hence "angular", as against the mv kinds' linear map) for a vector of
 * cosines c: lanes with c > threshold are hard, g = cos(theta - t) with theta the angle of
 * the clamped cosine x (= x cos t + sin(theta) sin t; 1 where theta <= t, that is where
 * x > bound) and dg = cos t - sin t x / max(sin(theta), 1e-7) (0 where theta <= t); easy lanes
 * give g = c, dg = 1. `ceiling` is 1 / 1e-7 as the caller's type rounds it. The pair goes
 * out through two pointers to one vector each (a struct of vectors does not import into
 * Swift); inlined, the copies vanish. */
#define AMM_DEFINE_ANGULAR_NEGATIVE(SUFFIX, V, I, S)                                             \
AMM_INLINE V amm_angular_negative_##SUFFIX(V c, S threshold, S cos_t, S sin_t, S bound) {        \
    const V one = (V)(1), minus_one = (V)(-1);                                                   \
    V x = AMM_SELECT(V, I, c > one, one, c);                                                     \
    x = AMM_SELECT(V, I, minus_one > x, minus_one, x);                                           \
    const V sine = __builtin_elementwise_sqrt((one - x) * (one + x));                            \
    const V g = AMM_SELECT(V, I, x > (V)(bound), one,                                            \
                           AMM_MUL_ADD(x, (V)(cos_t), sine * (V)(sin_t)));                       \
    return AMM_SELECT(V, I, c > (V)(threshold), g, c);                                           \
}                                                                                                \
AMM_INLINE void amm_angular_negative_and_derivative_##SUFFIX(V c, S threshold, S cos_t,         \
                                                              S sin_t, S bound, S ceiling_,      \
                                                              void *value, void *derivative) {   \
    const V one = (V)(1), minus_one = (V)(-1), zero = (V)(0), ceiling = (V)(ceiling_);         \
    V x = AMM_SELECT(V, I, c > one, one, c);                                                     \
    x = AMM_SELECT(V, I, minus_one > x, minus_one, x);                                           \
    const V sine = __builtin_elementwise_sqrt((one - x) * (one + x));                            \
    V inverse = one / sine;                                                                      \
    inverse = AMM_SELECT(V, I, inverse > ceiling, ceiling, inverse);                             \
    const I flat = x > (V)(bound);                                                               \
    const V g = AMM_SELECT(V, I, flat, one, AMM_MUL_ADD(x, (V)(cos_t), sine * (V)(sin_t)));     \
    const V dg = AMM_SELECT(V, I, flat, zero,                                                    \
                            AMM_MUL_ADD(-((V)(sin_t) * x), inverse, (V)(cos_t)));                \
    const I hard = c > (V)(threshold);                                                           \
    const V value_ = AMM_SELECT(V, I, hard, g, c), derivative_ = AMM_SELECT(V, I, hard, dg, one); \
    __builtin_memcpy(value, &value_, sizeof value_);  /* any alignment */                       \
    __builtin_memcpy(derivative, &derivative_, sizeof derivative_);                              \
}

AMM_DEFINE_ANGULAR_NEGATIVE(f32x16, amm_f32x16, amm_i32x16, float)
AMM_DEFINE_ANGULAR_NEGATIVE(f64x8, amm_f64x8, amm_i64x8, double)

#endif
