/*
 * example.c -- using libAMMSoftmax from C (or C++), against include/amm_softmax.h alone.
 *
 * It computes the AMM-Softmax loss and its gradient for a small batch of cosine logits, in
 * single and in double precision, then the same loss straight from embeddings and class weights
 * with the fused head, and shows what a refused call looks like.
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

/* A small batch: N samples, C classes; D dimensions of an embedding (for the fused head). */
#define N 4
#define C 6
#define D 3


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
    /* 1. Parameters: always start from amm_params_init (it sets the defaults of docs/FORMULATION.md
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

    /* 5. The fused head: raw embeddings (N x D) and class weights (C x D, one row per class)
          in; the loss on cos = normalize(embeddings) normalize(weights)^T and its gradients
          with respect to both out. The N x C matrix of cosines is never held: the classes are
          processed in blocks (params.head_block_size, 0 = automatic). The rows need not be
          normalised: the function does it, and the gradients flow through that step. */
    float embeddings[N * D], weights[C * D];
    for (int j = 0; j < C; ++j)
        for (int k = 0; k < D; ++k)
            weights[j * D + k] = (float)cos(0.9 * j - 1.7 * k + 0.2);
    for (int i = 0; i < N; ++i)
        for (int k = 0; k < D; ++k) {
            /* each sample leans towards the weight row of its class (any scale will do) */
            double lean = labels[i] >= 0 ? 1.5 * weights[labels[i] * D + k] : 0.0;
            embeddings[i * D + k] = (float)(2.0 * (sin(1.1 * i + 2.3 * k + 0.4) + lean));
        }
    float head_loss = 0.0f;
    float grad_embeddings[N * D]; /* d loss / d embeddings (the ignored row 3 is zero) */
    float grad_weights[C * D];    /* d loss / d weights                                */
    if (!succeeded("amm_head_forward_backward_f32",
                   amm_head_forward_backward_f32(&params, embeddings, weights, N, D, C, labels,
                                                 &head_loss, grad_embeddings, grad_weights)))
        return 1;
    printf("head loss (f32, embeddings %d x %d, weights %d x %d) = %.6f\n", N, D, C, D,
           (double)head_loss);
    printf("head d loss / d embeddings, sample 0: %+9.5f %+9.5f %+9.5f\n",
           (double)grad_embeddings[0], (double)grad_embeddings[1], (double)grad_embeddings[2]);
    printf("head d loss / d weights, class 2:     %+9.5f %+9.5f %+9.5f\n",
           (double)grad_weights[2 * D], (double)grad_weights[2 * D + 1],
           (double)grad_weights[2 * D + 2]);
    if (!(head_loss > 0.0f) || grad_embeddings[3 * D] != 0.0f) {
        fprintf(stderr, "unexpected head results\n");
        return 1;
    }

    /* 6. Error handling: a label outside [0, C) that is not ignore_index is refused. The call
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
