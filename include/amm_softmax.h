/*
 * amm_softmax.h -- the C interface of libAMMSoftmax.so
 *
 * AMM-Softmax (Angular Margin-Mining Softmax, Lee, Wang and Cho, IEEE Access 10, 2022) and its
 * family (ArcFace, CosFace, MV-Softmax) as a loss on cosine logits, with exact gradients.
 * The mathematics is fixed in docs/FORMULATION.md; in short, for row i with target y = labels[i]:
 *
 *     z_iy = s * f(cos[i, y])           target logit with margin m   (arc or cos kind)
 *     z_ij = s * g(cos[i, j]),  j != y  negative logit: g(c) = c for easy negatives, and a
 *                                       hard-negative re-weighting with margin t (amm, mv-fixed,
 *                                       mv-adaptive, none) where cos[i, j] > f(cos[i, y])
 *     loss_i = logsumexp_j(z_ij) - z_iy
 *
 * then reduced over the rows (mean, sum or none), and the gradient of that loss with respect to
 * every cos[i, j].
 *
 * License: MIT (the LICENSE file at the root of the repository). The public names and the
 * version each appeared in: docs/API.md.
 *
 * CONVENTIONS (every function)
 *   - Matrices are dense and row-major: element (i, j) of an n x c matrix is at [i * c + j].
 *   - Inputs are never written. Outputs are written only by the function that fills them, and
 *     only the number of values documented (1 for mean/sum, n for none, n * c for gradients).
 *   - A pointer to an array of zero elements may be NULL; every other pointer must not be. With
 *     n == 0 that is cos, labels, grad_cos, and loss/grad_loss for reduction none; for mean and
 *     sum, loss and grad_loss always hold one value and must not be NULL.
 *   - Inputs and outputs must not overlap.
 *   - Every function returns AMM_OK (0) on success or one of the amm_status codes below. On a
 *     non-zero status the contents of the output buffers are unspecified (they may have been
 *     partly written) and amm_last_error() describes the problem: the function's name, then the
 *     offending row, column or parameter and its value, e.g.
 *     "amm_forward_f32: labels[3] = 7 is out of range: must be in [0, 5) or equal
 *     ignore_index (-100)". A successful call leaves the previous message in place.
 *   - Validation happens before computing, in this order: params (struct_size, the variants,
 *     then the values; for _f32, the scale must also be finite as a float), the shape, the pointers, the labels, grad_loss (every value must be
 *     finite, ignored rows included); the first failure is reported. The finiteness of cos is
 *     checked row by row as the kernel reads it (only rows that are not ignored must be
 *     finite); when several rows are bad, the error names the lowest row index, whatever
 *     num_threads is.
 *   - A label equal to ignore_index marks its row as ignored even when ignore_index is a valid
 *     class index in [0, c).
 *
 * THREADS
 *   Every function is reentrant and thread-safe: there is no global mutable state except the
 *   per-thread error message. A call may itself use up to params->num_threads worker threads
 *   (0 = one per core); results are bitwise identical for every num_threads value.
 *
 * PRECISION
 *   The _f32 functions compute elementwise in single precision, with the per-row quantities
 *   (target logit, mining threshold, sums of exponentials, the row loss) and the reduction over
 *   rows in double precision. The _f64 functions compute in double precision throughout.
 */
#ifndef AMM_SOFTMAX_H
#define AMM_SOFTMAX_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The version of this header. amm_version() and amm_version_number() return the version of the
   library loaded, which may differ: compare amm_version_number() with AMM_VERSION_NUMBER at run
   time to detect a library older than the header a program was compiled against. */
#define AMM_VERSION_MAJOR 0
#define AMM_VERSION_MINOR 3
#define AMM_VERSION_PATCH 0
#define AMM_VERSION_NUMBER (AMM_VERSION_MAJOR * 10000 + AMM_VERSION_MINOR * 100 + AMM_VERSION_PATCH)

/* Marks every function of the library's interface: exported from the shared library when
   building it, plain declarations for users (the library is built with default visibility,
   so users need nothing more; the macro keeps that explicit should the build hide symbols). */
#ifndef AMM_API
#  if defined(__GNUC__) || defined(__clang__)
#    define AMM_API __attribute__((visibility("default")))
#  else
#    define AMM_API
#  endif
#endif

/* ---------------------------------------------------------------------------------------------
 * Status codes. Every computing function returns one of these (as an int).
 * ------------------------------------------------------------------------------------------- */
typedef enum amm_status {
    AMM_OK = 0,                 /* success; every output holds its result                       */
    AMM_ERR_NULL_POINTER = 1,   /* a required pointer (params, an input or an output) is NULL   */
    AMM_ERR_SHAPE = 2,          /* n < 0, c < 1, or n * c does not fit in int64_t              */
    AMM_ERR_LABEL = 3,          /* labels[i] is neither in [0, c) nor params->ignore_index     */
    AMM_ERR_PARAM = 4,          /* a parameter is out of its domain: scale (also, for _f32: not
                                   finite as a float, or rounding to 0 there), margin,
                                   hard_margin (also, for _f32: not finite as a float),
                                   an unknown target/hard/reduction/margin_gradient value,
                                   num_threads < 0, or
                                   struct_size smaller than the amm_params of version 0.1      */
    AMM_ERR_NONFINITE = 5,      /* cos holds a NaN or an infinity in a row that is not ignored,
                                   or grad_loss holds a NaN or an infinity                      */
    AMM_ERR_ALLOC = 6,          /* the library could not allocate its scratch memory            */
    AMM_ERR_INTERNAL = 7,       /* a bug in the library; please report it with the message      */
    AMM_ERR_OVERFLOW = 8        /* an output the element type cannot hold (float: beyond about
                                   3.4e38): a row's logits s * f(cos_y) or s * g(cos), so that
                                   its loss is not a number; the loss reduced over rows; or a gradient entry
                                   (s * |upstream| * df/dc, or the head's division by a norm
                                   near 1e-12). Never an infinity with AMM_OK.               */
} amm_status;

/* The name of a status code as in this header ("AMM_OK", "AMM_ERR_LABEL", ...), or
   "AMM_ERR_UNKNOWN" for a value that is not one. A static string: never free it. Thread-safe. */
AMM_API const char *amm_status_name(int status);

/* ---------------------------------------------------------------------------------------------
 * Variants
 * ------------------------------------------------------------------------------------------- */

/* Target logit f(c_y), the margin m = params->margin. */
enum {
    AMM_TARGET_ARC = 0,  /* additive angular margin (ArcFace): f = cos(theta_y + m), and
                            f = c_y - m sin(m) where theta_y + m would pass pi. 0 <= m < pi.  */
    AMM_TARGET_COS = 1   /* additive cosine margin (CosFace): f = c_y - m. m finite.          */
};

/* Negative logit g(c_j) of a hard negative (cos[i, j] > f(c_y)); t = params->hard_margin,
   finite and >= 0 (any finite value for AMM_HARD_CURRICULAR). Easy negatives always have
   g = c_j. */
enum {
    AMM_HARD_AMM = 0,          /* AMM-Softmax: g = cos(max(theta_j - t, 0))                    */
    AMM_HARD_MV_FIXED = 1,     /* MV-Softmax, fixed weight: g = t * c_j + t - 1                */
    AMM_HARD_MV_ADAPTIVE = 2,  /* MV-Softmax, adaptive weight: g = (t + 1) * c_j + t           */
    AMM_HARD_NONE = 3,         /* no re-weighting: g = c_j (plain ArcFace / CosFace)          */
    AMM_HARD_CURRICULAR = 4    /* CurricularFace: g = c_j * (t + c_j), dg/dc = t + 2 c_j. t is
                                  the caller's moving average of the target cosine, updated
                                  before each step: t = 0.01 * mean_i(c_{i,y_i}) + 0.99 * t over
                                  the rows that are not ignored, starting at 0 (the mean from
                                  params->target_cosines of the same inputs, or computed).
                                  Since 0.3.                                                   */
};

/* What the backward pass takes for the margins' derivatives (params->margin_gradient). Since 0.3. */
enum {
    AMM_MARGIN_GRADIENT_EXACT = 0,            /* df/dc_y and dg/dc_j of the formulation         */
    AMM_MARGIN_GRADIENT_STRAIGHT_THROUGH = 1  /* every df/dc and dg/dc taken as 1: the forward
                                                 values are unchanged and dloss_i/dcos_ij =
                                                 s (p_ij - [j == y_i]), insightface's
                                                 CombinedMarginLoss (margin under no_grad)      */
};

/* How the per-row losses are combined. */
enum {
    AMM_REDUCTION_MEAN = 0,  /* sum over the rows that are not ignored / their count (0 if none) */
    AMM_REDUCTION_SUM = 1,   /* sum over the rows (ignored rows count 0)                         */
    AMM_REDUCTION_NONE = 2   /* one loss per row (ignored rows give 0)                           */
};

/* ---------------------------------------------------------------------------------------------
 * Parameters
 *
 * Always fill with amm_params_init() and then change the fields you need: that sets struct_size,
 * which lets later versions of the library append fields to this struct and still accept
 * callers compiled against an older header: the fields that the caller's struct_size does not
 * cover take their defaults (a field it covers only in part is not covered). This library
 * requires struct_size >= 56 (on 64-bit platforms: the struct of version 0.1, up to
 * ignore_index), and ignores any bytes past the fields it knows.
 * ------------------------------------------------------------------------------------------- */
typedef struct amm_params {
    uint32_t struct_size;  /* sizeof(amm_params) as the caller compiled it                        */
    double   scale;        /* s > 0 and finite. Default 64.                                       */
    double   margin;       /* m: target margin. Default 0.5. arc: 0 <= m < pi; cos: finite.       */
    double   hard_margin;  /* t: hard-negative margin, finite and >= 0 (any finite value for
                              AMM_HARD_CURRICULAR). Default 0.2.                               */
    int32_t  target;       /* AMM_TARGET_*. Default AMM_TARGET_ARC.                               */
    int32_t  hard;         /* AMM_HARD_*. Default AMM_HARD_AMM.                                   */
    int32_t  reduction;    /* AMM_REDUCTION_*. Default AMM_REDUCTION_MEAN.                        */
    int32_t  num_threads;  /* worker threads for one call; 0 = one per core. Must be >= 0.        */
    int64_t  ignore_index; /* rows whose label equals this are skipped. Default -100.             */
    /* Since 0.2: */
    int64_t  head_block_size; /* classes per block of amm_head_forward_backward_*; 0 (default)
                                 picks the documented rule (see there). Must be >= 0.          */
    int64_t *hard_negatives;  /* optional OUTPUT, NULL by default: when not NULL, every
                                 computing function writes here, for each of the n rows, the
                                 number of negatives mined as hard (cos[i, j] > f(c_y), j != y;
                                 0 for ignored rows). The caller owns the n values (and must
                                 not hand the same array to calls running at the same time);
                                 NULL skips the count, which costs a pass over each row.      */
    /* Since 0.3: */
    int32_t  margin_gradient; /* AMM_MARGIN_GRADIENT_*. Default AMM_MARGIN_GRADIENT_EXACT.    */
    double  *target_cosines;  /* optional OUTPUT, NULL by default: when not NULL,
                                 amm_forward_*, amm_backward_*, amm_forward_backward_* and
                                 amm_head_forward_backward_* write here, for each of the n
                                 rows, its raw target cosine c_{i,y_i} (the cosine given, widened
                                 exactly to double; the head's cosine of x_i and W_{y_i}); 0 for
                                 ignored rows. Ownership as for hard_negatives. The sharded
                                 phases do not write it (phase 1 computes these values).      */
} amm_params;

/* Fills *p with the defaults of docs/FORMULATION.md (s = 64, m = 0.5, t = 0.2, arc, amm, mean,
   num_threads = 0, ignore_index = -100; head_block_size = 0, hard_negatives = NULL;
   margin_gradient = AMM_MARGIN_GRADIENT_EXACT, target_cosines = NULL) and sets
   p->struct_size = sizeof(amm_params).
   Does nothing when p is NULL. Thread-safe. */
AMM_API void amm_params_init(amm_params *p);

/* The library's version as "MAJOR.MINOR.PATCH". A static string: never free it. Thread-safe. */
AMM_API const char *amm_version(void);

/* The library's version as one number, MAJOR * 10000 + MINOR * 100 + PATCH (0.3.0 is 300), to
   compare with AMM_VERSION_NUMBER. Since 0.2.1. Thread-safe. */
AMM_API uint32_t amm_version_number(void);

/* Checks *p against every parameter domain without computing anything: struct_size, the
   variants (target, hard, reduction, margin_gradient), scale, margin, hard_margin, num_threads and
   head_block_size, in that order, exactly as every computing function checks them first (one
   definition of the domains, which the Python package also calls; head_block_size is checked
   by the head only: the loss functions never read it and accept any value there). Returns AMM_OK, or
   AMM_ERR_NULL_POINTER when p is NULL, or AMM_ERR_PARAM with amm_last_error() naming the
   first field out of its domain and its value, e.g. "amm_params_validate: parameter scale =
   -1.0 is invalid: must be finite and > 0". The element-type checks of the scale and
   hard_margin (for the _f32 functions: finite as a float, and a scale that does not round to
   0) are made by those functions, not here. Reads *p only. Since
   0.2.1. Thread-safe. */
AMM_API int amm_params_validate(const amm_params *p);

/* The build of the row kernels this process uses: "avx512" (x86-64-v4), "avx2" (x86-64-v3)
   or "portable" (any x86-64). The library picks the fastest that the CPU supports and that is
   installed beside it (libAMMSoftmaxAVX512.so, libAMMSoftmaxAVX2.so, optional), once per
   process; the environment variable AMM_SOFTMAX_KERNELS=portable|avx2|avx512 caps the choice.
   "avx2" and "avx512" compute bitwise the same results; "portable", which has no fused
   multiply-add, agrees with them to within rounding (the last bits of a value). A static
   string: never free it. Thread-safe.
   A build library is refused, and the next build down runs, when it is missing, cannot be
   loaded, or does not answer the kernel-table handshake of this library (a version and a
   size, checked so that a stale build library left beside a newer libAMMSoftmax.so can never
   run): amm_kernel_build_detail() says which and why. */
AMM_API const char *amm_kernel_build(void);

/* How amm_kernel_build() was chosen: one line per build considered, fastest first, each
   "BUILD: selected" or "BUILD: " and why it was passed over ("not supported by this CPU",
   "libAMMSoftmaxAVX512.so not found beside libAMMSoftmax.so", "... refused: its kernel table
   (ABI 1, 96 bytes) does not match this library's ...", "above the AMM_SOFTMAX_KERNELS
   request"). A static string: never free it. Since 0.2.1. Thread-safe. */
AMM_API const char *amm_kernel_build_detail(void);

/* The message of the last failed call made on the calling thread, or "" if none has failed.
   The string is owned by the library and stays valid until the next failing call on the same
   thread; copy it to keep it. Thread-safe (each thread has its own message). */
AMM_API const char *amm_last_error(void);

/* ---------------------------------------------------------------------------------------------
 * Loss on cosine logits
 *
 * Shared parameters:
 *   p          parameters (see amm_params). The struct itself is never written; when
 *              p->hard_negatives is not NULL, the n counts it points to are written (they are
 *              an output that travels in the struct so that the signatures stay fixed).
 *   cos        n x c row-major cosines; read only. Values outside [-1, 1] are clamped where an
 *              angle is taken (docs/FORMULATION.md, "Angles"); NaN or infinity is an error in a row
 *              that is not ignored.
 *   n          number of rows, >= 0.
 *   c          number of classes, >= 1.
 *   labels     n target classes, each in [0, c) or equal to p->ignore_index; read only.
 * ------------------------------------------------------------------------------------------- */

/* The loss. loss: 1 value (mean, sum) or n values (none), written. */
AMM_API int amm_forward_f32(const amm_params *p, const float *cos, int64_t n, int64_t c,
                            const int64_t *labels, float *loss);
AMM_API int amm_forward_f64(const amm_params *p, const double *cos, int64_t n, int64_t c,
                            const int64_t *labels, double *loss);

/* The gradient of the loss with respect to cos, times the upstream gradient.
   grad_loss: 1 value (mean, sum) or n values (none), finite; read only.
   grad_cos:  n x c, written (ignored rows are all zero). */
AMM_API int amm_backward_f32(const amm_params *p, const float *cos, int64_t n, int64_t c,
                             const int64_t *labels, const float *grad_loss, float *grad_cos);
AMM_API int amm_backward_f64(const amm_params *p, const double *cos, int64_t n, int64_t c,
                             const int64_t *labels, const double *grad_loss, double *grad_cos);

/* Both at once, with an upstream gradient of 1, in the time of one backward call.
   loss: 1 value (mean, sum) or n values (none), written. grad_cos: n x c, written. */
AMM_API int amm_forward_backward_f32(const amm_params *p, const float *cos, int64_t n, int64_t c,
                                     const int64_t *labels, float *loss, float *grad_cos);
AMM_API int amm_forward_backward_f64(const amm_params *p, const double *cos, int64_t n, int64_t c,
                                     const int64_t *labels, double *loss, double *grad_cos);

/* ---------------------------------------------------------------------------------------------
 * Half precision (since 0.3)
 *
 * The three functions above for cosines stored in 16 bits: bfloat16 (_bf16) or IEEE binary16
 * (_f16), each value in a uint16_t in the machine's byte order. Each element is widened exactly
 * to float on read and computed as the _f32 path computes it (per-row quantities and the
 * reduction in double; the parameter checks of _f32, scale and hard_margin finite as a float).
 * The loss and grad_loss are float; each grad_cos element is rounded to the storage type, to
 * nearest with ties to even. An element that rounds beyond the storage type's range (bf16:
 * about 3.39e38; f16: 65504, reached e.g. by s * df/dc at a target with cos = 1) is
 * AMM_ERR_OVERFLOW naming grad_cos[i, j], never an infinity. Validation, threading and
 * ownership as above; the per-row outputs of params (hard_negatives, target_cosines) too.
 * ------------------------------------------------------------------------------------------- */
AMM_API int amm_forward_bf16(const amm_params *p, const uint16_t *cos, int64_t n, int64_t c,
                             const int64_t *labels, float *loss);
AMM_API int amm_backward_bf16(const amm_params *p, const uint16_t *cos, int64_t n, int64_t c,
                              const int64_t *labels, const float *grad_loss, uint16_t *grad_cos);
AMM_API int amm_forward_backward_bf16(const amm_params *p, const uint16_t *cos, int64_t n,
                                      int64_t c, const int64_t *labels, float *loss,
                                      uint16_t *grad_cos);
AMM_API int amm_forward_f16(const amm_params *p, const uint16_t *cos, int64_t n, int64_t c,
                            const int64_t *labels, float *loss);
AMM_API int amm_backward_f16(const amm_params *p, const uint16_t *cos, int64_t n, int64_t c,
                             const int64_t *labels, const float *grad_loss, uint16_t *grad_cos);
AMM_API int amm_forward_backward_f16(const amm_params *p, const uint16_t *cos, int64_t n,
                                     int64_t c, const int64_t *labels, float *loss,
                                     uint16_t *grad_cos);

/* ---------------------------------------------------------------------------------------------
 * The fused head (since 0.2)
 *
 * Embeddings and class weights in; the loss on cos = normalize(embeddings) normalize(weights)^T
 * and its gradients with respect to both out, without ever holding the n x c matrix of cosines
 * (docs/FORMULATION.md, "Head": rows are normalised as torch.nn.functional.normalize does, by
 * max(norm, 1e-12), and the gradients flow through that normalisation).
 *
 *   embeddings       n x d, row-major; read only. Rows that are not ignored must be finite.
 *   weights          c x d, row-major, one row per class; read only. Must be finite.
 *   n, d, c          n >= 0, d >= 1, c >= 1; each at most INT32_MAX (OpenBLAS indices).
 *   labels           n class indices in [0, c), or p->ignore_index; read only.
 *   loss             1 value (mean, sum) or n values (none), written.
 *   grad_embeddings  n x d, written: d loss / d embeddings (ignored rows are zero).
 *   grad_weights     c x d, written: d loss / d weights.
 *
 * How: the classes are processed in blocks of B. Each row's target cosine is an indexed dot
 * product, computed first. A first pass over the blocks computes cos_b = x^ W^_b^T with
 * cblas_?gemm and updates every row's running log-sum-exp; the cosines of the first blocks, as
 * many as 96 MiB holds, are kept. A second pass takes each block's cosines (kept, or computed
 * again), turns them into d loss / d cos_b in place, and accumulates
 * d loss / d x^ += dcos_b W^_b and d loss / d W^_b = dcos_b^T x^ (two more products); both
 * gradients then go through the normalisation. Three products of n x d x c multiply-adds while
 * n x c elements fit in 96 MiB, plus the recomputed fraction beyond. Kept or recomputed, the
 * cosines come from the same product calls: the results do not depend on how many are kept.
 *
 * Memory beyond inputs and outputs: the normalised embeddings (n x d), the kept cosines (at
 * most 96 MiB, whole blocks of n x B), one more block of cosines (n x B, if some block is not
 * kept), one block of normalised weights (B x d), and O(n). B = p->head_block_size if positive
 * (at most c), else min(c, 8192, max(16, 8 MiB / ((n + d) * element size)) rounded down to a
 * multiple of 16): at most 104 MiB plus n x d elements for the automatic B, whatever c is.
 *
 * Threads: p->num_threads workers for the per-row work and the products, which are split into
 * fixed chunks, each a single-threaded cblas_?gemm call (so the bits do not depend on the
 * thread count). The products run on the library's own copy of OpenBLAS (Debian's serial build,
 * linked statically with hidden symbols): no OpenBLAS setting the process shares is read or
 * changed, and an OpenBLAS the host program uses is left alone. Errors: as for the functions
 * above; a NaN or infinity is reported as "embeddings[i, k]" or "weights[j, k]".
 * ------------------------------------------------------------------------------------------- */
AMM_API int amm_head_forward_backward_f32(const amm_params *p, const float *embeddings,
                                          const float *weights, int64_t n, int64_t d, int64_t c,
                                          const int64_t *labels, float *loss,
                                          float *grad_embeddings, float *grad_weights);
AMM_API int amm_head_forward_backward_f64(const amm_params *p, const double *embeddings,
                                          const double *weights, int64_t n, int64_t d, int64_t c,
                                          const int64_t *labels, double *loss,
                                          double *grad_embeddings, double *grad_weights);

/* ---------------------------------------------------------------------------------------------
 * Sharding by class (since 0.3)
 *
 * For class counts that outgrow one process: P callers (ranks) each own a contiguous shard of
 * the c_total classes, [class_start, class_start + c_local), and compute the loss and their
 * shard's gradients in three phases, with collectives of their own engine (MPI, torch
 * .distributed, ...) between them. The library never communicates. Every rank passes the same
 * rows (n of them; for the head, the embeddings of every rank's rows, gathered first), the same
 * labels (global class ids in [0, c_total), or p->ignore_index) and the same parameters.
 * PartialFC's split, shard r of P: c_local = c_total / P + (r < c_total % P), class_start =
 * r * (c_total / P) + min(r, c_total % P); any tiling of [0, c_total) works.
 *
 *   Phase 1, target:      amm_shard_*target_*       -> target_cos[n] (double)
 *     collective A:  allreduce SUM, double, n values: target_cos (each row's target cosine; a
 *                    shard that does not hold a row's target contributes 0.0, so the sum is
 *                    exact and identical on every rank)
 *   Phase 2, statistics:  amm_shard_*statistics_*   -> row_max[n], row_sum[n] (double)
 *     collective B:  allreduce MAX, double, n values: row_max -> global_max
 *     local:         amm_shard_rescale_sums(n, row_max, global_max, row_sum)
 *     collective C:  allreduce SUM, double, n values: row_sum -> global_sum
 *     collective D (only if p->hard_negatives is set): allreduce SUM, int64, n values: the
 *                    counts, each rank's over its shard's negatives
 *   Phase 3, gradient:    amm_shard_*gradient_*     -> loss (identical on every rank) and the
 *                    shard's gradients
 *     head only, collective E: sum grad_embeddings (n x d, the element type) over ranks: an
 *                    allreduce SUM, or a reduce-scatter that leaves each rank its own rows
 *
 * row_max and row_sum are over the shard's negatives only (-inf and 0 when it has none): the
 * largest negative logit s * g(c_j) and the sum of exp(s * g(c_j) - row_max); the target's
 * term is added once, in phase 3. The result equals the unsharded computation up to the
 * order of floating-point sums. Each phase validates as the unsharded functions do (the shard:
 * c_total >= 1, c_local >= 0, 0 <= class_start <= c_total - c_local; labels against c_total),
 * and reports NaN or infinity in its own shard, so an error may be seen by one rank only:
 * agree on the status across ranks (one more small allreduce) before the next collective.
 * Threads and memory as for the unsharded functions of the same kind.
 * ------------------------------------------------------------------------------------------- */

/* What every phase checks besides the unsharded functions' checks: target_cos (phases 2 and
   3) finite in every row that is not ignored (AMM_ERR_NONFINITE, "target_cos[i]"); global_max
   finite or -inf, and global_sum finite and >= 0, in those rows (AMM_ERR_NONFINITE for NaN or
   infinity, AMM_ERR_PARAM for a negative sum). Logits beyond the element type's range are
   AMM_ERR_OVERFLOW in phase 2, as in the unsharded functions. Only phase 2 writes
   p->hard_negatives; phases 1 and 3 never do. */

/* Phase 1 on cosine logits. cos: n x c_local, this shard's columns of the n rows. Writes
   target_cos[i] = cos[i, labels[i] - class_start] if the target is in this shard, else 0.0
   (and 0.0 for ignored rows). */
AMM_API int amm_shard_target_f32(const amm_params *p, const float *cos, int64_t n,
                                 int64_t c_local, int64_t class_start, int64_t c_total,
                                 const int64_t *labels, double *target_cos);
AMM_API int amm_shard_target_f64(const amm_params *p, const double *cos, int64_t n,
                                 int64_t c_local, int64_t class_start, int64_t c_total,
                                 const int64_t *labels, double *target_cos);

/* Phase 2 on cosine logits: row_max and row_sum over this shard's negatives, mined against
   the threshold fixed by target_cos (the result of collective A); the hard-negative counts
   of this shard in p->hard_negatives if set. Ignored rows give -inf and 0. */
AMM_API int amm_shard_statistics_f32(const amm_params *p, const float *cos, int64_t n,
                                     int64_t c_local, int64_t class_start, int64_t c_total,
                                     const int64_t *labels, const double *target_cos,
                                     double *row_max, double *row_sum);
AMM_API int amm_shard_statistics_f64(const amm_params *p, const double *cos, int64_t n,
                                     int64_t c_local, int64_t class_start, int64_t c_total,
                                     const int64_t *labels, const double *target_cos,
                                     double *row_max, double *row_sum);

/* Between collectives B and C: row_sum[i] *= exp(row_max[i] - global_max[i]) (0 where
   row_max[i] is -inf), so that the shards' sums share one reference. Never fails for n >= 0
   and non-NULL arrays (returns AMM_ERR_NULL_POINTER / AMM_ERR_SHAPE otherwise). */
AMM_API int amm_shard_rescale_sums(int64_t n, const double *row_max, const double *global_max,
                                   double *row_sum);

/* Phase 3 on cosine logits: the loss (1 value for mean and sum, n for none; the same on every
   rank) and grad_cos, n x c_local, the gradient of this shard's columns, from global_max and
   global_sum (the results of collectives B and C). grad_loss: NULL for an upstream gradient
   of 1, else 1 value (mean, sum) or n values (none), finite; loss may be NULL when only the
   gradient is wanted. */
AMM_API int amm_shard_gradient_f32(const amm_params *p, const float *cos, int64_t n,
                                   int64_t c_local, int64_t class_start, int64_t c_total,
                                   const int64_t *labels, const double *target_cos,
                                   const double *global_max, const double *global_sum,
                                   const float *grad_loss, float *loss, float *grad_cos);
AMM_API int amm_shard_gradient_f64(const amm_params *p, const double *cos, int64_t n,
                                   int64_t c_local, int64_t class_start, int64_t c_total,
                                   const int64_t *labels, const double *target_cos,
                                   const double *global_max, const double *global_sum,
                                   const double *grad_loss, double *loss, double *grad_cos);

/* The three phases of the fused head. embeddings: n x d, every rank's rows (gathered), the
   same on every rank; weights: c_local x d, this shard's class weights. The cosines are those
   of amm_head_forward_backward_*: normalize(embeddings) normalize(weights)^T. */
AMM_API int amm_shard_head_target_f32(const amm_params *p, const float *embeddings,
                                      const float *weights, int64_t n, int64_t d,
                                      int64_t c_local, int64_t class_start, int64_t c_total,
                                      const int64_t *labels, double *target_cos);
AMM_API int amm_shard_head_target_f64(const amm_params *p, const double *embeddings,
                                      const double *weights, int64_t n, int64_t d,
                                      int64_t c_local, int64_t class_start, int64_t c_total,
                                      const int64_t *labels, double *target_cos);
AMM_API int amm_shard_head_statistics_f32(const amm_params *p, const float *embeddings,
                                          const float *weights, int64_t n, int64_t d,
                                          int64_t c_local, int64_t class_start,
                                          int64_t c_total, const int64_t *labels,
                                          const double *target_cos, double *row_max,
                                          double *row_sum);
AMM_API int amm_shard_head_statistics_f64(const amm_params *p, const double *embeddings,
                                          const double *weights, int64_t n, int64_t d,
                                          int64_t c_local, int64_t class_start,
                                          int64_t c_total, const int64_t *labels,
                                          const double *target_cos, double *row_max,
                                          double *row_sum);
/* Phase 3 of the head: the loss (as above), grad_weights (c_local x d, complete for this
   shard) and grad_embeddings (n x d): this shard's part of d loss / d embeddings, through the
   normalisation (which is linear in the gradient, so the parts sum to the whole: collective E).
   Upstream gradient 1. */
AMM_API int amm_shard_head_gradient_f32(const amm_params *p, const float *embeddings,
                                        const float *weights, int64_t n, int64_t d,
                                        int64_t c_local, int64_t class_start, int64_t c_total,
                                        const int64_t *labels, const double *target_cos,
                                        const double *global_max, const double *global_sum,
                                        float *loss, float *grad_embeddings,
                                        float *grad_weights);
AMM_API int amm_shard_head_gradient_f64(const amm_params *p, const double *embeddings,
                                        const double *weights, int64_t n, int64_t d,
                                        int64_t c_local, int64_t class_start, int64_t c_total,
                                        const int64_t *labels, const double *target_cos,
                                        const double *global_max, const double *global_sum,
                                        double *loss, double *grad_embeddings,
                                        double *grad_weights);

#ifdef __cplusplus
}
#endif

#endif /* AMM_SOFTMAX_H */
