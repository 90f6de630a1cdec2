/* The row kernels' one-pass loop (RowAccumulator.addStretch): for a stretch of a row's
 * negatives, the logits z = s g(c) exponentiated against a reference r known in advance, their
 * sum, their maximum, the NaN check and, for a gradient, e dg/dc stored. Meanwhile it can copy
 * the previous row's finished gradient to the caller's array with streaming stores, as many
 * bytes an iteration as the gradient of the elements it consumes (four lines for float and
 * double, two for 16-bit storage; GradientStream), so that those stores drain while the
 * arithmetic runs.
 *
 * Why in C: the loop is software-pipelined (each iteration computes the logits of the next four
 * vectors and exponentiates the four before them, two independent chains that the out-of-order
 * core overlaps: the square root and division of the mining with the exponential), and LLVM
 * re-vectorised parts of the same loop written in Swift lane by lane.
 *
 * Bits: each element goes through exactly the operations of the two-pass way (the same mining
 * functions, z = g * s, amm_exp(z - r), e * dg), so an exponential against the same reference
 * is the same number. Sums: each lane adds its own exponentials in order, in the element type,
 * and every 64 vectors the 16 (8) partial sums are added to Double accumulators, one per lane;
 * at the end the lanes are added in lane order. The order depends only on where the stretch
 * starts and ends, never on threads. Internal to the library; not part of the C API. */
#ifndef AMM_EXPONENTIATE_STRETCH_H
#define AMM_EXPONENTIATE_STRETCH_H

#include "amm_half_storage.h"
#include "amm_vector_math.h"

/* Elements in a block of a row (RowKernel.blockSize reads this constant): 4 KiB of f32 or 8 KiB
 * of f64, so that a block's logits stay in L1; the loops prefetch one block ahead. */
#define AMM_ROW_BLOCK_SIZE 1024

/* a > b ? a : b lane by lane: one maxps (its operand order and NaN rule), where
 * __builtin_elementwise_max, IEEE maxNum, costs a comparison and a blend more. A NaN cosine is
 * reported by the NaN check, whatever the maximum makes of it. */
#define AMM_STRETCH_MAX(V, I, a, b) AMM_SELECT(V, I, (a) > (b), (a), (b))

/* The negative logit's variant and constants (NegativeLogit): AMM_MINING_NONE (g = c), AMM
 * (amm_angular_negative), LINEAR (mv-fixed and mv-adaptive: g = c slope + offset where hard),
 * CURRICULAR (g = c (slope + c), dg/dc = slope + (c + c) where hard, slope = t). unit_slope:
 * the straight-through margin gradient, dg/dc = 1 whatever the variant. */
enum { AMM_MINING_NONE = 0, AMM_MINING_AMM = 1, AMM_MINING_LINEAR = 2, AMM_MINING_CURRICULAR = 3 };

typedef struct {
    int kind, unit_slope;
    float threshold, cos_t, sin_t, bound, ceiling, slope, offset;
} amm_mining_f32;

typedef struct {
    int kind, unit_slope;
    double threshold, cos_t, sin_t, bound, ceiling, slope, offset;
} amm_mining_f64;

/* What a stretch returns: the lane-wise NaN check (0, or NaN where a cosine was not finite) and
 * maximum of the logits, as raw vectors, the sum of the exponentials, and how many bytes of the
 * copy it made (a multiple of 64). */
typedef struct {
    float nan_check[16], maximum[16];
    double sum;
    long copied;
} amm_stretch_f32;

typedef struct {
    double nan_check[8], maximum[8];
    double sum;
    long copied;
} amm_stretch_f64;

#define AMM_DEFINE_STRETCH(SUFFIX, V, I, S, W, D2)                                                 \
/* g and dg/dc of one vector for the variant `kind` (a constant where inlined). */                 \
AMM_INLINE V amm_stretch_value_##SUFFIX(V c, const amm_mining_##SUFFIX *m, int kind) {             \
    if (kind == AMM_MINING_AMM)                                                                    \
        return amm_angular_negative_##SUFFIX##W(c, m->threshold, m->cos_t, m->sin_t, m->bound);    \
    if (kind == AMM_MINING_LINEAR)                                                                 \
        return AMM_SELECT(V, I, c > (V)(m->threshold), c * (V)(m->slope) + (V)(m->offset), c);     \
    if (kind == AMM_MINING_CURRICULAR)                                                             \
        return AMM_SELECT(V, I, c > (V)(m->threshold), c * ((V)(m->slope) + c), c);                \
    return c;                                                                                      \
}                                                                                                  \
AMM_INLINE V amm_stretch_value_slope_##SUFFIX(V c, const amm_mining_##SUFFIX *m, int kind,         \
                                              V *slope) {                                          \
    if (m->unit_slope) {                                                                           \
        *slope = (V)(1);                                                                           \
        return amm_stretch_value_##SUFFIX(c, m, kind);                                             \
    }                                                                                              \
    if (kind == AMM_MINING_CURRICULAR) {                                                           \
        const I hard = c > (V)(m->threshold);                                                      \
        *slope = AMM_SELECT(V, I, hard, (V)(m->slope) + (c + c), (V)(1));                          \
        return AMM_SELECT(V, I, hard, c * ((V)(m->slope) + c), c);                                 \
    }                                                                                              \
    if (kind == AMM_MINING_AMM) {                                                                  \
        V g, dg;                                                                                   \
        amm_angular_negative_and_derivative_##SUFFIX##W(c, m->threshold, m->cos_t, m->sin_t,       \
                                                        m->bound, m->ceiling, &g, &dg);            \
        *slope = dg;                                                                               \
        return g;                                                                                  \
    }                                                                                              \
    if (kind == AMM_MINING_LINEAR) {                                                               \
        const I hard = c > (V)(m->threshold);                                                      \
        *slope = AMM_SELECT(V, I, hard, (V)(m->slope), (V)(1));                                    \
        return AMM_SELECT(V, I, hard, c * (V)(m->slope) + (V)(m->offset), c);                      \
    }                                                                                              \
    *slope = (V)(1);                                                                               \
    return c;                                                                                      \
}                                                                                                  \
AMM_INLINE V amm_stretch_load_##SUFFIX(const S *p) {                                               \
    V v;                                                                                           \
    __builtin_memcpy(&v, p, sizeof v);                                                             \
    return v;                                                                                      \
}                                                                                                  \
AMM_INLINE void amm_stretch_store_##SUFFIX(S *p, V v) { __builtin_memcpy(p, &v, sizeof v); }       \
/* The logits of four vectors (and dg/dc with `slopes`): for amm, a group without any hard         \
 * lane skips the mining arithmetic (z = s c, dg = 1: the bits the mining gives easy lanes),       \
 * which keeps the rows of a well-classified target as cheap as ArcFace's. */                      \
AMM_INLINE void amm_stretch_logits4_##SUFFIX(const V c[4], const amm_mining_##SUFFIX *m,           \
                                             int kind, V s, V z[4], V *slopes) {                   \
    if (kind == AMM_MINING_AMM) {                                                                  \
        const V top = AMM_STRETCH_MAX(V, I, AMM_STRETCH_MAX(V, I, c[0], c[1]),                     \
                                                AMM_STRETCH_MAX(V, I, c[2], c[3]));                \
        if (!amm_any_greater_##SUFFIX##W(top, (V)(m->threshold))) {                                \
            for (int k = 0; k < 4; k++) {                                                          \
                z[k] = c[k] * s;                                                                   \
                if (slopes) slopes[k] = (V)(1);                                                    \
            }                                                                                      \
            return;                                                                                \
        }                                                                                          \
    }                                                                                              \
    for (int k = 0; k < 4; k++)                                                                    \
        z[k] = (slopes ? amm_stretch_value_slope_##SUFFIX(c[k], m, kind, &slopes[k])               \
                       : amm_stretch_value_##SUFFIX(c[k], m, kind)) * s;                           \
}                                                                                                  \
/* Adds the lanes' partial sums to the Double accumulators (two for f32, one for f64). */          \
AMM_INLINE void amm_stretch_flush_##SUFFIX(V *sum, D2 *total) {                                    \
    *total += __builtin_convertvector(*sum, D2);                                                   \
    *sum = (V)(0);                                                                                 \
}                                                                                                  \

/* The loop over a stretch whose cosines are stored as IN and read with LOAD (widened to V when
 * IN is a 16-bit storage type), and its dispatch on the variant: amm_exponentiate_stretch_NAME. */
#define AMM_DEFINE_STRETCH_LOOP(NAME, SUFFIX, V, I, S, W, D2, IN, LOAD, GRAD)                      \
/* The loop for one variant, with or without the gradient's numerators. */                         \
AMM_INLINE void amm_stretch_loop_##NAME(const IN *c, long count, S scale, S reference,             \
                                          const amm_mining_##SUFFIX *m, int kind, S *weighted,     \
                                          const unsigned char *copy_from,                          \
                                          unsigned char *copy_to, long copy_bytes,                 \
                                          amm_stretch_##SUFFIX *out) {                             \
    const long width = sizeof(V) / sizeof(S), step = 4 * width, flushEvery = 16 * step;            \
    /* The copy's pace: a step's worth of gradient (in the storage type GRAD) an iteration. */     \
    const long copy_step = step * (long)sizeof(GRAD);                                              \
    const V s = (V)(scale), shift = (V)(reference);                                                \
    V nan_check = (V)(0), maximum = (V)(-__builtin_inf()), sum = (V)(0);                           \
    D2 total = (D2)(0);                                                                            \
    V z0, z1, z2, z3, d0 = (V)(1), d1 = (V)(1), d2 = (V)(1), d3 = (V)(1);                          \
    long j = 0, copied = 0;                                                                        \
    if (count >= step) {                                                                           \
        V c0 = LOAD(c), c1 = LOAD(c + width);                                                      \
        V c2 = LOAD(c + 2 * width);                                                                \
        V c3 = LOAD(c + 3 * width);                                                                \
        nan_check += (c0 - c0) + (c1 - c1) + (c2 - c2) + (c3 - c3);                                \
        {                                                                                          \
            const V cs[4] = {c0, c1, c2, c3};                                                      \
            V zs[4], ds[4];                                                                        \
            amm_stretch_logits4_##SUFFIX(cs, m, kind, s, zs, weighted ? ds : 0);                   \
            z0 = zs[0]; z1 = zs[1]; z2 = zs[2]; z3 = zs[3];                                        \
            if (weighted) { d0 = ds[0]; d1 = ds[1]; d2 = ds[2]; d3 = ds[3]; }                      \
        }                                                                                          \
        for (j = step;; j += step) {                                                               \
            const int more = j + step <= count;                                                    \
            V y0 = z0, y1 = z1, y2 = z2, y3 = z3, h0 = d0, h1 = d1, h2 = d2, h3 = d3;              \
            if (more) {                                                                            \
                /* A block ahead: the step's lines of the input, and of `weighted`. */             \
                for (int line = 0; line < (int)(step * sizeof(IN) / 64); line++)                   \
                    __builtin_prefetch((const char *)(c + j + AMM_ROW_BLOCK_SIZE) + 64 * line, 0, 0); \
                for (int line = 0; weighted && line < 4; line++)                                   \
                    __builtin_prefetch(weighted + j + line * width + AMM_ROW_BLOCK_SIZE, 1, 3);    \
                c0 = LOAD(c + j);                                                                  \
                c1 = LOAD(c + j + width);                                                          \
                c2 = LOAD(c + j + 2 * width);                                                      \
                c3 = LOAD(c + j + 3 * width);                                                      \
                nan_check += (c0 - c0) + (c1 - c1) + (c2 - c2) + (c3 - c3);                        \
                const V cs[4] = {c0, c1, c2, c3};                                                  \
                V ys[4], hs[4];                                                                    \
                amm_stretch_logits4_##SUFFIX(cs, m, kind, s, ys, weighted ? hs : 0);               \
                y0 = ys[0]; y1 = ys[1]; y2 = ys[2]; y3 = ys[3];                                    \
                if (weighted) { h0 = hs[0]; h1 = hs[1]; h2 = hs[2]; h3 = hs[3]; }                  \
                if (copied + copy_step <= copy_bytes) { /* the previous row's lines out */         \
                    for (long line = 0; line < copy_step; line += 64)                              \
                        amm_stream_line(copy_from + copied + line, copy_to + copied + line);       \
                    copied += copy_step;                                                           \
                }                                                                                  \
            }                                                                                      \
            maximum = AMM_STRETCH_MAX(V, I,                                                        \
                AMM_STRETCH_MAX(V, I, maximum, z0),                                                \
                AMM_STRETCH_MAX(V, I, AMM_STRETCH_MAX(V, I, z1, z2), z3));                         \
            const V e0 = amm_exp_##SUFFIX##W(z0 - shift);                                          \
            const V e1 = amm_exp_##SUFFIX##W(z1 - shift);                                          \
            const V e2 = amm_exp_##SUFFIX##W(z2 - shift);                                          \
            const V e3 = amm_exp_##SUFFIX##W(z3 - shift);                                          \
            sum += e0;                                                                             \
            sum += e1;                                                                             \
            sum += e2;                                                                             \
            sum += e3;                                                                             \
            if (weighted) {                                                                        \
                S *o = weighted + j - step;                                                        \
                amm_stretch_store_##SUFFIX(o, e0 * d0);                                            \
                amm_stretch_store_##SUFFIX(o + width, e1 * d1);                                    \
                amm_stretch_store_##SUFFIX(o + 2 * width, e2 * d2);                                \
                amm_stretch_store_##SUFFIX(o + 3 * width, e3 * d3);                                \
            }                                                                                      \
            if (j % flushEvery == 0) amm_stretch_flush_##SUFFIX(&sum, &total);                     \
            if (!more) break;                                                                      \
            z0 = y0; z1 = y1; z2 = y2; z3 = y3; d0 = h0; d1 = h1; d2 = h2; d3 = h3;                \
        }                                                                                          \
    }                                                                                              \
    for (; j + width <= count; j += width) { /* fewer than four vectors left */                    \
        const V cj = LOAD(c + j);                                                                  \
        V dj = (V)(1);                                                                             \
        nan_check += cj - cj;                                                                      \
        const V z = (weighted ? amm_stretch_value_slope_##SUFFIX(cj, m, kind, &dj)                 \
                              : amm_stretch_value_##SUFFIX(cj, m, kind)) * s;                      \
        maximum = AMM_STRETCH_MAX(V, I, maximum, z);                                               \
        const V e = amm_exp_##SUFFIX##W(z - shift);                                                \
        sum += e;                                                                                  \
        if (weighted) amm_stretch_store_##SUFFIX(weighted + j, e * dj);                            \
    }                                                                                              \
    amm_stretch_flush_##SUFFIX(&sum, &total);                                                      \
    double lanes = 0;                                                                              \
    for (int k = 0; k < (int)(sizeof(D2) / sizeof(double)); k++) lanes += total[k];                \
    out->sum = lanes;                                                                              \
    out->copied = copied;                                                                          \
    __builtin_memcpy(out->nan_check, &nan_check, sizeof nan_check);                                \
    __builtin_memcpy(out->maximum, &maximum, sizeof maximum);                                      \
}                                                                                                  \
/* The stretch of `count` cosines at c (a multiple of the vector width), exponentiated against     \
 * `reference`; `weighted` (count values) receives e dg/dc, or is NULL for the loss alone.         \
 * One loop per variant and output, each compiled with them constant. */                           \
AMM_INLINE void amm_exponentiate_stretch_##NAME(const IN *c, long count, S scale, S reference,     \
                                                  const amm_mining_##SUFFIX *m, S *weighted,       \
                                                  const unsigned char *copy_from,                  \
                                                  unsigned char *copy_to, long copy_bytes,         \
                                                  amm_stretch_##SUFFIX *out) {                     \
    switch (m->kind) {                                                                             \
    case AMM_MINING_AMM:                                                                           \
        if (weighted)                                                                              \
            amm_stretch_loop_##NAME(c, count, scale, reference, m, AMM_MINING_AMM, weighted,       \
                                      copy_from, copy_to, copy_bytes, out);                        \
        else                                                                                       \
            amm_stretch_loop_##NAME(c, count, scale, reference, m, AMM_MINING_AMM, 0, 0, 0,        \
                                      0, out);                                                     \
        return;                                                                                    \
    case AMM_MINING_LINEAR:                                                                        \
        if (weighted)                                                                              \
            amm_stretch_loop_##NAME(c, count, scale, reference, m, AMM_MINING_LINEAR, weighted,    \
                                      copy_from, copy_to, copy_bytes, out);                        \
        else                                                                                       \
            amm_stretch_loop_##NAME(c, count, scale, reference, m, AMM_MINING_LINEAR, 0, 0, 0,     \
                                      0, out);                                                     \
        return;                                                                                    \
    case AMM_MINING_CURRICULAR:                                                                    \
        if (weighted)                                                                              \
            amm_stretch_loop_##NAME(c, count, scale, reference, m, AMM_MINING_CURRICULAR,          \
                                      weighted, copy_from, copy_to, copy_bytes, out);              \
        else                                                                                       \
            amm_stretch_loop_##NAME(c, count, scale, reference, m, AMM_MINING_CURRICULAR, 0, 0,    \
                                      0, 0, out);                                                  \
        return;                                                                                    \
    default:                                                                                       \
        if (weighted)                                                                              \
            amm_stretch_loop_##NAME(c, count, scale, reference, m, AMM_MINING_NONE, weighted,      \
                                      copy_from, copy_to, copy_bytes, out);                        \
        else                                                                                       \
            amm_stretch_loop_##NAME(c, count, scale, reference, m, AMM_MINING_NONE, 0, 0, 0,       \
                                      0, out);                                                     \
        return;                                                                                    \
    }                                                                                              \
}


typedef double amm_f64x16 __attribute__((ext_vector_type(16)));

AMM_DEFINE_STRETCH(f32, amm_f32x16, amm_i32x16, float, x16, amm_f64x16)
AMM_DEFINE_STRETCH(f64, amm_f64x8, amm_i64x8, double, x8, amm_f64x8)
AMM_DEFINE_STRETCH_LOOP(f32, f32, amm_f32x16, amm_i32x16, float, x16, amm_f64x16, float,
                        amm_stretch_load_f32, float)
AMM_DEFINE_STRETCH_LOOP(f64, f64, amm_f64x8, amm_i64x8, double, x8, amm_f64x8, double,
                        amm_stretch_load_f64, double)

/* 16-bit storage: sixteen values (32 bytes) read and widened to float in registers. */
AMM_INLINE amm_f32x16 amm_stretch_load_bf16(const uint16_t *p) {
    amm_u16x16 h;
    __builtin_memcpy(&h, p, sizeof h);
    return amm_widen_bf16_f32x16(h);
}
AMM_INLINE amm_f32x16 amm_stretch_load_f16(const uint16_t *p) {
    amm_u16x16 h;
    __builtin_memcpy(&h, p, sizeof h);
    return amm_widen_f16_f32x16(h);
}
AMM_DEFINE_STRETCH_LOOP(bf16, f32, amm_f32x16, amm_i32x16, float, x16, amm_f64x16, uint16_t,
                        amm_stretch_load_bf16, uint16_t)
AMM_DEFINE_STRETCH_LOOP(f16, f32, amm_f32x16, amm_i32x16, float, x16, amm_f64x16, uint16_t,
                        amm_stretch_load_f16, uint16_t)

#endif
