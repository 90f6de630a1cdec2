/*
 * example.c -- using libAMMSoftmax from C (or C++), against include/amm_softmax.h alone.
 *
 * It computes the AMM-Softmax loss and its gradient for a small batch of cosine logits, in
 * single and in double precision, then shows what a refused call looks like.
 *
 * Build and run from the repository root (after `swift build -c release`):
 *
 *     gcc -std=c11 -Wall -Wextra -pedantic -I include examples/c/example.c \
 *         -L .build/release -lAMMSoftmax -Wl,-rpath,$PWD/.build/release -lm -o amm_example
 *     ./amm_example
 *
 * The program exits with 0 when every call behaved as documented, 1 otherwise.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>

#include "amm_softmax.h"

/* A small batch: N samples, C classes. */
#define N 4
#define C 6


/* Checks a status: on failure, prints the call, the status and the library's message (which
   names the offending row, column, parameter and value) and returns 0. */
static int succeeded(const char *call, int status)
{
    if (status == AMM_OK)
        return 1;
    fprintf(stderr, "%s failed: %s (%d): %s\n", call, amm_status_name(status), status,
            amm_last_error());
    return 0;
}

int main(void)
{
    /* 1. Parameters: always start from amm_params_init (it sets the defaults of FORMULATION.md
          and struct_size), then change the fields you need. */
    amm_params params;
    amm_params_init(&params);
    params.scale = 16.0;               /* s; default 64                                  */
    params.margin = 0.5;               /* m, the angular target margin (arc)             */
    params.hard_margin = 0.2;          /* t, the margin on hard negatives (amm)          */
    params.target = AMM_TARGET_ARC;    /* ArcFace-style target logit cos(theta_y + m)    */
    params.hard = AMM_HARD_AMM;        /* AMM-Softmax re-weighting of hard negatives     */
    params.reduction = AMM_REDUCTION_MEAN;
    params.num_threads = 0;            /* 0 = one worker per core; results do not depend on it */

    printf("libAMMSoftmax %s (header %d.%d.%d)\n", amm_version(), AMM_VERSION_MAJOR,
           AMM_VERSION_MINOR, AMM_VERSION_PATCH);

    /* 2. Inputs: an N x C row-major matrix of cosines (element (i, j) at [i * C + j]) and one
          label per row. A row whose label is params.ignore_index (-100) is skipped: it adds
          nothing to the loss, its gradient row is zero, and the mean divides by 3, not 4. */
    const int64_t labels[N] = {2, 0, 5, -100};
    float cos32[N * C];
    double cos64[N * C];
    for (int i = 0; i < N; ++i) {
        for (int j = 0; j < C; ++j) {
            /* deterministic values in (-0.5, 0.5), and 0.6 for the target class, as from a
               partly trained model (some negatives are still closer than cos(theta_y + m)) */
            double value = (j == labels[i]) ? 0.6 : 0.5 * sin(1.3 * i + 0.7 * j + 0.1);
            cos32[i * C + j] = (float)value;
            cos64[i * C + j] = (double)cos32[i * C + j]; /* the same values in double */
        }
    }

    /* 3. Loss and gradient together, in single precision. With reduction mean the loss is one
          value; the gradient has the shape of cos. */
    float loss32 = 0.0f;
    float grad32[N * C];
    if (!succeeded("amm_forward_backward_f32",
                   amm_forward_backward_f32(&params, cos32, N, C, labels, &loss32, grad32)))
        return 1;

    /* 4. The loss alone, in double precision, on the same values. */
    double loss64 = 0.0;
    if (!succeeded("amm_forward_f64", amm_forward_f64(&params, cos64, N, C, labels, &loss64)))
        return 1;

    printf("loss (f32, forward_backward) = %.6f\n", (double)loss32);
    printf("loss (f64, forward)          = %.6f\n", loss64);
    printf("gradient d loss / d cos (f32):\n");
    for (int i = 0; i < N; ++i) {
        printf("  row %d (label %4lld):", i, (long long)labels[i]);
        for (int j = 0; j < C; ++j)
            printf(" %+9.5f", (double)grad32[i * C + j]);
        printf("\n");
    }

    /* The two precisions agree closely (f32 computes elementwise in single precision). */
    if (fabs((double)loss32 - loss64) > 1e-4 * fabs(loss64)) {
        fprintf(stderr, "f32 and f64 losses differ: %.9g vs %.9g\n", (double)loss32, loss64);
        return 1;
    }

    /* 5. Error handling: a label outside [0, C) that is not ignore_index is refused. The call
          returns a status code, and amm_last_error() (per thread, owned by the library) says
          which row and value were wrong. The outputs are unspecified after a refused call. */
    const int64_t bad_labels[N] = {2, 0, 9, -100}; /* 9 is not a class: C = 6 */
    int status = amm_forward_backward_f32(&params, cos32, N, C, bad_labels, &loss32, grad32);
    printf("bad label: status %s (%d): %s\n", amm_status_name(status), status, amm_last_error());
    if (status != AMM_ERR_LABEL) {
        fprintf(stderr, "expected AMM_ERR_LABEL, got %s\n", amm_status_name(status));
        return 1;
    }

    return 0;
}
