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
#define AMM_VERSION_MINOR 2
#define AMM_VERSION_PATCH 1
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
    AMM_ERR_PARAM = 4,          /* a parameter is out of its domain: scale (also: not finite as
                                   a float, for _f32), margin, hard_margin,
                                   an unknown target/hard/reduction value, num_threads < 0, or
                                   struct_size smaller than the amm_params of version 0.1      */
    AMM_ERR_NONFINITE = 5,      /* cos holds a NaN or an infinity in a row that is not ignored,
                                   or grad_loss holds a NaN or an infinity                      */
    AMM_ERR_ALLOC = 6,          /* the library could not allocate its scratch memory            */
    AMM_ERR_INTERNAL = 7,       /* a bug in the library; please report it with the message      */
    AMM_ERR_OVERFLOW = 8        /* the logits s * g(cos) of a row overflow the element type
                                   (float: beyond about 3.4e38), so its loss is not a number  */
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
   finite and >= 0. Easy negatives always have g = c_j. */
enum {
    AMM_HARD_AMM = 0,          /* AMM-Softmax: g = cos(max(theta_j - t, 0))                    */
    AMM_HARD_MV_FIXED = 1,     /* MV-Softmax, fixed weight: g = t * c_j + t - 1                */
    AMM_HARD_MV_ADAPTIVE = 2,  /* MV-Softmax, adaptive weight: g = (t + 1) * c_j + t           */
    AMM_HARD_NONE = 3          /* no re-weighting: g = c_j (plain ArcFace / CosFace)          */
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
 * cover take their defaults. This library requires struct_size >= 56 (on 64-bit platforms: the
 * struct of version 0.1, up to ignore_index), and ignores any bytes past the fields it knows.
 * ------------------------------------------------------------------------------------------- */
typedef struct amm_params {
    uint32_t struct_size;  /* sizeof(amm_params) as the caller compiled it                        */
    double   scale;        /* s > 0 and finite. Default 64.                                       */
    double   margin;       /* m: target margin. Default 0.5. arc: 0 <= m < pi; cos: finite.       */
    double   hard_margin;  /* t: hard-negative margin, finite and >= 0. Default 0.2.              */
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
} amm_params;

/* Fills *p with the defaults of docs/FORMULATION.md (s = 64, m = 0.5, t = 0.2, arc, amm, mean,
   num_threads = 0, ignore_index = -100; head_block_size = 0, hard_negatives = NULL) and sets
   p->struct_size = sizeof(amm_params).
   Does nothing when p is NULL. Thread-safe. */
AMM_API void amm_params_init(amm_params *p);

/* The library's version as "MAJOR.MINOR.PATCH". A static string: never free it. Thread-safe. */
AMM_API const char *amm_version(void);

/* The library's version as one number, MAJOR * 10000 + MINOR * 100 + PATCH (0.2.1 is 201), to
   compare with AMM_VERSION_NUMBER. Since 0.2.1. Thread-safe. */
AMM_API uint32_t amm_version_number(void);

/* Checks *p against every parameter domain without computing anything: struct_size, the
   variants (target, hard, reduction), scale, margin, hard_margin, num_threads and
   head_block_size, in that order, exactly as every computing function checks them first (one
   definition of the domains, which the Python package also calls; head_block_size is checked
   by the head only: the loss functions never read it and accept any value there). Returns AMM_OK, or
   AMM_ERR_NULL_POINTER when p is NULL, or AMM_ERR_PARAM with amm_last_error() naming the
   first field out of its domain and its value, e.g. "amm_params_validate: parameter scale =
   -1.0 is invalid: must be finite and > 0". The element-type check of the scale (finite as a
   float for the _f32 functions) is made by those functions, not here. Reads *p only. Since
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
 * thread count); OpenBLAS is set to one thread for the duration of the call and restored after
 * (openblas_set_num_threads: a process-wide setting). Errors: as for the functions
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

#ifdef __cplusplus
}
#endif

#endif /* AMM_SOFTMAX_H */
