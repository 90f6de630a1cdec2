/*
 * shard_mpi.c -- the fused head sharded by class over MPI ranks, in PartialFC's layout, checked
 * against the single-process head.
 *
 * include/amm_softmax.h, "Sharding by class (since 0.3)", documents the protocol this program
 * runs: P ranks each own a contiguous shard of the C classes (PartialFC's split) and compute the
 * loss and their shard's gradients in three phases of the library, with five MPI collectives
 * between them (A to E below). The library never communicates; MPI moves the data.
 *
 * What each rank does:
 *   1. generates the same full problem (embeddings x: N x D, class weights W: C x D, labels)
 *      from a seed all ranks share, and keeps only its part: its own N_r rows (data-parallel)
 *      and its shard of W (class-parallel), as a training job would hold them;
 *   2. gathers every rank's embeddings and labels (MPI_Allgatherv): the head sees all N rows;
 *   3. phase 1, amm_shard_head_target_f64           A: MPI_Allreduce SUM of target_cos
 *      phase 2, amm_shard_head_statistics_f64       B: MPI_Allreduce MAX of row_max
 *               amm_shard_rescale_sums (local)      C: MPI_Allreduce SUM of row_sum
 *                                                   D: MPI_Allreduce SUM of the int64
 *                                                      hard-negative counts
 *      phase 3, amm_shard_head_gradient_f64         E: the sum of grad_embeddings over ranks,
 *                                                      as MPI_Reduce_scatter: each rank keeps
 *                                                      the gradient of its own rows
 *      Before each collective the ranks agree on the status (one MPI_Allreduce of an int): a
 *      phase validates only what its rank holds (a NaN in one shard's weights is seen by that
 *      rank alone), and a rank that skipped a collective would leave the others waiting.
 *   4. sends its results to rank 0, which runs amm_head_forward_backward_f64 on the full problem
 *      and compares: the loss (which must also be identical on every rank), the gradients of
 *      the embeddings and of the weights (each entry relative to the largest magnitude of its
 *      row, so that the entries that cancel to nearly zero are not divided by themselves), and
 *      the hard-negative counts (exactly). It prints the largest relative errors and fails if
 *      one exceeds 1e-12: the sharded result equals the unsharded one up to the order of the
 *      floating-point sums.
 *
 * Two settings are checked: AMM-Softmax's defaults with reduction mean, and CosFace with the
 * MV-Softmax fixed weight and reduction none (one loss per row).
 * With --nan-weight, the last rank puts a NaN into one of its class weights: phase 1 fails on
 * that rank only, every rank learns it from the status agreement, and all exit with 1 without
 * entering another collective (nothing hangs).
 *
 * Build and run from the repository root (after `swift build -c release`):
 *
 *     mpicc -std=c11 -Wall -Wextra -Werror -pedantic -I include examples/c/shard_mpi.c \
 *         -L .build/release -lAMMSoftmax -Wl,-rpath,$PWD/.build/release -lm -o shard_mpi
 *     mpirun -n 3 ./shard_mpi             # add --oversubscribe on a machine with < 3 cores
 *
 * Any number of ranks works: the rows and the classes are split the same way, and a rank may
 * hold no row or no class (Tests/c/abi_test.c checks a shard without classes).
 * Exit status: 0 when every comparison holds, 1 otherwise.
 */
#include <inttypes.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mpi.h>

#include "amm_softmax.h"

/* The full problem: N rows in all (spread over the ranks), C classes, embeddings of D values. */
#define N 61
#define C 1003
#define D 48
#define SEED 0x5EEDull
#define TOLERANCE 1e-12

/* ---------------------------------------------------------------------------------------------
 * The problem, the same on every rank
 * ------------------------------------------------------------------------------------------- */

/* SplitMix64: a small generator whose sequence depends on the seed alone, so every rank draws
   the same numbers. */
static uint64_t rng_state;
static uint64_t next_u64(void)
{
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static double uniform(void) { return (double)(next_u64() >> 11) * (1.0 / 9007199254740992.0); }
static double normal(void) /* Box-Muller */
{
    double u = uniform(), v = uniform();
    return sqrt(-2.0 * log(1.0 - u)) * cos(6.283185307179586 * v);
}

/* x: N x D, w: C x D, labels: N. Every 7th row is ignored (label -100); each labelled row leans
   towards its class so that the targets are near and some negatives are hard. */
static void make_problem(double *x, double *w, int64_t *labels)
{
    rng_state = SEED;
    for (int64_t k = 0; k < (int64_t)C * D; ++k)
        w[k] = normal() * (0.5 + uniform());
    for (int64_t i = 0; i < N; ++i) {
        labels[i] = i % 7 == 3 ? -100 : (int64_t)(next_u64() % C);
        for (int64_t k = 0; k < D; ++k) {
            double v = normal();
            if (labels[i] >= 0)
                v += 1.2 * w[labels[i] * D + k];
            x[i * D + k] = v;
        }
    }
}

/* PartialFC's split of `total` items over `size` ranks: rank r holds total / size, plus one for
   the first total % size ranks, in rank order. Used for the classes (as the header states it)
   and, here, for the rows too. */
static void split(int64_t total, int rank, int size, int64_t *start, int64_t *count)
{
    const int64_t base = total / size, extra = total % size;
    *count = base + (rank < extra ? 1 : 0);
    *start = rank * base + (rank < extra ? rank : extra);
}

/* ---------------------------------------------------------------------------------------------
 * Errors, agreed on by every rank
 * ------------------------------------------------------------------------------------------- */

static int rank, size;

/* Every rank calls this with its own status before the next collective. Returns 1 when every
   rank succeeded; else 0 on every rank, after each failing rank printed its own message and
   rank 0 said which ranks failed (the ranks then stop without another collective). */
static int agree(int status, const char *step)
{
    if (status != AMM_OK)
        fprintf(stderr, "rank %d: %s failed: %s: %s\n", rank, step, amm_status_name(status),
                amm_last_error());
    int failures = status != AMM_OK, total = 0;
    MPI_Allreduce(&failures, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (total != 0 && rank == 0)
        fprintf(stderr, "%s failed on %d of %d ranks: every rank stops here\n", step, total,
                size);
    return total == 0;
}

/* The largest |got - want| / (the largest |want| of its row), over rows x cols values. */
static double max_relative_error(const double *got, const double *want, int64_t rows,
                                 int64_t cols)
{
    double worst = 0.0;
    for (int64_t i = 0; i < rows; ++i) {
        double scale = 0.0;
        for (int64_t k = 0; k < cols; ++k)
            scale = fmax(scale, fabs(want[i * cols + k]));
        for (int64_t k = 0; k < cols; ++k) {
            double diff = fabs(got[i * cols + k] - want[i * cols + k]);
            double e = scale > 0.0 ? diff / scale : diff;
            if (!(e <= worst)) /* a NaN is the worst error */
                worst = isnan(e) ? INFINITY : e;
        }
    }
    return worst;
}

static void *checked_calloc(size_t count, size_t size_of)
{
    void *p = calloc(count > 0 ? count : 1, size_of);
    if (p == NULL) {
        fprintf(stderr, "rank %d: out of memory\n", rank);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    return p;
}

/* ---------------------------------------------------------------------------------------------
 * One sharded step and its check
 * ------------------------------------------------------------------------------------------- */

/* Runs the protocol with parameters *p (the same on every rank) and checks it on rank 0.
   Returns 1 if the results match the single-process head on every rank's say, 0 otherwise
   (the same answer on every rank). */
static int sharded_step(const amm_params *base, const char *name, int nan_weight)
{
    /* The full problem, then this rank's part of it. */
    double *x_full = checked_calloc((size_t)N * D, sizeof(double));
    double *w_full = checked_calloc((size_t)C * D, sizeof(double));
    int64_t *labels_full = checked_calloc(N, sizeof(int64_t));
    make_problem(x_full, w_full, labels_full);

    int64_t row_start, n_own, class_start, c_local;
    split(N, rank, size, &row_start, &n_own);
    split(C, rank, size, &class_start, &c_local);
    double *x_own = checked_calloc((size_t)n_own * D, sizeof(double));
    int64_t *labels_own = checked_calloc((size_t)n_own, sizeof(int64_t));
    double *w_shard = checked_calloc((size_t)c_local * D, sizeof(double));
    memcpy(x_own, x_full + row_start * D, (size_t)(n_own * D) * sizeof(double));
    memcpy(labels_own, labels_full + row_start, (size_t)n_own * sizeof(int64_t));
    memcpy(w_shard, w_full + class_start * D, (size_t)(c_local * D) * sizeof(double));
    if (nan_weight && rank == size - 1 && c_local > 0)
        w_shard[(c_local / 2) * D + 1] = NAN;

    /* Every rank's rows, gathered: counts and displacements of the MPI_Allgatherv calls (in
       rows, for the labels; in values, for the embeddings). MPI counts are int: this problem
       is small; a large one would gather in pieces or use MPI-4's _c variants. */
    int *rows_of = checked_calloc((size_t)size, sizeof(int));
    int *row_at = checked_calloc((size_t)size, sizeof(int));
    int *values_of = checked_calloc((size_t)size, sizeof(int));
    int *value_at = checked_calloc((size_t)size, sizeof(int));
    for (int r = 0; r < size; ++r) {
        int64_t s, k;
        split(N, r, size, &s, &k);
        rows_of[r] = (int)k;
        row_at[r] = (int)s;
        values_of[r] = (int)(k * D);
        value_at[r] = (int)(s * D);
    }
    const int64_t n = N; /* the rows every phase sees: all of them */
    double *x = checked_calloc((size_t)n * D, sizeof(double));
    int64_t *labels = checked_calloc((size_t)n, sizeof(int64_t));
    MPI_Allgatherv(x_own, (int)(n_own * D), MPI_DOUBLE, x, values_of, value_at, MPI_DOUBLE,
                   MPI_COMM_WORLD);
    MPI_Allgatherv(labels_own, (int)n_own, MPI_INT64_T, labels, rows_of, row_at, MPI_INT64_T,
                   MPI_COMM_WORLD);

    amm_params p = *base;
    int64_t *counts = checked_calloc((size_t)n, sizeof(int64_t));
    const int64_t n_loss = p.reduction == AMM_REDUCTION_NONE ? n : 1;
    double *target_cos = checked_calloc((size_t)n, sizeof(double));
    double *row_max = checked_calloc((size_t)n, sizeof(double));
    double *row_sum = checked_calloc((size_t)n, sizeof(double));
    double *global_max = checked_calloc((size_t)n, sizeof(double));
    double *global_sum = checked_calloc((size_t)n, sizeof(double));
    double *loss = checked_calloc((size_t)n_loss, sizeof(double));
    double *grad_x_all = checked_calloc((size_t)n * D, sizeof(double));
    double *grad_x_own = checked_calloc((size_t)n_own * D, sizeof(double));
    double *grad_w = checked_calloc((size_t)c_local * D, sizeof(double));
    int ok = 0;

    /* Phase 1: the target cosine of each row whose class is in this shard, 0 for the others.
       A: their sum is every row's target cosine, exactly (one term is not zero). */
    int status = amm_shard_head_target_f64(&p, x, w_shard, n, D, c_local, class_start, C,
                                           labels, target_cos);
    if (!agree(status, "phase 1 (amm_shard_head_target_f64)"))
        goto done;
    MPI_Allreduce(MPI_IN_PLACE, target_cos, (int)n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);

    /* Phase 2: over this shard's negatives, each row's largest logit and its sum of
       exponentials, and (p.hard_negatives) its count of hard negatives. */
    p.hard_negatives = counts;
    status = amm_shard_head_statistics_f64(&p, x, w_shard, n, D, c_local, class_start, C,
                                           labels, target_cos, row_max, row_sum);
    p.hard_negatives = NULL;
    if (!agree(status, "phase 2 (amm_shard_head_statistics_f64)"))
        goto done;
    /* B: the largest negative logit of each row over every shard. */
    MPI_Allreduce(row_max, global_max, (int)n, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    /* Each shard's sum brought to that common reference, then C: summed. */
    status = amm_shard_rescale_sums(n, row_max, global_max, row_sum);
    if (!agree(status, "amm_shard_rescale_sums"))
        goto done;
    MPI_Allreduce(row_sum, global_sum, (int)n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    /* D: the hard-negative counts, summed over the shards. */
    MPI_Allreduce(MPI_IN_PLACE, counts, (int)n, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);

    /* Phase 3: the loss (the same on every rank), this shard's weight gradient (complete), and
       its part of every row's embedding gradient. */
    status = amm_shard_head_gradient_f64(&p, x, w_shard, n, D, c_local, class_start, C, labels,
                                         target_cos, global_max, global_sum, loss, grad_x_all,
                                         grad_w);
    if (!agree(status, "phase 3 (amm_shard_head_gradient_f64)"))
        goto done;
    /* E: the parts summed over the ranks; each rank receives the rows it owns. */
    MPI_Reduce_scatter(grad_x_all, grad_x_own, values_of, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);

    /* ----- The check. The loss must be the same on every rank, bit for bit. */
    double loss_min[N], loss_max[N];
    MPI_Allreduce(loss, loss_min, (int)n_loss, MPI_DOUBLE, MPI_MIN, MPI_COMM_WORLD);
    MPI_Allreduce(loss, loss_max, (int)n_loss, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    int same_loss = memcmp(loss_min, loss_max, (size_t)n_loss * sizeof(double)) == 0;

    /* Rank 0 collects the embedding gradient by rows and the weight gradient by shards. */
    double *grad_x = rank == 0 ? checked_calloc((size_t)N * D, sizeof(double)) : NULL;
    double *grad_w_full = rank == 0 ? checked_calloc((size_t)C * D, sizeof(double)) : NULL;
    int *w_values_of = checked_calloc((size_t)size, sizeof(int));
    int *w_value_at = checked_calloc((size_t)size, sizeof(int));
    for (int r = 0; r < size; ++r) {
        int64_t s, k;
        split(C, r, size, &s, &k);
        w_values_of[r] = (int)(k * D);
        w_value_at[r] = (int)(s * D);
    }
    MPI_Gatherv(grad_x_own, (int)(n_own * D), MPI_DOUBLE, grad_x, values_of, value_at,
                MPI_DOUBLE, 0, MPI_COMM_WORLD);
    MPI_Gatherv(grad_w, (int)(c_local * D), MPI_DOUBLE, grad_w_full, w_values_of, w_value_at,
                MPI_DOUBLE, 0, MPI_COMM_WORLD);

    int passed = 1;
    if (rank == 0) {
        /* The single-process head on the full problem, with the same parameters. */
        double *want_loss = checked_calloc((size_t)n_loss, sizeof(double));
        double *want_gx = checked_calloc((size_t)N * D, sizeof(double));
        double *want_gw = checked_calloc((size_t)C * D, sizeof(double));
        int64_t *want_counts = checked_calloc(N, sizeof(int64_t));
        amm_params q = *base;
        q.hard_negatives = want_counts;
        status = amm_head_forward_backward_f64(&q, x_full, w_full, N, D, C, labels_full,
                                               want_loss, want_gx, want_gw);
        if (status != AMM_OK) {
            fprintf(stderr, "amm_head_forward_backward_f64 failed: %s: %s\n",
                    amm_status_name(status), amm_last_error());
            passed = 0;
        } else {
            double e_loss = max_relative_error(loss, want_loss, 1, n_loss);
            double e_gx = max_relative_error(grad_x, want_gx, N, D);
            double e_gw = max_relative_error(grad_w_full, want_gw, C, D);
            int same_counts = memcmp(counts, want_counts, N * sizeof(int64_t)) == 0;
            int64_t hard = 0;
            for (int i = 0; i < N; ++i)
                hard += want_counts[i];
            printf("%s, %d ranks, N = %d, C = %d, D = %d (shards of %d to %d classes):\n",
                   name, size, N, C, D, C / size, C / size + (C % size != 0));
            printf("  loss %.17g (single process %.17g)%s\n", loss[0], want_loss[0],
                   n_loss > 1 ? ", row 0 of reduction none" : "");
            printf("  max relative error: loss %.3e, grad_embeddings %.3e, "
                   "grad_weights %.3e\n", e_loss, e_gx, e_gw);
            printf("  loss identical on every rank: %s; hard negatives %" PRId64
                   ", counts equal: %s\n", same_loss ? "yes" : "NO", hard,
                   same_counts ? "yes" : "NO");
            passed = same_loss && same_counts && e_loss <= TOLERANCE && e_gx <= TOLERANCE &&
                     e_gw <= TOLERANCE;
            printf("  %s (tolerance %.0e)\n", passed ? "ok" : "FAILED", TOLERANCE);
        }
        free(want_loss); free(want_gx); free(want_gw); free(want_counts);
    }
    MPI_Bcast(&passed, 1, MPI_INT, 0, MPI_COMM_WORLD);
    ok = passed;
    free(grad_x); free(grad_w_full); free(w_values_of); free(w_value_at);

done:
    free(x_full); free(w_full); free(labels_full); free(x_own); free(labels_own); free(w_shard);
    free(rows_of); free(row_at); free(values_of); free(value_at); free(x); free(labels);
    free(counts); free(target_cos); free(row_max); free(row_sum); free(global_max);
    free(global_sum); free(loss); free(grad_x_all); free(grad_x_own); free(grad_w);
    return ok;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    const int nan_weight = argc > 1 && strcmp(argv[1], "--nan-weight") == 0;
    if (rank == 0)
        printf("libAMMSoftmax %s, %d MPI ranks\n", amm_version(), size);

    /* Every rank passes the same parameters. One worker thread per rank: the ranks share the
       machine's cores (results do not depend on num_threads). */
    amm_params amm;
    amm_params_init(&amm);
    amm.num_threads = 1;
    amm.head_block_size = 64; /* several blocks per shard */

    amm_params mv;
    amm_params_init(&mv);
    mv.num_threads = 1;
    mv.scale = 32.0;
    mv.target = AMM_TARGET_COS;
    mv.margin = 0.35;
    mv.hard = AMM_HARD_MV_FIXED;
    mv.hard_margin = 1.2;
    mv.reduction = AMM_REDUCTION_NONE;

    int ok = sharded_step(&amm, "AMM-Softmax (arc, amm), reduction mean", nan_weight);
    if (ok)
        ok = sharded_step(&mv, "MV-AM-Softmax (cos, mv-fixed), reduction none", nan_weight);

    if (rank == 0)
        printf("%s\n", ok ? "all checks passed" : "FAILED");
    MPI_Finalize();
    return ok ? 0 : 1;
}
