/*
 * amm_fuzz.c -- a seeded random fuzzer of the C interface of libAMMSoftmax.so.
 *
 * Written against include/amm_softmax.h (and the docs/FORMULATION.md it cites) alone: the
 * status every call must return is predicted by an oracle of its own that implements the
 * header's validation order, not by looking at the library. Build and run from the repository
 * root (see Tests/fuzz/README.md):
 *
 *     gcc -std=c11 -Wall -Wextra -Werror -fsanitize=address,undefined \
 *         -fno-sanitize-recover=undefined -I include Tests/fuzz/amm_fuzz.c \
 *         -L .build/release -lAMMSoftmax -Wl,-rpath,$PWD/.build/release -lm -o amm_fuzz
 *     ./amm_fuzz SEED CALLS            e.g. ./amm_fuzz 1 100000
 *     ./amm_fuzz SEED --case K -v      replays case K of that seed, printing every call
 *
 * Every entry point of the header is called with random inputs: shapes from 0 up to products
 * that overflow int64_t (never allocated: a call that must fail before reading gets small
 * buffers), parameters out of every domain, struct_size from 0 to beyond the struct (the
 * struct sits in a larger one filled with garbage), labels out of range, NULL pointers,
 * matrices with NaN, infinities, +-1 and values beyond [-1, 1], hard_negatives set or not; and
 * the sharding protocol is run end to end over random tilings of the classes and compared
 * with the unsharded functions. After each call:
 *   1. the status is one the header promises for that input (the oracle below);
 *   2. the canary bytes before and after every output buffer are intact;
 *   3. every input (the whole parameter struct included) is bit-identical to before the call;
 *   4. on AMM_OK every output is finite (row_max may be -inf where documented) and holds what
 *      the header says of it (zeros for ignored rows and C = 1, target_cos, counts, ...);
 *   5. on failure amm_last_error() starts with the function's name and ": " (and names the
 *      first parameter out of its domain, or the first bad label's row); on success the
 *      previous message is left in place.
 * Some calls are repeated with another num_threads (results bitwise identical, errors with the
 * same message). For the functions on cosine logits and the head's loss and phase 2, a
 * long-double reference of docs/FORMULATION.md turns "AMM_OK or AMM_ERR_OVERFLOW" into
 * AMM_ERR_OVERFLOW where an output is far beyond the element type, and checks the values of a
 * successful call on ordinary inputs within the error of the header's precision model. Each
 * call of a 16-bit function (_bf16, _f16: cosines stored in 16 bits, in random bit patterns
 * with NaN, infinities, +-1 and neighbours, subnormals) is also made to the _f32 function on
 * the widened cosines: the same status (or AMM_ERR_OVERFLOW exactly where the _f32 gradient
 * rounds beyond the 16-bit range), the same loss bits, the _f32 gradient rounded to nearest
 * even, the same counts and message.
 *
 * Where the header can be read two ways, the oracle accepts both (README.md lists them): a
 * NULL p with a bad shape; an arc margin equal to the double nearest pi; a sharded head's
 * c_local or c_total beyond INT32_MAX; a NULL loss for amm_shard_head_gradient_*; the order of
 * the phases' checks of target_cos, global_max, global_sum (and grad_loss) against the cosines'
 * finiteness; AMM_ERR_ALLOC for a valid dimension beyond 2^20 with nothing to read. A field
 * the struct_size covers only in part is not covered (it takes its default).
 *
 * Output: the first few failures of each kind in detail, a count of the failures by kind, then
 * the last line "N calls, M failures". Exit status 0 when M == 0, 1 otherwise, 2 on a usage
 * error; a crash in the library prints the call in progress ("CRASH: ...") first.
 */
#define _DEFAULT_SOURCE

#include <float.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "amm_softmax.h"

/* The double nearest pi (below pi). */
#define PI_D 0x1.921fb54442d18p+1
/* The smallest double that rounds to infinity as a float: 2^128 - 2^103 (a tie, to even). */
#define FLT_OVERFLOW_D 0x1.ffffffp+127
/* Arrays larger than this are never allocated: the call must fail before reading them. */
#define LIMIT ((int64_t)1 << 16)
#define PBUF 256    /* the larger struct the amm_params sits in */
#define CANARY 64   /* canary bytes before and after every output buffer */
#define HN_SENTINEL ((int64_t)0x5A5A5A5A5A5A5A5ALL)

#define BIT(s) (1u << (s))
#define ALLOC_HUGE ((int64_t)1 << 20)

/* ---------------------------------------------------------------------------------------------
 * Random numbers: xoshiro256**, seeded per case by splitmix64, so that a case replays alone.
 * ------------------------------------------------------------------------------------------- */

static uint64_t rs[4];

static uint64_t splitmix(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static void rseed(uint64_t seed, uint64_t stream)
{
    uint64_t x = seed * 0xD1B54A32D192ED03ULL + stream * 0x8CB92BA72F3D8DD7ULL + 1;
    for (int i = 0; i < 4; ++i) rs[i] = splitmix(&x);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t rnext(void)
{
    uint64_t r = rotl(rs[1] * 5, 7) * 9, t = rs[1] << 17;
    rs[2] ^= rs[0];
    rs[3] ^= rs[1];
    rs[1] ^= rs[2];
    rs[0] ^= rs[3];
    rs[2] ^= t;
    rs[3] = rotl(rs[3], 45);
    return r;
}

static uint64_t rbelow(uint64_t n) { return n ? rnext() % n : 0; }
static int64_t rrange(int64_t lo, int64_t hi) { return lo + (int64_t)rbelow((uint64_t)(hi - lo) + 1); }
static double runif(void) { return (double)(rnext() >> 11) * 0x1p-53; }
static int rchance(double p) { return runif() < p; }
static double rgauss(void)
{
    double s = 0;
    for (int i = 0; i < 4; ++i) s += runif();
    return (s - 2.0) * 1.7320508;
}
#define PICK(arr) ((arr)[rbelow(sizeof(arr) / sizeof((arr)[0]))])

static double nan_bits(int negative, uint64_t payload)
{
    uint64_t b = 0x7FF8000000000000ULL | (payload & 0x0007FFFFFFFFFFFFULL) |
                 (negative ? 0x8000000000000000ULL : 0);
    double d;
    memcpy(&d, &b, 8);
    return d;
}

/* A value for an element of a matrix or vector of the element type (f32: a float's value). */
static double special_value(int f32)
{
    static const double f64pool[] = {
        INFINITY, -INFINITY, 1.0, -1.0, 0.0, -0.0, 0x1.0000000000001p0, -0x1.0000000000001p0,
        0x1.fffffffffffffp-1, -0x1.fffffffffffffp-1, 1.5, -2.0, 3.0, 1e10, -1e30, 1e300,
        -1e300, DBL_MAX, -DBL_MAX, 0x1p-1074, -0x1p-1074, DBL_MIN, 1e-300, 0.5, 1e154};
    static const double f32pool[] = {
        INFINITY, -INFINITY, 1.0, -1.0, 0.0, -0.0, 0x1.000002p0, -0x1.000002p0,
        0x1.fffffep-1, -0x1.fffffep-1, 1.5, -2.0, 3.0, 1e10, -0x1.4484cp+99, 0x1.2ced32p+126,
        -0x1.2ced32p+126, FLT_MAX, -FLT_MAX, 0x1p-149, -0x1p-149, FLT_MIN, 0x1.4f8b58p-100,
        0.5, 0x1p64};
    if (rchance(0.2)) return nan_bits((int)rbelow(2), rbelow(4) ? 0 : rnext());
    return f32 ? PICK(f32pool) : PICK(f64pool);
}

static double to_elem(int f32, double x) { return f32 ? (double)(float)x : x; } /* |x| small */

/* ---- 16-bit storage (the _bf16 and _f16 functions) -------------------------------------------
 * bfloat16: the top half of a float's bits; binary16: 1 sign, 5 exponent (bias 15), 10 fraction
 * bits. Widening is exact; narrowing rounds to nearest, ties to even, and gives an infinity
 * beyond the type's range (bf16: from 0x1.ff8p+127 up; f16: from 65520 up). Written from the
 * formats alone (checked against gcc's _Float16 over 2e8 floats and all 65536 patterns). */
#define H_MAX_BF16 0x1.fep+127
#define H_MAX_F16 65504.0
/* The smallest float (magnitude) each rounds to infinity: a tie, rounded to the even infinity. */
#define H_OVERFLOW_BF16 0x1.ffp+127
#define H_OVERFLOW_F16 65520.0

/* RNE of m >> shift (m < 2^25). */
static uint32_t rne_shift(uint32_t m, int shift)
{
    if (shift <= 0) return m << -shift;
    if (shift >= 32) return 0;
    uint32_t q = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1u))) ++q;
    return q;
}
enum { H_NONE, H_BF16, H_F16 }; /* call_t.half */
static float half_to_float(int type, uint16_t h)
{
    uint32_t b;
    float f;
    if (type == H_BF16) {
        b = (uint32_t)h << 16;
    } else {
        uint32_t sign = (uint32_t)(h & 0x8000u) << 16, ex = (h >> 10) & 0x1Fu, m = h & 0x3FFu;
        if (ex == 0x1F) b = sign | 0x7F800000u | (m << 13);
        else if (ex == 0) {
            f = ldexpf((float)m, -24); /* exact: m < 2^10 */
            return sign ? -f : f;
        } else b = sign | ((ex - 15 + 127) << 23) | (m << 13);
    }
    memcpy(&f, &b, 4);
    return f;
}
static uint16_t float_to_half(int type, float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t ax = x & 0x7FFFFFFFu;
    if (type == H_BF16) {
        if (ax > 0x7F800000u) return (uint16_t)((x >> 16) | 0x0040u); /* NaN stays NaN */
        return (uint16_t)((x + 0x7FFFu + ((x >> 16) & 1u)) >> 16);
    }
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    if (ax > 0x7F800000u) return (uint16_t)(sign | 0x7E00u | ((ax >> 13) & 0x3FFu));
    if (ax == 0x7F800000u) return (uint16_t)(sign | 0x7C00u);
    if (ax < 0x00800000u) return sign; /* float zero or subnormal: below 2^-126 */
    int e = (int)(ax >> 23) - 127;
    uint32_t m = (ax & 0x7FFFFFu) | 0x800000u;
    if (e >= -14) {
        uint32_t q = rne_shift(m, 13);
        if (q == 0x800u) { q = 0x400u; ++e; }
        if (e > 15) return (uint16_t)(sign | 0x7C00u);
        return (uint16_t)(sign | ((uint32_t)(e + 15) << 10) | (q & 0x3FFu));
    }
    return (uint16_t)(sign | rne_shift(m, 13 + (-14 - e)));
}

static double half_max(int type) { return type == H_BF16 ? H_MAX_BF16 : H_MAX_F16; }

/* A 16-bit cosine: like gen_cos_value (uniform in [-1, 1], near 1, exactly +-1, rounded to the
   type), and with the spice the type's special values: NaN (quiet, signalling, payloads, either
   sign), +-inf, +-1 and its neighbours, beyond [-1, 1] up to the largest finite, subnormals,
   -0; sometimes any bit pattern. */
static uint16_t gen_half_cos_bits(int type, double spice)
{
    static const uint16_t bf16pool[] = {
        0x7FC0, 0xFFC0, 0x7F81, 0xFF81, 0x7FFF, 0x7F80, 0xFF80, 0x3F80, 0xBF80, 0x3F81, 0xBF81,
        0x3F7F, 0xBF7F, 0x3FC0, 0xC000, 0x4040, 0x5015, 0xF149, 0x7F7F, 0xFF7F, 0x0001, 0x8001,
        0x007F, 0x0080, 0x8080, 0x0000, 0x8000, 0x3F00, 0x5F80};
    static const uint16_t f16pool[] = {
        0x7E00, 0xFE00, 0x7C01, 0xFC01, 0x7FFF, 0x7C00, 0xFC00, 0x3C00, 0xBC00, 0x3C01, 0xBC01,
        0x3BFF, 0xBBFF, 0x3E00, 0xC000, 0x4200, 0x70E2, 0xF0E2, 0x7BFF, 0xFBFF, 0x0001, 0x8001,
        0x03FF, 0x0400, 0x8400, 0x0000, 0x8000, 0x3800, 0x5BD0};
    if (spice > 0 && rchance(spice)) {
        if (rchance(0.15)) return (uint16_t)rnext();
        return type == H_BF16 ? PICK(bf16pool) : PICK(f16pool);
    }
    switch (rbelow(10)) {
    case 0: return float_to_half(type, rbelow(2) ? 1.0f : -1.0f);
    case 1: return float_to_half(type, (float)(0.9 + 0.1 * runif()));
    default: return float_to_half(type, (float)(2.0 * runif() - 1.0));
    }
}

static double gen_cos_value(int f32, double spice)
{
    if (spice > 0 && rchance(spice)) return special_value(f32);
    switch (rbelow(10)) {
    case 0: return rbelow(2) ? 1.0 : -1.0;
    case 1: return to_elem(f32, 0.9 + 0.1 * runif());
    default: return to_elem(f32, 2.0 * runif() - 1.0);
    }
}

/* ---------------------------------------------------------------------------------------------
 * Reporting
 * ------------------------------------------------------------------------------------------- */

static const char *const STATUS_NAME[] = {
    "AMM_OK", "AMM_ERR_NULL_POINTER", "AMM_ERR_SHAPE", "AMM_ERR_LABEL", "AMM_ERR_PARAM",
    "AMM_ERR_NONFINITE", "AMM_ERR_ALLOC", "AMM_ERR_INTERNAL", "AMM_ERR_OVERFLOW"};
#define NSTATUS 9

static const char *sname(int s) { return s >= 0 && s < NSTATUS ? STATUS_NAME[s] : "(not a status)"; }

static uint64_t g_seed;
static long long g_case;
static long long g_calls, g_failures, g_reported;
static long long g_max_report = 60;
static int g_verbose;
static int g_call_failed;      /* the current call has failed a check */
static char g_call_text[65536]; /* the current call, described */
static size_t g_call_len;
static int g_call_printed;     /* the current call's details are being printed */
static char g_kind_extra[160]; /* the kind of the failures of the current call */

/* Per entry point: calls made and statuses seen. */
enum { FAM_FWD, FAM_BWD, FAM_FB, FAM_HEAD, FAM_ST, FAM_SS, FAM_SG, FAM_SHT, FAM_SHS, FAM_SHG,
       FAM_N };
enum { FN_RESCALE = 2 * FAM_N, FN_VALIDATE, FN_INIT, FN_STATUS_NAME, FN_VERSION,
       FN_VERSION_NUMBER, FN_KBUILD, FN_KDETAIL, FN_LAST_ERROR,
       FN_HALF, /* + 3 * (half - 1) + fam: amm_forward_bf16 ... amm_forward_backward_f16 */
       FN_N = FN_HALF + 6 };
static const char *const FN_NAME[FN_N] = {
    "amm_forward_f64", "amm_forward_f32", "amm_backward_f64", "amm_backward_f32",
    "amm_forward_backward_f64", "amm_forward_backward_f32", "amm_head_forward_backward_f64",
    "amm_head_forward_backward_f32", "amm_shard_target_f64", "amm_shard_target_f32",
    "amm_shard_statistics_f64", "amm_shard_statistics_f32", "amm_shard_gradient_f64",
    "amm_shard_gradient_f32", "amm_shard_head_target_f64", "amm_shard_head_target_f32",
    "amm_shard_head_statistics_f64", "amm_shard_head_statistics_f32",
    "amm_shard_head_gradient_f64", "amm_shard_head_gradient_f32", "amm_shard_rescale_sums",
    "amm_params_validate", "amm_params_init", "amm_status_name", "amm_version",
    "amm_version_number", "amm_kernel_build", "amm_kernel_build_detail", "amm_last_error",
    "amm_forward_bf16", "amm_backward_bf16", "amm_forward_backward_bf16", "amm_forward_f16",
    "amm_backward_f16", "amm_forward_backward_f16"};
static long long g_fn_calls[FN_N], g_fn_status[FN_N][NSTATUS + 1];
static double g_fn_seconds[FN_N]; /* time spent inside the library */

static double now_seconds(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

#if defined(__GNUC__)
__attribute__((format(printf, 1, 2)))
#endif
static void note(const char *fmt, ...)
{
    if (g_call_len >= sizeof g_call_text - 1) return;
    va_list ap;
    va_start(ap, fmt);
    int w = vsnprintf(g_call_text + g_call_len, sizeof g_call_text - g_call_len, fmt, ap);
    va_end(ap);
    if (w > 0) g_call_len += (size_t)w;
    if (g_call_len > sizeof g_call_text - 1) g_call_len = sizeof g_call_text - 1;
}

static void begin_call(int fn)
{
    ++g_calls;
    ++g_fn_calls[fn];
    g_call_failed = 0;
    g_call_printed = 0;
    g_call_len = 0;
    g_call_text[0] = '\0';
    snprintf(g_kind_extra, sizeof g_kind_extra, "%s", FN_NAME[fn]);
}

static void count_status(int fn, int status)
{
    g_fn_status[fn][status >= 0 && status < NSTATUS ? status : NSTATUS]++;
}

/* Failures are tallied by kind (the check that failed, and for a wrong status the function,
   the status and the statuses expected), and the first few of each kind are printed in full,
   so that one frequent defect does not hide the others. */
#define MAX_KINDS 256
static struct { char key[256]; long long count; } g_kinds[MAX_KINDS];
static int g_nkinds;
static long long g_per_kind = 2;

#if defined(__GNUC__)
__attribute__((format(printf, 1, 2)))
#endif
static void failure(const char *fmt, ...)
{
    char key[256];
    snprintf(key, sizeof key, "%s%s%s", g_kind_extra, g_kind_extra[0] ? ": " : "", fmt);
    int kind = 0;
    while (kind < g_nkinds && strcmp(g_kinds[kind].key, key) != 0) ++kind;
    if (kind == g_nkinds && g_nkinds < MAX_KINDS) snprintf(g_kinds[g_nkinds++].key, 256, "%s", key);
    long long seen = kind < MAX_KINDS ? g_kinds[kind].count++ : g_per_kind;
    if (!g_call_failed) {
        g_call_failed = 1;
        ++g_failures;
        g_call_printed = 0;
        if ((seen < g_per_kind && g_reported < g_max_report) || g_verbose) {
            ++g_reported;
            g_call_printed = 1;
            printf("FAILURE %lld (seed %" PRIu64 ", case %lld, call %lld)\n%s", g_failures, g_seed,
                   g_case, g_calls, g_call_text);
            printf("  replay: amm_fuzz %" PRIu64 " --case %lld -v\n", g_seed, g_case);
        }
    }
    if (g_call_printed) {
        va_list ap;
        va_start(ap, fmt);
        printf("  FAILED: ");
        vprintf(fmt, ap);
        printf("\n");
        va_end(ap);
        fflush(stdout);
    }
}

/* A crash inside the library (a Swift trap is SIGILL) would lose the call: print it first. */
static volatile sig_atomic_t g_in_library;
static struct sigaction g_old_action[32];

static void write_str(const char *s) { (void)!write(2, s, strlen(s)); }

static void write_num(long long v)
{
    char buf[32];
    int i = 31;
    buf[i] = '\0';
    unsigned long long u = v < 0 ? (unsigned long long)-(v + 1) + 1 : (unsigned long long)v;
    do buf[--i] = (char)('0' + u % 10); while ((u /= 10) && i > 1);
    if (v < 0) buf[--i] = '-';
    write_str(buf + i);
}

static void on_crash(int sig)
{
    write_str("\nCRASH: signal ");
    write_num(sig);
    write_str(g_in_library ? " inside the library" : " in the fuzzer");
    write_str(", seed ");
    write_num((long long)g_seed);
    write_str(", case ");
    write_num(g_case);
    write_str(", call ");
    write_num(g_calls);
    write_str(", during:\n");
    write_str(g_call_text);
    write_str("  replay: amm_fuzz ");
    write_num((long long)g_seed);
    write_str(" --case ");
    write_num(g_case);
    write_str(" -v\n");
    sigaction(sig, &g_old_action[sig], NULL); /* the sanitizer's or the default handler next */
    if (sig == SIGABRT) raise(sig);
}

static void install_crash_handler(void)
{
    static const int sigs[] = {SIGILL, SIGSEGV, SIGBUS, SIGFPE, SIGABRT, SIGTRAP};
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; ++i) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_crash;
        sigemptyset(&sa.sa_mask);
        sa.sa_flags = SA_RESETHAND;
        sigaction(sigs[i], &sa, &g_old_action[sigs[i]]);
    }
}

static void end_call(void)
{
    if (g_verbose && !g_call_failed) printf("%s", g_call_text);
}

/* The last message the library gave on this thread, as this program saw it. */
static char g_last_msg[4096];
static int g_last_msg_known;

/* ---------------------------------------------------------------------------------------------
 * Memory: inputs exactly sized (sometimes against a PROT_NONE page, so that a read past either
 * end faults even in the uninstrumented library), outputs between canaries.
 * ------------------------------------------------------------------------------------------- */

typedef struct {
    unsigned char *map; /* mmap'd region (page mode) or malloc'd block */
    size_t maplen;      /* 0 for malloc */
    unsigned char *ptr; /* the buffer */
    size_t bytes;
} mem_t;

static size_t g_page;

static void *in_alloc(mem_t *m, size_t bytes, size_t align, int page_mode)
{
    memset(m, 0, sizeof *m);
    m->bytes = bytes;
    if (page_mode == 0 || bytes > ((size_t)1 << 20)) {
        m->map = malloc(bytes ? bytes : 1);
        if (!m->map) { fprintf(stderr, "out of memory\n"); exit(3); }
        m->ptr = m->map;
        return m->ptr;
    }
    size_t body = (bytes + align + g_page - 1) / g_page * g_page;
    m->maplen = body + 2 * g_page;
    void *map = mmap(NULL, m->maplen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (map == MAP_FAILED) { perror("mmap"); exit(3); }
    m->map = map;
    mprotect(m->map, g_page, PROT_NONE);
    mprotect(m->map + g_page + body, g_page, PROT_NONE);
    if (page_mode == 1) { /* ends at the guard page after */
        uintptr_t end = (uintptr_t)(m->map + g_page + body);
        m->ptr = (unsigned char *)((end - bytes) / align * align);
    } else { /* starts at the guard page before */
        m->ptr = m->map + g_page;
    }
    return m->ptr;
}

static unsigned char canary_byte(size_t i) { return (unsigned char)(0xC3u ^ (unsigned)(i * 37u)); }

static void *out_alloc(mem_t *m, size_t bytes, unsigned char fill)
{
    memset(m, 0, sizeof *m);
    m->bytes = bytes;
    m->map = malloc(bytes + 2 * CANARY);
    if (!m->map) { fprintf(stderr, "out of memory\n"); exit(3); }
    for (size_t i = 0; i < CANARY; ++i) {
        m->map[i] = canary_byte(i);
        m->map[CANARY + bytes + i] = canary_byte(i + 1000);
    }
    memset(m->map + CANARY, fill, bytes);
    m->ptr = m->map + CANARY;
    return m->ptr;
}

static int canaries_intact(const mem_t *m)
{
    for (size_t i = 0; i < CANARY; ++i)
        if (m->map[i] != canary_byte(i) || m->map[CANARY + m->bytes + i] != canary_byte(i + 1000))
            return 0;
    return 1;
}

static void mem_free(mem_t *m)
{
    if (m->map) {
        if (m->maplen) munmap(m->map, m->maplen);
        else free(m->map);
    }
    memset(m, 0, sizeof *m);
}

/* ---------------------------------------------------------------------------------------------
 * Parameters
 * ------------------------------------------------------------------------------------------- */

typedef struct {
    uint32_t struct_size;
    double scale, margin, hard_margin;
    int32_t target, hard, reduction, num_threads, margin_gradient;
    int64_t ignore_index, head_block_size;
    int hn_set;          /* hard_negatives points to a buffer of n counts (when covered)   */
    int uncovered_wild;  /* uncovered pointer field: 1 garbage bytes, 0 a decoy buffer    */
    uint64_t garbage;    /* seed of the garbage bytes around and in the struct            */
} pspec_t;

/* What the library must see: the fields the struct_size covers, defaults for the others. */
typedef struct {
    int size_ok;
    double scale, margin, hard_margin;
    int32_t target, hard, reduction, num_threads, margin_gradient;
    int64_t ignore_index, head_block_size;
    int hn_covered;
} eff_t;

static void effective(const pspec_t *ps, eff_t *e)
{
    e->size_ok = ps->struct_size >= 56;
    e->scale = ps->scale;
    e->margin = ps->margin;
    e->hard_margin = ps->hard_margin;
    e->target = ps->target;
    e->hard = ps->hard;
    e->reduction = ps->reduction;
    e->num_threads = ps->num_threads;
    e->ignore_index = ps->ignore_index;
    /* a field is covered when it lies wholly within struct_size */
    e->head_block_size = ps->struct_size >= 64 ? ps->head_block_size : 0;
    e->hn_covered = ps->struct_size >= 72;
    e->margin_gradient = ps->struct_size >= 76 ? ps->margin_gradient : 0;
}

static double gen_scale(void)
{
    static const double edge[] = {DBL_MIN, 0x1p-1074, 1e-300, 1e-30, FLT_MAX,
                                  0x1.fffffefp+127, 0x1.fffffefffffffp+127, 1e10, 1e30, 1e38,
                                  1e300, DBL_MAX, 1e5, 0.001};
    switch (rbelow(10)) {
    case 0: case 1: case 2: return 64;
    case 3: return 30;
    case 4: return 1;
    case 5: return 0.5 + 100 * runif();
    case 6: return pow(10.0, 6 * runif() - 3);
    default: return rbelow(3) ? 64 : PICK(edge);
    }
}

static double gen_margin(int target)
{
    static const double arc_edge[] = {0.0, -0.0, 0x1p-1074, 1e-300, 3.0, 3.14,
                                      0x1.921fb54442d17p+1, 1.5707963267948966, 2.5};
    static const double cos_edge[] = {0.0, -0.0, -0.5, 1e10, -1e10, 1e300, -1e300, DBL_MAX,
                                      -DBL_MAX, 0x1p-1074, 4.0, -4.0, 2.0};
    switch (rbelow(8)) {
    case 0: case 1: case 2: return target == 1 ? 0.35 : 0.5;
    case 3: return target == 1 ? 4 * runif() - 2 : 3.1 * runif();
    default: return target == 1 ? PICK(cos_edge) : PICK(arc_edge);
    }
}

static double gen_hard_margin(void)
{
    static const double edge[] = {0.0, -0.0, 1.2, 0x1p-1074, 1e-300, 10.0, 1e10, 1e30, 1e300,
                                  DBL_MAX, 3.5, 100.0, 0x1p127, 0x1p128};
    switch (rbelow(6)) {
    case 0: case 1: return 0.2;
    case 2: return 2 * runif();
    default: return PICK(edge);
    }
}

static int64_t gen_ignore_index(int64_t c)
{
    static const int64_t edge[] = {-1, 0, 1, 2, INT64_MIN, INT64_MAX, INT64_MIN + 1,
                                   INT64_MAX - 1, 1000, -101};
    if (rchance(0.5)) return -100;
    if (rchance(0.3) && c >= 1 && c < INT64_MAX) return rrange(0, c < 12 ? c : 12);
    return PICK(edge);
}

/* Mutates one field out of its domain (or to a boundary of it). */
static void break_params(pspec_t *ps, int f32)
{
    switch (rbelow(9)) {
    case 0: {
        static const uint32_t v[] = {0, 1, 4, 8, 48, 55};
        ps->struct_size = rchance(0.5) ? PICK(v) : (uint32_t)rbelow(56);
        break;
    }
    case 1: {
        static const int32_t v[] = {-1, 2, 3, INT32_MIN, INT32_MAX, 100};
        ps->target = PICK(v);
        break;
    }
    case 2: {
        static const int32_t v[] = {-1, 5, 6, INT32_MIN, INT32_MAX, 17};
        ps->hard = PICK(v);
        break;
    }
    case 3: {
        static const int32_t v[] = {-1, 3, 4, INT32_MIN, INT32_MAX, 9};
        ps->reduction = PICK(v);
        break;
    }
    case 4: {
        static const double v[] = {0.0, -0.0, -1.0, -DBL_MIN, -0x1p-1074, INFINITY, -INFINITY,
                                    -1e300, -64.0};
        static const double v32[] = {FLT_OVERFLOW_D, 0x1.0000000000001p+128, 1e39, 1e300,
                                     DBL_MAX};
        if (rchance(0.15)) ps->scale = nan_bits((int)rbelow(2), rnext());
        else ps->scale = (f32 && rchance(0.4)) ? PICK(v32) : PICK(v);
        break;
    }
    case 5: {
        static const double arc[] = {-0x1p-1074, -1e-300, -0.1, PI_D, 0x1.921fb54442d19p+1, 4.0,
                                     INFINITY, -INFINITY, 1e300, 7.0};
        static const double cosv[] = {INFINITY, -INFINITY};
        if (rchance(0.15)) ps->margin = nan_bits((int)rbelow(2), rnext());
        else ps->margin = ps->target == 1 ? PICK(cosv) : PICK(arc);
        break;
    }
    case 6: {
        static const double v[] = {-0x1p-1074, -1e-300, -1.0, -0.2, INFINITY, -INFINITY,
                                   -DBL_MAX};
        static const double curricular[] = {INFINITY, -INFINITY};  /* any finite t is valid */
        if (rchance(0.15)) ps->hard_margin = nan_bits((int)rbelow(2), rnext());
        else ps->hard_margin = ps->hard == AMM_HARD_CURRICULAR ? PICK(curricular) : PICK(v);
        break;
    }
    case 7: {
        if (rchance(0.5)) {
            static const int32_t v[] = {-1, 2, 3, INT32_MIN, INT32_MAX};
            ps->margin_gradient = PICK(v);
            if (ps->struct_size < 76) ps->struct_size = (uint32_t)sizeof(amm_params);
            break;
        }
        static const int32_t v[] = {-1, -2, INT32_MIN};
        ps->num_threads = PICK(v);
        break;
    }
    default: {
        static const int64_t v[] = {-1, -16, INT64_MIN};
        ps->head_block_size = PICK(v);
        break;
    }
    }
}

static void gen_params(pspec_t *ps, int f32, int64_t c_hint, double break_rate)
{
    memset(ps, 0, sizeof *ps);
    ps->struct_size = (uint32_t)sizeof(amm_params);
    if (rchance(0.2)) {
        static const uint32_t v[] = {56, 64, 72, 57, 60, 63, 65, 71, 73, 75, 76, 80, 87, 88, 128,
                                     256, 4096, UINT32_MAX, 0x80000000u};
        ps->struct_size = PICK(v);
    }
    ps->target = (int32_t)rbelow(2);
    ps->hard = (int32_t)rbelow(5);
    ps->reduction = (int32_t)rbelow(3);
    ps->scale = gen_scale();
    ps->margin = gen_margin(ps->target);
    ps->hard_margin = gen_hard_margin();
    if (ps->hard == AMM_HARD_CURRICULAR && rchance(0.5)) ps->hard_margin = -ps->hard_margin;
    ps->margin_gradient = (int32_t)rbelow(2);
    {
        static const int32_t v[] = {0, 0, 1, 1, 2, 3, 4, 7, 64, 1000, INT32_MAX};
        ps->num_threads = rchance(0.95) ? (int32_t)rbelow(4) : PICK(v);
    }
    ps->ignore_index = gen_ignore_index(c_hint);
    {
        static const int64_t v[] = {1, 2, 3, 5, 16, 17, 32, 8192, INT64_MAX, (int64_t)1 << 40};
        ps->head_block_size = rchance(0.5) ? 0 : PICK(v);
    }
    ps->hn_set = rchance(0.5);
    ps->uncovered_wild = rchance(0.3);
    ps->garbage = rnext();
    if (rchance(break_rate)) {
        break_params(ps, f32);
        if (rchance(0.3)) break_params(ps, f32);
    }
}

static void describe_params(const pspec_t *ps)
{
    note("  params: struct_size=%" PRIu32 " scale=%.17g (%a) margin=%.17g (%a) hard_margin=%.17g "
         "(%a) target=%" PRId32 " hard=%" PRId32 " reduction=%" PRId32 " num_threads=%" PRId32
         " ignore_index=%" PRId64 " head_block_size=%" PRId64 " margin_gradient=%" PRId32
         " hard_negatives=%s\n",
         ps->struct_size, ps->scale, ps->scale, ps->margin, ps->margin, ps->hard_margin,
         ps->hard_margin, ps->target, ps->hard, ps->reduction, ps->num_threads, ps->ignore_index,
         ps->head_block_size, ps->margin_gradient,
         ps->struct_size >= 72 ? (ps->hn_set ? "buffer of n" : "NULL")
                               : (ps->uncovered_wild ? "(not covered: garbage)"
                                                     : "(not covered: decoy buffer)"));
}

/* Writes the struct into pbuf (PBUF bytes): garbage everywhere, the amm_params at offset 0 from
   amm_params_init and then the spec's fields; the fields past struct_size hold garbage (or a
   decoy pointer), which the library must not read. */
static void write_params(unsigned char *pbuf, const pspec_t *ps, int64_t *hn, int64_t *decoy)
{
    uint64_t g = ps->garbage;
    for (size_t i = 0; i < PBUF; i += 8) {
        uint64_t w = splitmix(&g);
        memcpy(pbuf + i, &w, 8);
    }
    amm_params *p = (amm_params *)pbuf;
    amm_params_init(p);
    p->struct_size = ps->struct_size;
    p->scale = ps->scale;
    p->margin = ps->margin;
    p->hard_margin = ps->hard_margin;
    p->target = ps->target;
    p->hard = ps->hard;
    p->reduction = ps->reduction;
    p->num_threads = ps->num_threads;
    p->ignore_index = ps->ignore_index;
    if (ps->struct_size >= 64) p->head_block_size = ps->head_block_size;
    else {
        int64_t junk = (int64_t)splitmix(&g) | INT64_MIN; /* negative: invalid if read */
        memcpy(&p->head_block_size, &junk, 8);
    }
    if (ps->struct_size >= 72) p->hard_negatives = ps->hn_set ? hn : NULL;
    else if (!ps->uncovered_wild) p->hard_negatives = decoy;
    /* else: the garbage bytes stay */
    if (ps->struct_size >= 76) p->margin_gradient = ps->margin_gradient;
    else {
        int32_t junk = (int32_t)(splitmix(&g) | 0x40000000u); /* invalid if read */
        memcpy(&p->margin_gradient, &junk, 4);
    }
    /* target_cosines: NULL where covered (the Python tests check its values); garbage where
       not, which the library must not read. */
    if (ps->struct_size >= 88) p->target_cosines = NULL;
    else {
        uint64_t junk = splitmix(&g);
        memcpy(&p->target_cosines, &junk, 8);
    }
}

/* ---------------------------------------------------------------------------------------------
 * One call: its arguments, the oracle, the checks
 * ------------------------------------------------------------------------------------------- */

enum { A_X, A_W, A_LAB, A_GL, A_TC, A_GMAX, A_GSUM, A_LOSS, A_GX, A_GW, A_TCO, A_RMAX, A_RSUM,
       A_HN, A_COUNT };
static const char *const A_NAME[A_COUNT] = {
    "x", "weights", "labels", "grad_loss", "target_cos", "global_max", "global_sum", "loss",
    "grad_x", "grad_weights", "target_cos(out)", "row_max", "row_sum", "hard_negatives"};
enum { T_ELEM, T_F64, T_I64 };

typedef struct {
    int used, type, out;
    int64_t count; /* documented number of elements; -1 when the shape does not give one */
    int big;       /* count unknown or > LIMIT: a one-element buffer that must not be read */
    int null;      /* passed as NULL */
    size_t alloc;  /* elements held */
    double *v;     /* input values (T_ELEM, T_F64); for 16-bit cos the widened values */
    uint16_t *hv;  /* 16-bit cos: the bits passed */
    int64_t *iv;   /* input values (T_I64) */
    mem_t mem;
    unsigned char *copy;
} arr_t;

typedef struct {
    int fam, f32;
    int half;         /* H_BF16, H_F16: the _bf16/_f16 function of fam (then f32 is 1 too) */
    pspec_t ps;
    int pnull;
    int64_t n, c, d, cl, cs, ct; /* c: unsharded classes; cl, cs, ct: the shard */
    arr_t a[A_COUNT];
    int consistent;   /* phase 3: target_cos, global_max and global_sum from phases 1 and 2 */
    int page_mode;    /* inputs against guard pages */
    int no_rerun;
    mem_t pmem, decoy;
    unsigned char pcopy[PBUF];
    int status;
} call_t;

static int is_head(int fam) { return fam == FAM_HEAD || fam >= FAM_SHT; }
static int is_shard(int fam) { return fam >= FAM_ST; }
static int phase_of(int fam)
{
    switch (fam) {
    case FAM_ST: case FAM_SHT: return 1;
    case FAM_SS: case FAM_SHS: return 2;
    case FAM_SG: case FAM_SHG: return 3;
    default: return 0;
    }
}
static int fn_index(const call_t *k)
{
    return k->half ? FN_HALF + 3 * (k->half - 1) + k->fam : 2 * k->fam + k->f32;
}
static const char *fn_name(const call_t *k) { return FN_NAME[fn_index(k)]; }

static unsigned used_mask(int fam)
{
#define M(r) (1u << (r))
    switch (fam) {
    case FAM_FWD: return M(A_X) | M(A_LAB) | M(A_LOSS);
    case FAM_BWD: return M(A_X) | M(A_LAB) | M(A_GL) | M(A_GX);
    case FAM_FB: return M(A_X) | M(A_LAB) | M(A_LOSS) | M(A_GX);
    case FAM_HEAD: return M(A_X) | M(A_W) | M(A_LAB) | M(A_LOSS) | M(A_GX) | M(A_GW);
    case FAM_ST: return M(A_X) | M(A_LAB) | M(A_TCO);
    case FAM_SS: return M(A_X) | M(A_LAB) | M(A_TC) | M(A_RMAX) | M(A_RSUM);
    case FAM_SG:
        return M(A_X) | M(A_LAB) | M(A_TC) | M(A_GMAX) | M(A_GSUM) | M(A_GL) | M(A_LOSS) | M(A_GX);
    case FAM_SHT: return M(A_X) | M(A_W) | M(A_LAB) | M(A_TCO);
    case FAM_SHS: return M(A_X) | M(A_W) | M(A_LAB) | M(A_TC) | M(A_RMAX) | M(A_RSUM);
    case FAM_SHG:
        return M(A_X) | M(A_W) | M(A_LAB) | M(A_TC) | M(A_GMAX) | M(A_GSUM) | M(A_LOSS) |
               M(A_GX) | M(A_GW);
    }
    return 0;
#undef M
}

static int64_t mul_count(int64_t a, int64_t b)
{
    int64_t r;
    if (a < 0 || b < 0 || __builtin_mul_overflow(a, b, &r)) return -1;
    return r;
}

/* Sets used, type, out, count, big and alloc of every array from the shape and reduction. */
static void layout(call_t *k)
{
    unsigned used = used_mask(k->fam);
    int head = is_head(k->fam), shard = is_shard(k->fam);
    int64_t cols = shard ? k->cl : k->c;
    int64_t n = k->n < 0 ? -1 : k->n;
    eff_t e;
    effective(&k->ps, &e);
    int64_t per_red = e.reduction == AMM_REDUCTION_NONE ? n : 1;
    for (int r = 0; r < A_COUNT; ++r) {
        arr_t *a = &k->a[r];
        a->used = (used >> r) & 1u;
        a->type = (r == A_LAB || r == A_HN) ? T_I64
                  : (r == A_TC || r == A_GMAX || r == A_GSUM || r == A_TCO || r == A_RMAX ||
                     r == A_RSUM) ? T_F64 : T_ELEM;
        a->out = r >= A_LOSS;
        switch (r) {
        case A_X: case A_GX: a->count = head ? mul_count(n, k->d) : mul_count(n, cols); break;
        case A_W: case A_GW: a->count = mul_count(cols, k->d); break;
        case A_GL: case A_LOSS: a->count = per_red; break;
        default: a->count = n; break;
        }
        if (r == A_HN) a->used = k->ps.struct_size >= 72 && k->ps.hn_set;
        a->big = a->count < 0 || a->count > LIMIT;
        a->alloc = a->big ? 1 : (size_t)a->count;
    }
}

/* 16 bits: cos and grad_cos of the _bf16/_f16 functions (their loss and grad_loss are float) */
static int is_half_arr(const call_t *k, const arr_t *a)
{
    return k->half && (a == &k->a[A_X] || a == &k->a[A_GX]);
}

static size_t elem_size(const call_t *k, const arr_t *a)
{
    if (is_half_arr(k, a)) return 2u;
    return a->type == T_ELEM ? (k->f32 ? 4u : 8u) : 8u;
}

static void alloc_values(call_t *k)
{
    for (int r = 0; r < A_COUNT; ++r) {
        arr_t *a = &k->a[r];
        free(a->v);
        free(a->iv);
        free(a->hv);
        a->v = NULL;
        a->iv = NULL;
        a->hv = NULL;
        if (!a->used || a->out) continue;
        if (is_half_arr(k, a) && !(a->hv = calloc(a->alloc ? a->alloc : 1, 2))) exit(3);
        if (a->type == T_I64) a->iv = calloc(a->alloc ? a->alloc : 1, 8);
        else a->v = calloc(a->alloc ? a->alloc : 1, sizeof(double));
        if ((a->type == T_I64 && !a->iv) || (a->type != T_I64 && !a->v)) exit(3);
    }
}

/* Rows whose label equals ignore_index (labels known valid). */
static int row_ignored(const call_t *k, const eff_t *e, int64_t i)
{
    return k->a[A_LAB].iv[i] == e->ignore_index;
}

/* ---- the oracle ---------------------------------------------------------------------------- */

typedef struct {
    unsigned mask;          /* acceptable statuses */
    int reads;              /* the call may read the arrays (it gets past the pointers) */
    const char *pname[4];   /* a PARAM of the params stage names one of these */
    int npname;
    int64_t bad_label_row;  /* a LABEL error names this row */
    int safe;               /* no output can overflow: AMM_ERR_OVERFLOW is not acceptable */
    int must_overflow;      /* the reference puts an output far beyond the element type */
    int exact_single;       /* the mask holds one status, decided by validation */
} oracle_t;

/* The header: for _f32, the scale must be finite and nonzero as a float, hard_margin finite. */
static int finite_f32(double v) { return fabs(v) < FLT_OVERFLOW_D; }
static int finite_f32_scale(double s) { return finite_f32(s) && (float)s != 0.0f; }

/* The parameter stage. Returns 1 when it fails (certainly), filling the names it may give;
   sets *amb when a value lies where the header can be read both ways (m == the double pi). */
static int params_fail(const eff_t *e, int f32, int check_block, oracle_t *o, int *amb)
{
    const char *first = NULL;
    *amb = 0;
    o->npname = 0;
    if (!e->size_ok) first = "struct_size";
    else if (e->target < 0 || e->target > 1) first = "target";
    else if (e->hard < 0 || e->hard > 4) first = "hard";
    else if (e->reduction < 0 || e->reduction > 2) first = "reduction";
    else if (e->margin_gradient < 0 || e->margin_gradient > 1) first = "margin_gradient";
    if (first) {
        o->pname[o->npname++] = first;
        return 1;
    }
    if (!(isfinite(e->scale) && e->scale > 0)) first = "scale";
    else if (e->target == AMM_TARGET_ARC ? !(e->margin >= 0 && e->margin < PI_D)
                                         : !isfinite(e->margin)) {
        if (e->target == AMM_TARGET_ARC && e->margin == PI_D) *amb = 1; /* [0, pi): pi is not a double */
        else first = "margin";
    }
    if (!first && !(isfinite(e->hard_margin) &&
                    (e->hard_margin >= 0 || e->hard == AMM_HARD_CURRICULAR)))
        first = "hard_margin";
    if (!first && e->num_threads < 0) first = "num_threads";
    if (!first && check_block && e->head_block_size < 0) first = "head_block_size";
    int f32bad = f32 && isfinite(e->scale) && e->scale > 0 && !finite_f32_scale(e->scale);
    if (f32bad) o->pname[o->npname++] = "scale";
    /* The header: for _f32, hard_margin too must be finite as a float. */
    int f32bad_t = f32 && isfinite(e->hard_margin) &&
                   (e->hard_margin >= 0 || e->hard == AMM_HARD_CURRICULAR) &&
                   !finite_f32(e->hard_margin);
    if (f32bad_t) o->pname[o->npname++] = "hard_margin";
    f32bad = f32bad || f32bad_t;
    if (first) o->pname[o->npname++] = first;
    if (*amb) o->pname[o->npname++] = "margin";
    return first != NULL || f32bad;
}

/* 0: valid; 1: SHAPE; 2: the header can be read both ways (SHAPE or valid). */
static int shape_check(const call_t *k)
{
    const int64_t I32 = INT32_MAX;
    switch (k->fam) {
    case FAM_FWD: case FAM_BWD: case FAM_FB:
        return k->n < 0 || k->c < 1 || mul_count(k->n, k->c) < 0;
    case FAM_HEAD:
        return k->n < 0 || k->d < 1 || k->c < 1 || k->n > I32 || k->d > I32 || k->c > I32;
    case FAM_ST: case FAM_SS: case FAM_SG:
        return k->n < 0 || k->ct < 1 || k->cl < 0 || k->cs < 0 || k->cs > k->ct - k->cl ||
               mul_count(k->n, k->cl) < 0;
    default:
        if (k->n < 0 || k->d < 1 || k->n > I32 || k->d > I32 || k->ct < 1 || k->cl < 0 ||
            k->cs < 0 || k->cs > k->ct - k->cl)
            return 1;
        /* the head's classes are OpenBLAS indices: c_local (and c_total?) at most INT32_MAX */
        return (k->cl > I32 || k->ct > I32) ? 2 : 0;
    }
}

/* Pointers: 0 all there; 1 a required one is NULL; 2 only one the header leaves open. */
static int pointer_check(const call_t *k)
{
    int amb = 0;
    for (int r = 0; r < A_COUNT; ++r) {
        const arr_t *a = &k->a[r];
        if (!a->used || r == A_HN || !a->null || a->count == 0) continue;
        if (k->fam == FAM_SG && (r == A_GL || r == A_LOSS)) continue; /* documented optional */
        if (k->fam == FAM_SHG && r == A_LOSS) { amb = 1; continue; }  /* "the loss (as above)" */
        return 1;
    }
    return amb ? 2 : 0;
}

static int any_nonfinite(const double *v, int64_t count)
{
    for (int64_t i = 0; i < count; ++i)
        if (!isfinite(v[i])) return 1;
    return 0;
}

/* No output of a valid call can overflow: a conservative bound on every logit, loss and
   gradient entry (docs/FORMULATION.md), with a factor 1000 to spare. */
static int overflow_safe(const call_t *k, const eff_t *e)
{
    const double E = k->f32 ? (double)FLT_MAX : DBL_MAX;
    int head = is_head(k->fam), shard = is_shard(k->fam);
    int64_t n = k->n, cols = shard ? k->cl : k->c;
    double cm = 1.0;
    if (head) cm = 1.01;
    else {
        for (int64_t i = 0; i < n; ++i) {
            if (row_ignored(k, e, i)) continue;
            for (int64_t j = 0; j < cols; ++j) {
                double x = fabs(k->a[A_X].v[i * cols + j]);
                if (isfinite(x) && x > cm) cm = x;
            }
        }
    }
    if (k->a[A_TC].used && !k->a[A_TC].null)
        for (int64_t i = 0; i < n; ++i)
            if (!row_ignored(k, e, i) && isfinite(k->a[A_TC].v[i]) && fabs(k->a[A_TC].v[i]) > cm)
                cm = fabs(k->a[A_TC].v[i]);
    double s = e->scale, t = e->hard_margin, m = fabs(e->margin);
    double g = cm + m + 1; /* target: arc cos(theta + m) or c - m sin m; cos c - m */
    double gneg = cm, dd = 1;
    switch (e->hard) {
    case AMM_HARD_AMM: gneg = cm > 1.5 ? cm : 1.5; dd = 1e7 + 2; break;
    case AMM_HARD_MV_FIXED: gneg = t * cm + t + 1 + cm; dd = t + 1; break;
    case AMM_HARD_MV_ADAPTIVE: gneg = (t + 1) * cm + t + 1; dd = t + 2; break;
    case AMM_HARD_CURRICULAR: gneg = cm * (fabs(t) + cm) + cm; dd = fabs(t) + 2 * cm + 1; break;
    default: break;
    }
    if (e->hard == AMM_HARD_MV_FIXED || e->hard == AMM_HARD_MV_ADAPTIVE)
        if (t + 1 > g) g = t + 1;
    if (gneg > g) g = gneg;
    if (e->target == AMM_TARGET_ARC && dd < 1e7 + 2) dd = 1e7 + 2;
    double s1 = s > 1 ? s : 1;
    double u = 1;
    if (k->a[A_GL].used && !k->a[A_GL].null)
        for (int64_t i = 0; i < k->a[A_GL].count; ++i)
            if (fabs(k->a[A_GL].v[i]) > u) u = fabs(k->a[A_GL].v[i]);
    double z = s1 * g;
    double lossb = (double)(n + 1) * (2 * z + log((double)cols + 2) + 4);
    double gradb = u * s1 * dd * 4;
    if (head) {
        double w = (double)(n + cols + k->d + 2);
        gradb *= w * w * 1e12 * 4;
    }
    double b = z;
    if (lossb > b) b = lossb;
    /* 16-bit gradients: their own range (the loss stays float) */
    if (k->half && k->fam != FAM_FWD && gradb * 1e3 >= half_max(k->half)) return 0;
    if (gradb > b) b = gradb;
    return b * 1e3 < E;
}


/* ---- a reference of docs/FORMULATION.md in long double --------------------------------------
 * For the functions on cosine logits (forward, backward, forward_backward, shard statistics):
 * the exact logits, row losses and gradients, each with an error bound from the header's
 * precision model (elementwise in the element type; per row in double). Used (a) to require
 * AMM_ERR_OVERFLOW where a logit, loss or gradient is far beyond the element type (OK would
 * be an infinity, a NaN, or a wrong number), and (b) to check the values a successful call
 * returns, where the inputs are ordinary. */

typedef struct {
    int amb;               /* a cosine too near the mining threshold, a branch or a floor */
    long double zy;        /* target logit (double in both element types) */
    long double zneg_max;  /* largest negative logit over the given columns; -inf if none */
    long double sum_neg;   /* sum of exp(z_j - zneg_max) over the negatives */
    long double loss;      /* logsumexp(z_y, z_j...) - z_y */
    long double err_z;     /* bound on the error of any logit as the library forms it */
    long double zabs;      /* largest |logit| of the row */
} rowref_t;

/* The row's reference over columns [start, start + cols) of the classes; y the target (may lie
   outside); cy its cosine. w the row's upstream factor; grad (cols values) and grad_tol, when
   not NULL, receive the gradient of the given columns and a tolerance for each entry. */
static void row_reference(const eff_t *e, int f32, const double *row, int64_t cols, int64_t start,
                          int64_t y, double cy, long double w, long double *grad,
                          long double *grad_tol, long double cos_err, rowref_t *r)
{
    const long double eps = f32 ? 0x1p-24L : 0x1p-53L, eps_d = 0x1p-53L;
    long double s = e->scale, t = e->hard_margin, m = e->margin;
    long double f, df, df_rel;
    memset(r, 0, sizeof *r);
    if (e->target == AMM_TARGET_COS) {
        f = (long double)cy - m;
        df = 1;
        df_rel = 0;
    } else {
        double thr = cos(PI_D - e->margin);
        if (fabs(cy - thr) <= 1e-9) r->amb = 1;
        if (cy > thr) {
            long double c = cy < -1 ? -1 : cy > 1 ? 1 : cy;
            long double root = sqrtl(1 - c * c), sint = root > 1e-7L ? root : 1e-7L;
            f = c * cosl(m) - root * sinl(m);
            df = cosl(m) + sinl(m) * c / sint;
            /* cos m + sin m c / sin(theta) may cancel: its error is relative to the terms */
            df_rel = (8 * eps_d / (1 - c * c + 1e-300L) + 8 * eps_d) *
                     (fabsl(cosl(m)) + fabsl(sinl(m) * c / sint)) / (fabsl(df) + 1e-300L);
            if (fabsl(root - 1e-7L) < 1e-9L + 4 * cos_err) r->amb = 1;
        } else {
            f = (long double)cy - m * sinl(m);
            df = 1;
            df_rel = 0;
        }
    }
    if (e->margin_gradient == AMM_MARGIN_GRADIENT_STRAIGHT_THROUGH) {
        df = 1; /* the value is unchanged, its derivative taken as 1 */
        df_rel = 0;
    }
    r->zy = s * f;
    /* negatives */
    /* theta <= pi: for t >= pi no negative has theta > t (g = 1), as t = pi gives */
    long double ta = t < 3.14159265358979323846264338327950288L ? t
                                                                : 3.14159265358979323846264338327950288L;
    long double zmax = -INFINITY, ct_cos = cosl(ta), ct_sin = sinl(ta);
    long double err = 4 * eps_d * fabsl(r->zy) + 4 * eps_d + 4 * s * cos_err * (fabsl(df) + 1);
    long double *z = calloc((size_t)cols + 1, sizeof(long double));
    long double *dg = calloc((size_t)cols + 1, sizeof(long double));
    long double *dg_rel = calloc((size_t)cols + 1, sizeof(long double));
    if (!z || !dg || !dg_rel) exit(3);
    for (int64_t j = 0; j < cols; ++j) {
        if (start + j == y) continue;
        long double c = row[j], g, d, drel = 0, ez;
        if (fabsl(c - f) <= 1e-9L * (1 + fabsl(f)) + 8 * cos_err) r->amb = 1;
        int hard = c > f;
        ez = 4 * eps * fabsl(s * c) + 4 * eps + 4 * s * cos_err;
        if (!hard || e->hard == AMM_HARD_NONE) {
            g = c;
            d = 1;
        } else if (e->hard == AMM_HARD_AMM) {
            long double cc = c < -1 ? -1 : c > 1 ? 1 : c;
            long double root = sqrtl(1 - cc * cc), sint = root > 1e-7L ? root : 1e-7L;
            if (fabsl(cc - ct_cos) <= 1e-9L + 4 * cos_err) r->amb = 1;
            if (fabsl(root - 1e-7L) < 1e-9L + 4 * cos_err) r->amb = 1;
            if (cc < ct_cos) {
                g = cc * ct_cos + root * ct_sin;
                d = ct_cos - ct_sin * cc / sint;
                /* 1 - c^2 is rounded in the element type: sqrt(1 - c^2) is off by about
                   eps / sqrt(1 - c^2), at most sqrt(eps) */
                long double es = eps / (root > sqrtl(eps) ? root : sqrtl(eps));
                ez += 4 * s * fabsl(ct_sin) * es;
                drel = (8 * eps / (1 - cc * cc + 1e-300L) + 8 * eps) *
                       (fabsl(ct_cos) + fabsl(ct_sin * cc / sint)) / (fabsl(d) + 1e-300L);
            } else {
                g = 1;
                d = 0;
            }
        } else if (e->hard == AMM_HARD_MV_FIXED) {
            g = t * c + t - 1;
            d = t;
            ez += 4 * eps * s * (t * fabsl(c) + t + 1);
        } else if (e->hard == AMM_HARD_CURRICULAR) {
            g = c * (t + c);
            d = t + 2 * c;
            ez += 4 * eps * s * fabsl(c) * (fabsl(t) + fabsl(c));
        } else {
            g = (t + 1) * c + t;
            d = t + 1;
            ez += 4 * eps * s * ((t + 1) * fabsl(c) + t);
        }
        z[j] = s * g;
        ez += 4 * eps * fabsl(z[j]);
        if (e->margin_gradient == AMM_MARGIN_GRADIENT_STRAIGHT_THROUGH) {
            d = 1;
            drel = 0;
        }
        dg[j] = d;
        dg_rel[j] = drel;
        if (z[j] > zmax) zmax = z[j];
        if (ez > err) err = ez;
        if (fabsl(z[j]) > r->zabs) r->zabs = fabsl(z[j]);
    }
    if (fabsl(r->zy) > r->zabs) r->zabs = fabsl(r->zy);
    r->zneg_max = zmax;
    long double sum = 0;
    for (int64_t j = 0; j < cols; ++j)
        if (start + j != y) sum += expl(z[j] - zmax);
    r->sum_neg = zmax == -INFINITY ? 0 : sum;
    long double big = r->zy > zmax ? r->zy : zmax;
    long double total = expl(r->zy - big) + (zmax == -INFINITY ? 0 : sum * expl(zmax - big));
    long double lse = big + logl(total);
    r->loss = lse - r->zy;
    r->err_z = err;
    if (grad) {
        long double negsum = 0;
        for (int64_t j = 0; j < cols; ++j) {
            if (start + j == y) continue;
            /* not exp(z_j - lse): with logits near 1e38 the log of the sum is lost in lse
               (six negatives at z = s would each get p = 1) */
            long double p = expl(z[j] - big) / total;
            negsum += p;
            grad[j] = w * s * p * dg[j];
            /* p's arguments carry the logits' errors (exp: 2 ulp more); dg its own, relative
               to the terms it is formed of (they may cancel) */
            long double rel_p = 4 * err + 8 * eps;
            if (rel_p > 1) rel_p = 1;
            grad_tol[j] = rel_p * fabsl(grad[j]) + fabsl(w * s * p * dg[j]) * dg_rel[j];
        }
        if (y >= start && y - start < cols) {
            grad[y - start] = -w * s * negsum * df;
            long double rel_p = 4 * err + 8 * eps;
            if (rel_p > 1) rel_p = 1;
            grad_tol[y - start] = rel_p * fabsl(grad[y - start]) + fabsl(grad[y - start]) * df_rel;
        }
    }
    free(z);
    free(dg);
    free(dg_rel);
}

/* The reference of a whole call on cosine logits (FWD, BWD, FB, SS). */
typedef struct {
    int valid;             /* computed (labels valid, the rows that count finite) */
    int amb;               /* some row too near a threshold: no value checks, no requirement */
    int must_overflow;     /* a logit, loss or gradient far beyond the element type */
    int ordinary;          /* inputs where the values are checked */
    rowref_t *rows;
    long double *grad, *grad_tol;
    long double red, red_tol;  /* the reduced loss (mean, sum) */
} callref_t;

static void callref_free(callref_t *c)
{
    free(c->rows);
    free(c->grad);
    free(c->grad_tol);
    memset(c, 0, sizeof *c);
}

/* The head's cosines, normalize(x) normalize(W)^T (docs/FORMULATION.md, "Head"), n x cols. */
static double *head_cosines(const call_t *k, int64_t cols)
{
    int64_t n = k->n, d = k->d;
    double *out = calloc((size_t)(n * cols) + 1, sizeof(double));
    if (!out) exit(3);
    for (int64_t i = 0; i < n; ++i) {
        const double *x = k->a[A_X].v + i * d;
        long double nx = 0;
        for (int64_t q = 0; q < d; ++q) nx += (long double)x[q] * x[q];
        nx = sqrtl(nx);
        if (nx < 1e-12L) nx = 1e-12L;
        for (int64_t j = 0; j < cols; ++j) {
            const double *w = k->a[A_W].v + j * d;
            long double nw = 0, dot = 0;
            for (int64_t q = 0; q < d; ++q) {
                nw += (long double)w[q] * w[q];
                dot += (long double)x[q] * w[q];
            }
            nw = sqrtl(nw);
            if (nw < 1e-12L) nw = 1e-12L;
            out[i * cols + j] = (double)(dot / nx / nw);
        }
    }
    return out;
}

static void call_reference(const call_t *k, callref_t *cr)
{
    memset(cr, 0, sizeof *cr);
    int fam = k->fam;
    if (fam != FAM_FWD && fam != FAM_BWD && fam != FAM_FB && fam != FAM_SS && fam != FAM_HEAD &&
        fam != FAM_SHS)
        return;
    eff_t e;
    effective(&k->ps, &e);
    int shard = fam == FAM_SS || fam == FAM_SHS, head = is_head(fam);
    /* the head's cosines come out of products in the element type: off by about d eps */
    long double cos_err = head ? 4 * (long double)(k->d + 2) * (k->f32 ? 0x1p-24L : 0x1p-53L) : 0;
    double *hcos = head ? head_cosines(k, shard ? k->cl : k->c) : NULL;
    const double *xcos = head ? hcos : k->a[A_X].v;
    int64_t n = k->n, cols = shard ? k->cl : k->c;
    const long double E = k->f32 ? (long double)FLT_MAX : (long double)DBL_MAX;
    const long double Eg = k->half ? (long double)half_max(k->half) : E; /* grad_cos's type */
    const long double eps = k->f32 ? 0x1p-24L : 0x1p-53L;
    int none = e.reduction == AMM_REDUCTION_NONE;
    int64_t active = 0;
    for (int64_t i = 0; i < n; ++i) active += !row_ignored(k, &e, i);
    cr->rows = calloc((size_t)n + 1, sizeof(rowref_t));
    int want_grad = fam == FAM_BWD || fam == FAM_FB;
    if (want_grad) {
        cr->grad = calloc((size_t)(n * cols) + 1, sizeof(long double));
        cr->grad_tol = calloc((size_t)(n * cols) + 1, sizeof(long double));
    }
    if (!cr->rows || (want_grad && (!cr->grad || !cr->grad_tol))) exit(3);
    cr->valid = 1;
    cr->ordinary = e.scale <= 1e4 && fabs(e.hard_margin) <= 100 && fabs(e.margin) <= 10;
    if (head) { /* squares of values beyond 1e154 overflow a double norm: no value checks */
        for (int64_t i = 0; i < k->a[A_X].count && cr->ordinary; ++i)
            if (fabs(k->a[A_X].v[i]) > 1e150 && !row_ignored(k, &e, i / k->d)) cr->ordinary = 0;
        for (int64_t i = 0; i < k->a[A_W].count && cr->ordinary; ++i)
            if (fabs(k->a[A_W].v[i]) > 1e150) cr->ordinary = 0;
    }
    long double red = 0, red_tol = 0;
    for (int64_t i = 0; i < n; ++i) {
        if (row_ignored(k, &e, i)) continue;
        const double *row = xcos + i * cols;
        int64_t y = k->a[A_LAB].iv[i];
        double cy = shard ? k->a[A_TC].v[i] : row[y];
        long double w = 1;
        if (fam == FAM_BWD) w = k->a[A_GL].v[none ? i : 0];
        if (e.reduction == AMM_REDUCTION_MEAN) w /= (long double)active;
        for (int64_t j = 0; j < cols; ++j)
            if (fabs(row[j]) > 2) cr->ordinary = 0;
        rowref_t *r = &cr->rows[i];
        row_reference(&e, k->f32, row, cols, shard ? k->cs : 0, y, cy, w,
                      want_grad ? cr->grad + i * cols : NULL,
                      want_grad ? cr->grad_tol + i * cols : NULL, cos_err, r);
        cr->amb |= r->amb;
        /* the negatives' logits are formed in the element type: beyond it, the header wants
           the error; the target's (double) only through the outputs below */
        if (r->zneg_max > 4 * E) cr->must_overflow = 1;
        if (!shard) {
            if ((fam == FAM_FWD || fam == FAM_FB || fam == FAM_HEAD) && none && r->loss > 4 * E)
                cr->must_overflow = 1;
            red += r->loss;
            red_tol += 4 * r->err_z + 1e-6L + 8 * eps * r->loss;
        }
        if (want_grad)
            for (int64_t j = 0; j < cols; ++j)
                if (fabsl(cr->grad[i * cols + j]) > 4 * Eg) cr->must_overflow = 1;
    }
    if (e.reduction == AMM_REDUCTION_MEAN && active > 0) {
        red /= (long double)active;
        red_tol /= (long double)active;
    }
    cr->red = red;
    cr->red_tol = red_tol + 1e-5L * fabsl(red);
    if (!shard && (fam == FAM_FWD || fam == FAM_FB || fam == FAM_HEAD) && !none && fabsl(red) > 4 * E)
        cr->must_overflow = 1;
    if (cr->amb) cr->must_overflow = 0;
    free(hcos);
}

static void oracle(const call_t *k, oracle_t *o)
{
    memset(o, 0, sizeof *o);
    o->bad_label_row = -1;
    eff_t e;
    effective(&k->ps, &e);
    int fam = k->fam, head = is_head(fam), shard = is_shard(fam), phase = phase_of(fam);
    int sh = shape_check(k);
    /* params: a NULL p is a NULL pointer; whether before or after the shape is not said */
    if (k->pnull) {
        o->mask = BIT(AMM_ERR_NULL_POINTER) | (sh ? BIT(AMM_ERR_SHAPE) : 0);
        return;
    }
    int amb = 0;
    if (params_fail(&e, k->f32, head, o, &amb)) {
        o->mask = BIT(AMM_ERR_PARAM);
        o->exact_single = 1;
        return;
    }
    if (amb) o->mask |= BIT(AMM_ERR_PARAM);
    if (sh == 1) {
        o->mask |= BIT(AMM_ERR_SHAPE);
        o->exact_single = !amb;
        return;
    }
    if (sh == 2) o->mask |= BIT(AMM_ERR_SHAPE);
    int pn = pointer_check(k);
    if (pn == 1) {
        o->mask |= BIT(AMM_ERR_NULL_POINTER);
        o->exact_single = !amb && !sh;
        return;
    }
    if (pn == 2) o->mask |= BIT(AMM_ERR_NULL_POINTER);
    o->reads = 1;
    for (int r = 0; r < A_COUNT; ++r)
        if (k->a[r].used && k->a[r].big && !(k->a[r].null && r != A_HN)) return; /* forced later */
    int sure = !o->mask; /* nothing ambiguous so far */
    /* labels */
    int64_t n = k->n, cols = shard ? k->cl : k->c, classes = shard ? k->ct : k->c;
    for (int64_t i = 0; i < n; ++i) {
        int64_t l = k->a[A_LAB].iv[i];
        if (l != e.ignore_index && (l < 0 || l >= classes)) {
            o->bad_label_row = i;
            o->mask |= BIT(AMM_ERR_LABEL);
            o->exact_single = sure;
            return;
        }
    }
    o->safe = overflow_safe(k, &e);
    if (phase == 3 && !k->consistent) o->safe = 0;
    /* grad_loss: every value finite (ignored rows included) */
    unsigned group = 0;
    if (k->a[A_GL].used && !k->a[A_GL].null && any_nonfinite(k->a[A_GL].v, k->a[A_GL].count)) {
        if (fam == FAM_BWD) {
            o->mask |= BIT(AMM_ERR_NONFINITE);
            o->exact_single = sure;
            return;
        }
        group |= BIT(AMM_ERR_NONFINITE); /* the shard's checks: order not said */
    }
    /* the values the collectives bring (phases 2 and 3), rows not ignored */
    for (int64_t i = 0; i < n; ++i) {
        if (row_ignored(k, &e, i)) continue;
        if (k->a[A_TC].used && !isfinite(k->a[A_TC].v[i])) group |= BIT(AMM_ERR_NONFINITE);
        if (k->a[A_GMAX].used) {
            double gm = k->a[A_GMAX].v[i];
            if (isnan(gm) || gm == INFINITY) group |= BIT(AMM_ERR_NONFINITE);
        }
        if (k->a[A_GSUM].used) {
            double gs = k->a[A_GSUM].v[i];
            if (!isfinite(gs)) group |= BIT(AMM_ERR_NONFINITE);
            else if (gs < 0) group |= BIT(AMM_ERR_PARAM);
        }
    }
    /* the data: rows not ignored finite; every weight finite */
    int64_t xcols = head ? k->d : cols;
    for (int64_t i = 0; i < n && !(group & BIT(AMM_ERR_NONFINITE)); ++i)
        if (!row_ignored(k, &e, i) && any_nonfinite(k->a[A_X].v + i * xcols, xcols))
            group |= BIT(AMM_ERR_NONFINITE);
    if (head && any_nonfinite(k->a[A_W].v, k->a[A_W].count)) group |= BIT(AMM_ERR_NONFINITE);
    if (group) {
        o->mask |= group;
        if (!o->safe && phase != 1) o->mask |= BIT(AMM_ERR_OVERFLOW);
        o->exact_single = sure && (o->mask & (o->mask - 1)) == 0;
        return;
    }
    o->mask |= BIT(AMM_OK);
    if (!o->safe && phase != 1) o->mask |= BIT(AMM_ERR_OVERFLOW);
    callref_t cr;
    call_reference(k, &cr);
    if (cr.valid && cr.must_overflow) {
        o->must_overflow = 1;
        o->mask = (o->mask & ~BIT(AMM_OK)) | BIT(AMM_ERR_OVERFLOW);
    }
    callref_free(&cr);
    /* scratch proportional to a huge (valid, unread) dimension may fail to allocate */
    if (cols > ALLOC_HUGE || (shard && k->ct > ALLOC_HUGE)) o->mask |= BIT(AMM_ERR_ALLOC);
    o->exact_single = sure && (o->mask & (o->mask - 1)) == 0;
}

/* ---- materialising and calling --------------------------------------------------------------- */

static void put_value(const call_t *k, const arr_t *a, size_t i, double x)
{
    if (is_half_arr(k, a)) ((uint16_t *)a->mem.ptr)[i] = a->hv ? a->hv[i] : float_to_half(k->half, (float)x);
    else if (a->type == T_ELEM && k->f32) ((float *)a->mem.ptr)[i] = (float)x;
    else ((double *)a->mem.ptr)[i] = x;
}

static double get_value(const call_t *k, const arr_t *a, size_t i)
{
    if (a->type == T_I64) return (double)((const int64_t *)a->mem.ptr)[i];
    if (is_half_arr(k, a)) return half_to_float(k->half, ((const uint16_t *)a->mem.ptr)[i]);
    if (a->type == T_ELEM && k->f32) return (double)((const float *)a->mem.ptr)[i];
    return ((const double *)a->mem.ptr)[i];
}

static void materialize_params(call_t *k)
{
    if (!k->pmem.map) in_alloc(&k->pmem, PBUF, 16, 0);
    if (!k->decoy.map) {
        out_alloc(&k->decoy, 8 * 16, 0x5A);
    }
    write_params(k->pmem.ptr, &k->ps, k->a[A_HN].used ? (int64_t *)k->a[A_HN].mem.ptr : NULL,
                 (int64_t *)k->decoy.ptr);
    memcpy(k->pcopy, k->pmem.ptr, PBUF);
}

static void materialize_outputs(call_t *k)
{
    for (int r = A_LOSS; r < A_COUNT; ++r) {
        arr_t *a = &k->a[r];
        mem_free(&a->mem);
        if (!a->used || (a->null && r != A_HN)) continue;
        out_alloc(&a->mem, a->alloc * elem_size(k, a), r == A_HN ? 0x5A : 0xFF);
    }
}

static void materialize(call_t *k)
{
    for (int r = 0; r < A_LOSS; ++r) {
        arr_t *a = &k->a[r];
        mem_free(&a->mem);
        free(a->copy);
        a->copy = NULL;
        if (!a->used || a->null) continue;
        size_t es = elem_size(k, a), bytes = a->alloc * es;
        in_alloc(&a->mem, bytes, es, k->page_mode);
        for (size_t i = 0; i < a->alloc; ++i) {
            if (a->type == T_I64) ((int64_t *)a->mem.ptr)[i] = a->iv[i];
            else put_value(k, a, i, a->v[i]);
        }
        a->copy = malloc(bytes ? bytes : 1);
        if (!a->copy) exit(3);
        memcpy(a->copy, a->mem.ptr, bytes);
    }
    materialize_outputs(k);
    materialize_params(k);
}

static void release(call_t *k)
{
    for (int r = 0; r < A_COUNT; ++r) {
        mem_free(&k->a[r].mem);
        free(k->a[r].copy);
        free(k->a[r].v);
        free(k->a[r].iv);
        free(k->a[r].hv);
    }
    mem_free(&k->pmem);
    mem_free(&k->decoy);
    memset(k, 0, sizeof *k);
}

#define PTR(r) ((k->a[r].used && !k->a[r].null) ? (void *)k->a[r].mem.ptr : NULL)

static int invoke(call_t *k)
{
    const amm_params *p = k->pnull ? NULL : (const amm_params *)k->pmem.ptr;
    const int64_t *lab = PTR(A_LAB);
    const double *tc = PTR(A_TC), *gmax = PTR(A_GMAX), *gsum = PTR(A_GSUM);
    double *tco = PTR(A_TCO), *rmax = PTR(A_RMAX), *rsum = PTR(A_RSUM);
    int64_t n = k->n, c = k->c, d = k->d, cl = k->cl, cs = k->cs, ct = k->ct;
    if (k->half) {
        const uint16_t *x = PTR(A_X);
        const float *gl = PTR(A_GL);
        float *loss = PTR(A_LOSS);
        uint16_t *gx = PTR(A_GX);
        int bf = k->half == H_BF16;
        switch (k->fam) {
        case FAM_FWD: return bf ? amm_forward_bf16(p, x, n, c, lab, loss)
                                : amm_forward_f16(p, x, n, c, lab, loss);
        case FAM_BWD: return bf ? amm_backward_bf16(p, x, n, c, lab, gl, gx)
                                : amm_backward_f16(p, x, n, c, lab, gl, gx);
        default: return bf ? amm_forward_backward_bf16(p, x, n, c, lab, loss, gx)
                           : amm_forward_backward_f16(p, x, n, c, lab, loss, gx);
        }
    }
    if (k->f32) {
        const float *x = PTR(A_X), *w = PTR(A_W), *gl = PTR(A_GL);
        float *loss = PTR(A_LOSS), *gx = PTR(A_GX), *gw = PTR(A_GW);
        switch (k->fam) {
        case FAM_FWD: return amm_forward_f32(p, x, n, c, lab, loss);
        case FAM_BWD: return amm_backward_f32(p, x, n, c, lab, gl, gx);
        case FAM_FB: return amm_forward_backward_f32(p, x, n, c, lab, loss, gx);
        case FAM_HEAD: return amm_head_forward_backward_f32(p, x, w, n, d, c, lab, loss, gx, gw);
        case FAM_ST: return amm_shard_target_f32(p, x, n, cl, cs, ct, lab, tco);
        case FAM_SS: return amm_shard_statistics_f32(p, x, n, cl, cs, ct, lab, tc, rmax, rsum);
        case FAM_SG:
            return amm_shard_gradient_f32(p, x, n, cl, cs, ct, lab, tc, gmax, gsum, gl, loss, gx);
        case FAM_SHT: return amm_shard_head_target_f32(p, x, w, n, d, cl, cs, ct, lab, tco);
        case FAM_SHS:
            return amm_shard_head_statistics_f32(p, x, w, n, d, cl, cs, ct, lab, tc, rmax, rsum);
        default:
            return amm_shard_head_gradient_f32(p, x, w, n, d, cl, cs, ct, lab, tc, gmax, gsum,
                                               loss, gx, gw);
        }
    } else {
        const double *x = PTR(A_X), *w = PTR(A_W), *gl = PTR(A_GL);
        double *loss = PTR(A_LOSS), *gx = PTR(A_GX), *gw = PTR(A_GW);
        switch (k->fam) {
        case FAM_FWD: return amm_forward_f64(p, x, n, c, lab, loss);
        case FAM_BWD: return amm_backward_f64(p, x, n, c, lab, gl, gx);
        case FAM_FB: return amm_forward_backward_f64(p, x, n, c, lab, loss, gx);
        case FAM_HEAD: return amm_head_forward_backward_f64(p, x, w, n, d, c, lab, loss, gx, gw);
        case FAM_ST: return amm_shard_target_f64(p, x, n, cl, cs, ct, lab, tco);
        case FAM_SS: return amm_shard_statistics_f64(p, x, n, cl, cs, ct, lab, tc, rmax, rsum);
        case FAM_SG:
            return amm_shard_gradient_f64(p, x, n, cl, cs, ct, lab, tc, gmax, gsum, gl, loss, gx);
        case FAM_SHT: return amm_shard_head_target_f64(p, x, w, n, d, cl, cs, ct, lab, tco);
        case FAM_SHS:
            return amm_shard_head_statistics_f64(p, x, w, n, d, cl, cs, ct, lab, tc, rmax, rsum);
        default:
            return amm_shard_head_gradient_f64(p, x, w, n, d, cl, cs, ct, lab, tc, gmax, gsum,
                                               loss, gx, gw);
        }
    }
}

static void describe_call(const call_t *k, const oracle_t *o)
{
    note("  %s: n=%" PRId64, fn_name(k), k->n);
    if (is_head(k->fam)) note(" d=%" PRId64, k->d);
    if (is_shard(k->fam))
        note(" c_local=%" PRId64 " class_start=%" PRId64 " c_total=%" PRId64, k->cl, k->cs, k->ct);
    else note(" c=%" PRId64, k->c);
    note("%s%s\n", k->pnull ? " p=NULL" : "", k->consistent ? " (statistics from phases 1-2)" : "");
    if (!k->pnull) describe_params(&k->ps);
    for (int r = 0; r < A_COUNT; ++r) {
        const arr_t *a = &k->a[r];
        if (!a->used) continue;
        note("    %s: count=%" PRId64 "%s", A_NAME[r], a->count,
             a->null && r != A_HN ? " NULL" : a->big ? " (undersized: must not be read)" : "");
        if (!a->out && !a->null && !a->big) {
            note(" = [");
            size_t shown = a->alloc < 64 ? a->alloc : 64;
            for (size_t i = 0; i < shown; ++i) {
                if (a->type == T_I64) note("%s%" PRId64, i ? ", " : "", a->iv[i]);
                else if (a->hv) note("%s%.9g (0x%04x)", i ? ", " : "", a->v[i], a->hv[i]);
                else note("%s%.9g", i ? ", " : "", a->v[i]);
            }
            note("%s]", shown < a->alloc ? ", ..." : "");
        }
        note("\n");
    }
    note("    expected:");
    for (int s = 0; s < NSTATUS; ++s)
        if (o->mask & BIT(s)) note(" %s", STATUS_NAME[s]);
    note("%s\n", o->safe ? "" : " (overflow not excluded)");
}

static int has_word(const char *text, const char *word)
{
    size_t len = strlen(word);
    for (const char *at = strstr(text, word); at; at = strstr(at + 1, word)) {
        int before = at == text || !(at[-1] == '_' || (at[-1] >= 'a' && at[-1] <= 'z') ||
                                     (at[-1] >= 'A' && at[-1] <= 'Z') ||
                                     (at[-1] >= '0' && at[-1] <= '9'));
        char c = at[len];
        int after = !(c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                      (c >= '0' && c <= '9'));
        if (before && after) return 1;
    }
    return 0;
}

/* Checks 5: the message after a call that returned status. */
static void check_message(const char *fname, int status, const oracle_t *o, int params_stage)
{
    const char *msg = amm_last_error();
    if (msg == NULL) {
        failure("amm_last_error() returned NULL");
        return;
    }
    if (status == AMM_OK) {
        if (g_last_msg_known && strcmp(msg, g_last_msg) != 0)
            failure("a successful call changed amm_last_error() from \"%s\" to \"%s\"", g_last_msg,
                    msg);
        return;
    }
    note("    message: \"%s\"\n", msg);
    size_t len = strlen(fname);
    if (strncmp(msg, fname, len) != 0 || msg[len] != ':' || msg[len + 1] != ' ')
        failure("amm_last_error() = \"%s\" does not start with \"%s: \"", msg, fname);
    if (status == AMM_ERR_PARAM && params_stage && o->npname > 0) {
        int named = 0;
        for (int i = 0; i < o->npname; ++i) named |= has_word(msg, o->pname[i]);
        if (!named)
            failure("the message \"%s\" does not name the parameter %s%s%s", msg, o->pname[0],
                    o->npname > 1 ? " or " : "", o->npname > 1 ? o->pname[1] : "");
    }
    if (status == AMM_ERR_LABEL && o->bad_label_row >= 0) {
        char want[64];
        snprintf(want, sizeof want, "labels[%" PRId64 "]", o->bad_label_row);
        if (!strstr(msg, want))
            failure("the message \"%s\" does not name %s (the first bad label)", msg, want);
    }
    snprintf(g_last_msg, sizeof g_last_msg, "%s", msg);
    g_last_msg_known = 1;
}

static double f_target(const eff_t *e, double cy, int *ambiguous)
{
    double m = e->margin;
    *ambiguous = 0;
    if (e->target == AMM_TARGET_COS) return cy - m;
    double thr = cos(PI_D - m);
    if (fabs(cy - thr) <= 1e-9) *ambiguous = 1;
    if (cy > thr) {
        double c = cy < -1 ? -1 : cy > 1 ? 1 : cy;
        return c * cos(m) - sqrt(1 - c * c) * sin(m);
    }
    return cy - m * sin(m);
}

/* Hard negatives of row i over columns [0, cols) of x (global class start + j), against the
   threshold f(cy); -1 when a cosine is too near the threshold to decide without the library's
   own rounding. */
static int64_t count_hard(const double *row, int64_t cols, int64_t start, int64_t y, double cy,
                          const eff_t *e)
{
    int amb;
    double f = f_target(e, cy, &amb);
    if (amb || !isfinite(f)) return -1;
    int64_t count = 0;
    for (int64_t j = 0; j < cols; ++j) {
        if (start + j == y) continue;
        if (fabs(row[j] - f) <= 1e-6 * (1 + fabs(f))) return -1;
        count += row[j] > f;
    }
    return count;
}

/* Checks 4: what a successful call wrote. */
static void check_outputs(call_t *k)
{
    eff_t e;
    effective(&k->ps, &e);
    int fam = k->fam, head = is_head(fam), shard = is_shard(fam), phase = phase_of(fam);
    int64_t n = k->n, cols = shard ? k->cl : k->c, classes = shard ? k->ct : k->c;
    int64_t xcols = head ? k->d : cols;
    int none = e.reduction == AMM_REDUCTION_NONE;
    int64_t active = 0;
    for (int64_t i = 0; i < n; ++i) active += !row_ignored(k, &e, i);
    const arr_t *loss = &k->a[A_LOSS];
    if (loss->used && !loss->null) {
        for (int64_t i = 0; i < loss->count; ++i) {
            double v = get_value(k, loss, (size_t)i);
            /* phase 3 forms logsumexp(z_y, M + log S) - z_y from the caller's statistics: allow
               the rounding of that difference (M + log S = -inf gives exactly 0 otherwise) */
            double slack = 0;
            if (phase == 3) {
                double zy = 0;
                for (int64_t r = 0; r < n; ++r) { /* the scale of z_y and of global_max */
                    double b = e.scale * (fabs(k->a[A_TC].v[r]) + fabs(e.margin) + 1);
                    double g = fabs(k->a[A_GMAX].v[r]);
                    if (isfinite(g) && g > b) b = g;
                    if (!row_ignored(k, &e, r) && b > zy) zy = b;
                }
                slack = 8 * DBL_EPSILON * zy * (none ? 1 : (double)(n + 1));
            }
            if (!isfinite(v)) failure("loss[%" PRId64 "] = %g is not finite with AMM_OK", i, v);
            else if (v < -slack) failure("loss[%" PRId64 "] = %g is negative", i, v);
            else if (none && row_ignored(k, &e, i) && v != 0)
                failure("loss[%" PRId64 "] = %g for an ignored row (reduction none): must be 0", i, v);
            else if (!none && active == 0 && v != 0)
                failure("loss = %g with no row taking part: must be 0", v);
            else if (classes == 1 && v != 0 && !shard)
                failure("loss[%" PRId64 "] = %g with C = 1: must be 0", i, v);
        }
    }
    const arr_t *gx = &k->a[A_GX];
    if (gx->used && !gx->null) {
        for (int64_t i = 0; i < n; ++i) {
            int ign = row_ignored(k, &e, i);
            for (int64_t j = 0; j < xcols; ++j) {
                double v = get_value(k, gx, (size_t)(i * xcols + j));
                if (!isfinite(v)) {
                    failure("%s[%" PRId64 ", %" PRId64 "] = %g is not finite with AMM_OK",
                            head ? "grad_embeddings" : "grad_cos", i, j, v);
                    return;
                }
                if ((ign || (classes == 1 && !shard)) && v != 0) {
                    failure("%s[%" PRId64 ", %" PRId64 "] = %g: must be 0 (%s)",
                            head ? "grad_embeddings" : "grad_cos", i, j, v,
                            ign ? "ignored row" : "C = 1");
                    return;
                }
            }
        }
    }
    const arr_t *gw = &k->a[A_GW];
    if (gw->used && !gw->null) {
        for (int64_t i = 0; i < gw->count; ++i) {
            double v = get_value(k, gw, (size_t)i);
            if (!isfinite(v) || (classes == 1 && !shard && v != 0)) {
                failure("grad_weights[%" PRId64 "] = %g with AMM_OK%s", i, v,
                        isfinite(v) ? " and C = 1: must be 0" : "");
                return;
            }
        }
    }
    const arr_t *tco = &k->a[A_TCO];
    if (tco->used && !tco->null) {
        for (int64_t i = 0; i < n; ++i) {
            double v = get_value(k, tco, (size_t)i);
            int64_t y = k->a[A_LAB].iv[i];
            int in = !row_ignored(k, &e, i) && y >= k->cs && y - k->cs < k->cl;
            if (!in) {
                if (!(v == 0 && !signbit(v)))
                    failure("target_cos[%" PRId64 "] = %g: must be 0.0 (%s)", i, v,
                            row_ignored(k, &e, i) ? "ignored row" : "target not in the shard");
            } else if (!head) {
                double want = k->a[A_X].v[i * cols + (y - k->cs)];
                if (memcmp(&v, &want, 8) != 0)
                    failure("target_cos[%" PRId64 "] = %.17g, cos[%" PRId64 ", %" PRId64
                            "] = %.17g", i, v, i, y - k->cs, want);
            } else if (!(fabs(v) <= 1.0001)) {
                failure("target_cos[%" PRId64 "] = %g is not a cosine", i, v);
            }
        }
    }
    const arr_t *rmax = &k->a[A_RMAX], *rsum = &k->a[A_RSUM];
    if (rmax->used && !rmax->null && rsum->used && !rsum->null) {
        callref_t cr; /* negatives whose logits all lie below the type's range may give -inf, 0 */
        call_reference(k, &cr);
        const long double E = k->f32 ? (long double)FLT_MAX : (long double)DBL_MAX;
        for (int64_t i = 0; i < n; ++i) {
            double mx = get_value(k, rmax, (size_t)i), sm = get_value(k, rsum, (size_t)i);
            int ign = row_ignored(k, &e, i);
            int64_t y = k->a[A_LAB].iv[i];
            int64_t negs = ign ? 0 : cols - (y >= k->cs && y - k->cs < k->cl);
            if (negs == 0) {
                if (!(mx == -INFINITY && sm == 0))
                    failure("row %" PRId64 " has no negatives in the shard%s: row_max = %g, "
                            "row_sum = %g (must be -inf and 0)", i, ign ? " (ignored)" : "", mx, sm);
            } else if (mx == -INFINITY && sm == 0 && cr.valid &&
                       (cr.rows[i].amb || cr.rows[i].zneg_max < -E)) {
                /* every negative logit is below -E: exp(z_j - M) is 0 whatever M is */
            } else if (!isfinite(mx) || !isfinite(sm) || sm < 0.999999 ||
                       sm > (double)negs * 1.000001) {
                failure("row %" PRId64 " (%" PRId64 " negatives): row_max = %g, row_sum = %.17g "
                        "(must be finite, with 1 <= row_sum <= negatives)", i, negs, mx, sm);
            }
        }
        callref_free(&cr);
    }
    /* hard-negative counts: written by every computing function but phases 1 and 3 */
    const arr_t *hn = &k->a[A_HN];
    if (hn->used && phase != 1 && phase != 3) {
        for (int64_t i = 0; i < n; ++i) {
            int64_t v = ((const int64_t *)hn->mem.ptr)[i];
            int ign = row_ignored(k, &e, i);
            int64_t y = k->a[A_LAB].iv[i];
            int64_t negs = ign ? 0 : cols - (!shard || (y >= k->cs && y - k->cs < k->cl));
            if (v < 0 || v > negs || (ign && v != 0)) {
                failure("hard_negatives[%" PRId64 "] = %" PRId64 ": must be in [0, %" PRId64 "]%s",
                        i, v, negs, ign ? " and 0 for an ignored row" : "");
                return;
            }
            if (ign || head) continue;
            double cy = shard ? k->a[A_TC].v[i] : k->a[A_X].v[i * cols + y];
            int64_t want = count_hard(k->a[A_X].v + i * cols, cols, shard ? k->cs : 0, y, cy, &e);
            if (want >= 0 && want != v)
                failure("hard_negatives[%" PRId64 "] = %" PRId64 ", but %" PRId64
                        " cosines of the row exceed f(c_y)", i, v, want);
        }
    }
}

/* Checks 4, values: a successful call on ordinary inputs returns what the formulation gives,
   within the error the header's precision model allows. */
static void check_values(call_t *k)
{
    callref_t cr;
    call_reference(k, &cr);
    if (!cr.valid || cr.amb || !cr.ordinary) {
        callref_free(&cr);
        return;
    }
    eff_t e;
    effective(&k->ps, &e);
    int fam = k->fam, none = e.reduction == AMM_REDUCTION_NONE;
    const long double eps = k->f32 ? 0x1p-24L : 0x1p-53L;
    int64_t n = k->n, cols = (fam == FAM_SS || fam == FAM_SHS) ? k->cl : k->c;
    const arr_t *loss = &k->a[A_LOSS];
    if ((fam == FAM_FWD || fam == FAM_FB || fam == FAM_HEAD) && loss->used && !loss->null) {
        if (none) {
            for (int64_t i = 0; i < n; ++i) {
                if (row_ignored(k, &e, i)) continue;
                const rowref_t *r = &cr.rows[i];
                long double got = get_value(k, loss, (size_t)i);
                long double tol = 4 * r->err_z + 1e-6L + 1e-5L * fabsl(r->loss);
                if (fabsl(got - r->loss) > tol) {
                    failure("loss[%" PRId64 "] = %.9Lg, the formulation gives %.9Lg (tolerance %.2Lg)",
                            i, got, r->loss, tol);
                    break;
                }
            }
        } else {
            long double got = get_value(k, loss, 0);
            if (fabsl(got - cr.red) > cr.red_tol + 1e-6L)
                failure("loss = %.9Lg, the formulation gives %.9Lg (tolerance %.2Lg)", got, cr.red,
                        cr.red_tol + 1e-6L);
        }
    }
    const arr_t *gx = &k->a[A_GX];
    if ((fam == FAM_BWD || fam == FAM_FB) && gx->used && !gx->null) {
        for (int64_t i = 0; i < n; ++i) {
            if (row_ignored(k, &e, i)) continue;
            long double rowmax = 0;
            for (int64_t j = 0; j < cols; ++j)
                if (fabsl(cr.grad[i * cols + j]) > rowmax) rowmax = fabsl(cr.grad[i * cols + j]);
            int bad = 0;
            for (int64_t j = 0; j < cols && !bad; ++j) {
                long double want = cr.grad[i * cols + j], got = get_value(k, gx, (size_t)(i * cols + j));
                long double tol = cr.grad_tol[i * cols + j] + 4 * eps * rowmax +
                                  (k->f32 ? 1e-37L : 1e-300L);
                if (k->half) /* one rounding to 16 bits: 8 (bf16) or 11 (f16) bits kept */
                    tol += (k->half == H_BF16 ? 0x1p-8L : 0x1p-11L) * (fabsl(want) + tol) +
                           (k->half == H_F16 ? 0x1p-25L : 0);
                if (fabsl(got - want) > tol) {
                    failure("grad_cos[%" PRId64 ", %" PRId64 "] = %.9Lg, the formulation gives %.9Lg "
                            "(tolerance %.2Lg)", i, j, got, want, tol);
                    bad = 1;
                }
            }
            if (bad) break;
        }
    }
    if (fam == FAM_SS || fam == FAM_SHS) {
        for (int64_t i = 0; i < n; ++i) {
            if (row_ignored(k, &e, i)) continue;
            const rowref_t *r = &cr.rows[i];
            long double mx = get_value(k, &k->a[A_RMAX], (size_t)i);
            long double sm = get_value(k, &k->a[A_RSUM], (size_t)i);
            if (r->zneg_max == -INFINITY) continue; /* checked: -inf and 0 */
            long double tmx = 2 * r->err_z + 1e-12L * fabsl(r->zneg_max);
            long double tsm = (8 * r->err_z + 1e-5L) * r->sum_neg;
            if (fabsl(mx - r->zneg_max) > tmx || fabsl(sm - r->sum_neg) > tsm) {
                failure("row %" PRId64 ": row_max = %.9Lg, row_sum = %.9Lg; the formulation gives "
                        "%.9Lg and %.9Lg", i, mx, sm, r->zneg_max, r->sum_neg);
                break;
            }
        }
    }
    callref_free(&cr);
}

/* Checks 2, 3 and the parts of 4 that hold whatever the status. */
static void check_memory(call_t *k)
{
    for (int r = 0; r < A_COUNT; ++r) {
        arr_t *a = &k->a[r];
        if (!a->used || (a->null && r != A_HN)) continue;
        if (a->out) {
            if (!canaries_intact(&a->mem))
                failure("the canary bytes around %s (%zu bytes) were overwritten", A_NAME[r],
                        a->mem.bytes);
        } else if (memcmp(a->copy, a->mem.ptr, a->mem.bytes) != 0) {
            failure("the input %s was modified", A_NAME[r]);
        }
    }
    if (!k->pnull && memcmp(k->pcopy, k->pmem.ptr, PBUF) != 0)
        failure("the parameter struct (or the bytes around it) was modified");
    if (!canaries_intact(&k->decoy)) failure("the canaries of the decoy hard_negatives were overwritten");
    for (size_t i = 0; i < k->decoy.bytes; ++i)
        if (k->decoy.ptr[i] != 0x5A) {
            failure("hard_negatives written although struct_size (%" PRIu32 ") does not cover it",
                    k->ps.struct_size);
            break;
        }
    int phase = phase_of(k->fam);
    arr_t *hn = &k->a[A_HN];
    if (hn->used && (phase == 1 || phase == 3))
        for (size_t i = 0; i < hn->mem.bytes; ++i)
            if (hn->mem.ptr[i] != 0x5A) {
                failure("phase %d wrote p->hard_negatives (only phase 2 may)", phase);
                break;
            }
}

/* Makes a call that would read an undersized array fail before: a required pointer NULL (or
   the parameters broken). */
static void force_early_failure(call_t *k, oracle_t *o)
{
    for (int tries = 0; tries < 4; ++tries) {
        int any_big = 0;
        for (int r = 0; r < A_COUNT; ++r)
            if (k->a[r].used && k->a[r].big && !(k->a[r].null && r != A_HN)) any_big = 1;
        if (!o->reads || !any_big) return;
        int cand[A_COUNT], nc = 0;
        for (int r = 0; r < A_HN; ++r) {
            const arr_t *a = &k->a[r];
            if (!a->used || a->null || a->count == 0) continue;
            if ((k->fam == FAM_SG && (r == A_GL || r == A_LOSS)) ||
                (k->fam == FAM_SHG && r == A_LOSS))
                continue;
            cand[nc++] = r;
        }
        if (nc > 0 && rchance(0.8)) k->a[cand[rbelow((uint64_t)nc)]].null = 1;
        else if (rchance(0.5)) k->ps.scale = -1;
        else k->pnull = 1;
        oracle(k, o);
    }
    if (o->reads) {
        fprintf(stderr, "internal error: could not make a call with huge shapes fail early\n");
        exit(4);
    }
}

static void compare_rerun(call_t *k, unsigned char **saved, int status2, const char *msg1)
{
    if (status2 != k->status) {
        failure("with num_threads = %" PRId32 " the status is %s, with the first value %s",
                k->ps.num_threads, sname(status2), sname(k->status));
        return;
    }
    if (status2 == AMM_OK) {
        for (int r = A_LOSS; r < A_COUNT; ++r) {
            arr_t *a = &k->a[r];
            if (!a->used || (a->null && r != A_HN) || !saved[r]) continue;
            if (memcmp(saved[r], a->mem.ptr, a->mem.bytes) != 0)
                failure("%s differs bitwise with num_threads = %" PRId32, A_NAME[r],
                        k->ps.num_threads);
        }
    } else if (strcmp(msg1, amm_last_error()) != 0) {
        failure("with num_threads = %" PRId32 " the message is \"%s\", with the first value \"%s\"",
                k->ps.num_threads, amm_last_error(), msg1);
    }
}

/* The strongest oracle of the 16-bit functions. The header: each cosine is widened exactly to
   float and computed as the _f32 path computes it (its parameter checks included); each
   grad_cos element is rounded to nearest even to the storage type, and one that rounds beyond
   its range is AMM_ERR_OVERFLOW naming grad_cos[i, j]. So the same call to the _f32 function
   on the widened cosines (the same parameter block, hard_negatives redirected; the same labels
   and grad_loss) must return the same status, or AMM_ERR_OVERFLOW exactly where its gradient
   rounds to an infinity; on AMM_OK the same loss bits, the gradient rounded, the same counts;
   on a failure the same message but for the function's name. */
static void check_half_against_f32(call_t *k, int status, const char *half_msg)
{
    static const char *const F32_NAME[3] = {"amm_forward_f32", "amm_backward_f32",
                                            "amm_forward_backward_f32"};
    arr_t *x = &k->a[A_X], *gx = &k->a[A_GX], *loss = &k->a[A_LOSS], *hn = &k->a[A_HN];
    float *x32 = NULL, *loss32 = NULL, *g32 = NULL;
    int64_t *hn32 = NULL;
    _Alignas(16) unsigned char pbuf[PBUF];
    memcpy(pbuf, k->pmem.ptr, PBUF);
    if (x->used && !x->null) {
        x32 = malloc((x->alloc ? x->alloc : 1) * sizeof(float));
        if (!x32) exit(3);
        for (size_t i = 0; i < x->alloc; ++i) x32[i] = (float)get_value(k, x, i);
    }
    if (loss->used && !loss->null && !(loss32 = calloc(loss->alloc ? loss->alloc : 1, 4))) exit(3);
    if (gx->used && !gx->null && !(g32 = calloc(gx->alloc ? gx->alloc : 1, 4))) exit(3);
    if (hn->used) {
        if (!(hn32 = malloc((hn->alloc ? hn->alloc : 1) * 8))) exit(3);
        memset(hn32, 0x5A, (hn->alloc ? hn->alloc : 1) * 8);
        ((amm_params *)pbuf)->hard_negatives = hn32;
    }
    const amm_params *p = k->pnull ? NULL : (const amm_params *)pbuf;
    const int64_t *lab = PTR(A_LAB);
    const float *gl = PTR(A_GL);
    const char *f32name = F32_NAME[k->fam];
    note("  the same call to %s on the widened cosines", f32name);
    g_in_library = 1;
    int s32 = k->fam == FAM_FWD ? amm_forward_f32(p, x32, k->n, k->c, lab, loss32)
              : k->fam == FAM_BWD ? amm_backward_f32(p, x32, k->n, k->c, lab, gl, g32)
                                  : amm_forward_backward_f32(p, x32, k->n, k->c, lab, loss32, g32);
    g_in_library = 0;
    note(" returned %s (%d)\n", sname(s32), s32);
    char msg32[4096];
    snprintf(msg32, sizeof msg32, "%s", amm_last_error());
    if (s32 != AMM_OK) { /* the thread's message is now this call's */
        snprintf(g_last_msg, sizeof g_last_msg, "%s", msg32);
        g_last_msg_known = 1;
    }
    /* the status the 16-bit call must return */
    int want = s32;
    int64_t cols = k->c;
    if (s32 == AMM_OK && g32 && !gx->big)
        for (int64_t i = 0; i < gx->count; ++i)
            if (!isfinite(half_to_float(k->half, float_to_half(k->half, g32[i])))) {
                want = AMM_ERR_OVERFLOW;
                break;
            }
    /* NaN or infinity in a row after one whose gradient rounds beyond the 16-bit range: the
       16-bit call may stop at the earlier row (either status, as for the overflow of any
       output together with a NaN), naming grad_cos */
    int nan_or_rounding = status == AMM_ERR_OVERFLOW && s32 == AMM_ERR_NONFINITE &&
                          k->fam != FAM_FWD && strstr(half_msg, "grad_cos[") != NULL;
    if (status != want && !nan_or_rounding) {
        if (status != AMM_ERR_ALLOC && s32 != AMM_ERR_ALLOC)
            failure("returned %s (%d), but %s on the widened cosines returned %s (%d)%s",
                    sname(status), status, f32name, sname(s32), s32,
                    want == AMM_ERR_OVERFLOW ? " and a gradient beyond the 16-bit range" : "");
    } else if (status == AMM_OK) {
        for (int64_t i = 0; loss32 && i < loss->count; ++i) {
            float got = ((const float *)loss->mem.ptr)[i];
            if (memcmp(&got, &loss32[i], 4) != 0) {
                failure("loss[%" PRId64 "] = %a, %s on the widened cosines gives %a", i,
                        (double)got, f32name, (double)loss32[i]);
                break;
            }
        }
        for (int64_t i = 0; g32 && i < gx->count; ++i) {
            uint16_t got = ((const uint16_t *)gx->mem.ptr)[i];
            uint16_t rounded = float_to_half(k->half, g32[i]);
            if (got != rounded) {
                failure("grad_cos[%" PRId64 ", %" PRId64 "] = 0x%04x (%a), but %s gives %a, "
                        "which rounds to 0x%04x (%a)", i / cols, i % cols, got,
                        (double)half_to_float(k->half, got), f32name, (double)g32[i], rounded,
                        (double)half_to_float(k->half, rounded));
                break;
            }
        }
        if (hn32 && memcmp(hn32, hn->mem.ptr, hn->mem.bytes) != 0)
            failure("hard_negatives differ from those of %s on the widened cosines", f32name);
    } else if (status == AMM_ERR_OVERFLOW && s32 == AMM_OK) {
        /* the rounding overflowed: the message names an element that does */
        const char *at = strstr(half_msg, "grad_cos[");
        long long i = -1, j = -1;
        if (!at || sscanf(at, "grad_cos[%lld, %lld]", &i, &j) != 2)
            failure("the message \"%s\" does not name grad_cos[i, j] (its rounding overflows)",
                    half_msg);
        else if (i < 0 || j < 0 || i >= k->n || j >= cols ||
                 isfinite(half_to_float(k->half, float_to_half(k->half, g32[i * cols + j]))))
            failure("the message \"%s\" names an element that does not round beyond the range "
                    "(%s gives %a there)", half_msg, f32name,
                    i >= 0 && j >= 0 && i < k->n && j < cols ? (double)g32[i * cols + j] : 0.0);
    } else if (status != AMM_ERR_OVERFLOW && !nan_or_rounding) {
        /* the same failure: the same message but for the name (an overflow may be met first
           in the rounding to 16 bits, and named there) */
        size_t l16 = strlen(fn_name(k)), l32 = strlen(f32name);
        if (strncmp(half_msg, fn_name(k), l16) == 0 && strncmp(msg32, f32name, l32) == 0 &&
            strcmp(half_msg + l16, msg32 + l32) != 0)
            failure("the message \"%s\" differs from %s's \"%s\" on the widened cosines",
                    half_msg, f32name, msg32);
    }
    free(x32);
    free(loss32);
    free(g32);
    free(hn32);
}

/* Runs a prepared call (layout done, values set): oracle, call, checks. Returns the status. */
static int run_call(call_t *k)
{
    oracle_t o;
    oracle(k, &o);
    force_early_failure(k, &o);
    materialize(k);
    begin_call(fn_index(k));
    describe_call(k, &o);
    g_in_library = 1;
    double t0 = now_seconds();
    int status = invoke(k);
    g_fn_seconds[fn_index(k)] += now_seconds() - t0;
    g_in_library = 0;
    k->status = status;
    count_status(fn_index(k), status);
    note("    returned %s (%d)\n", sname(status), status);
    if (status < 0 || status >= NSTATUS || !(o.mask & BIT(status))) {
        int w = snprintf(g_kind_extra, sizeof g_kind_extra, "%s returned %s, expected", fn_name(k),
                         sname(status));
        for (int s = 0; s < NSTATUS && w > 0 && (size_t)w < sizeof g_kind_extra; ++s)
            if (o.mask & BIT(s))
                w += snprintf(g_kind_extra + w, sizeof g_kind_extra - (size_t)w, " %s", STATUS_NAME[s]);
        failure("status %s (%d) is not one the header allows here", sname(status), status);
    }
    snprintf(g_kind_extra, sizeof g_kind_extra, "%s", fn_name(k));
    check_memory(k);
    check_message(fn_name(k), status, &o, o.npname > 0 && !(o.mask & BIT(AMM_OK)));
    char msg_first[4096];
    snprintf(msg_first, sizeof msg_first, "%s", amm_last_error());
    if (status == AMM_OK) {
        check_outputs(k);
        if (!g_call_failed) check_values(k);
    }
    if (k->half) check_half_against_f32(k, status, msg_first);
    end_call();

    /* the same call with another num_threads: the same bits, or the same error */
    if (!k->no_rerun && !k->pnull && k->ps.num_threads >= 0 && k->ps.num_threads < 64 &&
        rchance(0.1) && (status == AMM_OK || o.exact_single)) {
        unsigned char *saved[A_COUNT] = {0};
        char msg1[4096];
        snprintf(msg1, sizeof msg1, "%s", msg_first);
        for (int r = A_LOSS; r < A_COUNT; ++r) {
            arr_t *a = &k->a[r];
            if (!a->used || (a->null && r != A_HN)) continue;
            saved[r] = malloc(a->mem.bytes ? a->mem.bytes : 1);
            if (!saved[r]) exit(3);
            memcpy(saved[r], a->mem.ptr, a->mem.bytes);
        }
        int32_t before = k->ps.num_threads;
        do k->ps.num_threads = (int32_t)rbelow(5); while (k->ps.num_threads == before);
        materialize_outputs(k);
        materialize_params(k);
        begin_call(fn_index(k));
        note("  (rerun of the call above with num_threads = %" PRId32 ")\n", k->ps.num_threads);
        describe_call(k, &o);
        g_in_library = 1;
        double t0 = now_seconds();
        int status2 = invoke(k);
        g_fn_seconds[fn_index(k)] += now_seconds() - t0;
        g_in_library = 0;
        count_status(fn_index(k), status2);
        note("    returned %s (%d)\n", sname(status2), status2);
        check_memory(k);
        check_message(fn_name(k), status2, &o, o.npname > 0 && !(o.mask & BIT(AMM_OK)));
        compare_rerun(k, saved, status2, msg1);
        if (status2 == AMM_OK) check_outputs(k);
        end_call();
        for (int r = 0; r < A_COUNT; ++r) free(saved[r]);
        /* the outputs now hold the rerun's values, which equal the first run's */
        k->status = status2 == AMM_OK && status == AMM_OK ? AMM_OK : status;
    }
    return k->status;
}

/* ---------------------------------------------------------------------------------------------
 * Random single calls
 * ------------------------------------------------------------------------------------------- */

static int64_t edge_dim(void)
{
    static const int64_t v[] = {-1, -2, INT64_MIN, INT64_MAX, INT32_MAX, (int64_t)INT32_MAX + 1,
                                (int64_t)1 << 32, 3037000500LL, (int64_t)1 << 62, (int64_t)1 << 40,
                                0, 1, 4611686018427387904LL + 1, 2, 0};
    return PICK(v);
}

static int64_t gen_label(int64_t classes, int64_t ignore, int64_t start, int64_t local)
{
    static const int64_t bad[] = {-1, -2, -100, INT64_MIN, INT64_MAX, 1000};
    uint64_t roll = rbelow(100);
    if (roll < 12) return ignore;
    if (roll < 17) {
        int64_t b = PICK(bad);
        if (rchance(0.4) && classes < INT64_MAX) b = classes + (int64_t)rbelow(2);
        return b;
    }
    if (classes < 1) return (int64_t)rbelow(4);
    if (local > 0 && rchance(0.6)) return (int64_t)((uint64_t)start + rbelow((uint64_t)local));
    if (classes > 64 && rchance(0.3)) return rchance(0.5) ? classes - 1 : (int64_t)(rnext() % (uint64_t)classes);
    return (int64_t)rbelow((uint64_t)(classes < 64 ? classes : 64));
}

static double gen_emb_value(int f32, double spice, double row_scale)
{
    if (spice > 0 && rchance(spice)) return special_value(f32);
    return to_elem(f32, rgauss() * row_scale);
}

static double gen_row_scale(int f32)
{
    static const double f64s[] = {0.0, 1e-30, 0x1p-1060, 1e-13, 1e200, 1e-160, 3.0};
    static const double f32s[] = {0.0, 1e-30, 0x1p-140, 1e-13, 1e30, 1e-20, 3.0};
    return rchance(0.1) ? (f32 ? PICK(f32s) : PICK(f64s)) : 1.0;
}

/* Fills the input values of a prepared call (layout done). */
static void fill_inputs(call_t *k, double spice)
{
    eff_t e;
    effective(&k->ps, &e);
    int head = is_head(k->fam), shard = is_shard(k->fam);
    int64_t classes = shard ? k->ct : k->c;
    alloc_values(k);
    arr_t *x = &k->a[A_X];
    if (x->used && !x->big && x->alloc > 0) {
        int64_t rows = k->n > 0 ? k->n : 0; /* alloc > 0: n is at most alloc */
        int64_t cols = rows ? (int64_t)x->alloc / rows : 0;
        for (int64_t i = 0; i < rows; ++i) {
            double rsc = head ? gen_row_scale(k->f32) : 1;
            for (int64_t j = 0; j < cols; ++j) {
                if (k->half) {
                    uint16_t b = gen_half_cos_bits(k->half, spice);
                    x->hv[i * cols + j] = b;
                    x->v[i * cols + j] = half_to_float(k->half, b);
                    continue;
                }
                x->v[i * cols + j] = head ? gen_emb_value(k->f32, spice, rsc)
                                          : gen_cos_value(k->f32, spice);
            }
        }
    }
    arr_t *w = &k->a[A_W];
    if (w->used && !w->big) {
        int64_t d = k->d > 0 ? k->d : 1;
        for (size_t i = 0; i < w->alloc; ++i) {
            double rsc = (i % (size_t)d == 0) ? gen_row_scale(k->f32) : 1;
            w->v[i] = gen_emb_value(k->f32, spice * 0.5, rsc);
        }
    }
    arr_t *lab = &k->a[A_LAB];
    if (lab->used && !lab->big)
        for (size_t i = 0; i < lab->alloc; ++i)
            lab->iv[i] = gen_label(classes, e.ignore_index, shard ? k->cs : 0, shard ? k->cl : 0);
    arr_t *gl = &k->a[A_GL];
    if (gl->used && !gl->big) {
        static const double sp[] = {0.0, -0.0, 1e30, -1e30, 1e300, 0x1p-1074, 1e10, 1e-300};
        for (size_t i = 0; i < gl->alloc; ++i) {
            if (rchance(spice * 0.3)) gl->v[i] = rchance(0.5) ? special_value(k->f32) : nan_bits(0, 1);
            else if (rchance(0.05)) gl->v[i] = k->f32 ? to_elem(1, rbelow(2) ? 1e30 : -0.0) : PICK(sp);
            else gl->v[i] = rchance(0.5) ? 1.0 : to_elem(k->f32, 4 * runif() - 2);
        }
    }
    for (int r = A_TC; r <= A_GSUM; ++r) {
        arr_t *a = &k->a[r];
        if (!a->used || a->big) continue;
        for (size_t i = 0; i < a->alloc; ++i) {
            double v;
            if (rchance(spice * 0.5)) {
                static const double sp[] = {INFINITY, -INFINITY, -1.0, -0.0, 0.0, 1e300, -1e300,
                                            -0x1p-1074, DBL_MAX, 1e-300};
                v = rchance(0.25) ? nan_bits((int)rbelow(2), rnext()) : PICK(sp);
            } else if (r == A_TC) {
                v = 2 * runif() - 1;
            } else if (r == A_GMAX) {
                v = rchance(0.1) ? -INFINITY : 64 * (2 * runif() - 1);
            } else {
                v = rchance(0.1) ? 0.0 : 1 + 8 * runif();
            }
            a->v[i] = v;
        }
    }
}

static void gen_nulls(call_t *k)
{
    for (int r = 0; r < A_HN; ++r) {
        arr_t *a = &k->a[r];
        if (!a->used) continue;
        double p = a->count == 0 ? 0.5 : 0.025;
        if (k->fam == FAM_SG && (r == A_GL || r == A_LOSS)) p = 0.3;
        a->null = rchance(p);
    }
    k->pnull = rchance(0.02);
}

/* For a 16-bit backward call: scales grad_loss so that the largest gradient entry lands next
   to the value where rounding to 16 bits overflows (f16 65520, bf16 0x1.ffp+127), on either
   side, so that the boundary between AMM_OK and AMM_ERR_OVERFLOW is met often. Aims with a
   quiet call to amm_backward_f32 on the widened cosines (its result only aims). */
static void steer_to_rounding_edge(call_t *k)
{
    arr_t *x = &k->a[A_X], *lab = &k->a[A_LAB], *gl = &k->a[A_GL];
    if (k->pnull || k->n < 1 || k->c < 1 || x->null || x->big || lab->null || lab->big ||
        gl->null || gl->big || gl->alloc == 0)
        return;
    _Alignas(16) unsigned char pbuf[PBUF];
    write_params(pbuf, &k->ps, NULL, NULL);
    float *x32 = malloc(x->alloc * sizeof(float)), *g32 = malloc(x->alloc * sizeof(float));
    float *gl32 = malloc(gl->alloc * sizeof(float));
    if (!x32 || !g32 || !gl32) exit(3);
    for (size_t i = 0; i < x->alloc; ++i) x32[i] = (float)x->v[i];
    for (size_t i = 0; i < gl->alloc; ++i) gl32[i] = (float)gl->v[i];
    char keep[4096]; /* the thread's message: this call is not one of the run's */
    snprintf(keep, sizeof keep, "%s", amm_last_error());
    g_in_library = 1;
    int st = amm_backward_f32((const amm_params *)pbuf, x32, k->n, k->c, lab->iv, gl32, g32);
    g_in_library = 0;
    double gmax = 0;
    for (size_t i = 0; st == AMM_OK && i < x->alloc; ++i)
        if (fabs((double)g32[i]) > gmax) gmax = fabs((double)g32[i]);
    if (gmax > 0 && isfinite(gmax)) {
        double edge = k->half == H_BF16 ? H_OVERFLOW_BF16 : H_OVERFLOW_F16;
        double f = edge * (1 + (runif() - 0.5) * (rchance(0.5) ? 0x1p-6 : 0x1p-14)) / gmax;
        for (size_t i = 0; i < gl->alloc; ++i) gl->v[i] = to_elem(1, gl->v[i] * f);
        if (st != AMM_OK || any_nonfinite(gl->v, (int64_t)gl->alloc)) st = -1;
    }
    if (st != AMM_OK && strcmp(keep, amm_last_error()) != 0) {
        snprintf(g_last_msg, sizeof g_last_msg, "%s", amm_last_error());
        g_last_msg_known = 1;
    }
    free(x32);
    free(g32);
    free(gl32);
}

/* half: H_NONE, or H_BF16 / H_F16 for the 16-bit functions of FAM_FWD, FAM_BWD, FAM_FB (which
   take the _f32 parameter checks: f32 must be 1). */
static void random_call(int fam, int f32, int half)
{
    call_t k;
    memset(&k, 0, sizeof k);
    k.fam = fam;
    k.f32 = f32;
    k.half = half;
    k.page_mode = rchance(0.25) ? (int)rrange(1, 2) : 0;
    int shard = is_shard(fam), head = is_head(fam);
    /* shape */
    k.n = rchance(0.1) ? 0 : (int64_t)rbelow(10);
    k.c = 1 + (int64_t)rbelow(9);
    k.d = 1 + (int64_t)rbelow(9);
    k.ct = 1 + (int64_t)rbelow(12);
    k.cl = (int64_t)rbelow((uint64_t)k.ct + 1);
    k.cs = (int64_t)rbelow((uint64_t)(k.ct - k.cl) + 1);
    if (rchance(0.12)) {
        switch (rbelow(shard ? 7 : 4)) {
        case 0: k.n = edge_dim(); break;
        case 1: if (head) k.d = edge_dim(); else k.c = edge_dim(); break;
        case 2: k.c = edge_dim(); k.n = rchance(0.5) ? 0 : edge_dim(); break;
        case 3: k.n = edge_dim(); k.c = edge_dim(); k.d = edge_dim(); break;
        case 4: /* a huge c_total, the shard at its end or start */
            k.ct = rchance(0.5) ? INT64_MAX : edge_dim();
            if (k.ct >= 1) {
                k.cl = (int64_t)rbelow(6);
                if (k.cl > k.ct) k.cl = k.ct;
                k.cs = rchance(0.5) ? k.ct - k.cl : (int64_t)rbelow(3);
                if (k.cs > k.ct - k.cl) k.cs = k.ct - k.cl;
            }
            break;
        case 5: /* the shard out of [0, c_total) */
            switch (rbelow(6)) {
            case 0: k.cl = -1 - (int64_t)rbelow(2); break;
            case 1: k.cs = -1; break;
            case 2: k.cs = k.ct - k.cl + 1; break;
            case 3: k.cl = k.ct + 1; k.cs = 0; break;
            case 4: k.cs = INT64_MAX; k.cl = 1 + (int64_t)rbelow(3); break;
            default: k.cl = INT64_MAX; k.cs = rchance(0.5) ? INT64_MAX : 1; break;
            }
            break;
        default:
            k.ct = edge_dim();
            k.cl = edge_dim();
            k.cs = edge_dim();
            break;
        }
    }
    gen_params(&k.ps, f32, shard ? k.ct : k.c, 0.35);
    layout(&k);
    gen_nulls(&k);
    double spice = rchance(0.5) ? 0 : rchance(0.5) ? 0.05 : 0.25;
    fill_inputs(&k, spice);
    if (half && fam == FAM_BWD && rchance(0.5)) steer_to_rounding_edge(&k);
    k.consistent = 0;
    run_call(&k);
    release(&k);
}

/* ---------------------------------------------------------------------------------------------
 * amm_shard_rescale_sums
 * ------------------------------------------------------------------------------------------- */

/* One call; returns the status (row_sum updated in place on AMM_OK). */
static int rescale_call(int64_t n, const double *row_max, const double *global_max,
                        double *row_sum_io, int null_mask, int page_mode)
{
    begin_call(FN_RESCALE);
    int64_t cnt = n < 0 ? -1 : n;
    int big = cnt < 0 || cnt > LIMIT;
    size_t alloc = big ? 1 : (size_t)cnt;
    mem_t m1, m2, m3;
    memset(&m1, 0, sizeof m1);
    memset(&m2, 0, sizeof m2);
    memset(&m3, 0, sizeof m3);
    int null1 = null_mask & 1, null2 = null_mask & 2, null3 = null_mask & 4;
    /* expected */
    unsigned mask;
    if (n < 0) mask = BIT(AMM_ERR_SHAPE);
    else if (n > 0 && (null1 || null2 || null3)) mask = BIT(AMM_ERR_NULL_POINTER);
    else mask = BIT(AMM_OK);
    if (big && (mask & BIT(AMM_OK))) { /* never read a huge array */
        null2 = 1;
        mask = BIT(AMM_ERR_NULL_POINTER);
    }
    double *a = null1 ? NULL : in_alloc(&m1, alloc * 8, 8, page_mode);
    double *b = null2 ? NULL : in_alloc(&m2, alloc * 8, 8, page_mode);
    double *s = null3 ? NULL : out_alloc(&m3, alloc * 8, 0xFF);
    double *ca = NULL, *cb = NULL, *cs0 = NULL;
    if (!big) {
        ca = malloc(alloc * 8 + 8);
        cb = malloc(alloc * 8 + 8);
        cs0 = malloc(alloc * 8 + 8);
        if (!ca || !cb || !cs0) exit(3);
        for (size_t i = 0; i < alloc; ++i) {
            ca[i] = row_max ? row_max[i] : 0;
            cb[i] = global_max ? global_max[i] : 0;
            cs0[i] = row_sum_io ? row_sum_io[i] : 0;
            if (a) a[i] = ca[i];
            if (b) b[i] = cb[i];
            if (s) s[i] = cs0[i];
        }
    }
    note("  amm_shard_rescale_sums: n=%" PRId64 "%s%s%s\n", n, null1 ? " row_max=NULL" : "",
         null2 ? " global_max=NULL" : "", null3 ? " row_sum=NULL" : "");
    for (size_t i = 0; !big && i < alloc && i < 16; ++i)
        note("    [%zu] row_max=%.17g global_max=%.17g row_sum=%.17g\n", i, ca[i], cb[i], cs0[i]);
    int status = amm_shard_rescale_sums(n, a, b, s);
    count_status(FN_RESCALE, status);
    note("    returned %s\n", sname(status));
    if (status < 0 || status >= NSTATUS || !(mask & BIT(status)))
        failure("status %s is not one the header allows here (expected %s)", sname(status),
                sname(__builtin_ctz(mask)));
    if (a && !big && memcmp(a, ca, alloc * 8) != 0) failure("row_max was modified");
    if (b && !big && memcmp(b, cb, alloc * 8) != 0) failure("global_max was modified");
    if (s && !canaries_intact(&m3)) failure("the canaries around row_sum were overwritten");
    oracle_t o;
    memset(&o, 0, sizeof o);
    o.bad_label_row = -1;
    check_message("amm_shard_rescale_sums", status, &o, 0);
    if (status == AMM_OK && !big && s) {
        for (size_t i = 0; i < alloc; ++i) {
            double want;
            if (ca[i] == -INFINITY) want = 0;
            else want = cs0[i] * exp(ca[i] - cb[i]);
            if (ca[i] == -INFINITY) {
                if (s[i] != 0) failure("row_sum[%zu] = %g where row_max is -inf: must be 0", i, s[i]);
            } else if (isfinite(want) && isfinite(ca[i]) && isfinite(cb[i]) && isfinite(cs0[i]) &&
                       fabs(s[i] - want) > 1e-13 * fabs(want) + 1e-300) {
                failure("row_sum[%zu] = %.17g, expected %.17g * exp(%.17g - %.17g) = %.17g", i,
                        s[i], cs0[i], ca[i], cb[i], want);
            }
            if (row_sum_io) row_sum_io[i] = s[i];
        }
    }
    end_call();
    mem_free(&m1);
    mem_free(&m2);
    mem_free(&m3);
    free(ca);
    free(cb);
    free(cs0);
    return status;
}

static void random_rescale(void)
{
    int64_t n = rchance(0.1) ? edge_dim() : (int64_t)rbelow(10);
    size_t cnt = (n >= 0 && n <= LIMIT) ? (size_t)n : 0;
    double *rm = calloc(cnt + 1, 8), *gm = calloc(cnt + 1, 8), *sm = calloc(cnt + 1, 8);
    if (!rm || !gm || !sm) exit(3);
    for (size_t i = 0; i < cnt; ++i) {
        rm[i] = rchance(0.15) ? -INFINITY : 64 * (2 * runif() - 1);
        gm[i] = rm[i] == -INFINITY ? (rchance(0.5) ? -INFINITY : 3.0) : rm[i] + 30 * runif();
        sm[i] = rm[i] == -INFINITY ? 0 : 1 + 5 * runif();
        if (rchance(0.05)) rm[i] = special_value(0);
        if (rchance(0.05)) gm[i] = special_value(0);
        if (rchance(0.05)) sm[i] = special_value(0);
    }
    int nm = 0;
    for (int b = 0; b < 3; ++b)
        if (rchance(cnt == 0 ? 0.4 : 0.04)) nm |= 1 << b;
    rescale_call(n, rm, gm, sm, nm, rchance(0.25) ? (int)rrange(1, 2) : 0);
    free(rm);
    free(gm);
    free(sm);
}

/* ---------------------------------------------------------------------------------------------
 * The other entry points
 * ------------------------------------------------------------------------------------------- */

static void call_validate(void)
{
    call_t k;
    memset(&k, 0, sizeof k);
    gen_params(&k.ps, 0, 10, 0.6);
    k.pnull = rchance(0.03);
    eff_t e;
    effective(&k.ps, &e);
    oracle_t o;
    memset(&o, 0, sizeof o);
    o.bad_label_row = -1;
    int amb = 0;
    unsigned mask;
    if (k.pnull) mask = BIT(AMM_ERR_NULL_POINTER);
    else if (params_fail(&e, 0, 1, &o, &amb)) mask = BIT(AMM_ERR_PARAM);
    else mask = BIT(AMM_OK) | (amb ? BIT(AMM_ERR_PARAM) : 0);
    k.a[A_HN].used = k.ps.struct_size >= 72 && k.ps.hn_set;
    if (k.a[A_HN].used) out_alloc(&k.a[A_HN].mem, 8 * 4, 0x5A);
    in_alloc(&k.pmem, PBUF, 16, rchance(0.3) ? 1 : 0);
    out_alloc(&k.decoy, 8 * 16, 0x5A);
    write_params(k.pmem.ptr, &k.ps, k.a[A_HN].used ? (int64_t *)k.a[A_HN].mem.ptr : NULL,
                 (int64_t *)k.decoy.ptr);
    memcpy(k.pcopy, k.pmem.ptr, PBUF);
    begin_call(FN_VALIDATE);
    note("  amm_params_validate%s\n", k.pnull ? "(NULL)" : ":");
    if (!k.pnull) describe_params(&k.ps);
    int status = amm_params_validate(k.pnull ? NULL : (const amm_params *)k.pmem.ptr);
    count_status(FN_VALIDATE, status);
    note("    returned %s\n", sname(status));
    if (status < 0 || status >= NSTATUS || !(mask & BIT(status)))
        failure("status %s is not one the header allows here", sname(status));
    if (memcmp(k.pcopy, k.pmem.ptr, PBUF) != 0) failure("the parameter struct was modified");
    for (size_t i = 0; k.a[A_HN].used && i < k.a[A_HN].mem.bytes; ++i)
        if (k.a[A_HN].mem.ptr[i] != 0x5A) {
            failure("amm_params_validate wrote p->hard_negatives");
            break;
        }
    for (size_t i = 0; i < k.decoy.bytes; ++i)
        if (k.decoy.ptr[i] != 0x5A) {
            failure("amm_params_validate wrote an uncovered hard_negatives");
            break;
        }
    check_message("amm_params_validate", status, &o, 1);
    end_call();
    mem_free(&k.a[A_HN].mem);
    mem_free(&k.pmem);
    mem_free(&k.decoy);
}

static void call_init(void)
{
    begin_call(FN_INIT);
    if (rchance(0.1)) {
        note("  amm_params_init(NULL)\n");
        amm_params_init(NULL);
        end_call();
        return;
    }
    mem_t m;
    unsigned char *buf = out_alloc(&m, PBUF, 0);
    uint64_t g = rnext();
    for (size_t i = 0; i < PBUF; i += 8) {
        uint64_t w = splitmix(&g);
        memcpy(buf + i, &w, 8);
    }
    unsigned char before[PBUF];
    memcpy(before, buf, PBUF);
    note("  amm_params_init(garbage-filled struct)\n");
    amm_params_init((amm_params *)buf);
    amm_params p;
    memcpy(&p, buf, sizeof p);
    if (!(p.struct_size == sizeof(amm_params) && p.scale == 64 && p.margin == 0.5 &&
          p.hard_margin == 0.2 && p.target == AMM_TARGET_ARC && p.hard == AMM_HARD_AMM &&
          p.reduction == AMM_REDUCTION_MEAN && p.num_threads == 0 && p.ignore_index == -100 &&
          p.head_block_size == 0 && p.hard_negatives == NULL))
        failure("amm_params_init did not set the documented defaults (struct_size %" PRIu32
                ", scale %g, margin %g, hard_margin %g, target %" PRId32 ", hard %" PRId32
                ", reduction %" PRId32 ", num_threads %" PRId32 ", ignore_index %" PRId64
                ", head_block_size %" PRId64 ", hard_negatives %p)",
                p.struct_size, p.scale, p.margin, p.hard_margin, p.target, p.hard, p.reduction,
                p.num_threads, p.ignore_index, p.head_block_size, (void *)p.hard_negatives);
    if (memcmp(before + sizeof(amm_params), buf + sizeof(amm_params),
               PBUF - sizeof(amm_params)) != 0)
        failure("amm_params_init wrote past sizeof(amm_params)");
    if (!canaries_intact(&m)) failure("amm_params_init wrote outside the struct");
    end_call();
    mem_free(&m);
}

static void call_misc(void)
{
    static const char *version_seen, *build_seen;
    switch (rbelow(6)) {
    case 0: {
        begin_call(FN_STATUS_NAME);
        static const int edge[] = {-1, 9, 10, INT_MIN, INT_MAX, 100, -8, 256};
        int s = rchance(0.6) ? (int)rbelow(NSTATUS) : rchance(0.5) ? PICK(edge) : (int)rnext();
        const char *name = amm_status_name(s);
        note("  amm_status_name(%d) = \"%s\"\n", s, name ? name : "(NULL)");
        const char *want = (s >= 0 && s < NSTATUS) ? STATUS_NAME[s] : "AMM_ERR_UNKNOWN";
        if (!name || strcmp(name, want) != 0)
            failure("amm_status_name(%d) = \"%s\", expected \"%s\"", s, name ? name : "(NULL)", want);
        end_call();
        break;
    }
    case 1: {
        begin_call(FN_VERSION);
        const char *v = amm_version();
        note("  amm_version() = \"%s\"\n", v ? v : "(NULL)");
        unsigned ma, mi, pa;
        char tail;
        if (!v || sscanf(v, "%u.%u.%u%c", &ma, &mi, &pa, &tail) != 3)
            failure("amm_version() = \"%s\" is not MAJOR.MINOR.PATCH", v ? v : "(NULL)");
        else if (version_seen && strcmp(version_seen, v) != 0)
            failure("amm_version() changed from \"%s\" to \"%s\"", version_seen, v);
        else if (ma * 10000 + mi * 100 + pa != amm_version_number())
            failure("amm_version() = \"%s\" but amm_version_number() = %" PRIu32, v,
                    amm_version_number());
        version_seen = v;
        end_call();
        break;
    }
    case 2: {
        begin_call(FN_VERSION_NUMBER);
        uint32_t v = amm_version_number();
        note("  amm_version_number() = %" PRIu32 "\n", v);
        if (v != amm_version_number()) failure("amm_version_number() is not stable");
        end_call();
        break;
    }
    case 3: {
        begin_call(FN_KBUILD);
        const char *b = amm_kernel_build();
        note("  amm_kernel_build() = \"%s\"\n", b ? b : "(NULL)");
        if (!b || (strcmp(b, "avx512") && strcmp(b, "avx2") && strcmp(b, "portable")))
            failure("amm_kernel_build() = \"%s\" is none of avx512, avx2, portable", b ? b : "(NULL)");
        else if (build_seen && strcmp(build_seen, b) != 0)
            failure("amm_kernel_build() changed from \"%s\" to \"%s\"", build_seen, b);
        build_seen = b;
        end_call();
        break;
    }
    case 4: {
        begin_call(FN_KDETAIL);
        const char *d = amm_kernel_build_detail();
        const char *b = amm_kernel_build();
        note("  amm_kernel_build_detail() = \"%s\"\n", d ? d : "(NULL)");
        char want[64];
        snprintf(want, sizeof want, "%s: selected", b ? b : "?");
        if (!d || !strstr(d, want))
            failure("amm_kernel_build_detail() does not contain \"%s\"", want);
        end_call();
        break;
    }
    default: {
        begin_call(FN_LAST_ERROR);
        const char *m = amm_last_error();
        note("  amm_last_error() = \"%s\"\n", m ? m : "(NULL)");
        if (!m) failure("amm_last_error() returned NULL");
        else if (g_last_msg_known && strcmp(m, g_last_msg) != 0)
            failure("amm_last_error() = \"%s\", the last failing call said \"%s\"", m, g_last_msg);
        else if (!g_last_msg_known && g_calls == 1 && m[0] != '\0')
            failure("amm_last_error() = \"%s\" before any call failed", m);
        end_call();
        break;
    }
    }
}

/* ---------------------------------------------------------------------------------------------
 * The sharding protocol end to end, against the unsharded functions
 * ------------------------------------------------------------------------------------------- */

typedef struct {
    int f32, head;
    pspec_t ps;
    int64_t n, c, d;
    double *x;       /* cos n x c, or embeddings n x d */
    double *w;       /* weights c x d (head) */
    int64_t *lab;
    double *gl;      /* upstream gradient (cos protocol), NULL for 1 */
    int64_t gl_count;
    int loss_null;
    int tame;        /* values where the sharded result must match the unsharded one closely */
    int page_mode;
} problem_t;

static void prep_call(call_t *k, const problem_t *pr, int fam)
{
    memset(k, 0, sizeof *k);
    k->fam = fam;
    k->f32 = pr->f32;
    k->ps = pr->ps;
    k->n = pr->n;
    k->c = pr->c;
    k->d = pr->d;
    k->ct = pr->c;
    k->page_mode = pr->page_mode;
}

static void set_rows(call_t *k, int r, const double *src, size_t count)
{
    for (size_t i = 0; i < count; ++i) k->a[r].v[i] = src[i];
}

/* The shard's columns [cs, cs + cl) of the problem's cos, or its weights' rows. */
static void set_shard_data(call_t *k, const problem_t *pr, int64_t cs, int64_t cl)
{
    k->cs = cs;
    k->cl = cl;
    layout(k);
    alloc_values(k);
    if (pr->head) {
        set_rows(k, A_X, pr->x, (size_t)(pr->n * pr->d));
        set_rows(k, A_W, pr->w + cs * pr->d, (size_t)(cl * pr->d));
    } else {
        for (int64_t i = 0; i < pr->n; ++i)
            for (int64_t j = 0; j < cl; ++j) k->a[A_X].v[i * cl + j] = pr->x[i * pr->c + cs + j];
    }
    for (int64_t i = 0; i < pr->n; ++i) k->a[A_LAB].iv[i] = pr->lab[i];
}

static int close_enough(double got, double want, double scale, int f32)
{
    double rtol = f32 ? 2e-3 : 1e-9, atol = f32 ? 1e-5 : 1e-12;
    double floor = f32 ? 1e-37 : 1e-300; /* subnormal residues */
    return fabs(got - want) <= rtol * fabs(want) + atol * scale + floor;
}

static void protocol(int f32, int head)
{
    problem_t pr;
    memset(&pr, 0, sizeof pr);
    pr.f32 = f32;
    pr.head = head;
    pr.page_mode = rchance(0.2) ? (int)rrange(1, 2) : 0;
    pr.n = (int64_t)rbelow(8);
    pr.c = 1 + (int64_t)rbelow(12);
    pr.d = 1 + (int64_t)rbelow(8);
    gen_params(&pr.ps, f32, pr.c, 0.08);
    if (rchance(0.5)) pr.ps.num_threads = (int32_t)rbelow(4);
    double spice = rchance(0.7) ? 0 : 0.03;
    pr.x = calloc((size_t)(pr.n * (head ? pr.d : pr.c)) + 1, sizeof(double));
    pr.w = calloc((size_t)(pr.c * pr.d) + 1, sizeof(double));
    pr.lab = calloc((size_t)pr.n + 1, sizeof(int64_t));
    if (!pr.x || !pr.w || !pr.lab) exit(3);
    for (int64_t i = 0; i < pr.n; ++i) {
        double rsc = head ? gen_row_scale(f32) : 1;
        for (int64_t j = 0; j < (head ? pr.d : pr.c); ++j)
            pr.x[i * (head ? pr.d : pr.c) + j] =
                head ? gen_emb_value(f32, spice, rsc) : gen_cos_value(f32, spice);
        int64_t l = gen_label(pr.c, pr.ps.ignore_index, 0, pr.c);
        if (rchance(0.9) && l != pr.ps.ignore_index && (l < 0 || l >= pr.c)) l = (int64_t)rbelow((uint64_t)pr.c);
        pr.lab[i] = l;
    }
    for (int64_t j = 0; j < pr.c; ++j) {
        double rsc = gen_row_scale(f32);
        for (int64_t q = 0; q < pr.d; ++q) pr.w[j * pr.d + q] = gen_emb_value(f32, spice * 0.3, rsc);
    }
    eff_t e;
    effective(&pr.ps, &e);
    int none = e.reduction == AMM_REDUCTION_NONE;
    pr.gl_count = none ? pr.n : 1;
    if (!head && rchance(0.5)) {
        pr.gl = calloc((size_t)pr.gl_count + 1, sizeof(double));
        if (!pr.gl) exit(3);
        for (int64_t i = 0; i < pr.gl_count; ++i)
            pr.gl[i] = rchance(0.02) ? nan_bits(0, 3) : to_elem(f32, 4 * runif() - 2);
    }
    pr.loss_null = !head && rchance(0.15);
    pr.tame = e.scale <= 100 && fabs(e.hard_margin) <= 2 && fabs(e.margin) <= 1.5 && spice == 0;
    if (head) /* tiny or huge rows make the normalisation amplify rounding: compare those loosely */
        for (int64_t i = 0; i < pr.n * pr.d; ++i)
            if (fabs(pr.x[i]) > 1e6 || fabs(pr.x[i]) < 1e-6) pr.tame = 0;
    if (head)
        for (int64_t i = 0; i < pr.c * pr.d; ++i)
            if (fabs(pr.w[i]) > 1e6 || fabs(pr.w[i]) < 1e-6) pr.tame = 0;

    /* the tiling: P shards, possibly empty */
    int P = 1 + (int)rbelow(4);
    int64_t cut[6];
    cut[0] = 0;
    cut[P] = pr.c;
    for (int r = 1; r < P; ++r) cut[r] = (int64_t)rbelow((uint64_t)pr.c + 1);
    for (int r = 1; r < P; ++r) /* sort */
        for (int q = r + 1; q < P; ++q)
            if (cut[q] < cut[r]) { int64_t t = cut[q]; cut[q] = cut[r]; cut[r] = t; }

    size_t n = (size_t)pr.n;
    double *tc = calloc(n + 1, 8), *gmax = calloc(n + 1, 8), *gsum = calloc(n + 1, 8);
    double *rmax[5], *rsum[5];
    int64_t *hn_tot = calloc(n + 1, 8);
    int64_t xc = head ? pr.d : pr.c;
    double *grad = calloc((size_t)(pr.n * xc) + 1, 8), *gw = calloc((size_t)(pr.c * pr.d) + 1, 8);
    double *loss_first = calloc(n + 1, 8);
    unsigned char *loss_bits = NULL;
    size_t loss_bytes = 0;
    if (!tc || !gmax || !gsum || !hn_tot || !grad || !gw || !loss_first) exit(3);
    for (int r = 0; r < P; ++r) {
        rmax[r] = calloc(n + 1, 8);
        rsum[r] = calloc(n + 1, 8);
        if (!rmax[r] || !rsum[r]) exit(3);
    }
    int ok = 1;
    call_t k;
    /* phase 1 */
    for (int r = 0; r < P && ok; ++r) {
        prep_call(&k, &pr, head ? FAM_SHT : FAM_ST);
        set_shard_data(&k, &pr, cut[r], cut[r + 1] - cut[r]);
        ok = run_call(&k) == AMM_OK;
        for (size_t i = 0; ok && i < n; ++i) tc[i] += get_value(&k, &k.a[A_TCO], i);
        release(&k);
    }
    /* phase 2, the collectives B, rescale, C and D */
    for (int r = 0; r < P && ok; ++r) {
        prep_call(&k, &pr, head ? FAM_SHS : FAM_SS);
        set_shard_data(&k, &pr, cut[r], cut[r + 1] - cut[r]);
        set_rows(&k, A_TC, tc, n);
        ok = run_call(&k) == AMM_OK;
        for (size_t i = 0; ok && i < n; ++i) {
            rmax[r][i] = get_value(&k, &k.a[A_RMAX], i);
            rsum[r][i] = get_value(&k, &k.a[A_RSUM], i);
            if (k.a[A_HN].used) hn_tot[i] += ((const int64_t *)k.a[A_HN].mem.ptr)[i];
        }
        release(&k);
    }
    for (size_t i = 0; ok && i < n; ++i) {
        gmax[i] = -INFINITY;
        for (int r = 0; r < P; ++r)
            if (rmax[r][i] > gmax[i]) gmax[i] = rmax[r][i];
    }
    for (int r = 0; r < P && ok; ++r)
        ok = rescale_call(pr.n, rmax[r], gmax, rsum[r], 0, pr.page_mode) == AMM_OK;
    for (size_t i = 0; ok && i < n; ++i)
        for (int r = 0; r < P; ++r) gsum[i] += rsum[r][i];
    /* phase 3 */
    for (int r = 0; r < P && ok; ++r) {
        prep_call(&k, &pr, head ? FAM_SHG : FAM_SG);
        k.consistent = 1;
        set_shard_data(&k, &pr, cut[r], cut[r + 1] - cut[r]);
        set_rows(&k, A_TC, tc, n);
        set_rows(&k, A_GMAX, gmax, n);
        set_rows(&k, A_GSUM, gsum, n);
        if (!head) {
            k.a[A_GL].null = pr.gl == NULL;
            if (pr.gl) set_rows(&k, A_GL, pr.gl, (size_t)pr.gl_count);
            k.a[A_LOSS].null = pr.loss_null;
        }
        ok = run_call(&k) == AMM_OK;
        if (ok) {
            begin_call(fn_index(&k)); /* the cross-rank checks, reported under a pseudo call */
            --g_calls;
            --g_fn_calls[fn_index(&k)];
            arr_t *lo = &k.a[A_LOSS];
            if (lo->used && !lo->null) {
                if (!loss_bits) {
                    loss_bytes = lo->mem.bytes;
                    loss_bits = malloc(loss_bytes + 1);
                    if (!loss_bits) exit(3);
                    memcpy(loss_bits, lo->mem.ptr, loss_bytes);
                    for (int64_t i = 0; i < lo->count; ++i) loss_first[i] = get_value(&k, lo, (size_t)i);
                } else if (loss_bytes != lo->mem.bytes || memcmp(loss_bits, lo->mem.ptr, loss_bytes)) {
                    note("  shard %d of %d, classes [%" PRId64 ", %" PRId64 ")\n", r, P, cut[r],
                         cut[r + 1]);
                    failure("the loss differs between shards (it must be the same bits on every rank)");
                }
            }
            int64_t cl = cut[r + 1] - cut[r];
            if (head) {
                for (size_t i = 0; i < n * (size_t)pr.d; ++i) grad[i] += get_value(&k, &k.a[A_GX], i);
                for (int64_t i = 0; i < cl * pr.d; ++i)
                    gw[cut[r] * pr.d + i] = get_value(&k, &k.a[A_GW], (size_t)i);
            } else {
                for (int64_t i = 0; i < pr.n; ++i)
                    for (int64_t j = 0; j < cl; ++j)
                        grad[i * pr.c + cut[r] + j] = get_value(&k, &k.a[A_GX], (size_t)(i * cl + j));
            }
            end_call();
        }
        release(&k);
    }
    /* the unsharded computation */
    if (ok) {
        int fam = head ? FAM_HEAD : (pr.gl ? FAM_BWD : FAM_FB);
        prep_call(&k, &pr, fam);
        k.no_rerun = 1;
        layout(&k);
        alloc_values(&k);
        set_rows(&k, A_X, pr.x, (size_t)(pr.n * xc));
        if (head) set_rows(&k, A_W, pr.w, (size_t)(pr.c * pr.d));
        for (size_t i = 0; i < n; ++i) k.a[A_LAB].iv[i] = pr.lab[i];
        if (pr.gl) set_rows(&k, A_GL, pr.gl, (size_t)pr.gl_count);
        int st = run_call(&k);
        call_t kf;
        int stf = AMM_OK;
        memset(&kf, 0, sizeof kf);
        if (fam == FAM_BWD && st == AMM_OK && loss_bits) { /* the loss from amm_forward */
            prep_call(&kf, &pr, FAM_FWD);
            kf.no_rerun = 1;
            kf.ps.hn_set = 0;
            layout(&kf);
            alloc_values(&kf);
            set_rows(&kf, A_X, pr.x, (size_t)(pr.n * xc));
            for (size_t i = 0; i < n; ++i) kf.a[A_LAB].iv[i] = pr.lab[i];
            stf = run_call(&kf);
        }
        begin_call(fn_index(&k));
        --g_calls;
        --g_fn_calls[fn_index(&k)];
        note("  sharded (%d shards: cuts", P);
        for (int r = 0; r <= P; ++r) note(" %" PRId64, cut[r]);
        note(") against %s of the call above\n", fn_name(&k));
        if (st != AMM_OK) {
            /* the reduced loss may overflow where phase 3 was not asked for it (loss NULL) */
            if (st != AMM_ERR_OVERFLOW && st != AMM_ERR_ALLOC)
                failure("the sharded phases succeeded but %s returned %s", fn_name(&k), sname(st));
        } else {
            /* target cosines exact, counts exact */
            for (size_t i = 0; i < n && !head; ++i) {
                if (pr.lab[i] == e.ignore_index) continue;
                double want = pr.x[i * (size_t)pr.c + (size_t)pr.lab[i]];
                if (!(tc[i] == want)) /* exact (-0 + 0 is +0: equal, not the same bits) */
                    failure("the target cosine of row %zu summed over shards is %.17g, cos is %.17g",
                            i, tc[i], want);
            }
            if (k.a[A_HN].used)
                for (size_t i = 0; i < n; ++i)
                    if (hn_tot[i] != ((const int64_t *)k.a[A_HN].mem.ptr)[i])
                        failure("hard negatives of row %zu: %" PRId64 " summed over shards, %" PRId64
                                " unsharded", i, hn_tot[i], ((const int64_t *)k.a[A_HN].mem.ptr)[i]);
            int bitwise = head && P == 1;
            /* with d = 1 the head's gradients are 0 in exact arithmetic (v^ = +-1 and
               dv = (dv^ - v^ <v^, dv^>) / ||v||): both results are rounding residues */
            if (head && pr.d == 1) pr.tame = 0;
            const call_t *kl = fam == FAM_BWD ? &kf : &k;
            if (loss_bits && (fam != FAM_BWD || stf == AMM_OK)) {
                const arr_t *lo = &kl->a[A_LOSS];
                if (bitwise && memcmp(loss_bits, lo->mem.ptr, loss_bytes) != 0)
                    failure("one shard: the loss differs from the unsharded head's bits");
                if (pr.tame)
                    for (int64_t i = 0; i < lo->count; ++i) {
                        double want = get_value(kl, lo, (size_t)i);
                        if (!close_enough(loss_first[i], want, 1 + e.scale, f32))
                            failure("loss[%" PRId64 "] sharded %.17g, unsharded %.17g", i,
                                    loss_first[i], want);
                    }
            }
            for (int64_t i = 0; i < pr.n; ++i) {
                double rowmax = 0;
                for (int64_t j = 0; j < xc; ++j) {
                    double v = fabs(get_value(&k, &k.a[A_GX], (size_t)(i * xc + j)));
                    if (v > rowmax) rowmax = v;
                }
                for (int64_t j = 0; j < xc; ++j) {
                    double want = get_value(&k, &k.a[A_GX], (size_t)(i * xc + j));
                    double got = grad[i * xc + j];
                    if ((bitwise && got != want) || (pr.tame && !close_enough(got, want, rowmax, f32))) {
                        failure("%s[%" PRId64 ", %" PRId64 "]: sharded %.17g, unsharded %.17g",
                                head ? "grad_embeddings" : "grad_cos", i, j, got, want);
                        i = pr.n;
                        break;
                    }
                }
            }
            if (head)
                for (int64_t j = 0; j < pr.c; ++j) {
                    double rowmax = 0;
                    for (int64_t q = 0; q < pr.d; ++q) {
                        double v = fabs(get_value(&k, &k.a[A_GW], (size_t)(j * pr.d + q)));
                        if (v > rowmax) rowmax = v;
                    }
                    for (int64_t q = 0; q < pr.d; ++q) {
                        double want = get_value(&k, &k.a[A_GW], (size_t)(j * pr.d + q));
                        double got = gw[j * pr.d + q];
                        if ((bitwise && got != want) || (pr.tame && !close_enough(got, want, rowmax, f32))) {
                            failure("grad_weights[%" PRId64 ", %" PRId64 "]: sharded %.17g, "
                                    "unsharded %.17g", j, q, got, want);
                            j = pr.c;
                            break;
                        }
                    }
                }
        }
        g_call_failed = 0;
        g_call_len = 0;
        release(&k);
        release(&kf);
    }
    for (int r = 0; r < P; ++r) {
        free(rmax[r]);
        free(rsum[r]);
    }
    free(tc);
    free(gmax);
    free(gsum);
    free(hn_tot);
    free(grad);
    free(gw);
    free(loss_first);
    free(loss_bits);
    free(pr.x);
    free(pr.w);
    free(pr.lab);
    free(pr.gl);
}

/* ---------------------------------------------------------------------------------------------
 * Driver
 * ------------------------------------------------------------------------------------------- */

static void run_case(void)
{
    uint64_t roll = rbelow(1000);
    int f32 = (int)rbelow(2);
    if (roll < 560) {
        /* the last six: the 16-bit functions, each twice as often as another single call
           (the others are called in the protocols too) */
        static const int fams[] = {FAM_FWD, FAM_BWD, FAM_FB, FAM_HEAD, FAM_ST, FAM_SS, FAM_SG,
                                   FAM_SHT, FAM_SHS, FAM_SHG, FAM_FWD, FAM_BWD, FAM_FB,
                                   FAM_FWD, FAM_BWD, FAM_FB};
        uint64_t pick = rbelow(sizeof fams / sizeof fams[0]);
        if (pick >= 10) random_call(fams[pick], 1, f32 ? H_BF16 : H_F16);
        else random_call(fams[pick], f32, H_NONE);
    } else if (roll < 700) {
        protocol(f32, 0);
    } else if (roll < 820) {
        protocol(f32, 1);
    } else if (roll < 860) {
        random_rescale();
    } else if (roll < 930) {
        call_validate();
    } else if (roll < 950) {
        call_init();
    } else {
        call_misc();
    }
}

static void usage(void)
{
    fprintf(stderr,
            "usage: amm_fuzz SEED CALLS [-s] [-v] [-r MAX_REPORTED] [-k PER_KIND]\n"
            "       amm_fuzz SEED --case K [-v]\n"
            "Runs cases (each one or more calls) of seed SEED until CALLS calls are made and\n"
            "prints \"N calls, M failures\" last. -s: a table of the calls, time and statuses of\n"
            "each entry point; -v: every call; -r: at most MAX_REPORTED failing calls printed\n"
            "in detail (60), -k: at most PER_KIND of each kind of failure (2);\n"
            "--case K: replays case K of the seed alone.\n");
    exit(2);
}

int main(int argc, char **argv)
{
    if (argc < 3) usage();
    char *end;
    g_seed = strtoull(argv[1], &end, 0);
    if (*end) usage();
    long long calls = -1, only_case = -1;
    int table = 0;
    for (int i = 2; i < argc; ++i) {
        if (!strcmp(argv[i], "-v")) g_verbose = 1;
        else if (!strcmp(argv[i], "-s")) table = 1;
        else if (!strcmp(argv[i], "-r") && i + 1 < argc) g_max_report = atoll(argv[++i]);
        else if (!strcmp(argv[i], "-k") && i + 1 < argc) g_per_kind = atoll(argv[++i]);
        else if (!strcmp(argv[i], "--case") && i + 1 < argc) only_case = atoll(argv[++i]);
        else if (calls < 0 && argv[i][0] >= '0' && argv[i][0] <= '9') calls = atoll(argv[i]);
        else usage();
    }
    if (calls < 0 && only_case < 0) usage();
    g_page = (size_t)sysconf(_SC_PAGESIZE);
    install_crash_handler();
    setvbuf(stdout, NULL, _IOLBF, 0);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (only_case >= 0) {
        /* replays one case: the messages of the calls before it are not known */
        g_case = only_case;
        rseed(g_seed, (uint64_t)only_case);
        run_case();
    } else {
        for (g_case = 0; g_calls < calls; ++g_case) {
            rseed(g_seed, (uint64_t)g_case);
            run_case();
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    if (table) {
        printf("%-32s %9s %8s", "entry point", "calls", "us/call");
        for (int s = 0; s <= NSTATUS; ++s) printf(" %6.6s", s < NSTATUS ? STATUS_NAME[s] + (s ? 8 : 4) : "other");
        printf("\n");
        for (int f = 0; f < FN_N; ++f) {
            printf("%-32s %9lld %8.1f", FN_NAME[f], g_fn_calls[f],
                   g_fn_calls[f] ? 1e6 * g_fn_seconds[f] / (double)g_fn_calls[f] : 0.0);
            for (int s = 0; s <= NSTATUS; ++s) printf(" %6lld", g_fn_status[f][s]);
            printf("\n");
        }
    }
    if (g_nkinds) {
        printf("failures by kind (count, check):\n");
        for (int i = 0; i < g_nkinds; ++i) printf("  %8lld  %s\n", g_kinds[i].count, g_kinds[i].key);
    }
    printf("seed %" PRIu64 ": %lld cases in %.2f s, %.0f calls/s\n", g_seed, g_case, secs,
           secs > 0 ? (double)g_calls / secs : 0.0);
    printf("%lld calls, %lld failures\n", g_calls, g_failures);
    return g_failures ? 1 : 0;
}
