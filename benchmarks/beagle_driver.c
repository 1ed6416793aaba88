/* Times BEAGLE (libhmsbeagle, CPU, double, SSE, one thread) on one tree: transition
 * matrices from an eigen-decomposition, partials at every internal node, root
 * log-likelihood. Input: a binary file written by benchmarks/phylo_likelihood.py.
 * Prints "<log-likelihood> <ms per call>". Built at benchmark time. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "libhmsbeagle/beagle.h"

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec * 1e-6;
}

static void need(size_t got, size_t want) {
    if (got != want) { fprintf(stderr, "short input\n"); exit(2); }
}

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: beagle_driver INPUT\n"); return 2; }
    FILE *f = fopen(argv[1], "rb");
    if (!f) { perror(argv[1]); return 2; }
    int head[4];
    need(fread(head, sizeof(int), 4, f), 4);
    int n = head[0], p = head[1], reps = head[2], rescale = head[3];
    int nodes = 2 * n - 1, edges = 2 * n - 2;
    double *tips = malloc(sizeof(double) * n * p * 4), *w = malloc(sizeof(double) * p);
    double freqs[4], evec[16], ivec[16], eval[4], *len = malloc(sizeof(double) * edges);
    int *rows = malloc(sizeof(int) * 2 * (n - 1));
    need(fread(tips, sizeof(double), (size_t)n * p * 4, f), (size_t)n * p * 4);
    need(fread(w, sizeof(double), p, f), p);
    need(fread(freqs, sizeof(double), 4, f), 4);
    need(fread(evec, sizeof(double), 16, f), 16);
    need(fread(ivec, sizeof(double), 16, f), 16);
    need(fread(eval, sizeof(double), 4, f), 4);
    need(fread(len, sizeof(double), edges, f), edges);
    need(fread(rows, sizeof(int), 2 * (n - 1), f), 2 * (n - 1));
    fclose(f);
    BeagleInstanceDetails details;
    long flags = BEAGLE_FLAG_PROCESSOR_CPU | BEAGLE_FLAG_PRECISION_DOUBLE |
                 BEAGLE_FLAG_VECTOR_SSE | BEAGLE_FLAG_THREADING_NONE;
    int inst = beagleCreateInstance(n, nodes, 0, 4, p, 1, edges, 1, n, NULL, 0, flags, 0,
                                    &details);
    if (inst < 0) { fprintf(stderr, "beagleCreateInstance failed (%d)\n", inst); return 2; }
    for (int i = 0; i < n; i++) beagleSetTipPartials(inst, i, tips + (size_t)i * p * 4);
    double one = 1.0;
    beagleSetPatternWeights(inst, w);
    beagleSetStateFrequencies(inst, 0, freqs);
    beagleSetCategoryWeights(inst, 0, &one);
    beagleSetCategoryRates(inst, &one);
    beagleSetEigenDecomposition(inst, 0, evec, ivec, eval);
    int *mats = malloc(sizeof(int) * edges), *scales = malloc(sizeof(int) * (n - 1));
    for (int k = 0; k < edges; k++) mats[k] = k;
    BeagleOperation *ops = malloc(sizeof(BeagleOperation) * (n - 1));
    for (int j = 0; j < n - 1; j++) {
        int s = rescale ? j : BEAGLE_OP_NONE;
        BeagleOperation op = {n + j, s, BEAGLE_OP_NONE, rows[2 * j], rows[2 * j],
                              rows[2 * j + 1], rows[2 * j + 1]};
        ops[j] = op;
        scales[j] = j;
    }
    int root = nodes - 1, zero = 0, cumulative = rescale ? n - 1 : BEAGLE_OP_NONE;
    double logl = 0.0, start = 0.0;
    for (int r = -1; r < reps; r++) {
        if (r == 0) start = now_ms();  /* one warm-up call */
        beagleUpdateTransitionMatrices(inst, 0, mats, NULL, NULL, len, edges);
        beagleUpdatePartials(inst, ops, n - 1, BEAGLE_OP_NONE);
        if (rescale) {
            beagleResetScaleFactors(inst, cumulative);
            beagleAccumulateScaleFactors(inst, scales, n - 1, cumulative);
        }
        beagleCalculateRootLogLikelihoods(inst, &root, &zero, &zero, &cumulative, 1, &logl);
    }
    printf("%.10f %.6f\n", logl, (now_ms() - start) / reps);
    beagleFinalizeInstance(inst);
    return 0;
}
