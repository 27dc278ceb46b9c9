/* libFuzzer target: the reconstruction statistics' sidecar (lms_gram_open, include/lms/recon.h).
 * The input is the file; an accepted one goes through what prune does with it: the check against
 * a model of its own dimensions, every layer's sums read (checked finite), and, where the
 * dimensions are small, the refit of a toy weight on them with half the columns kept (refused
 * only as "not positive definite": any other failure of an accepted file is a bug). */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "lms/alloc.h"
#include "lms/recon.h"

#include "fuzz_io.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define SMALL 64

static void refit_small(const double *gram, const double *sum, int64_t n, int64_t n_tokens)
{
    double w[2 * SMALL], w_out[2 * SMALL], bias[2] = {0.5, -0.5}, bias_out[2];
    int64_t keep[SMALL], k = 0;
    for (int64_t i = 0; i < n; i += 2)
        keep[k++] = i;
    for (int64_t i = 0; i < 2 * n; i++)
        w[i] = (double)(i % 7) - 3.0;
    struct lms_error err;
    for (int with_bias = 0; with_bias < 2; with_bias++) {
        enum lms_status rc = lms_recon_solve(w, with_bias ? bias : NULL, 2, n, gram, sum,
                                             n_tokens, keep, k, LMS_RECON_RIDGE, w_out,
                                             with_bias ? bias_out : NULL, &err);
        if (rc != LMS_OK && rc != LMS_EINVAL)
            abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_memfd_path(data, size);
    if (!path)
        return 0;
    struct lms_error err;
    struct lms_gram g;
    if (lms_gram_open(path, &g, &err) != LMS_OK)
        return 0;
    struct lms_arch a = {.n_layers = g.n_layers, .ffn = g.dim[LMS_GRAM_DOWN],
                         .n_heads = g.dim[LMS_GRAM_O], .head_dim = 1};
    if (lms_gram_check(&g, &a, g.model_fp, &err) != LMS_OK)
        abort(); /* a file always matches the dimensions it states */
    for (int k = 0; k < LMS_GRAM_KINDS; k++) {
        int64_t n = g.dim[k];
        /* the header's tensors lie inside the file, so n x n doubles fit in its size */
        double *gram = lms_malloc((size_t)(n * n) * sizeof(double));
        double *sum = lms_malloc((size_t)n * sizeof(double));
        for (int64_t l = 0; gram && sum && l < g.n_layers; l++)
            if (lms_gram_layer(&g, (enum lms_gram_kind)k, l, gram, sum, &err) == LMS_OK &&
                n <= SMALL)
                refit_small(gram, sum, n, g.n_tokens);
        lms_free(gram);
        lms_free(sum);
    }
    lms_gram_release(&g);
    return 0;
}
