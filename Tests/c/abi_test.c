/*
 * abi_test.c -- checks the C contract of libAMMSoftmax.so, as include/amm_softmax.h states it.
 *
 * Written against the header alone. Build and run from the repository root:
 *
 *     gcc -std=c11 -Wall -Wextra -Werror -pedantic -I include Tests/c/abi_test.c \
 *         -L .build/release -lAMMSoftmax -Wl,-rpath,$PWD/.build/release -lm -lpthread \
 *         -o abi_test && ./abi_test
 *
 * Prints each failed check, then a last line "N passed, M failed"; exits 1 if any failed.
 */
#define _POSIX_C_SOURCE 200809L

#include <ctype.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "amm_softmax.h"

#define PI 3.14159265358979323846

/* ---------------------------------------------------------------------------------------------
 * Checks
 * ------------------------------------------------------------------------------------------- */

static int passed, failed;
static const char *section = "";

#if defined(__GNUC__)
__attribute__((format(printf, 3, 4)))
#endif
static int check(int ok, int line, const char *fmt, ...)
{
    if (ok) {
        ++passed;
        return 1;
    }
    ++failed;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stdout, "FAIL [%s] abi_test.c:%d: ", section, line);
    vfprintf(stdout, fmt, ap);
    fputc('\n', stdout);
    va_end(ap);
    return 0;
}

#define CHECK(cond, ...) check((cond) ? 1 : 0, __LINE__, __VA_ARGS__)


/* Whether `word` occurs in `text` as a whole identifier (not inside a longer one, so that
   "cos" is not found in "grad_cos" nor "hard" in "hard_margin"). */
static int has_word(const char *text, const char *word)
{
    size_t len = strlen(word);
    for (const char *at = strstr(text, word); at != NULL; at = strstr(at + 1, word)) {
        int before = at > text && (isalnum((unsigned char)at[-1]) || at[-1] == '_');
        int after = isalnum((unsigned char)at[len]) || at[len] == '_';
        if (!before && !after)
            return 1;
    }
    return 0;
}

/* Case-insensitive substring search (for values such as "nan" / "NaN", "inf"). */
static int has_text_ci(const char *text, const char *needle)
{
    size_t len = strlen(needle);
    for (; *text; ++text) {
        size_t k = 0;
        while (k < len && text[k] &&
               tolower((unsigned char)text[k]) == tolower((unsigned char)needle[k]))
            ++k;
        if (k == len)
            return 1;
    }
    return len == 0;
}

static int close_to(double got, double want, double rel, double abs_tol)
{
    return fabs(got - want) <= rel * fabs(want) + abs_tol;
}

/* ---------------------------------------------------------------------------------------------
 * The six computing functions behind one dispatcher
 * ------------------------------------------------------------------------------------------- */

enum { FWD32, BWD32, FB32, FWD64, BWD64, FB64, NFN };
static const char *const fn_name[NFN] = {
    "amm_forward_f32", "amm_backward_f32", "amm_forward_backward_f32",
    "amm_forward_f64", "amm_backward_f64", "amm_forward_backward_f64"};

static int is64(int fn) { return fn >= FWD64; }
static int uses_loss(int fn) { return fn % 3 != 1; }
static int uses_grad_loss(int fn) { return fn % 3 == 1; }
static int uses_grad_cos(int fn) { return fn % 3 != 0; }

typedef struct {
    const amm_params *p;
    const void *cos;
    int64_t n, c;
    const int64_t *labels;
    void *loss;            /* forward, forward_backward */
    const void *grad_loss; /* backward */
    void *grad_cos;        /* backward, forward_backward */
} args_t;

static int dispatch(int fn, const args_t *a)
{
    switch (fn) {
    case FWD32:
        return amm_forward_f32(a->p, (const float *)a->cos, a->n, a->c, a->labels,
                               (float *)a->loss);
    case BWD32:
        return amm_backward_f32(a->p, (const float *)a->cos, a->n, a->c, a->labels,
                                (const float *)a->grad_loss, (float *)a->grad_cos);
    case FB32:
        return amm_forward_backward_f32(a->p, (const float *)a->cos, a->n, a->c, a->labels,
                                        (float *)a->loss, (float *)a->grad_cos);
    case FWD64:
        return amm_forward_f64(a->p, (const double *)a->cos, a->n, a->c, a->labels,
                               (double *)a->loss);
    case BWD64:
        return amm_backward_f64(a->p, (const double *)a->cos, a->n, a->c, a->labels,
                                (const double *)a->grad_loss, (double *)a->grad_cos);
    case FB64:
        return amm_forward_backward_f64(a->p, (const double *)a->cos, a->n, a->c, a->labels,
                                        (double *)a->loss, (double *)a->grad_cos);
    default:
        return -1;
    }
}

/* Whether two amm_params hold the same fields, bit for bit (padding bytes are not compared:
   they may be uninitialised). */
static int params_same(const amm_params *a, const amm_params *b)
{
    return a->struct_size == b->struct_size &&
           memcmp(&a->scale, &b->scale, sizeof a->scale) == 0 &&
           memcmp(&a->margin, &b->margin, sizeof a->margin) == 0 &&
           memcmp(&a->hard_margin, &b->hard_margin, sizeof a->hard_margin) == 0 &&
           a->target == b->target && a->hard == b->hard && a->reduction == b->reduction &&
           a->num_threads == b->num_threads && a->ignore_index == b->ignore_index;
}

/* Calls fn and checks that it wrote none of its inputs (params, cos, labels, grad_loss): each
   is compared, byte for byte, with a copy taken before the call. */
static int run(int fn, const args_t *a, int line)
{
    const size_t esize = is64(fn) ? sizeof(double) : sizeof(float);
    int sane = a->n >= 0 && a->n <= (1 << 20) && a->c >= 1 && a->c <= (1 << 20) &&
               a->n * a->c <= (1 << 22);
    size_t ncos = sane ? (size_t)(a->n * a->c) : 0;
    size_t nlab = sane ? (size_t)a->n : 0;
    size_t ngl = 0;
    if (sane && a->p != NULL)
        ngl = a->p->reduction == AMM_REDUCTION_NONE ? (size_t)a->n : 1;

    amm_params p_copy;
    if (a->p)
        memcpy(&p_copy, a->p, sizeof p_copy);
    void *cos_copy = NULL, *lab_copy = NULL, *gl_copy = NULL;
    if (a->cos && ncos) {
        cos_copy = malloc(ncos * esize);
        memcpy(cos_copy, a->cos, ncos * esize);
    }
    if (a->labels && nlab) {
        lab_copy = malloc(nlab * sizeof(int64_t));
        memcpy(lab_copy, a->labels, nlab * sizeof(int64_t));
    }
    if (uses_grad_loss(fn) && a->grad_loss && ngl) {
        gl_copy = malloc(ngl * esize);
        memcpy(gl_copy, a->grad_loss, ngl * esize);
    }

    int status = dispatch(fn, a);

    int unchanged = 1;
    if (a->p && !params_same(&p_copy, a->p))
        unchanged = 0;
    if (cos_copy && memcmp(cos_copy, a->cos, ncos * esize) != 0)
        unchanged = 0;
    if (lab_copy && memcmp(lab_copy, a->labels, nlab * sizeof(int64_t)) != 0)
        unchanged = 0;
    if (gl_copy && memcmp(gl_copy, a->grad_loss, ngl * esize) != 0)
        unchanged = 0;
    check(unchanged, line, "%s wrote one of its inputs (params, cos, labels or grad_loss)",
          fn_name[fn]);
    free(cos_copy);
    free(lab_copy);
    free(gl_copy);
    return status;
}

/* Checks the status `name` returned; for an error, also that amm_last_error() is not empty,
   names `word` (as an identifier, if given) and contains `text` (case-insensitively, if
   given). */
static void expect_status(int line, const char *name, int status, int want, const char *word,
                          const char *text)
{
    const char *msg = amm_last_error();
    check(status == want, line, "%s returned %s (%d), expected %s; amm_last_error(): \"%s\"",
          name, amm_status_name(status), status, amm_status_name(want), msg);
    if (want == AMM_OK || status != want)
        return;
    check(msg != NULL && msg[0] != '\0', line, "%s: %s with an empty message", name,
          amm_status_name(status));
    if (word)
        check(has_word(msg, word), line, "%s: the %s message should name '%s': \"%s\"",
              name, amm_status_name(status), word, msg);
    if (text)
        check(has_text_ci(msg, text), line, "%s: the %s message should contain '%s': \"%s\"",
              name, amm_status_name(status), text, msg);
}

/* Calls fn and checks its status and message (expect_status). */
static void expect(int line, int fn, const args_t *a, int want, const char *word,
                   const char *text)
{
    expect_status(line, fn_name[fn], run(fn, a, line), want, word, text);
}

/* ---------------------------------------------------------------------------------------------
 * A small fixture (N x C, one ignored row) and its output buffers
 * ------------------------------------------------------------------------------------------- */

#define FN 5
#define FC 7
static float fx_cos32[FN * FC];
static double fx_cos64[FN * FC];
static const int64_t fx_labels[FN] = {3, 0, 6, -100, 2};
static const float fx_gl32[FN] = {0.5f, -1.25f, 2.0f, 3.0f, 0.75f};
static const double fx_gl64[FN] = {0.5, -1.25, 2.0, 3.0, 0.75};
static float out_loss32[FN + 1], out_grad32[FN * FC + 1];
static double out_loss64[FN + 1], out_grad64[FN * FC + 1];

static void fixture_init(void)
{
    for (int i = 0; i < FN; ++i)
        for (int j = 0; j < FC; ++j) {
            double v = j == fx_labels[i] ? 0.55 - 0.05 * i : 0.6 * sin(0.9 * i + 1.7 * j + 0.3);
            fx_cos32[i * FC + j] = (float)v;
            fx_cos64[i * FC + j] = (double)(float)v;
        }
}

/* The arguments of fn on the fixture, every pointer set. */
static args_t fixture_args(int fn, const amm_params *p)
{
    args_t a;
    a.p = p;
    a.n = FN;
    a.c = FC;
    a.labels = fx_labels;
    if (is64(fn)) {
        a.cos = fx_cos64;
        a.loss = out_loss64;
        a.grad_loss = fx_gl64;
        a.grad_cos = out_grad64;
    } else {
        a.cos = fx_cos32;
        a.loss = out_loss32;
        a.grad_loss = fx_gl32;
        a.grad_cos = out_grad32;
    }
    return a;
}

/* ---------------------------------------------------------------------------------------------
 * A reference for one row, straight from docs/FORMULATION.md, in double precision
 * ------------------------------------------------------------------------------------------- */

static double clamp1(double x) { return x < -1.0 ? -1.0 : (x > 1.0 ? 1.0 : x); }
static double sin_of(double cc) { double s = sqrt(1.0 - cc * cc); return s > 1e-7 ? s : 1e-7; }

static double ref_row(const amm_params *p, const double *cosv, int c, int y, double *grad)
{
    const double s = p->scale, m = p->margin, t = p->hard_margin;
    double z[64], d[64];
    double cy = cosv[y], f, df;
    if (p->target == AMM_TARGET_ARC) {
        if (cy > cos(PI - m)) {
            double cc = clamp1(cy);
            f = cos(acos(cc) + m);
            df = cos(m) + sin(m) * cc / sin_of(cc);
        } else {
            f = cy - m * sin(m);
            df = 1.0;
        }
    } else {
        f = cy - m;
        df = 1.0;
    }
    for (int j = 0; j < c; ++j) {
        double cj = cosv[j], g = cj, dg = 1.0;
        if (j == y) {
            g = f;
            dg = df;
        } else if (cj > f) { /* a hard negative */
            double cc = clamp1(cj);
            switch (p->hard) {
            case AMM_HARD_AMM: {
                double th = acos(cc);
                if (th > t) {
                    g = cos(th - t);
                    dg = cos(t) - sin(t) * cc / sin_of(cc);
                } else {
                    g = 1.0;
                    dg = 0.0;
                }
                break;
            }
            case AMM_HARD_MV_FIXED: g = t * cj + t - 1.0; dg = t; break;
            case AMM_HARD_MV_ADAPTIVE: g = (t + 1.0) * cj + t; dg = t + 1.0; break;
            default: break;
            }
        }
        z[j] = s * g;
        d[j] = dg;
    }
    double zmax = z[0];
    for (int j = 1; j < c; ++j)
        zmax = z[j] > zmax ? z[j] : zmax;
    double sum = 0.0;
    for (int j = 0; j < c; ++j)
        sum += exp(z[j] - zmax);
    for (int j = 0; j < c; ++j)
        grad[j] = s * (exp(z[j] - zmax) / sum - (j == y ? 1.0 : 0.0)) * d[j];
    return zmax + log(sum) - z[y];
}

/* ---------------------------------------------------------------------------------------------
 * A larger deterministic problem (for threads and consistency)
 * ------------------------------------------------------------------------------------------- */

#define BN 37
#define BC 501
static float big_cos32[BN * BC];
static double big_cos64[BN * BC];
static int64_t big_labels[BN];

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static double uniform(void) /* in [0, 1) */
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(rng_state >> 11) * (1.0 / 9007199254740992.0);
}

static void big_init(void)
{
    for (int i = 0; i < BN; ++i)
        big_labels[i] = (i % 7 == 3) ? -100 : (int64_t)((i * 37 + 11) % BC);
    for (int i = 0; i < BN; ++i)
        for (int j = 0; j < BC; ++j) {
            double v = 1.9 * uniform() - 0.95;
            if (j == big_labels[i])
                v = 0.2 + 0.7 * uniform(); /* targets a little closer than most negatives */
            big_cos32[i * BC + j] = (float)v;
        }
    big_cos32[5 * BC + 17] = 1.05f;  /* outside [-1, 1]: clamped where an angle is taken */
    big_cos32[9 * BC + 250] = -1.2f;
    for (int k = 0; k < BN * BC; ++k)
        big_cos64[k] = (double)big_cos32[k];
}

static args_t big_args(int fn, const amm_params *p, void *loss, const void *grad_loss,
                       void *grad_cos)
{
    args_t a;
    a.p = p;
    a.cos = is64(fn) ? (const void *)big_cos64 : (const void *)big_cos32;
    a.n = BN;
    a.c = BC;
    a.labels = big_labels;
    a.loss = loss;
    a.grad_loss = grad_loss;
    a.grad_cos = grad_cos;
    return a;
}

/* ---------------------------------------------------------------------------------------------
 * The tests
 * ------------------------------------------------------------------------------------------- */

static void test_layout_and_constants(void)
{
    section = "layout";
    CHECK(AMM_OK == 0 && AMM_ERR_NULL_POINTER == 1 && AMM_ERR_SHAPE == 2 &&
              AMM_ERR_LABEL == 3 && AMM_ERR_PARAM == 4 && AMM_ERR_NONFINITE == 5 &&
              AMM_ERR_ALLOC == 6 && AMM_ERR_INTERNAL == 7 && AMM_ERR_OVERFLOW == 8,
          "status codes are numbered 0..8 as documented");
    {
        static const char *const names[] = {
            "AMM_OK", "AMM_ERR_NULL_POINTER", "AMM_ERR_SHAPE", "AMM_ERR_LABEL", "AMM_ERR_PARAM",
            "AMM_ERR_NONFINITE", "AMM_ERR_ALLOC", "AMM_ERR_INTERNAL", "AMM_ERR_OVERFLOW"};
        for (int k = 0; k <= 8; k++)
            CHECK(strcmp(amm_status_name(k), names[k]) == 0, "amm_status_name(%d) = %s", k,
                  amm_status_name(k));
        CHECK(strcmp(amm_status_name(9), "AMM_ERR_UNKNOWN") == 0 &&
                  strcmp(amm_status_name(-1), "AMM_ERR_UNKNOWN") == 0,
              "amm_status_name of an unknown value");
    }
    CHECK(AMM_TARGET_ARC == 0 && AMM_TARGET_COS == 1, "target codes");
    CHECK(AMM_HARD_AMM == 0 && AMM_HARD_MV_FIXED == 1 && AMM_HARD_MV_ADAPTIVE == 2 &&
              AMM_HARD_NONE == 3 && AMM_HARD_CURRICULAR == 4,
          "hard codes");
    CHECK(AMM_MARGIN_GRADIENT_EXACT == 0 && AMM_MARGIN_GRADIENT_STRAIGHT_THROUGH == 1,
          "margin gradient codes");
    CHECK(AMM_REDUCTION_MEAN == 0 && AMM_REDUCTION_SUM == 1 && AMM_REDUCTION_NONE == 2,
          "reduction codes");
    /* Version 0.1's struct ends at ignore_index (56 bytes); 0.2 appends head_block_size and
       hard_negatives (72), 0.3 margin_gradient and target_cosines (88). */
    CHECK(sizeof(amm_params) == 88, "sizeof(amm_params) = %zu, version 0.3 has 88",
          sizeof(amm_params));
    CHECK(offsetof(amm_params, margin_gradient) == 72 &&
              offsetof(amm_params, target_cosines) == 80,
          "0.3's fields follow hard_negatives");
    CHECK(offsetof(amm_params, hard_negatives) == 64, "hard_negatives follows head_block_size");
    CHECK(offsetof(amm_params, head_block_size) == 56, "head_block_size follows ignore_index");
    CHECK(offsetof(amm_params, struct_size) == 0, "struct_size is the first field");
    CHECK(offsetof(amm_params, scale) == 8 && offsetof(amm_params, margin) == 16 &&
              offsetof(amm_params, hard_margin) == 24 && offsetof(amm_params, target) == 32 &&
              offsetof(amm_params, hard) == 36 && offsetof(amm_params, reduction) == 40 &&
              offsetof(amm_params, num_threads) == 44 &&
              offsetof(amm_params, ignore_index) == 48,
          "field offsets of amm_params");
}

static void test_params_init_and_version(void)
{
    section = "params_init";
    amm_params p;
    memset(&p, 0xAB, sizeof p); /* garbage first: init must set every field */
    amm_params_init(&p);
    CHECK(p.struct_size == sizeof(amm_params), "struct_size = %u, expected %zu",
          (unsigned)p.struct_size, sizeof(amm_params));
    CHECK(p.scale == 64.0, "default scale = %g", p.scale);
    CHECK(p.margin == 0.5, "default margin = %g", p.margin);
    CHECK(p.hard_margin == 0.2, "default hard_margin = %.17g", p.hard_margin);
    CHECK(p.target == AMM_TARGET_ARC, "default target = %d", (int)p.target);
    CHECK(p.hard == AMM_HARD_AMM, "default hard = %d", (int)p.hard);
    CHECK(p.reduction == AMM_REDUCTION_MEAN, "default reduction = %d", (int)p.reduction);
    CHECK(p.num_threads == 0, "default num_threads = %d", (int)p.num_threads);
    CHECK(p.ignore_index == -100, "default ignore_index = %lld", (long long)p.ignore_index);
    amm_params_init(NULL); /* documented to do nothing */
    CHECK(1, "amm_params_init(NULL) returned");

    section = "version";
    char expected[64];
    snprintf(expected, sizeof expected, "%d.%d.%d", AMM_VERSION_MAJOR, AMM_VERSION_MINOR,
             AMM_VERSION_PATCH);
    const char *v = amm_version();
    CHECK(v != NULL && strcmp(v, expected) == 0, "amm_version() = \"%s\", header says \"%s\"",
          v ? v : "(null)", expected);
    CHECK(amm_version() == v, "amm_version() returns the same static string");
    CHECK(amm_version_number() == AMM_VERSION_NUMBER,
          "amm_version_number() = %u, header's AMM_VERSION_NUMBER = %d",
          (unsigned)amm_version_number(), AMM_VERSION_NUMBER);
    const char *detail = amm_kernel_build_detail();
    CHECK(detail != NULL && strstr(detail, ": selected") != NULL,
          "amm_kernel_build_detail() = \"%s\" says which build was selected",
          detail ? detail : "(null)");
    const char *build = amm_kernel_build();
    CHECK(build != NULL && (strcmp(build, "avx512") == 0 || strcmp(build, "avx2") == 0 ||
                            strcmp(build, "portable") == 0),
          "amm_kernel_build() = \"%s\" names a build", build ? build : "(null)");
    CHECK(amm_kernel_build() == build, "amm_kernel_build() returns the same static string");
}

static void test_null_pointers(void)
{
    section = "null pointers";
    amm_params p;
    amm_params_init(&p);
    for (int fn = 0; fn < NFN; ++fn) {
        args_t a = fixture_args(fn, &p);
        a.p = NULL;
        expect(__LINE__, fn, &a, AMM_ERR_NULL_POINTER, "params", NULL);
        a = fixture_args(fn, &p);
        a.cos = NULL;
        expect(__LINE__, fn, &a, AMM_ERR_NULL_POINTER, "cos", NULL);
        a = fixture_args(fn, &p);
        a.labels = NULL;
        expect(__LINE__, fn, &a, AMM_ERR_NULL_POINTER, "labels", NULL);
        if (uses_loss(fn)) {
            a = fixture_args(fn, &p);
            a.loss = NULL;
            expect(__LINE__, fn, &a, AMM_ERR_NULL_POINTER, "loss", NULL);
        }
        if (uses_grad_loss(fn)) {
            a = fixture_args(fn, &p);
            a.grad_loss = NULL;
            expect(__LINE__, fn, &a, AMM_ERR_NULL_POINTER, "grad_loss", NULL);
        }
        if (uses_grad_cos(fn)) {
            a = fixture_args(fn, &p);
            a.grad_cos = NULL;
            expect(__LINE__, fn, &a, AMM_ERR_NULL_POINTER, "grad_cos", NULL);
        }
    }

    section = "n == 0";
    for (int fn = 0; fn < NFN; ++fn) {
        /* reduction none: every array has zero elements, so every pointer may be NULL */
        amm_params pn;
        amm_params_init(&pn);
        pn.reduction = AMM_REDUCTION_NONE;
        args_t a = fixture_args(fn, &pn);
        a.n = 0;
        a.cos = NULL;
        a.labels = NULL;
        a.loss = NULL;
        a.grad_loss = NULL;
        a.grad_cos = NULL;
        expect(__LINE__, fn, &a, AMM_OK, NULL, NULL);

        /* mean and sum: the loss (and grad_loss) still hold one value */
        for (int r = AMM_REDUCTION_MEAN; r <= AMM_REDUCTION_SUM; ++r) {
            amm_params pm;
            amm_params_init(&pm);
            pm.reduction = r;
            a = fixture_args(fn, &pm);
            a.n = 0;
            a.cos = NULL;
            a.labels = NULL;
            a.grad_cos = NULL;
            out_loss32[0] = 123.0f;
            out_loss64[0] = 123.0;
            expect(__LINE__, fn, &a, AMM_OK, NULL, NULL);
            if (uses_loss(fn))
                CHECK(is64(fn) ? out_loss64[0] == 0.0 : out_loss32[0] == 0.0f,
                      "%s: the loss of an empty batch (reduction %d) is %g, expected 0",
                      fn_name[fn], r, is64(fn) ? out_loss64[0] : (double)out_loss32[0]);
            if (uses_loss(fn)) {
                a.loss = NULL;
                expect(__LINE__, fn, &a, AMM_ERR_NULL_POINTER, "loss", NULL);
            }
            if (uses_grad_loss(fn)) {
                a.grad_loss = NULL;
                expect(__LINE__, fn, &a, AMM_ERR_NULL_POINTER, "grad_loss", NULL);
            }
        }
    }
}

static void test_shapes(void)
{
    section = "shape";
    amm_params p;
    amm_params_init(&p);
    for (int fn = 0; fn < NFN; ++fn) {
        args_t a = fixture_args(fn, &p);
        a.n = -1;
        expect(__LINE__, fn, &a, AMM_ERR_SHAPE, "n", "-1");
        a = fixture_args(fn, &p);
        a.c = 0;
        expect(__LINE__, fn, &a, AMM_ERR_SHAPE, "c", NULL);
        a.n = 0; /* c >= 1 even for an empty batch */
        expect(__LINE__, fn, &a, AMM_ERR_SHAPE, "c", NULL);
        a = fixture_args(fn, &p);
        a.c = -3;
        expect(__LINE__, fn, &a, AMM_ERR_SHAPE, "c", "-3");
        a = fixture_args(fn, &p);
        a.n = (int64_t)1 << 40; /* n * c = 2^80 does not fit in int64_t */
        a.c = (int64_t)1 << 40;
        expect(__LINE__, fn, &a, AMM_ERR_SHAPE, NULL, NULL);
        a.n = INT64_MAX;
        a.c = 2;
        expect(__LINE__, fn, &a, AMM_ERR_SHAPE, NULL, NULL);
        a.n = (int64_t)1 << 32; /* exactly 2^63: one past INT64_MAX */
        a.c = (int64_t)1 << 31;
        expect(__LINE__, fn, &a, AMM_ERR_SHAPE, NULL, NULL);
    }
}

static void test_labels(void)
{
    section = "labels";
    amm_params p;
    amm_params_init(&p);
    const int64_t bad9[FN] = {3, 0, 9, -100, 2};
    const int64_t bad_neg[FN] = {3, 0, 6, -100, -1};
    const int64_t bad_c[FN] = {FC, 0, 6, -100, 2};
    const int64_t bad_two[FN] = {3, 0, 6, 100, 8}; /* two bad rows: the first is named */
    for (int fn = 0; fn < NFN; ++fn) {
        args_t a = fixture_args(fn, &p);
        a.labels = bad9;
        expect(__LINE__, fn, &a, AMM_ERR_LABEL, NULL, "labels[2] = 9");
        a.labels = bad_neg;
        expect(__LINE__, fn, &a, AMM_ERR_LABEL, NULL, "labels[4] = -1");
        a.labels = bad_c;
        expect(__LINE__, fn, &a, AMM_ERR_LABEL, NULL, "labels[0] = 7");
        a.labels = bad_two;
        expect(__LINE__, fn, &a, AMM_ERR_LABEL, NULL, "labels[3] = 100");
    }

    /* A label equal to a custom ignore_index is skipped; -100 then becomes an error. */
    amm_params pi;
    amm_params_init(&pi);
    pi.ignore_index = -1;
    const int64_t ign_m1[FN] = {3, 0, 6, -1, 2};
    for (int fn = 0; fn < NFN; ++fn) {
        args_t a = fixture_args(fn, &pi);
        a.labels = ign_m1;
        expect(__LINE__, fn, &a, AMM_OK, NULL, NULL);
        a.labels = fx_labels; /* row 3 holds -100 */
        expect(__LINE__, fn, &a, AMM_ERR_LABEL, NULL, "labels[3] = -100");
    }

    /* ignore_index may be a class index: those rows are then skipped. */
    amm_params p0;
    amm_params_init(&p0);
    p0.ignore_index = 0;
    p0.reduction = AMM_REDUCTION_NONE;
    const int64_t ign_0[FN] = {3, 0, 6, 0, 2}; /* rows 1 and 3 skipped */
    double loss0[FN], grad0[FN * FC];
    args_t a = fixture_args(FWD64, &p0);
    a.labels = ign_0;
    a.loss = loss0;
    expect(__LINE__, FWD64, &a, AMM_OK, NULL, NULL);
    CHECK(loss0[1] == 0.0 && loss0[3] == 0.0 && loss0[0] > 0.0,
          "ignore_index = 0: rows 1 and 3 (label 0) have losses %g and %g, expected 0",
          loss0[1], loss0[3]);
    a = fixture_args(FB64, &p0);
    a.labels = ign_0;
    a.loss = loss0;
    a.grad_cos = grad0;
    expect(__LINE__, FB64, &a, AMM_OK, NULL, NULL);
    int zero = 1;
    for (int j = 0; j < FC; ++j)
        zero &= grad0[1 * FC + j] == 0.0 && grad0[3 * FC + j] == 0.0;
    CHECK(zero, "ignore_index = 0: the gradients of rows 1 and 3 are zero");
}

/* One invalid parameter. */
typedef struct {
    const char *field;   /* the name the message must contain */
    const char *value;   /* text of the value the message should contain, or NULL */
    int line;
    void (*apply)(amm_params *);
} bad_param;

static void bp_scale0(amm_params *p) { p->scale = 0.0; }
static void bp_scale_neg(amm_params *p) { p->scale = -2.5; }
static void bp_scale_nan(amm_params *p) { p->scale = NAN; }
static void bp_scale_inf(amm_params *p) { p->scale = INFINITY; }
static void bp_margin_neg(amm_params *p) { p->margin = -0.1; }
static void bp_margin_32(amm_params *p) { p->margin = 3.2; }
static void bp_margin_pi(amm_params *p) { p->margin = PI; }
static void bp_margin_nan(amm_params *p) { p->margin = NAN; }
static void bp_cos_margin_inf(amm_params *p) { p->target = AMM_TARGET_COS; p->margin = INFINITY; }
static void bp_cos_margin_nan(amm_params *p) { p->target = AMM_TARGET_COS; p->margin = NAN; }
static void bp_hm_neg(amm_params *p) { p->hard_margin = -1.0; }
static void bp_hm_nan(amm_params *p) { p->hard_margin = NAN; }
static void bp_hm_inf(amm_params *p) { p->hard_margin = INFINITY; }
static void bp_target99(amm_params *p) { p->target = 99; }
static void bp_target_m1(amm_params *p) { p->target = -1; }
static void bp_hard99(amm_params *p) { p->hard = 99; }
static void bp_hard_m1(amm_params *p) { p->hard = -1; }
static void bp_red99(amm_params *p) { p->reduction = 99; }
static void bp_red_m1(amm_params *p) { p->reduction = -1; }
static void bp_threads(amm_params *p) { p->num_threads = -1; }
static void bp_size8(amm_params *p) { p->struct_size = 8; }
static void bp_size0(amm_params *p) { p->struct_size = 0; }
static void bp_size55(amm_params *p) { p->struct_size = 55; }

static void ok_margin0(amm_params *p) { p->margin = 0.0; }
static void ok_margin_below_pi(amm_params *p) { p->margin = 3.14; }
static void ok_cos_margin_neg(amm_params *p) { p->target = AMM_TARGET_COS; p->margin = -0.1; }
static void ok_cos_margin_big(amm_params *p) { p->target = AMM_TARGET_COS; p->margin = 5.0; }
static void ok_hm0(amm_params *p) { p->hard_margin = 0.0; }
static void ok_threads_many(amm_params *p) { p->num_threads = 64; }
static void ok_size56(amm_params *p) { p->struct_size = 56; }
/* The smallest scales each element type holds: a subnormal float is > 0 in float. */
static void ok_tiny_scale(amm_params *p) { p->scale = 1e-40; }

static void test_params(void)
{
    section = "params";
    const bad_param bad[] = {
        {"scale", "0", __LINE__, bp_scale0},
        {"scale", "-2.5", __LINE__, bp_scale_neg},
        {"scale", "nan", __LINE__, bp_scale_nan},
        {"scale", "inf", __LINE__, bp_scale_inf},
        {"margin", "-0.1", __LINE__, bp_margin_neg},
        {"margin", "3.2", __LINE__, bp_margin_32},
        {"margin", "3.14159", __LINE__, bp_margin_pi},
        {"margin", "nan", __LINE__, bp_margin_nan},
        {"margin", "inf", __LINE__, bp_cos_margin_inf},
        {"margin", "nan", __LINE__, bp_cos_margin_nan},
        {"hard_margin", "-1", __LINE__, bp_hm_neg},
        {"hard_margin", "nan", __LINE__, bp_hm_nan},
        {"hard_margin", "inf", __LINE__, bp_hm_inf},
        {"target", "99", __LINE__, bp_target99},
        {"target", "-1", __LINE__, bp_target_m1},
        {"hard", "99", __LINE__, bp_hard99},
        {"hard", "-1", __LINE__, bp_hard_m1},
        {"reduction", "99", __LINE__, bp_red99},
        {"reduction", "-1", __LINE__, bp_red_m1},
        {"num_threads", "-1", __LINE__, bp_threads},
        {"struct_size", "8", __LINE__, bp_size8},
        {"struct_size", "0", __LINE__, bp_size0},
        {"struct_size", "55", __LINE__, bp_size55},
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; ++k)
        for (int fn = 0; fn < NFN; ++fn) {
            amm_params p;
            amm_params_init(&p);
            bad[k].apply(&p);
            args_t a = fixture_args(fn, &p);
            expect(bad[k].line, fn, &a, AMM_ERR_PARAM, bad[k].field, bad[k].value);
        }

    /* amm_params_validate is the same check, without computing: the same status, and the
       message of a computing function with its own name in front. */
    section = "params_validate";
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; ++k) {
        amm_params p;
        amm_params_init(&p);
        bad[k].apply(&p);
        int status = amm_params_validate(&p);
        char message[512];
        snprintf(message, sizeof message, "%s", amm_last_error());
        CHECK(status == AMM_ERR_PARAM, "line %d: amm_params_validate returned %d for %s = %s",
              bad[k].line, status, bad[k].field, bad[k].value);
        CHECK(strncmp(message, "amm_params_validate: ", 21) == 0 &&
                  strstr(message, bad[k].field) != NULL && strstr(message, bad[k].value) != NULL,
              "line %d: amm_params_validate's message \"%s\" names %s and %s", bad[k].line,
              message, bad[k].field, bad[k].value);
        args_t a = fixture_args(0, &p);
        expect(bad[k].line, 0, &a, AMM_ERR_PARAM, bad[k].field, bad[k].value);
        const char *theirs = strchr(amm_last_error(), ':'), *ours = strchr(message, ':');
        CHECK(theirs != NULL && ours != NULL && strcmp(theirs, ours) == 0,
              "line %d: amm_params_validate says \"%s\", %s says \"%s\"", bad[k].line,
              message, fn_name[0], amm_last_error());
    }
    {
        amm_params p;
        amm_params_init(&p);
        CHECK(amm_params_validate(&p) == AMM_OK, "the defaults are valid");
        CHECK(amm_params_validate(NULL) == AMM_ERR_NULL_POINTER, "NULL params refused");
        p.head_block_size = -4;
        CHECK(amm_params_validate(&p) == AMM_ERR_PARAM &&
                  strstr(amm_last_error(), "head_block_size = -4") != NULL,
              "a negative head_block_size is refused: \"%s\"", amm_last_error());
    }
    section = "params";

    void (*const good[])(amm_params *) = {ok_margin0, ok_margin_below_pi, ok_cos_margin_neg,
                                           ok_cos_margin_big, ok_hm0, ok_threads_many,
                                           ok_size56, ok_tiny_scale};
    for (size_t k = 0; k < sizeof good / sizeof good[0]; ++k)
        for (int fn = 0; fn < NFN; ++fn) {
            amm_params p;
            amm_params_init(&p);
            good[k](&p);
            args_t a = fixture_args(fn, &p);
            expect(__LINE__, fn, &a, AMM_OK, NULL, NULL);
        }

    /* For _f32 a scale that rounds to 0 in float is refused (its logits could be 0 * inf);
       _f64 takes it. */
    for (int fn = 0; fn < NFN; ++fn) {
        amm_params p;
        amm_params_init(&p);
        p.scale = 1e-300;
        args_t a = fixture_args(fn, &p);
        expect(__LINE__, fn, &a, is64(fn) ? AMM_OK : AMM_ERR_PARAM, is64(fn) ? NULL : "scale",
               is64(fn) ? NULL : "1e-300");
    }

    /* A struct_size larger than sizeof(amm_params): a caller compiled against a later header
       whose struct has more fields. The bytes past the known fields are ignored. */
    section = "struct_size larger";
    struct later_params {
        amm_params base;
        double future_a;
        int64_t future_b;
        unsigned char future_c[40];
    } later;
    memset(&later, 0xFF, sizeof later); /* NaN patterns and -1s in the unknown fields */
    amm_params_init(&later.base);
    later.base.struct_size = (uint32_t)sizeof later;
    amm_params plain;
    amm_params_init(&plain);
    for (int fn = 0; fn < NFN; ++fn) {
        if (!uses_loss(fn))
            continue;
        args_t a = fixture_args(fn, &later.base);
        double l64 = 0.0;
        float l32 = 0.0f;
        a.loss = is64(fn) ? (void *)&l64 : (void *)&l32;
        expect(__LINE__, fn, &a, AMM_OK, NULL, NULL);
        args_t b = fixture_args(fn, &plain);
        expect(__LINE__, fn, &b, AMM_OK, NULL, NULL);
        CHECK(is64(fn) ? l64 == out_loss64[0] : l32 == out_loss32[0],
              "%s: struct_size %zu gives the same loss as the plain struct", fn_name[fn],
              sizeof later);
    }
}

static void test_nonfinite(void)
{
    section = "nonfinite";
    amm_params p;
    amm_params_init(&p);
    struct {
        int row, col;
        double value;
        const char *where;
    } cases[] = {{1, 4, NAN, "cos[1, 4]"},
                 {4, 0, INFINITY, "cos[4, 0]"},
                 {0, 6, -INFINITY, "cos[0, 6]"},
                 {2, 6, NAN, "cos[2, 6]"}}; /* row 2's target column */
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; ++k) {
        float c32[FN * FC];
        double c64[FN * FC];
        memcpy(c32, fx_cos32, sizeof c32);
        memcpy(c64, fx_cos64, sizeof c64);
        c32[cases[k].row * FC + cases[k].col] = (float)cases[k].value;
        c64[cases[k].row * FC + cases[k].col] = cases[k].value;
        for (int fn = 0; fn < NFN; ++fn) {
            args_t a = fixture_args(fn, &p);
            a.cos = is64(fn) ? (const void *)c64 : (const void *)c32;
            expect(__LINE__, fn, &a, AMM_ERR_NONFINITE, NULL, cases[k].where);
        }
    }

    /* NaN and infinity in the ignored row 3 are fine and change nothing. */
    section = "nonfinite in an ignored row";
    {
        float c32[FN * FC];
        double c64[FN * FC];
        memcpy(c32, fx_cos32, sizeof c32);
        memcpy(c64, fx_cos64, sizeof c64);
        c32[3 * FC + 1] = NAN;
        c64[3 * FC + 1] = NAN;
        c32[3 * FC + 5] = INFINITY;
        c64[3 * FC + 5] = -INFINITY;
        for (int fn = 0; fn < NFN; ++fn) {
            if (fn % 3 != 2)
                continue; /* forward_backward covers loss and gradient */
            int d = is64(fn);
            args_t a = fixture_args(fn, &p);
            expect(__LINE__, fn, &a, AMM_OK, NULL, NULL);
            double ref_loss = d ? out_loss64[0] : (double)out_loss32[0];
            double ref_grad[FN * FC];
            for (int k = 0; k < FN * FC; ++k)
                ref_grad[k] = d ? out_grad64[k] : (double)out_grad32[k];
            a.cos = d ? (const void *)c64 : (const void *)c32;
            expect(__LINE__, fn, &a, AMM_OK, NULL, NULL);
            double got = d ? out_loss64[0] : (double)out_loss32[0];
            CHECK(got == ref_loss, "%s: NaN in an ignored row changed the loss: %.17g vs %.17g",
                  fn_name[fn], got, ref_loss);
            int same = 1;
            for (int k = 0; k < FN * FC; ++k)
                same &= (d ? out_grad64[k] : (double)out_grad32[k]) == ref_grad[k];
            CHECK(same, "%s: NaN in an ignored row changed the gradient", fn_name[fn]);
        }
    }

    /* Several bad rows: the lowest row is named, whatever num_threads is. */
    section = "nonfinite: lowest row";
    {
        static float c32[BN * BC];
        static double c64[BN * BC];
        memcpy(c32, big_cos32, sizeof c32);
        memcpy(c64, big_cos64, sizeof c64);
        const int bad[][2] = {{30, 5}, {7, 400}, {7, 450}, {36, 0}, {12, 3}};
        for (size_t k = 0; k < sizeof bad / sizeof bad[0]; ++k) {
            c32[bad[k][0] * BC + bad[k][1]] = NAN;
            c64[bad[k][0] * BC + bad[k][1]] = NAN;
        }
        static float g32[BN * BC];
        static double g64[BN * BC];
        float l32[BN];
        double l64[BN];
        const float gl32 = 1.0f;
        const double gl64 = 1.0;
        const int threads[] = {1, 2, 4, 0};
        for (size_t t = 0; t < sizeof threads / sizeof threads[0]; ++t)
            for (int fn = 0; fn < NFN; ++fn) {
                amm_params pt;
                amm_params_init(&pt);
                pt.num_threads = threads[t];
                args_t a = big_args(fn, &pt, is64(fn) ? (void *)l64 : (void *)l32,
                                    is64(fn) ? (const void *)&gl64 : (const void *)&gl32,
                                    is64(fn) ? (void *)g64 : (void *)g32);
                a.cos = is64(fn) ? (const void *)c64 : (const void *)c32;
                expect(__LINE__, fn, &a, AMM_ERR_NONFINITE, NULL, "cos[7, ");
            }
    }

    /* A NaN or an infinity in grad_loss. */
    section = "nonfinite grad_loss";
    for (int d = 0; d < 2; ++d) {
        int fn = d ? BWD64 : BWD32;
        const float gl32_nan[1] = {NAN};
        const double gl64_nan[1] = {NAN};
        args_t a = fixture_args(fn, &p);
        a.grad_loss = d ? (const void *)gl64_nan : (const void *)gl32_nan;
        /* The C parameter is called grad_loss: the message should say so. */
        expect(__LINE__, fn, &a, AMM_ERR_NONFINITE, "grad_loss", "nan");

        amm_params pn;
        amm_params_init(&pn);
        pn.reduction = AMM_REDUCTION_NONE;
        float gl32v[FN];
        double gl64v[FN];
        memcpy(gl32v, fx_gl32, sizeof gl32v);
        memcpy(gl64v, fx_gl64, sizeof gl64v);
        gl32v[2] = INFINITY;
        gl64v[2] = INFINITY;
        a = fixture_args(fn, &pn);
        a.grad_loss = d ? (const void *)gl64v : (const void *)gl32v;
        expect(__LINE__, fn, &a, AMM_ERR_NONFINITE, NULL, "[2]");
        gl32v[2] = 1.0f;
        gl64v[2] = 1.0;
        gl32v[3] = NAN; /* row 3 is ignored, but grad_loss must still be finite */
        gl64v[3] = NAN;
        expect(__LINE__, fn, &a, AMM_ERR_NONFINITE, NULL, "[3]");
    }
}

/* ------------------------------------------------------------------------------------------- */

typedef struct {
    char fresh[256];   /* amm_last_error() before any call on the thread */
    int status;        /* status of its failing call */
    char message[512]; /* its message */
} thread_result;

static void *failing_thread(void *arg)
{
    thread_result *r = (thread_result *)arg;
    snprintf(r->fresh, sizeof r->fresh, "%s", amm_last_error());
    amm_params p;
    amm_params_init(&p);
    p.scale = -1.0;
    double loss;
    r->status = amm_forward_f64(&p, fx_cos64, FN, FC, fx_labels, &loss);
    snprintf(r->message, sizeof r->message, "%s", amm_last_error());
    return NULL;
}

static void test_last_error_per_thread(void)
{
    section = "last error per thread";
    amm_params p;
    amm_params_init(&p);
    const int64_t bad[FN] = {3, 0, 9, -100, 2};
    double loss;
    int status = amm_forward_f64(&p, fx_cos64, FN, FC, bad, &loss);
    CHECK(status == AMM_ERR_LABEL, "main thread: status %s", amm_status_name(status));
    char main_msg[512];
    snprintf(main_msg, sizeof main_msg, "%s", amm_last_error());

    thread_result r;
    memset(&r, 0, sizeof r);
    pthread_t th;
    int rc = pthread_create(&th, NULL, failing_thread, &r);
    CHECK(rc == 0, "pthread_create: %d", rc);
    if (rc == 0)
        pthread_join(th, NULL);
    CHECK(strcmp(r.fresh, "") == 0, "a new thread's amm_last_error() is \"%s\", expected \"\"",
          r.fresh);
    CHECK(r.status == AMM_ERR_PARAM, "the thread's call returned %s", amm_status_name(r.status));
    CHECK(has_word(r.message, "scale"), "the thread's message names scale: \"%s\"", r.message);
    CHECK(strcmp(amm_last_error(), main_msg) == 0,
          "the main thread's message changed after another thread failed: \"%s\" -> \"%s\"",
          main_msg, amm_last_error());
    CHECK(strstr(main_msg, "labels[2] = 9") != NULL, "main message: \"%s\"", main_msg);

    /* A successful call leaves the message of the last failed call in place. */
    status = amm_forward_f64(&p, fx_cos64, FN, FC, fx_labels, &loss);
    CHECK(status == AMM_OK, "successful call: %s", amm_status_name(status));
    CHECK(strcmp(amm_last_error(), main_msg) == 0,
          "a successful call changed the last error: \"%s\" -> \"%s\"", main_msg,
          amm_last_error());
}

/* ------------------------------------------------------------------------------------------- */

/* Settings for the consistency checks: several target / hard kinds and scales. */
static void variant(amm_params *p, int k)
{
    amm_params_init(p);
    switch (k) {
    case 0: break; /* defaults: arc + amm, s = 64 */
    case 1: p->hard = AMM_HARD_NONE; break;                                      /* ArcFace */
    case 2: p->target = AMM_TARGET_COS; p->margin = 0.35; p->hard = AMM_HARD_NONE; break;
    case 3: p->hard = AMM_HARD_MV_FIXED; p->hard_margin = 1.2; p->scale = 32; break;
    case 4: p->target = AMM_TARGET_COS; p->hard = AMM_HARD_MV_ADAPTIVE; p->hard_margin = 0.25;
            break;
    case 5: p->target = AMM_TARGET_COS; p->margin = 0.2; p->hard_margin = 0.4; p->scale = 30;
            break;
    default: break;
    }
}
#define NVARIANTS 6

static double max_abs(const double *x, size_t n)
{
    double m = 0.0;
    for (size_t k = 0; k < n; ++k)
        m = fabs(x[k]) > m ? fabs(x[k]) : m;
    return m;
}

static void test_consistency(void)
{
    static float g32[BN * BC + 1], gb32[BN * BC + 1];
    static double g64[BN * BC + 1], gb64[BN * BC + 1], g32d[BN * BC];
    float l32[BN + 1], lf32[BN + 1];
    double l64[BN + 1], lf64[BN + 1];
    float up32[BN];
    double up64[BN];
    int count = 0;
    for (int i = 0; i < BN; ++i) {
        up32[i] = (float)(0.25 + 0.125 * (i % 5) - (i % 3 == 0 ? 1.0 : 0.0));
        up64[i] = (double)up32[i];
        count += big_labels[i] != -100;
    }

    for (int v = 0; v < NVARIANTS; ++v) {
        double sum64 = 0.0, mean64 = 0.0, none64[BN];
        float sum32 = 0.0f, mean32 = 0.0f, none32[BN];
        static double gsum64[BN * BC], gmean64[BN * BC];
        for (int r = 0; r < 3; ++r) {
            amm_params p;
            variant(&p, v);
            p.reduction = r;
            const int nl = r == AMM_REDUCTION_NONE ? BN : 1;
            const float gl32 = 0.37f;
            const double gl64 = (double)gl32;
            section = "consistency";

            /* sentinels past the documented outputs */
            l32[nl] = lf32[nl] = -7.0f;
            l64[nl] = lf64[nl] = -7.0;
            g32[BN * BC] = gb32[BN * BC] = -7.0f;
            g64[BN * BC] = gb64[BN * BC] = -7.0;

            args_t a;
            a = big_args(FB64, &p, l64, NULL, g64);
            expect(__LINE__, FB64, &a, AMM_OK, NULL, NULL);
            a = big_args(FWD64, &p, lf64, NULL, NULL);
            expect(__LINE__, FWD64, &a, AMM_OK, NULL, NULL);
            a = big_args(BWD64, &p, NULL, r == AMM_REDUCTION_NONE ? (const void *)up64
                                                                   : (const void *)&gl64,
                         gb64);
            expect(__LINE__, BWD64, &a, AMM_OK, NULL, NULL);
            a = big_args(FB32, &p, l32, NULL, g32);
            expect(__LINE__, FB32, &a, AMM_OK, NULL, NULL);
            a = big_args(FWD32, &p, lf32, NULL, NULL);
            expect(__LINE__, FWD32, &a, AMM_OK, NULL, NULL);
            a = big_args(BWD32, &p, NULL, r == AMM_REDUCTION_NONE ? (const void *)up32
                                                                   : (const void *)&gl32,
                         gb32);
            expect(__LINE__, BWD32, &a, AMM_OK, NULL, NULL);

            CHECK(l32[nl] == -7.0f && lf32[nl] == -7.0f && l64[nl] == -7.0 &&
                      lf64[nl] == -7.0,
                  "variant %d reduction %d: a loss value past the %d documented was written",
                  v, r, nl);
            CHECK(g32[BN * BC] == -7.0f && gb32[BN * BC] == -7.0f && g64[BN * BC] == -7.0 &&
                      gb64[BN * BC] == -7.0,
                  "variant %d reduction %d: a value past the n x c gradient was written", v, r);

            /* forward's loss is forward_backward's, bit for bit */
            CHECK(memcmp(l64, lf64, nl * sizeof(double)) == 0,
                  "variant %d reduction %d: f64 forward loss %.17g != forward_backward %.17g",
                  v, r, lf64[0], l64[0]);
            CHECK(memcmp(l32, lf32, nl * sizeof(float)) == 0,
                  "variant %d reduction %d: f32 forward loss %.9g != forward_backward %.9g", v,
                  r, (double)lf32[0], (double)l32[0]);

            /* backward(g) = g * forward_backward's gradient, to rounding */
            int ok64 = 1, ok32 = 1;
            for (int i = 0; i < BN; ++i)
                for (int j = 0; j < BC; ++j) {
                    int k = i * BC + j;
                    double gi64 = r == AMM_REDUCTION_NONE ? up64[i] : gl64;
                    double gi32 = r == AMM_REDUCTION_NONE ? (double)up32[i] : (double)gl32;
                    if (!close_to(gb64[k], gi64 * g64[k], 1e-12, 1e-300))
                        ok64 = 0;
                    if (!close_to((double)gb32[k], gi32 * (double)g32[k], 1e-6, 1e-37))
                        ok32 = 0;
                }
            CHECK(ok64, "variant %d reduction %d: f64 backward(g) != g * gradient", v, r);
            CHECK(ok32, "variant %d reduction %d: f32 backward(g) != g * gradient", v, r);

            /* f32 and f64 agree */
            section = "f32 vs f64";
            int okl = 1;
            for (int i = 0; i < nl; ++i)
                okl &= close_to((double)l32[i], l64[i], 1e-5, 1e-6);
            CHECK(okl, "variant %d reduction %d: f32 loss %.9g vs f64 loss %.17g", v, r,
                  (double)l32[0], l64[0]);
            for (int k = 0; k < BN * BC; ++k)
                g32d[k] = (double)g32[k];
            double gmax = max_abs(g64, BN * BC), worst = 0.0;
            for (int k = 0; k < BN * BC; ++k)
                worst = fmax(worst, fabs(g32d[k] - g64[k]));
            CHECK(worst <= 1e-5 * gmax, "variant %d reduction %d: f32 and f64 gradients differ "
                  "by %.3g (max |grad| %.3g)", v, r, worst, gmax);

            /* ignored rows: zero gradient, and a zero loss under reduction none */
            section = "reductions";
            int zero = 1;
            for (int i = 0; i < BN; ++i)
                if (big_labels[i] == -100) {
                    for (int j = 0; j < BC; ++j)
                        zero &= g64[i * BC + j] == 0.0 && g32[i * BC + j] == 0.0f &&
                                gb64[i * BC + j] == 0.0 && gb32[i * BC + j] == 0.0f;
                    if (r == AMM_REDUCTION_NONE)
                        zero &= l64[i] == 0.0 && l32[i] == 0.0f;
                }
            CHECK(zero, "variant %d reduction %d: an ignored row has a non-zero loss or "
                  "gradient", v, r);

            if (r == AMM_REDUCTION_MEAN) {
                mean64 = l64[0];
                mean32 = l32[0];
                memcpy(gmean64, g64, sizeof gmean64);
            } else if (r == AMM_REDUCTION_SUM) {
                sum64 = l64[0];
                sum32 = l32[0];
                memcpy(gsum64, g64, sizeof gsum64);
            } else {
                memcpy(none64, l64, sizeof none64);
                memcpy(none32, l32, sizeof none32);
            }
        }
        section = "reductions";
        double total64 = 0.0, total32 = 0.0;
        for (int i = 0; i < BN; ++i) {
            total64 += none64[i];
            total32 += (double)none32[i];
        }
        CHECK(close_to(sum64, total64, 1e-12, 0.0),
              "variant %d: f64 sum %.17g != sum of reduction none %.17g", v, sum64, total64);
        CHECK(close_to((double)sum32, total32, 1e-6, 0.0),
              "variant %d: f32 sum %.9g != sum of reduction none %.9g", v, (double)sum32,
              total32);
        CHECK(close_to(mean64, sum64 / count, 1e-12, 0.0),
              "variant %d: f64 mean %.17g != sum / %d = %.17g", v, mean64, count,
              sum64 / count);
        CHECK(close_to((double)mean32, (double)sum32 / count, 1e-6, 0.0),
              "variant %d: f32 mean %.9g != sum / %d = %.9g", v, (double)mean32, count,
              (double)sum32 / count);
        int okg = 1;
        for (int k = 0; k < BN * BC; ++k)
            okg &= close_to(gmean64[k], gsum64[k] / count, 1e-12, 1e-300);
        CHECK(okg, "variant %d: the mean's gradient is not the sum's / %d", v, count);
    }

    /* mean over a batch whose rows are all ignored: 0, with a zero gradient */
    section = "reductions";
    {
        amm_params p;
        amm_params_init(&p);
        const int64_t all_ignored[FN] = {-100, -100, -100, -100, -100};
        args_t a = fixture_args(FB64, &p);
        a.labels = all_ignored;
        out_loss64[0] = 5.0;
        expect(__LINE__, FB64, &a, AMM_OK, NULL, NULL);
        int zero = out_loss64[0] == 0.0;
        for (int k = 0; k < FN * FC; ++k)
            zero &= out_grad64[k] == 0.0;
        CHECK(zero, "every row ignored: mean loss %g (expected 0) or a non-zero gradient",
              out_loss64[0]);
        a = fixture_args(FB32, &p);
        a.labels = all_ignored;
        out_loss32[0] = 5.0f;
        expect(__LINE__, FB32, &a, AMM_OK, NULL, NULL);
        CHECK(out_loss32[0] == 0.0f, "every row ignored (f32): mean loss %g",
              (double)out_loss32[0]);
    }
}

/* ------------------------------------------------------------------------------------------- */

static void test_threads(void)
{
    section = "num_threads";
    static float g32[5][BN * BC];
    static double g64[5][BN * BC];
    float l32[5][BN];
    double l64[5][BN];
    const int threads[5] = {1, 2, 4, 0, 7};
    for (int r = 0; r < 3; ++r) {
        for (int t = 0; t < 5; ++t) {
            amm_params p;
            amm_params_init(&p);
            p.reduction = r;
            p.num_threads = threads[t];
            args_t a = big_args(FB64, &p, l64[t], NULL, g64[t]);
            expect(__LINE__, FB64, &a, AMM_OK, NULL, NULL);
            a = big_args(FB32, &p, l32[t], NULL, g32[t]);
            expect(__LINE__, FB32, &a, AMM_OK, NULL, NULL);
        }
        const size_t nl = r == AMM_REDUCTION_NONE ? BN : 1;
        for (int t = 1; t < 5; ++t) {
            CHECK(memcmp(l64[0], l64[t], nl * sizeof(double)) == 0 &&
                      memcmp(g64[0], g64[t], sizeof g64[0]) == 0,
                  "f64 reduction %d: num_threads %d differs from num_threads 1", r, threads[t]);
            CHECK(memcmp(l32[0], l32[t], nl * sizeof(float)) == 0 &&
                      memcmp(g32[0], g32[t], sizeof g32[0]) == 0,
                  "f32 reduction %d: num_threads %d differs from num_threads 1", r, threads[t]);
        }
        /* forward and backward alone */
        for (int t = 0; t < 5; ++t) {
            amm_params p;
            amm_params_init(&p);
            p.reduction = r;
            p.num_threads = threads[t];
            double fl[BN];
            static double bg[BN * BC];
            double up[BN];
            for (int i = 0; i < BN; ++i)
                up[i] = 1.0 + 0.01 * i;
            args_t a = big_args(FWD64, &p, fl, NULL, NULL);
            expect(__LINE__, FWD64, &a, AMM_OK, NULL, NULL);
            CHECK(memcmp(fl, l64[0], nl * sizeof(double)) == 0,
                  "forward f64 reduction %d num_threads %d differs", r, threads[t]);
            static double bg_ref[BN * BC];
            a = big_args(BWD64, &p, NULL, up, bg);
            expect(__LINE__, BWD64, &a, AMM_OK, NULL, NULL);
            if (t == 0)
                memcpy(bg_ref, bg, sizeof bg);
            CHECK(memcmp(bg, bg_ref, sizeof bg) == 0,
                  "backward f64 reduction %d num_threads %d differs", r, threads[t]);
        }
    }
}

/* Concurrent calls from several threads give the serial results. */
typedef struct {
    int reduction;
    double loss[BN];
    double grad[BN * BC];
    int status;
} concurrent_job;

static void *concurrent_worker(void *arg)
{
    concurrent_job *job = (concurrent_job *)arg;
    amm_params p;
    amm_params_init(&p);
    p.reduction = job->reduction;
    p.num_threads = 2;
    for (int rep = 0; rep < 3 && job->status == AMM_OK; ++rep)
        job->status = amm_forward_backward_f64(&p, big_cos64, BN, BC, big_labels, job->loss,
                                               job->grad);
    return NULL;
}

static void test_concurrent_calls(void)
{
    section = "concurrent calls";
    enum { NT = 4 };
    static concurrent_job jobs[NT];
    static double ref_grad[3][BN * BC];
    double ref_loss[3][BN];
    for (int r = 0; r < 3; ++r) {
        amm_params p;
        amm_params_init(&p);
        p.reduction = r;
        p.num_threads = 1;
        int st = amm_forward_backward_f64(&p, big_cos64, BN, BC, big_labels, ref_loss[r],
                                          ref_grad[r]);
        CHECK(st == AMM_OK, "serial call: %s", amm_status_name(st));
    }
    pthread_t th[NT];
    for (int k = 0; k < NT; ++k) {
        jobs[k].reduction = k % 3;
        jobs[k].status = AMM_OK;
        if (pthread_create(&th[k], NULL, concurrent_worker, &jobs[k]) != 0) {
            CHECK(0, "pthread_create failed");
            jobs[k].status = -1;
            th[k] = pthread_self();
        }
    }
    for (int k = 0; k < NT; ++k) {
        if (!pthread_equal(th[k], pthread_self()))
            pthread_join(th[k], NULL);
        int r = jobs[k].reduction;
        size_t nl = r == AMM_REDUCTION_NONE ? BN : 1;
        CHECK(jobs[k].status == AMM_OK, "thread %d: %s", k, amm_status_name(jobs[k].status));
        CHECK(memcmp(jobs[k].loss, ref_loss[r], nl * sizeof(double)) == 0 &&
                  memcmp(jobs[k].grad, ref_grad[r], sizeof ref_grad[r]) == 0,
              "thread %d (reduction %d): concurrent result differs from the serial one", k, r);
    }
}

/* ------------------------------------------------------------------------------------------- */

static void test_known_values(void)
{
    section = "known values";

    /* By hand: target cos, hard none, s = 1, m = 0 makes loss = logsumexp(row) - row[y].
       With row = {0, 0} and y = 0: loss = log 2, gradient = softmax - onehot = {-1/2, 1/2}. */
    {
        amm_params p;
        amm_params_init(&p);
        p.target = AMM_TARGET_COS;
        p.hard = AMM_HARD_NONE;
        p.scale = 1.0;
        p.margin = 0.0;
        const double row64[2] = {0.0, 0.0};
        const float row32[2] = {0.0f, 0.0f};
        const int64_t y[1] = {0};
        double l64, g64[2];
        float l32, g32[2];
        int st = amm_forward_backward_f64(&p, row64, 1, 2, y, &l64, g64);
        CHECK(st == AMM_OK, "f64: %s", amm_status_name(st));
        CHECK(close_to(l64, 0.69314718055994530942, 1e-15, 0.0), "f64 loss %.17g, expected log 2",
              l64);
        CHECK(g64[0] == -0.5 && g64[1] == 0.5, "f64 gradient {%.17g, %.17g}, expected "
              "{-0.5, 0.5}", g64[0], g64[1]);
        st = amm_forward_backward_f32(&p, row32, 1, 2, y, &l32, g32);
        CHECK(st == AMM_OK, "f32: %s", amm_status_name(st));
        CHECK(close_to((double)l32, 0.69314718055994530942, 1e-7, 0.0),
              "f32 loss %.9g, expected log 2", (double)l32);
        CHECK(g32[0] == -0.5f && g32[1] == 0.5f, "f32 gradient {%g, %g}", (double)g32[0],
              (double)g32[1]);
    }

    /* Rows against ref_row (docs/FORMULATION.md written out above), one per case, with reduction
       sum so that the loss is the row's loss. */
    struct {
        int target, hard;
        double s, m, t;
        int c, y;
        double row[6];
        const char *what;
    } cases[] = {
        {AMM_TARGET_ARC, AMM_HARD_NONE, 1.0, 0.5, 0.2, 2, 0, {0.6, 0.2}, "ArcFace"},
        {AMM_TARGET_ARC, AMM_HARD_AMM, 2.0, 0.5, 0.2, 2, 0, {0.3, 0.9}, "AMM hard negative"},
        {AMM_TARGET_ARC, AMM_HARD_AMM, 4.0, 0.5, 0.2, 4, 0, {0.3, 1.2, -1.5, 0.9},
         "AMM, values outside [-1, 1]"},
        {AMM_TARGET_ARC, AMM_HARD_AMM, 3.0, 0.5, 0.2, 3, 1, {0.1, -0.95, 0.4},
         "arc fallback (theta_y + m > pi)"},
        {AMM_TARGET_ARC, AMM_HARD_MV_FIXED, 8.0, 0.4, 1.2, 4, 2, {0.5, 0.1, 0.6, 0.45},
         "MV fixed"},
        {AMM_TARGET_COS, AMM_HARD_MV_ADAPTIVE, 5.0, 0.3, 0.25, 4, 3, {0.5, -0.2, 0.35, 0.6},
         "MV adaptive"},
        /* cos[j] == f(c_y) exactly (0.75 - 0.25 = 0.5): not a hard negative (strict >) */
        {AMM_TARGET_COS, AMM_HARD_MV_FIXED, 3.0, 0.25, 1.2, 3, 0, {0.75, 0.5, 0.25},
         "cos[j] == f(c_y) is easy"},
        {AMM_TARGET_ARC, AMM_HARD_AMM, 64.0, 0.5, 0.2, 6, 5, {0.2, 0.7, -0.3, 0.65, 0.1, 0.8},
         "defaults"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; ++k) {
        amm_params p;
        amm_params_init(&p);
        p.target = cases[k].target;
        p.hard = cases[k].hard;
        p.scale = cases[k].s;
        p.margin = cases[k].m;
        p.hard_margin = cases[k].t;
        p.reduction = AMM_REDUCTION_SUM;
        const int c = cases[k].c;
        double want_grad[6], got_grad[6];
        double want = ref_row(&p, cases[k].row, c, cases[k].y, want_grad);
        const int64_t y[1] = {cases[k].y};
        double got;
        int st = amm_forward_backward_f64(&p, cases[k].row, 1, c, y, &got, got_grad);
        CHECK(st == AMM_OK, "%s: %s: %s", cases[k].what, amm_status_name(st), amm_last_error());
        CHECK(close_to(got, want, 1e-12, 1e-14), "%s: f64 loss %.17g, expected %.17g",
              cases[k].what, got, want);
        double gmax = max_abs(want_grad, (size_t)c);
        int ok = 1;
        for (int j = 0; j < c; ++j)
            ok &= close_to(got_grad[j], want_grad[j], 1e-11, 1e-12 * gmax);
        CHECK(ok, "%s: f64 gradient differs from the formula (e.g. [1] %.17g vs %.17g)",
              cases[k].what, got_grad[1], want_grad[1]);

        float row32[6], g32[6], l32;
        for (int j = 0; j < c; ++j)
            row32[j] = (float)cases[k].row[j];
        /* the f32 inputs are the rounded values; compare with the reference on those */
        double row_r[6];
        for (int j = 0; j < c; ++j)
            row_r[j] = (double)row32[j];
        want = ref_row(&p, row_r, c, cases[k].y, want_grad);
        st = amm_forward_backward_f32(&p, row32, 1, c, y, &l32, g32);
        CHECK(st == AMM_OK, "%s f32: %s", cases[k].what, amm_status_name(st));
        CHECK(close_to((double)l32, want, 1e-5, 1e-6), "%s: f32 loss %.9g, expected %.9g",
              cases[k].what, (double)l32, want);
        ok = 1;
        for (int j = 0; j < c; ++j)
            ok &= close_to((double)g32[j], want_grad[j], 1e-4, 1e-5 * gmax);
        CHECK(ok, "%s: f32 gradient differs from the formula", cases[k].what);
    }

    /* The fixture (mean over its 4 non-ignored rows) against ref_row. */
    {
        amm_params p;
        amm_params_init(&p);
        double want = 0.0, want_grad[FN * FC];
        int count = 0;
        for (int i = 0; i < FN; ++i) {
            if (fx_labels[i] == -100) {
                for (int j = 0; j < FC; ++j)
                    want_grad[i * FC + j] = 0.0;
                continue;
            }
            want += ref_row(&p, fx_cos64 + i * FC, FC, (int)fx_labels[i], want_grad + i * FC);
            ++count;
        }
        want /= count;
        for (int k = 0; k < FN * FC; ++k)
            want_grad[k] /= count;
        args_t a = fixture_args(FB64, &p);
        expect(__LINE__, FB64, &a, AMM_OK, NULL, NULL);
        CHECK(close_to(out_loss64[0], want, 1e-12, 0.0), "fixture mean loss %.17g vs %.17g",
              out_loss64[0], want);
        double gmax = max_abs(want_grad, FN * FC);
        int ok = 1;
        for (int k = 0; k < FN * FC; ++k)
            ok &= close_to(out_grad64[k], want_grad[k], 1e-11, 1e-12 * gmax);
        CHECK(ok, "fixture mean gradient differs from the formula");
    }
}

/* ---------------------------------------------------------------------------------------------
 * The fused head (since 0.2): amm_head_forward_backward_f32 / _f64
 * ------------------------------------------------------------------------------------------- */

static const char *const head_name[2] = {"amm_head_forward_backward_f32",
                                         "amm_head_forward_backward_f64"};

typedef struct {
    const amm_params *p;
    const void *emb; /* embeddings, n x d */
    const void *w;   /* weights, c x d */
    int64_t n, d, c;
    const int64_t *labels;
    void *loss;      /* 1 value (mean, sum) or n (none) */
    void *gemb;      /* grad_embeddings, n x d */
    void *gw;        /* grad_weights, c x d */
} head_args;

static int head_dispatch(int d64, const head_args *a)
{
    if (d64)
        return amm_head_forward_backward_f64(a->p, (const double *)a->emb,
                                             (const double *)a->w, a->n, a->d, a->c, a->labels,
                                             (double *)a->loss, (double *)a->gemb,
                                             (double *)a->gw);
    return amm_head_forward_backward_f32(a->p, (const float *)a->emb, (const float *)a->w, a->n,
                                         a->d, a->c, a->labels, (float *)a->loss,
                                         (float *)a->gemb, (float *)a->gw);
}

/* Calls the head and checks that it wrote none of its inputs: params (all sizeof(amm_params)
   bytes, padding included), embeddings, weights and labels are compared, byte for byte, with
   copies taken before the call. */
static int head_run(int d64, const head_args *a, int line)
{
    const size_t esize = d64 ? sizeof(double) : sizeof(float);
    int sane = a->n >= 0 && a->n <= 4096 && a->d >= 1 && a->d <= 4096 && a->c >= 1 &&
               a->c <= 4096;
    size_t ne = sane ? (size_t)(a->n * a->d) : 0;
    size_t nw = sane ? (size_t)(a->c * a->d) : 0;
    size_t nl = sane ? (size_t)a->n : 0;

    unsigned char p_copy[sizeof(amm_params)];
    if (a->p)
        memcpy(p_copy, a->p, sizeof p_copy);
    void *e_copy = NULL, *w_copy = NULL, *l_copy = NULL;
    if (a->emb && ne) {
        e_copy = malloc(ne * esize);
        memcpy(e_copy, a->emb, ne * esize);
    }
    if (a->w && nw) {
        w_copy = malloc(nw * esize);
        memcpy(w_copy, a->w, nw * esize);
    }
    if (a->labels && nl) {
        l_copy = malloc(nl * sizeof(int64_t));
        memcpy(l_copy, a->labels, nl * sizeof(int64_t));
    }

    int status = head_dispatch(d64, a);

    int unchanged = 1;
    if (a->p && memcmp(p_copy, a->p, sizeof p_copy) != 0)
        unchanged = 0;
    if (e_copy && memcmp(e_copy, a->emb, ne * esize) != 0)
        unchanged = 0;
    if (w_copy && memcmp(w_copy, a->w, nw * esize) != 0)
        unchanged = 0;
    if (l_copy && memcmp(l_copy, a->labels, nl * sizeof(int64_t)) != 0)
        unchanged = 0;
    check(unchanged, line, "%s wrote one of its inputs (params, embeddings, weights or labels)",
          head_name[d64]);
    free(e_copy);
    free(w_copy);
    free(l_copy);
    return status;
}

/* Calls the head and checks its status and message (expect_status). */
static void head_expect(int line, int d64, const head_args *a, int want, const char *word,
                        const char *text)
{
    expect_status(line, head_name[d64], head_run(d64, a, line), want, word, text);
}

/* A head problem in both precisions, with its output buffers (one spare value past each, for
   sentinels). The f64 inputs are the f32 ones widened, so that one reference serves both. */
typedef struct {
    int n, d, c;
    float *x32, *w32;
    double *x64, *w64;
    int64_t *labels;
    float *loss32, *gx32, *gw32;
    double *loss64, *gx64, *gw64;
} head_problem;

static void *alloc_zero(size_t count, size_t size) { return calloc(count + 1, size); }

/* Deterministic embeddings and weights of various norms; each labelled row leans a little
   towards its class. Rows with i % 5 == 2 are ignored (-100). */
static void head_problem_init(head_problem *h, int n, int d, int c)
{
    h->n = n;
    h->d = d;
    h->c = c;
    h->x32 = alloc_zero((size_t)n * d, sizeof(float));
    h->w32 = alloc_zero((size_t)c * d, sizeof(float));
    h->x64 = alloc_zero((size_t)n * d, sizeof(double));
    h->w64 = alloc_zero((size_t)c * d, sizeof(double));
    h->labels = alloc_zero((size_t)n, sizeof(int64_t));
    h->loss32 = alloc_zero((size_t)n, sizeof(float));
    h->gx32 = alloc_zero((size_t)n * d, sizeof(float));
    h->gw32 = alloc_zero((size_t)c * d, sizeof(float));
    h->loss64 = alloc_zero((size_t)n, sizeof(double));
    h->gx64 = alloc_zero((size_t)n * d, sizeof(double));
    h->gw64 = alloc_zero((size_t)c * d, sizeof(double));
    for (int j = 0; j < c; ++j)
        for (int k = 0; k < d; ++k)
            h->w32[j * d + k] = (float)((0.5 + 0.3 * (j % 7)) * cos(0.9 * j - 1.7 * k + 0.2));
    for (int i = 0; i < n; ++i) {
        h->labels[i] = i % 5 == 2 ? -100 : (int64_t)((i * 3 + 1) % c);
        for (int k = 0; k < d; ++k) {
            double v = (0.5 + 0.4 * i) * sin(1.1 * i + 2.3 * k + 0.4);
            if (h->labels[i] >= 0)
                v += 1.5 * (double)h->w32[h->labels[i] * d + k];
            h->x32[i * d + k] = (float)v;
        }
    }
    for (int k = 0; k < n * d; ++k)
        h->x64[k] = (double)h->x32[k];
    for (int k = 0; k < c * d; ++k)
        h->w64[k] = (double)h->w32[k];
}

static void head_problem_free(head_problem *h)
{
    free(h->x32); free(h->w32); free(h->x64); free(h->w64); free(h->labels);
    free(h->loss32); free(h->gx32); free(h->gw32);
    free(h->loss64); free(h->gx64); free(h->gw64);
}

static head_args head_problem_args(const head_problem *h, int d64, const amm_params *p)
{
    head_args a;
    a.p = p;
    a.n = h->n;
    a.d = h->d;
    a.c = h->c;
    a.labels = h->labels;
    a.emb = d64 ? (const void *)h->x64 : (const void *)h->x32;
    a.w = d64 ? (const void *)h->w64 : (const void *)h->w32;
    a.loss = d64 ? (void *)h->loss64 : (void *)h->loss32;
    a.gemb = d64 ? (void *)h->gx64 : (void *)h->gx32;
    a.gw = d64 ? (void *)h->gw64 : (void *)h->gw32;
    return a;
}

/* v^ = v / max(||v||, 1e-12), row by row (docs/FORMULATION.md, "Head"). */
static void ref_normalize(const double *v, int rows, int d, double *vh)
{
    for (int i = 0; i < rows; ++i) {
        double sq = 0.0;
        for (int k = 0; k < d; ++k)
            sq += v[i * d + k] * v[i * d + k];
        double r = sqrt(sq) > 1e-12 ? sqrt(sq) : 1e-12;
        for (int k = 0; k < d; ++k)
            vh[i * d + k] = v[i * d + k] / r;
    }
}

/* dv = (dv^ - v^ <v^, dv^>) / ||v|| where ||v|| >= 1e-12, dv^ / 1e-12 otherwise. */
static void ref_normalize_backward(const double *v, const double *vh, const double *dvh,
                                   int rows, int d, double *dv)
{
    for (int i = 0; i < rows; ++i) {
        double sq = 0.0, dot = 0.0;
        for (int k = 0; k < d; ++k) {
            sq += v[i * d + k] * v[i * d + k];
            dot += vh[i * d + k] * dvh[i * d + k];
        }
        double r = sqrt(sq);
        for (int k = 0; k < d; ++k)
            dv[i * d + k] = r >= 1e-12 ? (dvh[i * d + k] - vh[i * d + k] * dot) / r
                                       : dvh[i * d + k] / 1e-12;
    }
}

/* The head by its definition, in double precision: cos = x^ W^^T formed here, the loss and
   grad_cos from amm_forward_backward_f64, then the chain rule dx^ = gcos W^, dW^ = gcos^T x^
   and the normalisation's backward. Returns amm_forward_backward_f64's status. */
static int ref_head(const amm_params *p, const double *x, const double *w, int n, int d, int c,
                    const int64_t *labels, double *loss, double *gx, double *gw)
{
    double *xh = alloc_zero((size_t)n * d, sizeof(double));
    double *wh = alloc_zero((size_t)c * d, sizeof(double));
    double *cosm = alloc_zero((size_t)n * c, sizeof(double));
    double *gcos = alloc_zero((size_t)n * c, sizeof(double));
    double *gxh = alloc_zero((size_t)n * d, sizeof(double));
    double *gwh = alloc_zero((size_t)c * d, sizeof(double));
    ref_normalize(x, n, d, xh);
    ref_normalize(w, c, d, wh);
    for (int i = 0; i < n; ++i)
        for (int j = 0; j < c; ++j) {
            double s = 0.0;
            for (int k = 0; k < d; ++k)
                s += xh[i * d + k] * wh[j * d + k];
            cosm[i * c + j] = s;
        }
    int st = amm_forward_backward_f64(p, cosm, n, c, labels, loss, gcos);
    if (st == AMM_OK) {
        for (int i = 0; i < n; ++i)
            for (int j = 0; j < c; ++j)
                for (int k = 0; k < d; ++k) {
                    gxh[i * d + k] += gcos[i * c + j] * wh[j * d + k];
                    gwh[j * d + k] += gcos[i * c + j] * xh[i * d + k];
                }
        ref_normalize_backward(x, xh, gxh, n, d, gx);
        ref_normalize_backward(w, wh, gwh, c, d, gw);
    }
    free(xh); free(wh); free(cosm); free(gcos); free(gxh); free(gwh);
    return st;
}

/* The first index where got and want differ by more than rel * |want| + abs_frac * (the largest
   |want| of its row of `cols`), or -1 if none. Each row has its own scale: the gradient of a
   row of (nearly) zero norm is 1e12 times larger than the others. */
static long rows_differ(const double *got, const double *want, int rows, int cols, double rel,
                        double abs_frac)
{
    for (int i = 0; i < rows; ++i) {
        double rmax = max_abs(want + (size_t)i * cols, (size_t)cols);
        for (int k = 0; k < cols; ++k) {
            size_t at = (size_t)i * cols + k;
            if (!(close_to(got[at], want[at], rel, abs_frac * rmax)))
                return (long)at;
        }
    }
    return -1;
}

static double *widen(const float *v, size_t count)
{
    double *out = alloc_zero(count, sizeof(double));
    for (size_t k = 0; k < count; ++k)
        out[k] = (double)v[k];
    return out;
}

static int all_finite(const double *v, size_t count)
{
    for (size_t k = 0; k < count; ++k)
        if (!isfinite(v[k]))
            return 0;
    return 1;
}

/* Runs the head (f64 or f32) on h with p and compares loss and both gradients with ref_head;
   `what` names the case in messages. Sentinels past the outputs must survive. */
static void head_check_against_ref(const head_problem *h, const amm_params *p, int d64,
                                   double rel_loss, double rel_grad, double abs_grad,
                                   const char *what, int line)
{
    const int n = h->n, d = h->d, c = h->c;
    const int nl = p->reduction == AMM_REDUCTION_NONE ? n : 1;
    double *rl = alloc_zero((size_t)n, sizeof(double));
    double *rgx = alloc_zero((size_t)n * d, sizeof(double));
    double *rgw = alloc_zero((size_t)c * d, sizeof(double));
    int st = ref_head(p, h->x64, h->w64, n, d, c, h->labels, rl, rgx, rgw);
    check(st == AMM_OK, line, "%s: the reference's amm_forward_backward_f64: %s: %s", what,
          amm_status_name(st), amm_last_error());

    if (d64) {
        h->loss64[nl] = -7.0;
        h->gx64[n * d] = -7.0;
        h->gw64[c * d] = -7.0;
    } else {
        h->loss32[nl] = -7.0f;
        h->gx32[n * d] = -7.0f;
        h->gw32[c * d] = -7.0f;
    }
    head_args a = head_problem_args(h, d64, p);
    head_expect(line, d64, &a, AMM_OK, NULL, NULL);
    check(d64 ? (h->loss64[nl] == -7.0 && h->gx64[n * d] == -7.0 && h->gw64[c * d] == -7.0)
              : (h->loss32[nl] == -7.0f && h->gx32[n * d] == -7.0f && h->gw32[c * d] == -7.0f),
          line, "%s %s: a value past the documented outputs was written", head_name[d64], what);

    double *gl = d64 ? h->loss64 : widen(h->loss32, (size_t)nl);
    double *gx = d64 ? h->gx64 : widen(h->gx32, (size_t)n * d);
    double *gw = d64 ? h->gw64 : widen(h->gw32, (size_t)c * d);
    long bad = rows_differ(gl, rl, 1, nl, rel_loss, 0.0);
    check(bad < 0, line, "%s %s: loss[%ld] = %.17g, expected %.17g (cos formed in the test, "
          "then amm_forward_backward_f64)", head_name[d64], what, bad, bad < 0 ? 0.0 : gl[bad],
          bad < 0 ? 0.0 : rl[bad]);
    bad = rows_differ(gx, rgx, n, d, rel_grad, abs_grad);
    check(bad < 0, line, "%s %s: grad_embeddings[%ld, %ld] = %.17g, expected %.17g (chain rule)",
          head_name[d64], what, bad < 0 ? 0L : bad / d, bad < 0 ? 0L : bad % d,
          bad < 0 ? 0.0 : gx[bad], bad < 0 ? 0.0 : rgx[bad]);
    bad = rows_differ(gw, rgw, c, d, rel_grad, abs_grad);
    check(bad < 0, line, "%s %s: grad_weights[%ld, %ld] = %.17g, expected %.17g (chain rule)",
          head_name[d64], what, bad < 0 ? 0L : bad / d, bad < 0 ? 0L : bad % d,
          bad < 0 ? 0.0 : gw[bad], bad < 0 ? 0.0 : rgw[bad]);
    /* ignored rows: zero gradient, and loss 0 under reduction none */
    int zero = 1;
    for (int i = 0; i < n; ++i)
        if (h->labels[i] == p->ignore_index) {
            for (int k = 0; k < d; ++k)
                zero &= gx[i * d + k] == 0.0;
            if (p->reduction == AMM_REDUCTION_NONE)
                zero &= gl[i] == 0.0;
        }
    check(zero, line, "%s %s: an ignored row has a non-zero grad_embeddings row or loss",
          head_name[d64], what);
    if (!d64) {
        free(gl);
        free(gx);
        free(gw);
    }
    free(rl);
    free(rgx);
    free(rgw);
}

static void test_head_known_values(void)
{
    section = "head: known values";
    head_problem h;
    head_problem_init(&h, 4, 3, 5); /* labels {1, 4, -100, 0} */
    char what[96];
    for (int v = 0; v < NVARIANTS; ++v)
        for (int r = 0; r < 3; ++r) {
            amm_params p;
            variant(&p, v);
            p.reduction = r;
            snprintf(what, sizeof what, "variant %d reduction %d", v, r);
            head_check_against_ref(&h, &p, 1, 1e-12, 1e-11, 1e-12, what, __LINE__);
            head_check_against_ref(&h, &p, 0, 1e-5, 1e-5, 1e-5, what, __LINE__);
        }

    /* ignore_index may be a class index: the rows labelled with it are skipped. */
    {
        amm_params p;
        amm_params_init(&p);
        p.ignore_index = 0;
        p.reduction = AMM_REDUCTION_NONE;
        h.labels[2] = 0; /* rows 2 and 3 now hold label 0 */
        head_check_against_ref(&h, &p, 1, 1e-12, 1e-11, 1e-12, "ignore_index = 0", __LINE__);
        head_check_against_ref(&h, &p, 0, 1e-5, 1e-5, 1e-5, "ignore_index = 0", __LINE__);
        CHECK(h.loss64[2] == 0.0 && h.loss64[3] == 0.0 && h.loss64[0] > 0.0,
              "ignore_index = 0: rows 2 and 3 (label 0) have losses %g and %g, expected 0",
              h.loss64[2], h.loss64[3]);
    }
    head_problem_free(&h);

    /* A wider problem: d and c beyond one vector register, a few ignored rows. */
    head_problem_init(&h, 11, 19, 37);
    for (int r = 0; r < 3; ++r) {
        amm_params p;
        variant(&p, r == 2 ? 3 : 0);
        p.reduction = r;
        snprintf(what, sizeof what, "11 x 19 x 37, reduction %d", r);
        head_check_against_ref(&h, &p, 1, 1e-12, 1e-11, 1e-12, what, __LINE__);
        head_check_against_ref(&h, &p, 0, 1e-5, 1e-5, 1e-5, what, __LINE__);
    }
    head_problem_free(&h);

    /* Normalisation is scale invariant: an embedding row and a weight row multiplied by a huge
       (finite) factor give the same loss, and gradients divided by the factor. */
    section = "head: large norms";
    for (int d64 = 0; d64 < 2; ++d64) {
        head_problem h0, hb;
        head_problem_init(&h0, 4, 3, 5);
        head_problem_init(&hb, 4, 3, 5);
        const double big = d64 ? 0x1p600 : 0x1p70; /* squares overflow the element type */
        for (int k = 0; k < 3; ++k) {
            hb.x64[1 * 3 + k] *= big;
            hb.x32[1 * 3 + k] *= (float)big;
            hb.w64[3 * 3 + k] *= big;
            hb.w32[3 * 3 + k] *= (float)big;
        }
        amm_params p;
        amm_params_init(&p);
        p.reduction = AMM_REDUCTION_NONE;
        head_args a = head_problem_args(&h0, d64, &p);
        head_expect(__LINE__, d64, &a, AMM_OK, NULL, NULL);
        a = head_problem_args(&hb, d64, &p);
        head_expect(__LINE__, d64, &a, AMM_OK, NULL, NULL);
        const double tol = d64 ? 1e-12 : 1e-5;
        int ok = 1;
        for (int i = 0; i < 4; ++i)
            ok &= d64 ? close_to(hb.loss64[i], h0.loss64[i], tol, 0.0)
                      : close_to((double)hb.loss32[i], (double)h0.loss32[i], tol, 0.0);
        CHECK(ok, "%s: a row of norm ~%g changes the loss (row 1: %.9g vs %.9g)",
              head_name[d64], big, d64 ? hb.loss64[1] : (double)hb.loss32[1],
              d64 ? h0.loss64[1] : (double)h0.loss32[1]);
        ok = 1;
        for (int k = 0; k < 3; ++k) {
            double gxb = d64 ? hb.gx64[3 + k] : (double)hb.gx32[3 + k];
            double gx0 = d64 ? h0.gx64[3 + k] : (double)h0.gx32[3 + k];
            double gwb = d64 ? hb.gw64[9 + k] : (double)hb.gw32[9 + k];
            double gw0 = d64 ? h0.gw64[9 + k] : (double)h0.gw32[9 + k];
            ok &= close_to(gxb * big, gx0, 1e3 * tol, 1e-3 * tol) &&
                  close_to(gwb * big, gw0, 1e3 * tol, 1e-3 * tol);
        }
        CHECK(ok, "%s: the gradient of a row of norm ~%g is not the unscaled row's / %g",
              head_name[d64], big, big);
        head_problem_free(&h0);
        head_problem_free(&hb);
    }
}

/* Zero-norm rows, and rows whose norm is below the 1e-12 floor. */
static void test_head_small_norms(void)
{
    section = "head: zero norms";
    head_problem h;
    head_problem_init(&h, 4, 3, 5);
    for (int k = 0; k < 3; ++k) {
        h.x32[0 * 3 + k] = 0.0f; /* embedding row 0: zero */
        h.w32[1 * 3 + k] = 0.0f; /* weight row 1 (the label of row 0): zero */
        h.w32[2 * 3 + k] = (float)(1e-13 * (k + 1)); /* weight row 2: norm 3.7e-13 < 1e-12 */
        h.x32[3 * 3 + k] = (float)(-2e-13 * (k + 2)); /* embedding row 3: norm 1.1e-12 */
    }
    for (int k = 0; k < 4 * 3; ++k)
        h.x64[k] = (double)h.x32[k];
    for (int k = 0; k < 5 * 3; ++k)
        h.w64[k] = (double)h.w32[k];
    for (int r = 0; r < 3; ++r) {
        amm_params p;
        amm_params_init(&p);
        p.reduction = r;
        for (int d64 = 0; d64 < 2; ++d64) {
            head_args a = head_problem_args(&h, d64, &p);
            head_expect(__LINE__, d64, &a, AMM_OK, NULL, NULL);
            const int nl = r == AMM_REDUCTION_NONE ? 4 : 1;
            double *gl = d64 ? h.loss64 : widen(h.loss32, (size_t)nl);
            double *gx = d64 ? h.gx64 : widen(h.gx32, 12);
            double *gw = d64 ? h.gw64 : widen(h.gw32, 15);
            CHECK(all_finite(gl, (size_t)nl) && all_finite(gx, 12) && all_finite(gw, 15),
                  "%s reduction %d: zero-norm rows give a non-finite output", head_name[d64],
                  r);
            if (!d64) {
                free(gl);
                free(gx);
                free(gw);
            }
        }
        char what[64];
        snprintf(what, sizeof what, "zero / tiny norms, reduction %d", r);
        head_check_against_ref(&h, &p, 1, 1e-12, 1e-9, 1e-12, what, __LINE__);
        head_check_against_ref(&h, &p, 0, 1e-5, 1e-5, 1e-5, what, __LINE__);
    }
    head_problem_free(&h);
}

/* head_block_size: any positive value gives the default's results to rounding; -1 is refused;
   a caller of version 0.1 (struct_size 56) gets the default whatever follows its struct. */
static void test_head_block_size(void)
{
    section = "head: block size";
    {
        amm_params p;
        memset(&p, 0xAB, sizeof p);
        amm_params_init(&p);
        CHECK(p.head_block_size == 0, "default head_block_size = %lld",
              (long long)p.head_block_size);
    }
    const int shapes[2][3] = {{6, 4, 11}, {9, 7, 130}};
    const int64_t sizes[] = {0, 1, 2, 3, 5, 16, 100, (int64_t)1 << 40, INT64_MAX};
    const int nsizes = (int)(sizeof sizes / sizeof sizes[0]);
    for (int s = 0; s < 2; ++s) {
        head_problem h;
        head_problem_init(&h, shapes[s][0], shapes[s][1], shapes[s][2]);
        const int n = h.n, d = h.d, c = h.c;
        for (int r = 0; r < 3; ++r) {
            const int nl = r == AMM_REDUCTION_NONE ? n : 1;
            double *l0 = alloc_zero((size_t)n, sizeof(double));
            double *gx0 = alloc_zero((size_t)n * d, sizeof(double));
            double *gw0 = alloc_zero((size_t)c * d, sizeof(double));
            float *l0f = alloc_zero((size_t)n, sizeof(float));
            float *gx0f = alloc_zero((size_t)n * d, sizeof(float));
            float *gw0f = alloc_zero((size_t)c * d, sizeof(float));
            for (int b = 0; b < nsizes; ++b) {
                amm_params p;
                variant(&p, r == 1 ? 4 : 0);
                p.reduction = r;
                p.head_block_size = sizes[b];
                for (int d64 = 0; d64 < 2; ++d64) {
                    head_args a = head_problem_args(&h, d64, &p);
                    head_expect(__LINE__, d64, &a, AMM_OK, NULL, NULL);
                }
                if (b == 0) {
                    memcpy(l0, h.loss64, (size_t)nl * sizeof(double));
                    memcpy(gx0, h.gx64, (size_t)n * d * sizeof(double));
                    memcpy(gw0, h.gw64, (size_t)c * d * sizeof(double));
                    memcpy(l0f, h.loss32, (size_t)nl * sizeof(float));
                    memcpy(gx0f, h.gx32, (size_t)n * d * sizeof(float));
                    memcpy(gw0f, h.gw32, (size_t)c * d * sizeof(float));
                    continue;
                }
                long bl = rows_differ(h.loss64, l0, 1, nl, 1e-12, 0.0);
                long bx = rows_differ(h.gx64, gx0, n, d, 1e-12, 1e-13);
                long bw = rows_differ(h.gw64, gw0, c, d, 1e-12, 1e-13);
                CHECK(bl < 0 && bx < 0 && bw < 0,
                      "f64 %d x %d x %d reduction %d: head_block_size %lld differs from 0 "
                      "(first differences at loss %ld, grad_embeddings %ld, grad_weights %ld)",
                      n, d, c, r, (long long)sizes[b], bl, bx, bw);
                double *wl = widen(h.loss32, (size_t)nl), *wx = widen(h.gx32, (size_t)n * d),
                       *ww = widen(h.gw32, (size_t)c * d);
                double *rl = widen(l0f, (size_t)nl), *rx = widen(gx0f, (size_t)n * d),
                       *rw = widen(gw0f, (size_t)c * d);
                bl = rows_differ(wl, rl, 1, nl, 1e-5, 0.0);
                bx = rows_differ(wx, rx, n, d, 1e-5, 1e-5);
                bw = rows_differ(ww, rw, c, d, 1e-5, 1e-5);
                CHECK(bl < 0 && bx < 0 && bw < 0,
                      "f32 %d x %d x %d reduction %d: head_block_size %lld differs from 0 "
                      "(first differences at loss %ld, grad_embeddings %ld, grad_weights %ld)",
                      n, d, c, r, (long long)sizes[b], bl, bx, bw);
                free(wl); free(wx); free(ww); free(rl); free(rx); free(rw);
            }
            free(l0); free(gx0); free(gw0); free(l0f); free(gx0f); free(gw0f);
        }
        head_problem_free(&h);
    }

    /* Negative: refused, naming the field and its value. */
    section = "head: block size < 0";
    {
        head_problem h;
        head_problem_init(&h, 4, 3, 5);
        const int64_t neg[] = {-1, -7, INT64_MIN};
        const char *const text[] = {"-1", "-7", "-9223372036854775808"};
        for (int k = 0; k < 3; ++k)
            for (int d64 = 0; d64 < 2; ++d64) {
                amm_params p;
                amm_params_init(&p);
                p.head_block_size = neg[k];
                head_args a = head_problem_args(&h, d64, &p);
                head_expect(__LINE__, d64, &a, AMM_ERR_PARAM, "head_block_size", text[k]);
            }
        /* the loss functions do not use the field: any value is accepted there */
        amm_params p;
        amm_params_init(&p);
        p.head_block_size = -1;
        for (int fn = 0; fn < NFN; ++fn) {
            args_t a = fixture_args(fn, &p);
            expect(__LINE__, fn, &a, AMM_OK, NULL, NULL);
        }
        head_problem_free(&h);
    }

    /* A caller compiled against the 0.1 header: its struct ends at ignore_index (56 bytes), so
       the 8 bytes where head_block_size now lives belong to something else. They must not be
       read: head_block_size takes its default 0. */
    section = "head: struct_size 56";
    {
        head_problem h;
        head_problem_init(&h, 9, 7, 130);
        const int n = h.n, d = h.d, c = h.c;
        for (int r = 0; r < 3; ++r) {
            const int nl = r == AMM_REDUCTION_NONE ? n : 1;
            amm_params ref;
            amm_params_init(&ref);
            ref.reduction = r;
            ref.num_threads = 2;
            double *l0 = alloc_zero((size_t)n, sizeof(double));
            double *gx0 = alloc_zero((size_t)n * d, sizeof(double));
            double *gw0 = alloc_zero((size_t)c * d, sizeof(double));
            float *l0f = alloc_zero((size_t)n, sizeof(float));
            float *gx0f = alloc_zero((size_t)n * d, sizeof(float));
            float *gw0f = alloc_zero((size_t)c * d, sizeof(float));
            head_args a = head_problem_args(&h, 1, &ref);
            head_expect(__LINE__, 1, &a, AMM_OK, NULL, NULL);
            a = head_problem_args(&h, 0, &ref);
            head_expect(__LINE__, 0, &a, AMM_OK, NULL, NULL);
            memcpy(l0, h.loss64, (size_t)nl * sizeof(double));
            memcpy(gx0, h.gx64, (size_t)n * d * sizeof(double));
            memcpy(gw0, h.gw64, (size_t)c * d * sizeof(double));
            memcpy(l0f, h.loss32, (size_t)nl * sizeof(float));
            memcpy(gx0f, h.gx32, (size_t)n * d * sizeof(float));
            memcpy(gw0f, h.gw32, (size_t)c * d * sizeof(float));

            const int64_t garbage[] = {-7, 1, 3, -1 /* all bytes 0xFF */};
            for (int g = 0; g < 4; ++g) {
                /* the old caller's 56 bytes, then whatever its memory holds next */
                union {
                    amm_params p;
                    unsigned char bytes[sizeof(amm_params)];
                } old;
                memset(old.bytes, 0x5A, sizeof old.bytes);
                memcpy(old.bytes, &ref, 56);
                old.p.struct_size = 56;
                memcpy(old.bytes + 56, &garbage[g], sizeof garbage[g]);
                a = head_problem_args(&h, 1, &old.p);
                head_expect(__LINE__, 1, &a, AMM_OK, NULL, NULL);
                CHECK(memcmp(h.loss64, l0, (size_t)nl * sizeof(double)) == 0 &&
                          memcmp(h.gx64, gx0, (size_t)n * d * sizeof(double)) == 0 &&
                          memcmp(h.gw64, gw0, (size_t)c * d * sizeof(double)) == 0,
                      "f64 reduction %d: struct_size 56 with %lld after it differs from the "
                      "default head_block_size", r, (long long)garbage[g]);
                a = head_problem_args(&h, 0, &old.p);
                head_expect(__LINE__, 0, &a, AMM_OK, NULL, NULL);
                CHECK(memcmp(h.loss32, l0f, (size_t)nl * sizeof(float)) == 0 &&
                          memcmp(h.gx32, gx0f, (size_t)n * d * sizeof(float)) == 0 &&
                          memcmp(h.gw32, gw0f, (size_t)c * d * sizeof(float)) == 0,
                      "f32 reduction %d: struct_size 56 with %lld after it differs from the "
                      "default head_block_size", r, (long long)garbage[g]);
            }
            free(l0); free(gx0); free(gw0); free(l0f); free(gx0f); free(gw0f);
        }
        head_problem_free(&h);
    }
}

static void test_head_errors(void)
{
    section = "head: null pointers";
    head_problem h;
    head_problem_init(&h, 4, 3, 5); /* labels {1, 4, -100, 0} */
    amm_params p;
    amm_params_init(&p);
    for (int d64 = 0; d64 < 2; ++d64) {
        head_args a = head_problem_args(&h, d64, &p);
        a.p = NULL;
        head_expect(__LINE__, d64, &a, AMM_ERR_NULL_POINTER, "params", NULL);
        a = head_problem_args(&h, d64, &p);
        a.emb = NULL;
        head_expect(__LINE__, d64, &a, AMM_ERR_NULL_POINTER, "embeddings", NULL);
        a = head_problem_args(&h, d64, &p);
        a.w = NULL;
        head_expect(__LINE__, d64, &a, AMM_ERR_NULL_POINTER, "weights", NULL);
        a = head_problem_args(&h, d64, &p);
        a.labels = NULL;
        head_expect(__LINE__, d64, &a, AMM_ERR_NULL_POINTER, "labels", NULL);
        a = head_problem_args(&h, d64, &p);
        a.loss = NULL;
        head_expect(__LINE__, d64, &a, AMM_ERR_NULL_POINTER, "loss", NULL);
        a = head_problem_args(&h, d64, &p);
        a.gemb = NULL;
        head_expect(__LINE__, d64, &a, AMM_ERR_NULL_POINTER, "grad_embeddings", NULL);
        a = head_problem_args(&h, d64, &p);
        a.gw = NULL;
        head_expect(__LINE__, d64, &a, AMM_ERR_NULL_POINTER, "grad_weights", NULL);
    }

    /* n == 0: embeddings, labels and grad_embeddings hold no value and may be NULL (and loss,
       for reduction none); weights and grad_weights still hold c x d values. */
    section = "head: n == 0";
    for (int d64 = 0; d64 < 2; ++d64)
        for (int r = 0; r < 3; ++r) {
            amm_params pr;
            amm_params_init(&pr);
            pr.reduction = r;
            head_args a = head_problem_args(&h, d64, &pr);
            a.n = 0;
            a.emb = NULL;
            a.labels = NULL;
            a.gemb = NULL;
            if (r == AMM_REDUCTION_NONE)
                a.loss = NULL;
            h.loss64[0] = 123.0;
            h.loss32[0] = 123.0f;
            for (int k = 0; k < 15; ++k) {
                h.gw64[k] = 5.0;
                h.gw32[k] = 5.0f;
            }
            head_expect(__LINE__, d64, &a, AMM_OK, NULL, NULL);
            if (r != AMM_REDUCTION_NONE)
                CHECK(d64 ? h.loss64[0] == 0.0 : h.loss32[0] == 0.0f,
                      "%s: the loss of an empty batch (reduction %d) is %g, expected 0",
                      head_name[d64], r, d64 ? h.loss64[0] : (double)h.loss32[0]);
            int zero = 1;
            for (int k = 0; k < 15; ++k)
                zero &= d64 ? h.gw64[k] == 0.0 : h.gw32[k] == 0.0f;
            CHECK(zero, "%s reduction %d: grad_weights of an empty batch is not all zero",
                  head_name[d64], r);
            if (r != AMM_REDUCTION_NONE) {
                a.loss = NULL;
                head_expect(__LINE__, d64, &a, AMM_ERR_NULL_POINTER, "loss", NULL);
            }
            a = head_problem_args(&h, d64, &pr);
            a.n = 0;
            a.w = NULL;
            head_expect(__LINE__, d64, &a, AMM_ERR_NULL_POINTER, "weights", NULL);
            a = head_problem_args(&h, d64, &pr);
            a.n = 0;
            a.gw = NULL;
            head_expect(__LINE__, d64, &a, AMM_ERR_NULL_POINTER, "grad_weights", NULL);
        }

    section = "head: shape";
    for (int d64 = 0; d64 < 2; ++d64) {
        head_args a = head_problem_args(&h, d64, &p);
        a.d = 0;
        head_expect(__LINE__, d64, &a, AMM_ERR_SHAPE, "d", NULL);
        a.d = -2;
        head_expect(__LINE__, d64, &a, AMM_ERR_SHAPE, "d", "-2");
        a = head_problem_args(&h, d64, &p);
        a.c = 0;
        head_expect(__LINE__, d64, &a, AMM_ERR_SHAPE, "c", NULL);
        a.n = 0; /* c >= 1 even for an empty batch */
        head_expect(__LINE__, d64, &a, AMM_ERR_SHAPE, "c", NULL);
        a = head_problem_args(&h, d64, &p);
        a.n = -1;
        head_expect(__LINE__, d64, &a, AMM_ERR_SHAPE, "n", "-1");
        /* each at most INT32_MAX; the check comes before any pointer is read */
        a = head_problem_args(&h, d64, &p);
        a.n = (int64_t)INT32_MAX + 1;
        head_expect(__LINE__, d64, &a, AMM_ERR_SHAPE, "n", "2147483648");
        a = head_problem_args(&h, d64, &p);
        a.d = (int64_t)INT32_MAX + 1;
        head_expect(__LINE__, d64, &a, AMM_ERR_SHAPE, "d", "2147483648");
        a = head_problem_args(&h, d64, &p);
        a.c = (int64_t)INT32_MAX + 1;
        head_expect(__LINE__, d64, &a, AMM_ERR_SHAPE, "c", "2147483648");
        a = head_problem_args(&h, d64, &p);
        a.n = (int64_t)1 << 40;
        a.c = (int64_t)1 << 40;
        head_expect(__LINE__, d64, &a, AMM_ERR_SHAPE, NULL, NULL);
    }

    /* Validation order: params, shape, pointers, labels, then the values. */
    section = "head: validation order";
    {
        const int64_t bad_labels[4] = {1, 9, -100, 0};
        for (int d64 = 0; d64 < 2; ++d64) {
            amm_params pb;
            amm_params_init(&pb);
            pb.scale = -1.0;
            head_args a = head_problem_args(&h, d64, &pb);
            a.d = 0;
            head_expect(__LINE__, d64, &a, AMM_ERR_PARAM, "scale", NULL);
            a = head_problem_args(&h, d64, &p);
            a.d = 0;
            a.emb = NULL;
            head_expect(__LINE__, d64, &a, AMM_ERR_SHAPE, "d", NULL);
            a = head_problem_args(&h, d64, &p);
            a.labels = bad_labels;
            a.gw = NULL;
            head_expect(__LINE__, d64, &a, AMM_ERR_NULL_POINTER, "grad_weights", NULL);
            a = head_problem_args(&h, d64, &p);
            a.labels = bad_labels;
            head_expect(__LINE__, d64, &a, AMM_ERR_LABEL, NULL, "labels[1] = 9");
        }
    }

    section = "head: labels";
    {
        const int64_t bad5[4] = {1, 4, -100, 5};
        const int64_t bad_neg[4] = {-1, 4, -100, 0};
        const int64_t bad_two[4] = {1, 4, 100, 7}; /* two bad rows: the first is named */
        for (int d64 = 0; d64 < 2; ++d64) {
            head_args a = head_problem_args(&h, d64, &p);
            a.labels = bad5;
            head_expect(__LINE__, d64, &a, AMM_ERR_LABEL, NULL, "labels[3] = 5");
            a.labels = bad_neg;
            head_expect(__LINE__, d64, &a, AMM_ERR_LABEL, NULL, "labels[0] = -1");
            a.labels = bad_two;
            head_expect(__LINE__, d64, &a, AMM_ERR_LABEL, NULL, "labels[2] = 100");
        }
    }

    section = "head: nonfinite";
    {
        struct {
            int in_weights, row, col;
            double value;
            const char *where;
        } cases[] = {{0, 1, 2, NAN, "embeddings[1, 2]"},
                     {0, 3, 0, INFINITY, "embeddings[3, 0]"},
                     {0, 0, 1, -INFINITY, "embeddings[0, 1]"},
                     {1, 4, 1, INFINITY, "weights[4, 1]"},
                     {1, 0, 2, NAN, "weights[0, 2]"},
                     {1, 3, 0, -INFINITY, "weights[3, 0]"}, /* class 3: no row's label */
                     {1, 2, 1, NAN, "weights[2, 1]"}};      /* class 2: no row's label */
        for (size_t k = 0; k < sizeof cases / sizeof cases[0]; ++k) {
            head_problem hb;
            head_problem_init(&hb, 4, 3, 5);
            const int at = cases[k].row * 3 + cases[k].col;
            if (cases[k].in_weights) {
                hb.w32[at] = (float)cases[k].value;
                hb.w64[at] = cases[k].value;
            } else {
                hb.x32[at] = (float)cases[k].value;
                hb.x64[at] = cases[k].value;
            }
            for (int d64 = 0; d64 < 2; ++d64)
                for (int r = 0; r < 3; ++r) {
                    amm_params pr;
                    amm_params_init(&pr);
                    pr.reduction = r;
                    head_args a = head_problem_args(&hb, d64, &pr);
                    head_expect(__LINE__, d64, &a, AMM_ERR_NONFINITE, NULL, cases[k].where);
                }
            head_problem_free(&hb);
        }
    }

    /* NaN and infinity in the embeddings of an ignored row (row 2) are fine and change
       nothing; its gradient row is zero. */
    section = "head: nonfinite in an ignored row";
    for (int r = 0; r < 3; ++r) {
        head_problem hb;
        head_problem_init(&hb, 4, 3, 5);
        hb.x32[2 * 3 + 0] = NAN;
        hb.x64[2 * 3 + 0] = NAN;
        hb.x32[2 * 3 + 2] = INFINITY;
        hb.x64[2 * 3 + 2] = -INFINITY;
        amm_params pr;
        amm_params_init(&pr);
        pr.reduction = r;
        const int nl = r == AMM_REDUCTION_NONE ? 4 : 1;
        for (int d64 = 0; d64 < 2; ++d64) {
            head_args a = head_problem_args(&h, d64, &pr);
            head_expect(__LINE__, d64, &a, AMM_OK, NULL, NULL);
            a = head_problem_args(&hb, d64, &pr);
            head_expect(__LINE__, d64, &a, AMM_OK, NULL, NULL);
            double *l0 = d64 ? h.loss64 : widen(h.loss32, (size_t)nl);
            double *x0 = d64 ? h.gx64 : widen(h.gx32, 12);
            double *w0 = d64 ? h.gw64 : widen(h.gw32, 15);
            double *l1 = d64 ? hb.loss64 : widen(hb.loss32, (size_t)nl);
            double *x1 = d64 ? hb.gx64 : widen(hb.gx32, 12);
            double *w1 = d64 ? hb.gw64 : widen(hb.gw32, 15);
            CHECK(all_finite(l1, (size_t)nl) && all_finite(x1, 12) && all_finite(w1, 15),
                  "%s reduction %d: NaN in an ignored row's embeddings gives a non-finite "
                  "output", head_name[d64], r);
            CHECK(rows_differ(l1, l0, 1, nl, 1e-12, 0.0) < 0 &&
                      rows_differ(x1, x0, 4, 3, 1e-12, 1e-13) < 0 &&
                      rows_differ(w1, w0, 5, 3, 1e-12, 1e-13) < 0,
                  "%s reduction %d: NaN in an ignored row's embeddings changed the results",
                  head_name[d64], r);
            CHECK(x1[6] == 0.0 && x1[7] == 0.0 && x1[8] == 0.0,
                  "%s reduction %d: the ignored row's grad_embeddings is {%g, %g, %g}",
                  head_name[d64], r, x1[6], x1[7], x1[8]);
            if (!d64) {
                free(l0); free(x0); free(w0); free(l1); free(x1); free(w1);
            }
        }
        head_problem_free(&hb);
    }

    /* Several rows with a NaN: the lowest row is named, whatever num_threads is. */
    section = "head: nonfinite, lowest row";
    {
        head_problem hb;
        head_problem_init(&hb, 9, 7, 130);
        const int bad[][2] = {{8, 1}, {3, 6}, {6, 0}};
        for (size_t k = 0; k < sizeof bad / sizeof bad[0]; ++k) {
            hb.x32[bad[k][0] * 7 + bad[k][1]] = NAN;
            hb.x64[bad[k][0] * 7 + bad[k][1]] = NAN;
        }
        const int threads[] = {1, 2, 4, 0};
        for (size_t t = 0; t < sizeof threads / sizeof threads[0]; ++t)
            for (int d64 = 0; d64 < 2; ++d64) {
                amm_params pt;
                amm_params_init(&pt);
                pt.num_threads = threads[t];
                pt.head_block_size = 32;
                head_args a = head_problem_args(&hb, d64, &pt);
                head_expect(__LINE__, d64, &a, AMM_ERR_NONFINITE, NULL, "embeddings[3, 6]");
            }
        head_problem_free(&hb);
    }

    /* Overflowing logits are reported as by the loss functions on the same cosines. */
    section = "head: overflow";
    {
        amm_params po;
        amm_params_init(&po);
        po.scale = 1e38;
        po.target = AMM_TARGET_COS;
        po.margin = 5.0; /* every negative is hard ... */
        po.hard = AMM_HARD_MV_ADAPTIVE;
        po.hard_margin = 5.0; /* ... with g = 6 c + 5: s * g is beyond FLT_MAX */
        args_t b = fixture_args(FB32, &po);
        expect(__LINE__, FB32, &b, AMM_ERR_OVERFLOW, NULL, NULL);
        head_args a = head_problem_args(&h, 0, &po);
        head_expect(__LINE__, 0, &a, AMM_ERR_OVERFLOW, NULL, NULL);
        a = head_problem_args(&h, 1, &po);
        head_expect(__LINE__, 1, &a, AMM_OK, NULL, NULL);
    }
    head_problem_free(&h);
}

/* Results are bitwise the same for every num_threads (which also sets OpenBLAS's thread count,
   a process-wide setting: these calls are made one at a time). */
static void test_head_threads(void)
{
    section = "head: num_threads";
    head_problem h;
    head_problem_init(&h, 9, 7, 130);
    const int n = h.n, d = h.d, c = h.c;
    const int threads[] = {1, 2, 4, 0, 3};
    const int nt = (int)(sizeof threads / sizeof threads[0]);
    for (int r = 0; r < 3; ++r) {
        const int nl = r == AMM_REDUCTION_NONE ? n : 1;
        double *l0 = alloc_zero((size_t)n, sizeof(double));
        double *gx0 = alloc_zero((size_t)n * d, sizeof(double));
        double *gw0 = alloc_zero((size_t)c * d, sizeof(double));
        float *l0f = alloc_zero((size_t)n, sizeof(float));
        float *gx0f = alloc_zero((size_t)n * d, sizeof(float));
        float *gw0f = alloc_zero((size_t)c * d, sizeof(float));
        for (int t = 0; t < nt; ++t) {
            amm_params p;
            variant(&p, r == 2 ? 3 : 0);
            p.reduction = r;
            p.num_threads = threads[t];
            p.head_block_size = 32;
            head_args a = head_problem_args(&h, 1, &p);
            head_expect(__LINE__, 1, &a, AMM_OK, NULL, NULL);
            a = head_problem_args(&h, 0, &p);
            head_expect(__LINE__, 0, &a, AMM_OK, NULL, NULL);
            if (t == 0) {
                memcpy(l0, h.loss64, (size_t)nl * sizeof(double));
                memcpy(gx0, h.gx64, (size_t)n * d * sizeof(double));
                memcpy(gw0, h.gw64, (size_t)c * d * sizeof(double));
                memcpy(l0f, h.loss32, (size_t)nl * sizeof(float));
                memcpy(gx0f, h.gx32, (size_t)n * d * sizeof(float));
                memcpy(gw0f, h.gw32, (size_t)c * d * sizeof(float));
                continue;
            }
            CHECK(memcmp(h.loss64, l0, (size_t)nl * sizeof(double)) == 0,
                  "f64 reduction %d: the loss with num_threads %d differs from num_threads 1",
                  r, threads[t]);
            CHECK(memcmp(h.gx64, gx0, (size_t)n * d * sizeof(double)) == 0 &&
                      memcmp(h.gw64, gw0, (size_t)c * d * sizeof(double)) == 0,
                  "f64 reduction %d: the gradients with num_threads %d differ from "
                  "num_threads 1", r, threads[t]);
            CHECK(memcmp(h.loss32, l0f, (size_t)nl * sizeof(float)) == 0,
                  "f32 reduction %d: the loss with num_threads %d differs from num_threads 1",
                  r, threads[t]);
            CHECK(memcmp(h.gx32, gx0f, (size_t)n * d * sizeof(float)) == 0 &&
                      memcmp(h.gw32, gw0f, (size_t)c * d * sizeof(float)) == 0,
                  "f32 reduction %d: the gradients with num_threads %d differ from "
                  "num_threads 1", r, threads[t]);
        }
        free(l0); free(gx0); free(gw0); free(l0f); free(gx0f); free(gw0f);
    }
    head_problem_free(&h);
}

/* ---------------------------------------------------------------------------------------------
 * Sharding by class (since 0.3): amm_shard_*
 *
 * The three phases on cosine logits and through the head, in both precisions, behind one
 * dispatcher; a simulation of P ranks in this process, whose collectives are plain loops over
 * the shards (sum, max, rescale, sum; in rank order); and the checks: validation, P = 1 against
 * the unsharded functions, P = 3 and other tilings against them, shards without classes,
 * amm_shard_rescale_sums.
 * ------------------------------------------------------------------------------------------- */

enum { PH_TARGET, PH_STATS, PH_GRAD };
static const char *const shard_fn_name[2][3][2] = {
    {{"amm_shard_target_f32", "amm_shard_target_f64"},
     {"amm_shard_statistics_f32", "amm_shard_statistics_f64"},
     {"amm_shard_gradient_f32", "amm_shard_gradient_f64"}},
    {{"amm_shard_head_target_f32", "amm_shard_head_target_f64"},
     {"amm_shard_head_statistics_f32", "amm_shard_head_statistics_f64"},
     {"amm_shard_head_gradient_f32", "amm_shard_head_gradient_f64"}}};

typedef struct {
    const amm_params *p;
    int head, d64;              /* the head or cosine logits; double or float elements */
    const void *cos;            /* cosine logits: n x c_local, this shard's columns */
    const void *emb, *w;        /* head: embeddings n x d, this shard's weights c_local x d */
    int64_t n, d, c_local, class_start, c_total;
    const int64_t *labels;
    double *target_cos;         /* written by phase 1, read by phases 2 and 3 */
    double *row_max, *row_sum;  /* phase 2 */
    const double *global_max, *global_sum; /* phase 3 */
    const void *grad_loss;      /* phase 3 on cosine logits; NULL: upstream gradient 1 */
    void *loss;                 /* phase 3 */
    void *grad;                 /* phase 3: grad_cos (n x c_local) or grad_embeddings (n x d) */
    void *gw;                   /* phase 3 of the head: grad_weights, c_local x d */
} shard_args;

static int shard_dispatch(int phase, const shard_args *a)
{
    const amm_params *p = a->p;
    if (!a->head && a->d64) {
        const double *cos = a->cos;
        if (phase == PH_TARGET)
            return amm_shard_target_f64(p, cos, a->n, a->c_local, a->class_start, a->c_total,
                                        a->labels, a->target_cos);
        if (phase == PH_STATS)
            return amm_shard_statistics_f64(p, cos, a->n, a->c_local, a->class_start,
                                            a->c_total, a->labels, a->target_cos, a->row_max,
                                            a->row_sum);
        return amm_shard_gradient_f64(p, cos, a->n, a->c_local, a->class_start, a->c_total,
                                      a->labels, a->target_cos, a->global_max, a->global_sum,
                                      (const double *)a->grad_loss, (double *)a->loss,
                                      (double *)a->grad);
    }
    if (!a->head) {
        const float *cos = a->cos;
        if (phase == PH_TARGET)
            return amm_shard_target_f32(p, cos, a->n, a->c_local, a->class_start, a->c_total,
                                        a->labels, a->target_cos);
        if (phase == PH_STATS)
            return amm_shard_statistics_f32(p, cos, a->n, a->c_local, a->class_start,
                                            a->c_total, a->labels, a->target_cos, a->row_max,
                                            a->row_sum);
        return amm_shard_gradient_f32(p, cos, a->n, a->c_local, a->class_start, a->c_total,
                                      a->labels, a->target_cos, a->global_max, a->global_sum,
                                      (const float *)a->grad_loss, (float *)a->loss,
                                      (float *)a->grad);
    }
    if (a->d64) {
        const double *x = a->emb, *w = a->w;
        if (phase == PH_TARGET)
            return amm_shard_head_target_f64(p, x, w, a->n, a->d, a->c_local, a->class_start,
                                             a->c_total, a->labels, a->target_cos);
        if (phase == PH_STATS)
            return amm_shard_head_statistics_f64(p, x, w, a->n, a->d, a->c_local,
                                                 a->class_start, a->c_total, a->labels,
                                                 a->target_cos, a->row_max, a->row_sum);
        return amm_shard_head_gradient_f64(p, x, w, a->n, a->d, a->c_local, a->class_start,
                                           a->c_total, a->labels, a->target_cos, a->global_max,
                                           a->global_sum, (double *)a->loss, (double *)a->grad,
                                           (double *)a->gw);
    }
    const float *x = a->emb, *w = a->w;
    if (phase == PH_TARGET)
        return amm_shard_head_target_f32(p, x, w, a->n, a->d, a->c_local, a->class_start,
                                         a->c_total, a->labels, a->target_cos);
    if (phase == PH_STATS)
        return amm_shard_head_statistics_f32(p, x, w, a->n, a->d, a->c_local, a->class_start,
                                             a->c_total, a->labels, a->target_cos, a->row_max,
                                             a->row_sum);
    return amm_shard_head_gradient_f32(p, x, w, a->n, a->d, a->c_local, a->class_start,
                                       a->c_total, a->labels, a->target_cos, a->global_max,
                                       a->global_sum, (float *)a->loss, (float *)a->grad,
                                       (float *)a->gw);
}

static const char *shard_name(int phase, const shard_args *a)
{
    return shard_fn_name[a->head][phase][a->d64];
}

/* A copy of `bytes` bytes at `src` (NULL when there is nothing to copy). */
static void *copy_of(const void *src, size_t bytes)
{
    if (src == NULL || bytes == 0)
        return NULL;
    void *dst = malloc(bytes);
    memcpy(dst, src, bytes);
    return dst;
}

static int same_bytes(const void *copy, const void *now, size_t bytes)
{
    return copy == NULL || memcmp(copy, now, bytes) == 0;
}

/* Calls a phase and checks that it wrote none of its inputs: params (every byte), cos or the
   embeddings and weights, labels, and what the phase reads of target_cos, global_max,
   global_sum and grad_loss. */
static int shard_run(int phase, const shard_args *a, int line)
{
    const size_t es = a->d64 ? sizeof(double) : sizeof(float);
    /* Only the buffers a valid shard addresses are copied (a refused shard may name more
       columns than the fixture holds). */
    const int sane = a->n >= 0 && a->n <= 4096 && a->c_local >= 0 && a->c_local <= 4096 &&
                     a->d >= 0 && a->d <= 4096 && a->class_start >= 0 &&
                     a->c_local <= a->c_total - a->class_start;
    const size_t n = sane ? (size_t)a->n : 0, cl = sane ? (size_t)a->c_local : 0;
    const size_t d = sane ? (size_t)a->d : 0;
    size_t ngl = 0;
    if (a->p != NULL)
        ngl = a->p->reduction == AMM_REDUCTION_NONE ? n : 1;
    void *p_copy = copy_of(a->p, sizeof(amm_params));
    void *cos_copy = a->head ? NULL : copy_of(a->cos, n * cl * es);
    void *x_copy = a->head ? copy_of(a->emb, n * d * es) : NULL;
    void *w_copy = a->head ? copy_of(a->w, cl * d * es) : NULL;
    void *l_copy = copy_of(a->labels, n * sizeof(int64_t));
    void *t_copy = phase != PH_TARGET ? copy_of(a->target_cos, n * sizeof(double)) : NULL;
    void *gm_copy = phase == PH_GRAD ? copy_of(a->global_max, n * sizeof(double)) : NULL;
    void *gs_copy = phase == PH_GRAD ? copy_of(a->global_sum, n * sizeof(double)) : NULL;
    void *gl_copy = phase == PH_GRAD && !a->head ? copy_of(a->grad_loss, ngl * es) : NULL;

    int status = shard_dispatch(phase, a);

    int unchanged = same_bytes(p_copy, a->p, sizeof(amm_params)) &&
                    same_bytes(cos_copy, a->cos, n * cl * es) &&
                    same_bytes(x_copy, a->emb, n * d * es) &&
                    same_bytes(w_copy, a->w, cl * d * es) &&
                    same_bytes(l_copy, a->labels, n * sizeof(int64_t)) &&
                    same_bytes(t_copy, a->target_cos, n * sizeof(double)) &&
                    same_bytes(gm_copy, a->global_max, n * sizeof(double)) &&
                    same_bytes(gs_copy, a->global_sum, n * sizeof(double)) &&
                    same_bytes(gl_copy, a->grad_loss, ngl * es);
    check(unchanged, line, "%s wrote one of its inputs", shard_name(phase, a));
    free(p_copy); free(cos_copy); free(x_copy); free(w_copy); free(l_copy); free(t_copy);
    free(gm_copy); free(gs_copy); free(gl_copy);
    return status;
}

static void shard_expect(int line, int phase, const shard_args *a, int want, const char *word,
                         const char *text)
{
    expect_status(line, shard_name(phase, a), shard_run(phase, a, line), want, word, text);
}

/* ------------------------------------------------------------------------------------------- */

/* A sharded problem: the full inputs (cosines n x c, or embeddings n x d and weights c x d, in
   both precisions, the f64 values equal to the f32 ones) and a tiling of [0, c) into shards. */
#define MAX_SHARDS 8
typedef struct {
    int head, d64;
    int64_t n, d, c;
    const void *cos;             /* n x c (cosine logits) */
    const void *emb, *w;         /* n x d, c x d (head) */
    const int64_t *labels;
    int shards;
    int64_t start[MAX_SHARDS], count[MAX_SHARDS];
} sharded;

/* PartialFC's split of c classes over P shards, as the header states it. */
static void partialfc(sharded *s, int P)
{
    s->shards = P;
    for (int r = 0; r < P; ++r) {
        s->count[r] = s->c / P + (r < s->c % P ? 1 : 0);
        s->start[r] = r * (s->c / P) + (r < s->c % P ? r : s->c % P);
    }
}

/* The outputs of a simulated sharded call: the loss of shard 0 (and whether every shard's was
   the same, bit for bit), the gradient assembled over the shards (n x c for cosine logits; for
   the head, grad_embeddings summed over the shards in rank order and grad_weights c x d), and
   the hard-negative counts summed over the shards. */
typedef struct {
    double loss[64];
    int loss_same;
    double *grad;    /* n x c or n x d */
    double *gw;      /* c x d (head) */
    int64_t counts[64];
    int status;      /* the first failure, AMM_OK if none */
} sharded_result;

static double elem(const void *v, int d64, size_t k)
{
    return d64 ? ((const double *)v)[k] : (double)((const float *)v)[k];
}

/* Runs the protocol over the shards of s with parameters *p (p->hard_negatives is ignored:
   the counts are asked for in phase 2 and summed), the collectives done by loops: A sums
   target_cos; B takes the max of row_max; each shard's row_sum is rescaled with
   amm_shard_rescale_sums, then C sums them; D sums the counts; E sums grad_embeddings. For
   cosine logits, grad_loss (NULL: 1) is the upstream gradient of phase 3. n <= 64. */
static void simulate(const sharded *s, const amm_params *p, const void *grad_loss,
                     sharded_result *out, int line)
{
    const int64_t n = s->n, d = s->d, c = s->c;
    const int d64 = s->d64;
    const size_t es = d64 ? sizeof(double) : sizeof(float);
    const int64_t nl = p->reduction == AMM_REDUCTION_NONE ? n : 1;
    double target[64] = {0}, gmax[64], gsum[64] = {0};
    double tpart[MAX_SHARDS][64], rmax[MAX_SHARDS][64], rsum[MAX_SHARDS][64];
    int64_t cpart[MAX_SHARDS][64];
    void *cos_part[MAX_SHARDS] = {0};
    out->status = AMM_OK;
    out->loss_same = 1;
    out->grad = alloc_zero((size_t)(n * (s->head ? d : c)), sizeof(double));
    out->gw = s->head ? alloc_zero((size_t)(c * d), sizeof(double)) : NULL;
    memset(out->counts, 0, sizeof out->counts);

    amm_params counted = *p, plain = *p;
    plain.hard_negatives = NULL;
    shard_args a[MAX_SHARDS];
    for (int r = 0; r < s->shards; ++r) {
        const int64_t cl = s->count[r], start = s->start[r];
        memset(&a[r], 0, sizeof a[r]);
        a[r].p = &plain;
        a[r].head = s->head;
        a[r].d64 = d64;
        a[r].n = n;
        a[r].d = d;
        a[r].c_local = cl;
        a[r].class_start = start;
        a[r].c_total = c;
        a[r].labels = s->labels;
        if (s->head) {
            a[r].emb = s->emb;
            a[r].w = (const char *)s->w + (size_t)(start * d) * es;
        } else { /* this shard's columns, as a dense n x c_local matrix */
            cos_part[r] = alloc_zero((size_t)(n * cl), es);
            for (int64_t i = 0; i < n; ++i)
                memcpy((char *)cos_part[r] + (size_t)(i * cl) * es,
                       (const char *)s->cos + (size_t)(i * c + start) * es, (size_t)cl * es);
            a[r].cos = cos_part[r];
        }
    }
    /* Phase 1 and A. */
    for (int r = 0; r < s->shards && out->status == AMM_OK; ++r) {
        a[r].target_cos = tpart[r];
        out->status = shard_run(PH_TARGET, &a[r], line);
    }
    for (int r = 0; r < s->shards && out->status == AMM_OK; ++r)
        for (int64_t i = 0; i < n; ++i)
            target[i] += tpart[r][i];
    /* Phase 2, B, the rescale, C and D. */
    for (int r = 0; r < s->shards && out->status == AMM_OK; ++r) {
        a[r].target_cos = target;
        a[r].row_max = rmax[r];
        a[r].row_sum = rsum[r];
        counted.hard_negatives = cpart[r];
        a[r].p = &counted;
        out->status = shard_run(PH_STATS, &a[r], line);
        a[r].p = &plain;
    }
    for (int64_t i = 0; i < n && out->status == AMM_OK; ++i) {
        gmax[i] = -INFINITY;
        for (int r = 0; r < s->shards; ++r)
            gmax[i] = rmax[r][i] > gmax[i] ? rmax[r][i] : gmax[i];
    }
    for (int r = 0; r < s->shards && out->status == AMM_OK; ++r)
        out->status = amm_shard_rescale_sums(n, rmax[r], gmax, rsum[r]);
    for (int r = 0; r < s->shards && out->status == AMM_OK; ++r)
        for (int64_t i = 0; i < n; ++i) {
            gsum[i] += rsum[r][i];
            out->counts[i] += cpart[r][i];
        }
    /* Phase 3 and E. */
    for (int r = 0; r < s->shards && out->status == AMM_OK; ++r) {
        const int64_t cl = s->count[r], start = s->start[r];
        void *loss = alloc_zero((size_t)n, es);
        void *grad = alloc_zero((size_t)(n * (s->head ? d : cl)), es);
        void *gw = s->head ? alloc_zero((size_t)(cl * d), es) : NULL;
        a[r].global_max = gmax;
        a[r].global_sum = gsum;
        a[r].grad_loss = grad_loss;
        a[r].loss = loss;
        a[r].grad = grad;
        a[r].gw = gw;
        out->status = shard_run(PH_GRAD, &a[r], line);
        if (out->status == AMM_OK) {
            for (int64_t k = 0; k < nl; ++k) {
                if (r == 0)
                    out->loss[k] = elem(loss, d64, (size_t)k);
                else if (memcmp(&out->loss[k], &(double){elem(loss, d64, (size_t)k)},
                                sizeof(double)) != 0)
                    out->loss_same = 0;
            }
            if (s->head) {
                for (int64_t k = 0; k < n * d; ++k)
                    out->grad[k] += elem(grad, d64, (size_t)k);
                for (int64_t k = 0; k < cl * d; ++k)
                    out->gw[start * d + k] = elem(gw, d64, (size_t)k);
            } else {
                for (int64_t i = 0; i < n; ++i)
                    for (int64_t j = 0; j < cl; ++j)
                        out->grad[i * c + start + j] = elem(grad, d64, (size_t)(i * cl + j));
            }
        }
        free(loss); free(grad); free(gw);
    }
    for (int r = 0; r < s->shards; ++r)
        free(cos_part[r]);
    check(out->status == AMM_OK, line, "simulated sharded call (%s, %d shards): %s: %s",
          shard_fn_name[s->head][0][d64], s->shards, amm_status_name(out->status),
          amm_last_error());
}

static void sharded_result_free(sharded_result *r)
{
    free(r->grad);
    free(r->gw);
}

/* The largest |got - want| / (the largest |want| of its row), over rows x cols values (the
   entries that cancel to nearly zero are not divided by themselves); a NaN is infinite. */
static double row_relative_error(const double *got, const double *want, int64_t rows,
                                 int64_t cols)
{
    double worst = 0.0;
    for (int64_t i = 0; i < rows; ++i) {
        double scale = max_abs(want + i * cols, (size_t)cols);
        for (int64_t k = 0; k < cols; ++k) {
            double diff = fabs(got[i * cols + k] - want[i * cols + k]);
            double e = scale > 0.0 ? diff / scale : diff;
            if (!(e <= worst))
                worst = isnan(e) ? INFINITY : e;
        }
    }
    return worst;
}

/* The unsharded result of the same problem, in double: amm_forward_backward_f64 (or, with an
   upstream gradient, amm_forward_f64 and amm_backward_f64) or amm_head_forward_backward_f64,
   with the counts. */
typedef struct {
    double loss[64];
    double *grad, *gw;
    int64_t counts[64];
} unsharded_result;

static void unsharded(const sharded *s, const amm_params *p, const void *grad_loss,
                      unsharded_result *out, int line)
{
    const int64_t n = s->n, d = s->d, c = s->c;
    const size_t ng = (size_t)(n * (s->head ? d : c));
    amm_params q = *p;
    q.hard_negatives = out->counts;
    out->grad = alloc_zero(ng, sizeof(double));
    out->gw = s->head ? alloc_zero((size_t)(c * d), sizeof(double)) : NULL;
    int st;
    if (s->d64) {
        if (s->head)
            st = amm_head_forward_backward_f64(&q, s->emb, s->w, n, d, c, s->labels, out->loss,
                                               out->grad, out->gw);
        else if (grad_loss == NULL)
            st = amm_forward_backward_f64(&q, s->cos, n, c, s->labels, out->loss, out->grad);
        else {
            st = amm_forward_f64(&q, s->cos, n, c, s->labels, out->loss);
            if (st == AMM_OK)
                st = amm_backward_f64(&q, s->cos, n, c, s->labels, grad_loss, out->grad);
        }
    } else {
        float loss[64];
        float *grad = alloc_zero(ng, sizeof(float));
        float *gw = s->head ? alloc_zero((size_t)(c * d), sizeof(float)) : NULL;
        if (s->head)
            st = amm_head_forward_backward_f32(&q, s->emb, s->w, n, d, c, s->labels, loss, grad,
                                               gw);
        else if (grad_loss == NULL)
            st = amm_forward_backward_f32(&q, s->cos, n, c, s->labels, loss, grad);
        else {
            st = amm_forward_f32(&q, s->cos, n, c, s->labels, loss);
            if (st == AMM_OK)
                st = amm_backward_f32(&q, s->cos, n, c, s->labels, grad_loss, grad);
        }
        for (int64_t k = 0; k < n; ++k)
            out->loss[k] = loss[k];
        for (size_t k = 0; k < ng; ++k)
            out->grad[k] = grad[k];
        for (int64_t k = 0; s->head && k < c * d; ++k)
            out->gw[k] = gw[k];
        free(grad);
        free(gw);
    }
    check(st == AMM_OK, line, "the unsharded call: %s: %s", amm_status_name(st),
          amm_last_error());
}

static void unsharded_result_free(unsharded_result *r)
{
    free(r->grad);
    free(r->gw);
}

/* The tolerance of the comparisons with the unsharded result, relative to the largest value of
   each row: f64 1e-12; f32 1e-5 on cosine logits, and 1e-4 for the head, whose products and
   embedding gradients are sums in single precision, formed shard by shard. */
static double shard_tol(const sharded *s)
{
    return s->d64 ? 1e-12 : s->head ? 1e-4 : 1e-5;
}

/* Largest errors seen against the unsharded results (f64), printed at the end of the section. */
static double shard_err_cos, shard_err_head;

/* Simulates s and compares with the unsharded call: the counts exactly, every shard's loss
   identical; with exact, every bit of the loss and gradients, else each value within `tol` of
   the unsharded one, relative to the largest magnitude of its row. Returns the largest such
   error. */
static double compare_sharded(const sharded *s, const amm_params *p, const void *grad_loss,
                              int exact, double tol, const char *what, int line)
{
    const int64_t n = s->n, d = s->d, c = s->c;
    const int64_t nl = p->reduction == AMM_REDUCTION_NONE ? n : 1;
    const int64_t gcols = s->head ? d : c;
    sharded_result got;
    unsharded_result want;
    simulate(s, p, grad_loss, &got, line);
    unsharded(s, p, grad_loss, &want, line);
    double err = INFINITY;
    const char *kind = s->head ? "head" : "cosine logits";
    const char *prec = s->d64 ? "f64" : "f32";
    if (got.status == AMM_OK) {
        check(got.loss_same, line, "%s %s, %s: the shards' losses differ", kind, prec, what);
        check(memcmp(got.counts, want.counts, (size_t)n * sizeof(int64_t)) == 0, line,
              "%s %s, %s: the summed hard-negative counts differ from the unsharded ones",
              kind, prec, what);
        double e_loss = row_relative_error(got.loss, want.loss, 1, nl);
        double e_grad = row_relative_error(got.grad, want.grad, n, gcols);
        double e_gw = s->head ? row_relative_error(got.gw, want.gw, c, d) : 0.0;
        err = fmax(e_loss, fmax(e_grad, e_gw));
        if (exact) {
            int same = memcmp(got.loss, want.loss, (size_t)nl * sizeof(double)) == 0 &&
                       memcmp(got.grad, want.grad, (size_t)(n * gcols) * sizeof(double)) == 0 &&
                       (!s->head || memcmp(got.gw, want.gw,
                                           (size_t)(c * d) * sizeof(double)) == 0);
            check(same, line, "%s %s, %s: not bit for bit the unsharded result (largest "
                  "relative differences: loss %.3g, %s %.3g, grad_weights %.3g)", kind, prec,
                  what, e_loss, s->head ? "grad_embeddings" : "grad_cos", e_grad, e_gw);
        } else {
            check(err <= tol, line, "%s %s, %s: relative differences from the unsharded result "
                  "loss %.3g, %s %.3g, grad_weights %.3g (tolerance %.0e)", kind, prec, what,
                  e_loss, s->head ? "grad_embeddings" : "grad_cos", e_grad, e_gw, tol);
        }
        if (s->d64) {
            double *worst = s->head ? &shard_err_head : &shard_err_cos;
            *worst = fmax(*worst, err);
        }
    }
    sharded_result_free(&got);
    unsharded_result_free(&want);
    return err;
}

/* ------------------------------------------------------------------------------------------- */

/* The validation of every phase, on the small fixture (5 rows, 7 classes; row 3 ignored) with
   the shard [2, 5): rows 0 (class 3) and 4 (class 2) have their target in it. */
static void test_shard_validation(void)
{
    static const char *const names[] = {"params", "cos", "embeddings", "weights", "labels",
                                        "target_cos", "row_max", "row_sum", "global_max",
                                        "global_sum", "loss", "grad_cos", "grad_embeddings",
                                        "grad_weights"};
    head_problem h;
    head_problem_init(&h, FN, 3, FC);
    memcpy(h.labels, fx_labels, sizeof fx_labels);
    const int64_t start = 2, cl = 3;
    float cos32[FN * 3];
    double cos64[FN * 3];
    for (int i = 0; i < FN; ++i)
        for (int j = 0; j < cl; ++j) {
            cos32[i * cl + j] = fx_cos32[i * FC + start + j];
            cos64[i * cl + j] = fx_cos64[i * FC + start + j];
        }
    amm_params p;
    amm_params_init(&p);

    for (int head = 0; head < 2; ++head)
        for (int d64 = 0; d64 < 2; ++d64) {
            /* Outputs, and valid inputs for phases 2 and 3: this shard's own statistics. */
            double target[FN], rmax[FN], rsum[FN], gmax[FN], gsum[FN];
            double loss64[FN], grad64[FN * FC];
            float loss32[FN], grad32[FN * FC], gw32[FN * FC];
            double gw64[FN * FC];
            shard_args a;
            memset(&a, 0, sizeof a);
            a.p = &p;
            a.head = head;
            a.d64 = d64;
            a.n = FN;
            a.d = head ? 3 : 0;
            a.c_local = cl;
            a.class_start = start;
            a.c_total = FC;
            a.labels = fx_labels;
            a.cos = head ? NULL : d64 ? (const void *)cos64 : (const void *)cos32;
            a.emb = head ? (d64 ? (const void *)h.x64 : (const void *)h.x32) : NULL;
            a.w = head ? (d64 ? (const void *)(h.w64 + start * 3)
                              : (const void *)(h.w32 + start * 3)) : NULL;
            a.target_cos = target;
            a.row_max = rmax;
            a.row_sum = rsum;
            a.global_max = gmax;
            a.global_sum = gsum;
            a.grad_loss = NULL;
            a.loss = d64 ? (void *)loss64 : (void *)loss32;
            a.grad = d64 ? (void *)grad64 : (void *)grad32;
            a.gw = head ? (d64 ? (void *)gw64 : (void *)gw32) : NULL;

            section = "shard: valid call";
            shard_expect(__LINE__, PH_TARGET, &a, AMM_OK, NULL, NULL);
            CHECK(target[1] == 0.0 && target[2] == 0.0 && target[3] == 0.0 && target[0] != 0.0,
                  "%s: target_cos of rows without their target in the shard (or ignored) must "
                  "be 0: {%g, %g, %g, %g, %g}", shard_name(PH_TARGET, &a), target[0], target[1],
                  target[2], target[3], target[4]);
            if (!head)
                CHECK(target[0] == elem(a.cos, d64, 0 * cl + 1) &&
                          target[4] == elem(a.cos, d64, 4 * cl + 0),
                      "%s: target_cos[0] = %.17g, [4] = %.17g: not the target's cosines",
                      shard_name(PH_TARGET, &a), target[0], target[4]);
            shard_expect(__LINE__, PH_STATS, &a, AMM_OK, NULL, NULL);
            CHECK(rmax[3] == -INFINITY && rsum[3] == 0.0,
                  "%s: the ignored row gives row_max %g, row_sum %g, expected -inf and 0",
                  shard_name(PH_STATS, &a), rmax[3], rsum[3]);
            memcpy(gmax, rmax, sizeof gmax);
            memcpy(gsum, rsum, sizeof gsum);
            shard_expect(__LINE__, PH_GRAD, &a, AMM_OK, NULL, NULL);

            for (int phase = PH_TARGET; phase <= PH_GRAD; ++phase) {
                section = "shard: null pointers";
                for (size_t k = 0; k < sizeof names / sizeof names[0]; ++k) {
                    shard_args b = a;
                    const char *name = names[k];
                    int used = 1;
                    if (!strcmp(name, "params")) b.p = NULL;
                    else if (!strcmp(name, "cos")) { used = !head; b.cos = NULL; }
                    else if (!strcmp(name, "embeddings")) { used = head; b.emb = NULL; }
                    else if (!strcmp(name, "weights")) { used = head; b.w = NULL; }
                    else if (!strcmp(name, "labels")) b.labels = NULL;
                    else if (!strcmp(name, "target_cos")) b.target_cos = NULL;
                    else if (!strcmp(name, "row_max")) { used = phase == PH_STATS; b.row_max = NULL; }
                    else if (!strcmp(name, "row_sum")) { used = phase == PH_STATS; b.row_sum = NULL; }
                    else if (!strcmp(name, "global_max")) { used = phase == PH_GRAD; b.global_max = NULL; }
                    else if (!strcmp(name, "global_sum")) { used = phase == PH_GRAD; b.global_sum = NULL; }
                    else if (!strcmp(name, "loss")) { used = phase == PH_GRAD && head; b.loss = NULL; }
                    else if (!strcmp(name, "grad_cos")) { used = phase == PH_GRAD && !head; b.grad = NULL; }
                    else if (!strcmp(name, "grad_embeddings")) { used = phase == PH_GRAD && head; b.grad = NULL; }
                    else if (!strcmp(name, "grad_weights")) { used = phase == PH_GRAD && head; b.gw = NULL; }
                    if (used)
                        shard_expect(__LINE__, phase, &b, AMM_ERR_NULL_POINTER, name, NULL);
                }
                /* The loss of the gradient phase on cosine logits is optional. */
                if (phase == PH_GRAD && !head) {
                    shard_args b = a;
                    b.loss = NULL;
                    shard_expect(__LINE__, phase, &b, AMM_OK, NULL, NULL);
                }

                section = "shard: shape";
                shard_args b = a;
                b.c_total = 0;
                b.c_local = 0;
                b.class_start = 0;
                shard_expect(__LINE__, phase, &b, AMM_ERR_SHAPE, "c_total", "c_total = 0");
                b = a;
                b.c_total = -3;
                shard_expect(__LINE__, phase, &b, AMM_ERR_SHAPE, "c_total", "c_total = -3");
                b = a;
                b.c_local = -1;
                shard_expect(__LINE__, phase, &b, AMM_ERR_SHAPE, "c_local", "c_local = -1");
                b = a;
                b.c_local = FC + 1;
                b.class_start = 0;
                shard_expect(__LINE__, phase, &b, AMM_ERR_SHAPE, "c_local", "c_local = 8");
                b = a;
                b.class_start = -1;
                shard_expect(__LINE__, phase, &b, AMM_ERR_SHAPE, "class_start",
                             "class_start = -1");
                b = a;
                b.class_start = FC - cl + 1; /* [5, 8) passes c_total = 7 */
                shard_expect(__LINE__, phase, &b, AMM_ERR_SHAPE, "class_start",
                             "class_start = 5");
                b = a;
                b.class_start = FC - cl; /* [4, 7): the last shard, valid */
                shard_expect(__LINE__, phase, &b, AMM_OK, NULL, NULL);
                b = a;
                b.n = -1;
                shard_expect(__LINE__, phase, &b, AMM_ERR_SHAPE, "n", "-1");
                if (head) {
                    b = a;
                    b.d = 0;
                    shard_expect(__LINE__, phase, &b, AMM_ERR_SHAPE, "d", NULL);
                }

                section = "shard: labels";
                {
                    const int64_t bad_total[FN] = {3, 0, FC, -100, 2};
                    const int64_t bad_neg[FN] = {3, 0, 6, -100, -1};
                    const int64_t outside[FN] = {3, 0, 6, -100, 5}; /* valid, not in [2, 5) */
                    b = a;
                    b.labels = bad_total;
                    shard_expect(__LINE__, phase, &b, AMM_ERR_LABEL, NULL, "labels[2] = 7");
                    b.labels = bad_neg;
                    shard_expect(__LINE__, phase, &b, AMM_ERR_LABEL, NULL, "labels[4] = -1");
                    b.labels = outside;
                    shard_expect(__LINE__, phase, &b, AMM_OK, NULL, NULL);
                }

                section = "shard: validation order";
                {
                    const int64_t bad_labels[FN] = {3, 0, 9, -100, 2};
                    amm_params pb;
                    amm_params_init(&pb);
                    pb.scale = -1.0;
                    b = a;
                    b.p = &pb;
                    b.c_total = 0;
                    shard_expect(__LINE__, phase, &b, AMM_ERR_PARAM, "scale", NULL);
                    b = a;
                    b.c_local = -1;
                    b.labels = NULL;
                    shard_expect(__LINE__, phase, &b, AMM_ERR_SHAPE, "c_local", NULL);
                    b = a;
                    b.labels = bad_labels;
                    b.target_cos = NULL;
                    shard_expect(__LINE__, phase, &b, AMM_ERR_NULL_POINTER, "target_cos", NULL);
                    if (phase != PH_TARGET) {
                        double tbad[FN];
                        memcpy(tbad, target, sizeof tbad);
                        tbad[0] = NAN;
                        b = a;
                        b.labels = bad_labels;
                        b.target_cos = tbad;
                        shard_expect(__LINE__, phase, &b, AMM_ERR_LABEL, NULL, "labels[2] = 9");
                    }
                }
            }

            /* n == 0: every array of n values may be NULL (and loss, for reduction none);
               the weights and grad_weights still hold c_local x d values, and the loss of
               mean and sum one value, 0. */
            section = "shard: n == 0";
            for (int r = 0; r < 3; ++r)
                for (int phase = PH_TARGET; phase <= PH_GRAD; ++phase) {
                    amm_params pr;
                    amm_params_init(&pr);
                    pr.reduction = r;
                    shard_args b = a;
                    b.p = &pr;
                    b.n = 0;
                    b.cos = NULL;
                    b.emb = NULL;
                    b.labels = NULL;
                    b.target_cos = NULL;
                    b.row_max = NULL;
                    b.row_sum = NULL;
                    b.global_max = NULL;
                    b.global_sum = NULL;
                    b.grad = NULL;
                    if (r == AMM_REDUCTION_NONE)
                        b.loss = NULL;
                    loss64[0] = 123.0;
                    loss32[0] = 123.0f;
                    for (int k = 0; k < 9; ++k) {
                        gw64[k] = 5.0;
                        gw32[k] = 5.0f;
                    }
                    shard_expect(__LINE__, phase, &b, AMM_OK, NULL, NULL);
                    if (phase != PH_GRAD)
                        continue;
                    if (r != AMM_REDUCTION_NONE)
                        CHECK(d64 ? loss64[0] == 0.0 : loss32[0] == 0.0f,
                              "%s: the loss of an empty batch (reduction %d) is %g, expected 0",
                              shard_name(phase, &b), r, d64 ? loss64[0] : (double)loss32[0]);
                    if (head) {
                        int zero = 1;
                        for (int k = 0; k < 9; ++k)
                            zero &= d64 ? gw64[k] == 0.0 : gw32[k] == 0.0f;
                        CHECK(zero, "%s reduction %d: grad_weights of an empty batch is not all "
                              "zero", shard_name(phase, &b), r);
                        if (r != AMM_REDUCTION_NONE) {
                            b.loss = NULL;
                            shard_expect(__LINE__, phase, &b, AMM_ERR_NULL_POINTER, "loss",
                                         NULL);
                        }
                    }
                }

            section = "shard: nonfinite target_cos";
            for (int phase = PH_STATS; phase <= PH_GRAD; ++phase) {
                const double values[] = {NAN, INFINITY, -INFINITY};
                const char *const texts[] = {"target_cos[4] = nan", "target_cos[4] = inf",
                                             "target_cos[4] = -inf"};
                for (int k = 0; k < 3; ++k) {
                    double tbad[FN];
                    memcpy(tbad, target, sizeof tbad);
                    tbad[4] = values[k];
                    shard_args b = a;
                    b.target_cos = tbad;
                    shard_expect(__LINE__, phase, &b, AMM_ERR_NONFINITE, "target_cos",
                                 texts[k]);
                    /* the ignored row's target cosine is not read */
                    memcpy(tbad, target, sizeof tbad);
                    tbad[3] = values[k];
                    shard_expect(__LINE__, phase, &b, AMM_OK, NULL, NULL);
                }
            }

            section = "shard: invalid global statistics";
            {
                struct {
                    int sum;
                    double value;
                    int want;
                    const char *text;
                } cases[] = {{0, NAN, AMM_ERR_NONFINITE, "global_max[1] = nan"},
                             {0, INFINITY, AMM_ERR_NONFINITE, "global_max[1] = inf"},
                             {1, NAN, AMM_ERR_NONFINITE, "global_sum[1] = nan"},
                             {1, INFINITY, AMM_ERR_NONFINITE, "global_sum[1] = inf"},
                             {1, -INFINITY, AMM_ERR_NONFINITE, "global_sum[1] = -inf"},
                             {1, -1.0, AMM_ERR_PARAM, "global_sum[1] = -1"}};
                for (size_t k = 0; k < sizeof cases / sizeof cases[0]; ++k) {
                    double mbad[FN], sbad[FN];
                    memcpy(mbad, gmax, sizeof mbad);
                    memcpy(sbad, gsum, sizeof sbad);
                    (cases[k].sum ? sbad : mbad)[1] = cases[k].value;
                    shard_args b = a;
                    b.global_max = mbad;
                    b.global_sum = sbad;
                    shard_expect(__LINE__, PH_GRAD, &b, cases[k].want,
                                 cases[k].sum ? "global_sum" : "global_max", cases[k].text);
                    /* an ignored row's statistics are not read */
                    memcpy(mbad, gmax, sizeof mbad);
                    memcpy(sbad, gsum, sizeof sbad);
                    (cases[k].sum ? sbad : mbad)[3] = cases[k].value;
                    shard_expect(__LINE__, PH_GRAD, &b, AMM_OK, NULL, NULL);
                }
            }

            section = "shard: nonfinite inputs";
            if (!head) {
                /* cos[0, 1] is row 0's target (class 3); cos[1, 2] a negative of row 1 */
                float c32[FN * 3];
                double c64[FN * 3];
                memcpy(c32, cos32, sizeof c32);
                memcpy(c64, cos64, sizeof c64);
                c32[0 * 3 + 1] = NAN;
                c64[0 * 3 + 1] = NAN;
                shard_args b = a;
                b.cos = d64 ? (const void *)c64 : (const void *)c32;
                shard_expect(__LINE__, PH_TARGET, &b, AMM_ERR_NONFINITE, NULL, "cos[0, 1] = nan");
                memcpy(c32, cos32, sizeof c32);
                memcpy(c64, cos64, sizeof c64);
                c32[1 * 3 + 2] = INFINITY;
                c64[1 * 3 + 2] = INFINITY;
                c32[3 * 3 + 0] = NAN; /* the ignored row: not an error */
                c64[3 * 3 + 0] = NAN;
                shard_expect(__LINE__, PH_STATS, &b, AMM_ERR_NONFINITE, NULL, "cos[1, 2] = inf");
                /* grad_loss of phase 3 */
                amm_params pn;
                amm_params_init(&pn);
                pn.reduction = AMM_REDUCTION_NONE;
                double gl64[FN] = {1, 1, NAN, 1, 1};
                float gl32[FN] = {1, 1, NAN, 1, 1};
                b = a;
                b.p = &pn;
                b.grad_loss = d64 ? (const void *)gl64 : (const void *)gl32;
                shard_expect(__LINE__, PH_GRAD, &b, AMM_ERR_NONFINITE, "grad_loss", "nan");
            } else {
                /* weights[1, 2] of the shard is class 3's */
                double w64[3 * 3];
                float w32[3 * 3];
                memcpy(w64, h.w64 + start * 3, sizeof w64);
                memcpy(w32, h.w32 + start * 3, sizeof w32);
                w64[1 * 3 + 2] = NAN;
                w32[1 * 3 + 2] = NAN;
                shard_args b = a;
                b.w = d64 ? (const void *)w64 : (const void *)w32;
                for (int phase = PH_TARGET; phase <= PH_GRAD; ++phase)
                    shard_expect(__LINE__, phase, &b, AMM_ERR_NONFINITE, NULL,
                                 "weights[1, 2] = nan");
                double x64[FN * 3];
                float x32[FN * 3];
                memcpy(x64, h.x64, sizeof x64);
                memcpy(x32, h.x32, sizeof x32);
                x64[1 * 3 + 0] = INFINITY;  /* row 1: target outside the shard, still checked */
                x32[1 * 3 + 0] = INFINITY;
                b = a;
                b.emb = d64 ? (const void *)x64 : (const void *)x32;
                for (int phase = PH_TARGET; phase <= PH_GRAD; ++phase)
                    shard_expect(__LINE__, phase, &b, AMM_ERR_NONFINITE, NULL,
                                 "embeddings[1, 0] = inf");
            }
        }
    head_problem_free(&h);
}

/* amm_shard_rescale_sums: row_sum[i] *= exp(row_max[i] - global_max[i]), 0 where row_max[i]
   is -inf; its own validation. */
static void test_shard_rescale(void)
{
    section = "shard: rescale_sums";
    const double row_max[5] = {3.0, -INFINITY, -2.5, -INFINITY, 10.0};
    const double global_max[5] = {5.0, 4.0, -2.5, -INFINITY, 10.0};
    double row_sum[5] = {2.0, 7.0, 1.5, 3.0, 0.25};
    const double rm_copy[5] = {3.0, -INFINITY, -2.5, -INFINITY, 10.0};
    const double gm_copy[5] = {5.0, 4.0, -2.5, -INFINITY, 10.0};
    int st = amm_shard_rescale_sums(5, row_max, global_max, row_sum);
    expect_status(__LINE__, "amm_shard_rescale_sums", st, AMM_OK, NULL, NULL);
    CHECK(close_to(row_sum[0], 2.0 * exp(-2.0), 1e-15, 0.0),
          "row_sum[0] = %.17g, expected 2 exp(3 - 5) = %.17g", row_sum[0], 2.0 * exp(-2.0));
    CHECK(row_sum[1] == 0.0, "row_max -inf: row_sum[1] = %g, expected 0", row_sum[1]);
    CHECK(row_sum[2] == 1.5 && row_sum[4] == 0.25,
          "row_max == global_max: row_sum unchanged, got %.17g and %.17g", row_sum[2],
          row_sum[4]);
    CHECK(row_sum[3] == 0.0, "row_max and global_max both -inf: row_sum[3] = %g, expected 0 "
          "(not NaN)", row_sum[3]);
    CHECK(memcmp(row_max, rm_copy, sizeof rm_copy) == 0 &&
              memcmp(global_max, gm_copy, sizeof gm_copy) == 0,
          "amm_shard_rescale_sums wrote row_max or global_max");

    /* n == 0: every array may be NULL. n < 0, NULL arrays: refused. */
    st = amm_shard_rescale_sums(0, NULL, NULL, NULL);
    expect_status(__LINE__, "amm_shard_rescale_sums", st, AMM_OK, NULL, NULL);
    double s1[1] = {1.0};
    const double m1[1] = {0.0};
    st = amm_shard_rescale_sums(-1, m1, m1, s1);
    expect_status(__LINE__, "amm_shard_rescale_sums", st, AMM_ERR_SHAPE, "n", "n = -1");
    st = amm_shard_rescale_sums(1, NULL, m1, s1);
    expect_status(__LINE__, "amm_shard_rescale_sums", st, AMM_ERR_NULL_POINTER, "row_max", NULL);
    st = amm_shard_rescale_sums(1, m1, NULL, s1);
    expect_status(__LINE__, "amm_shard_rescale_sums", st, AMM_ERR_NULL_POINTER, "global_max",
                  NULL);
    st = amm_shard_rescale_sums(1, m1, m1, NULL);
    expect_status(__LINE__, "amm_shard_rescale_sums", st, AMM_ERR_NULL_POINTER, "row_sum", NULL);
    CHECK(s1[0] == 1.0, "a refused amm_shard_rescale_sums wrote row_sum[0] = %g", s1[0]);
}

/* The problems of the equality checks: big_cos (37 x 501, ignored rows, cosines beyond
   [-1, 1]) for cosine logits; a head problem of 23 rows, 16 dimensions and 301 classes. */
static sharded cos_problem(int d64)
{
    sharded s;
    memset(&s, 0, sizeof s);
    s.d64 = d64;
    s.n = BN;
    s.c = BC;
    s.cos = d64 ? (const void *)big_cos64 : (const void *)big_cos32;
    s.labels = big_labels;
    return s;
}

static sharded head_problem_sharded(const head_problem *h, int d64)
{
    sharded s;
    memset(&s, 0, sizeof s);
    s.head = 1;
    s.d64 = d64;
    s.n = h->n;
    s.d = h->d;
    s.c = h->c;
    s.emb = d64 ? (const void *)h->x64 : (const void *)h->x32;
    s.w = d64 ? (const void *)h->w64 : (const void *)h->w32;
    s.labels = h->labels;
    return s;
}

/* P = 1, one shard holding every class: the head's phases give the unsharded head's results
   bit for bit (both precisions, automatic and explicit block sizes); on cosine logits, the
   results agree with amm_forward_backward (f64 within 1e-12 relative, f32 within 1e-5), and
   with an upstream gradient with amm_backward. */
static void test_shard_one(void)
{
    section = "shard: P = 1, head";
    head_problem h;
    head_problem_init(&h, 23, 16, 301);
    char what[96];
    for (int k = 0; k < NVARIANTS; ++k)
        for (int r = 0; r < 3; ++r)
            for (int bs = 0; bs < 2; ++bs)
                for (int d64 = 0; d64 < 2; ++d64) {
                    amm_params p;
                    variant(&p, k);
                    p.reduction = r;
                    p.head_block_size = bs ? 32 : 0;
                    sharded s = head_problem_sharded(&h, d64);
                    partialfc(&s, 1);
                    snprintf(what, sizeof what, "variant %d, reduction %d, block size %d", k, r,
                             (int)p.head_block_size);
                    compare_sharded(&s, &p, NULL, 1, 0.0, what, __LINE__);
                }
    head_problem_free(&h);

    section = "shard: P = 1, cosine logits";
    for (int k = 0; k < NVARIANTS; ++k)
        for (int r = 0; r < 3; ++r)
            for (int d64 = 0; d64 < 2; ++d64) {
                amm_params p;
                variant(&p, k);
                p.reduction = r;
                sharded s = cos_problem(d64);
                partialfc(&s, 1);
                snprintf(what, sizeof what, "variant %d, reduction %d", k, r);
                compare_sharded(&s, &p, NULL, 0, shard_tol(&s), what, __LINE__);
                /* an upstream gradient */
                double gl64[BN];
                float gl32[BN];
                for (int i = 0; i < BN; ++i) {
                    gl64[i] = 0.25 + 0.5 * (i % 5) - 1.0 * (i % 3 == 0);
                    gl32[i] = (float)gl64[i];
                }
                snprintf(what, sizeof what, "variant %d, reduction %d, grad_loss", k, r);
                compare_sharded(&s, &p, d64 ? (const void *)gl64 : (const void *)gl32, 0,
                                shard_tol(&s), what, __LINE__);
            }
}

/* P = 3 (PartialFC's split) and other tilings, simulated in this process: equal to the
   unsharded result within 1e-12 relative in f64 (f32: shard_tol), the counts exactly. */
static void test_shard_three(void)
{
    section = "shard: P = 3";
    head_problem h;
    head_problem_init(&h, 23, 16, 301);
    char what[96];
    for (int k = 0; k < NVARIANTS; ++k)
        for (int r = 0; r < 3; ++r)
            for (int d64 = 0; d64 < 2; ++d64) {
                amm_params p;
                variant(&p, k);
                p.reduction = r;
                p.head_block_size = k % 2 ? 32 : 0;
                snprintf(what, sizeof what, "P = 3, variant %d, reduction %d", k, r);
                sharded s = head_problem_sharded(&h, d64);
                partialfc(&s, 3);
                compare_sharded(&s, &p, NULL, 0, shard_tol(&s), what, __LINE__);
                s = cos_problem(d64);
                partialfc(&s, 3);
                compare_sharded(&s, &p, NULL, 0, shard_tol(&s), what, __LINE__);
            }

    /* ignore_index equal to a class id (labels[0]'s, in shard 0; the rows labelled -100 take
       it too): that class's rows are ignored on every shard. */
    section = "shard: ignore_index a class";
    for (int d64 = 0; d64 < 2; ++d64) {
        int64_t hl[23], cl[BN];
        for (int i = 0; i < 23; ++i)
            hl[i] = h.labels[i] == -100 ? h.labels[0] : h.labels[i];
        for (int i = 0; i < BN; ++i)
            cl[i] = big_labels[i] == -100 ? big_labels[0] : big_labels[i];
        amm_params p;
        amm_params_init(&p);
        sharded s = head_problem_sharded(&h, d64);
        s.labels = hl;
        partialfc(&s, 3);
        p.ignore_index = hl[0];
        compare_sharded(&s, &p, NULL, 0, shard_tol(&s), "ignore_index = labels[0]", __LINE__);
        s = cos_problem(d64);
        s.labels = cl;
        partialfc(&s, 3);
        p.ignore_index = cl[0];
        compare_sharded(&s, &p, NULL, 0, shard_tol(&s), "ignore_index = labels[0]", __LINE__);
    }

    section = "shard: other tilings";
    {
        /* uneven shards: one class, then most, then the rest; and 8 shards */
        const int64_t starts[3] = {0, 1, 280}, counts[3] = {1, 279, 21};
        for (int d64 = 0; d64 < 2; ++d64)
            for (int k = 0; k < NVARIANTS; k += 2) {
                amm_params p;
                variant(&p, k);
                sharded s = head_problem_sharded(&h, d64);
                s.shards = 3;
                memcpy(s.start, starts, sizeof starts);
                memcpy(s.count, counts, sizeof counts);
                snprintf(what, sizeof what, "shards {1, 279, 21}, variant %d", k);
                compare_sharded(&s, &p, NULL, 0, shard_tol(&s), what, __LINE__);
                s = head_problem_sharded(&h, d64);
                partialfc(&s, 8);
                snprintf(what, sizeof what, "P = 8, variant %d", k);
                compare_sharded(&s, &p, NULL, 0, shard_tol(&s), what, __LINE__);
                s = cos_problem(d64);
                partialfc(&s, 8);
                compare_sharded(&s, &p, NULL, 0, shard_tol(&s), what, __LINE__);
            }
    }
    head_problem_free(&h);
}

/* Shards without classes: around a shard holding every class they change nothing (their
   contributions are 0.0, -inf and 0, exactly), so the head stays bit for bit the unsharded
   one; their own phases accept NULL for the arrays of zero elements; more shards than classes;
   and one class in all (the loss and gradients are 0). */
static void test_shard_empty(void)
{
    section = "shard: zero classes";
    head_problem h;
    head_problem_init(&h, 23, 16, 301);
    for (int d64 = 0; d64 < 2; ++d64)
        for (int r = 0; r < 3; ++r) {
            amm_params p;
            variant(&p, 0);
            p.reduction = r;
            sharded s = head_problem_sharded(&h, d64);
            s.shards = 3;
            s.start[0] = 0, s.count[0] = 0;
            s.start[1] = 0, s.count[1] = 301;
            s.start[2] = 301, s.count[2] = 0;
            compare_sharded(&s, &p, NULL, 1, 0.0, "shards {0, 301, 0}", __LINE__);
            s = cos_problem(d64);
            s.shards = 3;
            s.start[0] = 0, s.count[0] = 0;
            s.start[1] = 0, s.count[1] = BC;
            s.start[2] = BC, s.count[2] = 0;
            compare_sharded(&s, &p, NULL, 0, shard_tol(&s), "shards {0, 501, 0}",
                            __LINE__);
        }

    /* The phases of an empty shard on their own: cos, weights and grad_weights may be NULL
       (zero elements); the outputs are 0.0 / -inf / 0 and grad_embeddings is all zero. */
    for (int head = 0; head < 2; ++head)
        for (int d64 = 0; d64 < 2; ++d64) {
            double target[23], rmax[23], rsum[23], gmax[23], gsum[23];
            double loss64[1], gx64[23 * 16];
            float loss32[1], gx32[23 * 16];
            int64_t counts[23];
            for (int i = 0; i < 23; ++i) {
                target[i] = 7.0;
                rmax[i] = 7.0;
                rsum[i] = 7.0;
                counts[i] = 7;
                gmax[i] = 1.0;
                gsum[i] = 2.0;
            }
            amm_params p;
            amm_params_init(&p);
            shard_args a;
            memset(&a, 0, sizeof a);
            a.p = &p;
            a.head = head;
            a.d64 = d64;
            a.n = 23;
            a.d = head ? 16 : 0;
            a.c_local = 0;
            a.class_start = 120;
            a.c_total = 301;
            a.labels = h.labels;
            a.emb = head ? (d64 ? (const void *)h.x64 : (const void *)h.x32) : NULL;
            a.target_cos = target;
            a.row_max = rmax;
            a.row_sum = rsum;
            a.global_max = gmax;
            a.global_sum = gsum;
            a.loss = d64 ? (void *)loss64 : (void *)loss32;
            a.grad = head ? (d64 ? (void *)gx64 : (void *)gx32) : NULL;
            shard_expect(__LINE__, PH_TARGET, &a, AMM_OK, NULL, NULL);
            int zero = 1;
            for (int i = 0; i < 23; ++i)
                zero &= target[i] == 0.0;
            CHECK(zero, "%s, no class: target_cos is not all 0.0", shard_name(PH_TARGET, &a));
            p.hard_negatives = counts;
            shard_expect(__LINE__, PH_STATS, &a, AMM_OK, NULL, NULL);
            p.hard_negatives = NULL;
            int empty = 1;
            for (int i = 0; i < 23; ++i)
                empty &= rmax[i] == -INFINITY && rsum[i] == 0.0 && counts[i] == 0;
            CHECK(empty, "%s, no class: row_max, row_sum, counts are not -inf, 0, 0",
                  shard_name(PH_STATS, &a));
            for (int i = 0; i < 23; ++i)
                target[i] = 0.3;
            for (int k = 0; k < 23 * 16; ++k) {
                gx64[k] = 7.0;
                gx32[k] = 7.0f;
            }
            shard_expect(__LINE__, PH_GRAD, &a, AMM_OK, NULL, NULL);
            if (head) {
                zero = 1;
                for (int k = 0; k < 23 * 16; ++k)
                    zero &= d64 ? gx64[k] == 0.0 : gx32[k] == 0.0f;
                CHECK(zero, "%s, no class: grad_embeddings is not all zero",
                      shard_name(PH_GRAD, &a));
            }
        }

    /* More shards than classes: 8 shards of 5 classes, three of them empty. */
    {
        head_problem hs;
        head_problem_init(&hs, 11, 6, 5);
        for (int d64 = 0; d64 < 2; ++d64) {
            amm_params p;
            amm_params_init(&p);
            sharded s = head_problem_sharded(&hs, d64);
            partialfc(&s, 8);
            compare_sharded(&s, &p, NULL, 0, shard_tol(&s), "5 classes on 8 shards",
                            __LINE__);
        }
        head_problem_free(&hs);
    }

    /* One class in all, on two shards (the second empty): no negative anywhere, so
       global_max is -inf and global_sum 0; the loss and the gradients are 0 as unsharded. */
    section = "shard: one class";
    {
        head_problem h1;
        head_problem_init(&h1, 6, 4, 1);
        for (int i = 0; i < 6; ++i)
            h1.labels[i] = i % 5 == 2 ? -100 : 0;
        for (int d64 = 0; d64 < 2; ++d64) {
            amm_params p;
            amm_params_init(&p);
            sharded s = head_problem_sharded(&h1, d64);
            s.shards = 2;
            s.start[0] = 0, s.count[0] = 1;
            s.start[1] = 1, s.count[1] = 0;
            sharded_result got;
            simulate(&s, &p, NULL, &got, __LINE__);
            if (got.status == AMM_OK) {
                CHECK(got.loss[0] == 0.0 && max_abs(got.grad, 6 * 4) == 0.0 &&
                          max_abs(got.gw, 4) == 0.0,
                      "%s, one class: loss %g, largest gradients %g, %g; expected 0",
                      d64 ? "f64" : "f32", got.loss[0], max_abs(got.grad, 24),
                      max_abs(got.gw, 4));
            }
            sharded_result_free(&got);
            compare_sharded(&s, &p, NULL, 1, 0.0, "one class", __LINE__);
        }
        head_problem_free(&h1);
    }
    head_problem_free(&h);
}

/* Phases 1 and 3 never write p->hard_negatives (only phase 2 counts): one amm_params with the
   counts set may serve every phase without phase 3 overwriting the summed counts. */
static void test_shard_counts_only_in_phase_two(void)
{
    section = "shard: hard_negatives";
    head_problem h;
    head_problem_init(&h, 9, 7, 130);
    for (int head = 0; head < 2; ++head)
        for (int d64 = 0; d64 < 2; ++d64) {
            int64_t counts[9];
            double target[9], rmax[9], rsum[9];
            double cos64[9 * 130], loss64[1], g64[9 * 130], gw64[130 * 7];
            float cos32[9 * 130], loss32[1], g32[9 * 130], gw32[130 * 7];
            /* cosines from the head problem's weights and embeddings, for the loss phases */
            for (int i = 0; i < 9; ++i)
                for (int j = 0; j < 130; ++j) {
                    cos64[i * 130 + j] = 0.9 * sin(0.37 * i * j + 0.1 * j);
                    cos32[i * 130 + j] = (float)cos64[i * 130 + j];
                }
            amm_params p;
            amm_params_init(&p);
            p.hard_negatives = counts;
            shard_args a;
            memset(&a, 0, sizeof a);
            a.p = &p;
            a.head = head;
            a.d64 = d64;
            a.n = 9;
            a.d = head ? 7 : 0;
            a.c_local = 130;
            a.class_start = 0;
            a.c_total = 130;
            a.labels = h.labels;
            a.cos = head ? NULL : d64 ? (const void *)cos64 : (const void *)cos32;
            a.emb = head ? (d64 ? (const void *)h.x64 : (const void *)h.x32) : NULL;
            a.w = head ? (d64 ? (const void *)h.w64 : (const void *)h.w32) : NULL;
            a.target_cos = target;
            a.row_max = rmax;
            a.row_sum = rsum;
            a.global_max = rmax;
            a.global_sum = rsum;
            a.loss = d64 ? (void *)loss64 : (void *)loss32;
            a.grad = d64 ? (void *)g64 : (void *)g32;
            a.gw = head ? (d64 ? (void *)gw64 : (void *)gw32) : NULL;
            for (int i = 0; i < 9; ++i)
                counts[i] = -5;
            shard_expect(__LINE__, PH_TARGET, &a, AMM_OK, NULL, NULL);
            int untouched = 1;
            for (int i = 0; i < 9; ++i)
                untouched &= counts[i] == -5;
            CHECK(untouched, "%s wrote p->hard_negatives", shard_name(PH_TARGET, &a));
            shard_expect(__LINE__, PH_STATS, &a, AMM_OK, NULL, NULL);
            int written = 1;
            for (int i = 0; i < 9; ++i)
                written &= counts[i] >= 0;
            CHECK(written, "%s did not write p->hard_negatives", shard_name(PH_STATS, &a));
            for (int i = 0; i < 9; ++i)
                counts[i] = -5;
            shard_expect(__LINE__, PH_GRAD, &a, AMM_OK, NULL, NULL);
            untouched = 1;
            for (int i = 0; i < 9; ++i)
                untouched &= counts[i] == -5;
            CHECK(untouched, "%s wrote p->hard_negatives", shard_name(PH_GRAD, &a));
        }
    head_problem_free(&h);
}

/* Results are bitwise the same for every num_threads ("as for the unsharded functions"), and
   of several rows holding a NaN in a shard, the lowest is named whatever num_threads is. */
static void test_shard_threads(void)
{
    section = "shard: num_threads";
    head_problem h;
    head_problem_init(&h, 23, 16, 301);
    const int threads[] = {1, 2, 4, 0, 3};
    const int nt = (int)(sizeof threads / sizeof threads[0]);
    for (int head = 0; head < 2; ++head)
        for (int d64 = 0; d64 < 2; ++d64) {
            sharded s = head ? head_problem_sharded(&h, d64) : cos_problem(d64);
            partialfc(&s, 3);
            const int64_t n = s.n, cols = head ? s.d : s.c;
            sharded_result first;
            memset(&first, 0, sizeof first);
            for (int t = 0; t < nt; ++t) {
                amm_params p;
                variant(&p, 3);
                p.reduction = AMM_REDUCTION_NONE;
                p.num_threads = threads[t];
                p.head_block_size = 32;
                sharded_result got;
                simulate(&s, &p, NULL, &got, __LINE__);
                if (t == 0) {
                    first = got;
                    continue;
                }
                if (got.status == AMM_OK && first.status == AMM_OK) {
                    int same = memcmp(got.loss, first.loss, (size_t)n * sizeof(double)) == 0 &&
                               memcmp(got.counts, first.counts, (size_t)n * sizeof(int64_t)) == 0 &&
                               memcmp(got.grad, first.grad,
                                      (size_t)(n * cols) * sizeof(double)) == 0 &&
                               (!head || memcmp(got.gw, first.gw,
                                                (size_t)(s.c * s.d) * sizeof(double)) == 0);
                    CHECK(same, "%s %s, 3 shards: the results with num_threads %d differ from "
                          "num_threads 1", head ? "head" : "cosine logits", d64 ? "f64" : "f32",
                          threads[t]);
                }
                sharded_result_free(&got);
            }
            sharded_result_free(&first);
        }
    head_problem_free(&h);

    section = "shard: nonfinite, lowest row";
    {
        /* the shard [100, 300) of big_cos, NaN in rows 30, 12 and 21 (none ignored) */
        const int64_t start = 100, cl = 200;
        double *c64 = alloc_zero((size_t)(BN * cl), sizeof(double));
        float *c32 = alloc_zero((size_t)(BN * cl), sizeof(float));
        for (int64_t i = 0; i < BN; ++i)
            for (int64_t j = 0; j < cl; ++j) {
                c64[i * cl + j] = big_cos64[i * BC + start + j];
                c32[i * cl + j] = big_cos32[i * BC + start + j];
            }
        const int bad[][2] = {{30, 150}, {12, 7}, {21, 0}};
        for (size_t k = 0; k < sizeof bad / sizeof bad[0]; ++k) {
            c64[bad[k][0] * cl + bad[k][1]] = NAN;
            c32[bad[k][0] * cl + bad[k][1]] = NAN;
        }
        double target[BN] = {0}, rmax[BN], rsum[BN];
        for (int t = 0; t < nt; ++t)
            for (int d64 = 0; d64 < 2; ++d64) {
                amm_params p;
                amm_params_init(&p);
                p.num_threads = threads[t];
                shard_args a;
                memset(&a, 0, sizeof a);
                a.p = &p;
                a.d64 = d64;
                a.cos = d64 ? (const void *)c64 : (const void *)c32;
                a.n = BN;
                a.c_local = cl;
                a.class_start = start;
                a.c_total = BC;
                a.labels = big_labels;
                a.target_cos = target;
                a.row_max = rmax;
                a.row_sum = rsum;
                shard_expect(__LINE__, PH_STATS, &a, AMM_ERR_NONFINITE, NULL, "cos[12, 7]");
            }
        free(c64);
        free(c32);
    }
}

static void test_shard(void)
{
    test_shard_validation();
    test_shard_rescale();
    test_shard_one();
    test_shard_three();
    test_shard_empty();
    test_shard_counts_only_in_phase_two();
    test_shard_threads();
    section = "shard";
    printf("shard: largest relative difference from the unsharded result (f64, each value "
           "against the largest of its row): cosine logits %.3g, head %.3g\n", shard_err_cos,
           shard_err_head);
}

/* ------------------------------------------------------------------------------------------- */

int main(void)
{
    /* Before any call: the main thread has no message yet. */
    section = "last error";
    const char *fresh = amm_last_error();
    CHECK(fresh != NULL && strcmp(fresh, "") == 0, "amm_last_error() on a fresh thread is "
          "\"%s\", expected \"\"", fresh ? fresh : "(null)");

    fixture_init();
    big_init();

    test_layout_and_constants();
    test_params_init_and_version();
    test_null_pointers();
    test_shapes();
    test_labels();
    test_params();
    test_nonfinite();
    test_last_error_per_thread();
    test_consistency();
    test_threads();
    test_concurrent_calls();
    test_known_values();
    test_head_known_values();
    test_head_small_norms();
    test_head_block_size();
    test_head_errors();
    test_head_threads();
    test_shard();

    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
