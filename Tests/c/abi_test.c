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

/* Calls fn and checks its status; for an error, also that amm_last_error() is not empty, names
   `word` (as an identifier, if given) and contains `text` (case-insensitively, if given). */
static void expect(int line, int fn, const args_t *a, int want, const char *word,
                   const char *text)
{
    int status = run(fn, a, line);
    const char *msg = amm_last_error();
    check(status == want, line, "%s returned %s (%d), expected %s; amm_last_error(): \"%s\"",
          fn_name[fn], amm_status_name(status), status, amm_status_name(want), msg);
    if (want == AMM_OK || status != want)
        return;
    check(msg != NULL && msg[0] != '\0', line, "%s: %s with an empty message", fn_name[fn],
          amm_status_name(status));
    if (word)
        check(has_word(msg, word), line, "%s: the %s message should name '%s': \"%s\"",
              fn_name[fn], amm_status_name(status), word, msg);
    if (text)
        check(has_text_ci(msg, text), line, "%s: the %s message should contain '%s': \"%s\"",
              fn_name[fn], amm_status_name(status), text, msg);
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
 * A reference for one row, straight from FORMULATION.md, in double precision
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
              AMM_HARD_NONE == 3,
          "hard codes");
    CHECK(AMM_REDUCTION_MEAN == 0 && AMM_REDUCTION_SUM == 1 && AMM_REDUCTION_NONE == 2,
          "reduction codes");
    /* Version 0.1's struct ends at ignore_index (56 bytes); 0.2 appends head_block_size. */
    CHECK(sizeof(amm_params) == 64, "sizeof(amm_params) = %zu, version 0.2 has 64",
          sizeof(amm_params));
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
static void ok_tiny_scale(amm_params *p) { p->scale = 1e-300; }

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

    /* Rows against ref_row (FORMULATION.md written out above), one per case, with reduction
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

    printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
