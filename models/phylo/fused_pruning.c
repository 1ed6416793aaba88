/* The unscaled pruning passes and their gradients as plain loops: the kernels of
   models/phylo/fused.py (which compiles and loads this file, and documents why).

   prune_batched  a topology per batch element, every site pattern, forward
   prune_repeats  one topology over its nodes' distinct clade columns, forward
   prune_grad     the gradient of either with respect to the transition matrices

   prune_batched: for every batch element b and rate category c, the internal nodes n+j
   are visited in the order of the child table (children first): the node's partials are
   the product of its children's messages, a leaf's message P_k x_k computed from its tip
   partials x_k on the fly, an internal child's message P_k L_k read from the scratch
   buffer, where the node's own message is then written (its partials itself above the
   zero-length edge of node 2n-3). One element's messages, (n-1) * 4 * P doubles, stay in
   the core's cache (DS1: 0.8 MB), and nothing but the root's partials is written to memory
   the caller reads.

   Layouts (all contiguous, float64; the caller checks the child table first):
     trans     (2n-2, N, C, 4, 4)  node-major transition matrices, identity above 2n-3
     tips      (n, 4, P)           tip partials
     children  (N, n-1, 2)         int64 child tables, row j the children of node n+j
     root      (N, C, 4, P)        out: the root's partials
     work      (n * 4 * P)         scratch */

#include <stdint.h>
#include <string.h>

/* out[i, p] = sum_s m[i, s] x[s, p], or out[i, p] *= that sum with `multiply`: one message
   (a 4x4 matrix times 4 x P partials), the loop over patterns innermost (vectorised) */
static void message(const double *m, const double *x, double *out, long n_pat, int multiply) {
    for (int i = 0; i < 4; i++) {
        const double m0 = m[4 * i], m1 = m[4 * i + 1], m2 = m[4 * i + 2], m3 = m[4 * i + 3];
        const double *x0 = x, *x1 = x + n_pat, *x2 = x + 2 * n_pat, *x3 = x + 3 * n_pat;
        double *o = out + i * n_pat;
        if (multiply)
            for (long p = 0; p < n_pat; p++)
                o[p] *= m0 * x0[p] + m1 * x1[p] + m2 * x2[p] + m3 * x3[p];
        else
            for (long p = 0; p < n_pat; p++)
                o[p] = m0 * x0[p] + m1 * x1[p] + m2 * x2[p] + m3 * x3[p];
    }
}

void prune_batched(long n, long n_batch, long n_cat, long n_pat, const double *trans,
                   const double *tips, const int64_t *children, double *root, double *work) {
    const long size = 4 * n_pat;
    double *partials = work + (n - 1) * size;
    for (long b = 0; b < n_batch; b++) {
        const int64_t *rows = children + b * (n - 1) * 2;
        for (long c = 0; c < n_cat; c++) {
            for (long j = 0; j < n - 1; j++) {
                double *out = j == n - 2 ? root + (b * n_cat + c) * size : partials;
                for (int side = 0; side < 2; side++) {
                    const long k = rows[2 * j + side];
                    if (k < n) {  /* a leaf: its message from its tip partials */
                        const double *m = trans + ((k * n_batch + b) * n_cat + c) * 16;
                        message(m, tips + k * size, out, n_pat, side);
                    } else if (side == 0) {
                        memcpy(out, work + (k - n) * size, size * sizeof(double));
                    } else {
                        const double *x = work + (k - n) * size;
                        for (long q = 0; q < size; q++)
                            out[q] *= x[q];
                    }
                }
                const long v = n + j;
                if (v == 2 * n - 3)  /* the zero-length edge: the message is the partials */
                    memcpy(work + j * size, out, size * sizeof(double));
                else if (j < n - 2)
                    message(trans + ((v * n_batch + b) * n_cat + c) * 16, out, work + j * size,
                            n_pat, 0);
            }
        }
    }
}

/* The unscaled pass of one topology over each node's distinct clade columns
   (models/phylo/tree_plan.py, RepeatPlan), for every batch element and rate category e:
   a node's partials at its K_v columns are L_v[s, q] = M_a[s, i_a[q]] * M_b[s, i_b[q]],
   its message M_v = P_v L_v; a leaf's message is P_k T_k over its distinct tip columns T_k.
   One element's messages (DS1: 5253 columns, 170 kB) stay in the core's cache.

     trans     (2n-2, NC, 4, 4)   node-major transition matrices, identity above 2n-3
     tips      leaf k's (4, K_k) tip columns at offsets[k], one after the other
     children  (n-1, 2)           the child table
     sizes     (2n-1)             K_v, distinct columns of every node
     offsets   (2n-1)             each node's message in one element's work (offsets[2n-2]:
                                  scratch for one node's partials)
     index     per row, i_a then i_b (2 K_v entries each)
     root      (NC, 4, K_root)    out: the root's partials
     work      offsets[2n-2] + 4 max K_v doubles */
void prune_repeats(long n, long nc, const double *trans, const double *tips,
                   const int64_t *children, const int64_t *sizes, const int64_t *offsets,
                   const int64_t *index, double *root, double *work) {
    double *scratch = work + offsets[2 * n - 2];
    for (long e = 0; e < nc; e++) {
        for (long k = 0; k < n; k++)
            message(trans + (k * nc + e) * 16, tips + offsets[k], work + offsets[k], sizes[k], 0);
        const int64_t *columns = index;
        for (long j = 0; j < n - 1; j++) {
            const long v = n + j, width = sizes[v], a = children[2 * j], b = children[2 * j + 1];
            const int64_t *ia = columns, *ib = columns + width;
            const double *ma = work + offsets[a], *mb = work + offsets[b];
            double *out = v == 2 * n - 2 ? root + e * 4 * width : scratch;
            for (int s = 0; s < 4; s++) {
                const double *xa = ma + s * sizes[a], *xb = mb + s * sizes[b];
                double *o = out + s * width;
                for (long q = 0; q < width; q++)
                    o[q] = xa[ia[q]] * xb[ib[q]];
            }
            columns += 2 * width;
            if (v == 2 * n - 3)  /* the zero-length edge: the message is the partials */
                memcpy(work + offsets[v], out, 4 * width * sizeof(double));
            else if (v < 2 * n - 2)
                message(trans + (v * nc + e) * 16, out, work + offsets[v], width, 0);
        }
    }
}

/* grad[i, s] = sum_q u[i, q] x[s, q] for u, x (4, K): an edge's d out / d P = U X^T */
static void outer(const double *u, const double *x, double *grad, long width) {
    double acc[16] = {0};
    for (long q = 0; q < width; q++)
        for (int i = 0; i < 4; i++)
            for (int s = 0; s < 4; s++)
                acc[4 * i + s] += u[i * width + q] * x[s * width + q];
    memcpy(grad, acc, sizeof(acc));
}

/* The gradient of the unscaled pass with respect to the transition matrices, for every
   element e (tree e / n_cat, category e % n_cat): the forward pass again, keeping every
   node's partials L_v and message M_v, then the pre-order pass from the root's outside
   partials g[e] = G_root (4, K_root): for row v = (a, b),
   U_a[., i_a[q]] += G_v[., q] M_b[., i_b[q]] (and the same for b; several of v's columns
   may share a child column), the edge above k gets U_k X_k^T (X_k its partials, or its tip
   columns for a leaf) and G_k = P_k^T U_k (U_k itself above the zero-length edge).

   Over one topology's clade columns as prune_repeats (tree_stride 0), or over every
   pattern with a topology per tree (index NULL: i_a[q] = i_b[q] = q; children (N, n-1, 2),
   tree_stride 2(n-1); sizes all P, offsets 4Pk, tips (n, 4, P)).

     g     (NC, 4, K_root)       the root's outside partials
     grad  (2n-2, NC, 4, 4)      out, node-major (node 2n-3's entry zero)
     work  3 offsets[2n-2] + 4 max K_v doubles */
void prune_grad(long n, long nc, long n_cat, long tree_stride, const double *trans,
                const double *tips, const int64_t *children_0, const int64_t *sizes,
                const int64_t *offsets, const int64_t *index, const double *g, double *grad,
                double *work) {
    const long kept = offsets[2 * n - 2], root = 2 * n - 2, top = 2 * n - 3;
    double *msg = work, *low = work + kept, *up = work + 2 * kept, *scratch = work + 3 * kept;
    long columns_end = 0;
    for (long j = 0; j < n - 1; j++)
        columns_end += 2 * sizes[n + j];
    for (long e = 0; e < nc; e++) {
        const int64_t *children = children_0 + (e / n_cat) * tree_stride;
        for (long k = 0; k < n; k++)
            message(trans + (k * nc + e) * 16, tips + offsets[k], msg + offsets[k], sizes[k], 0);
        long start = 0;
        for (long j = 0; j < n - 2; j++) {  /* every row but the root's */
            const long v = n + j, width = sizes[v], a = children[2 * j], b = children[2 * j + 1];
            double *part = low + offsets[v];
            for (int s = 0; s < 4; s++) {
                const double *xa = msg + offsets[a] + s * sizes[a];
                const double *xb = msg + offsets[b] + s * sizes[b];
                double *o = part + s * width;
                if (index) {
                    const int64_t *ia = index + start, *ib = ia + width;
                    for (long q = 0; q < width; q++)
                        o[q] = xa[ia[q]] * xb[ib[q]];
                } else {
                    for (long q = 0; q < width; q++)
                        o[q] = xa[q] * xb[q];
                }
            }
            start += 2 * width;
            if (v == top)
                memcpy(msg + offsets[v], part, 4 * width * sizeof(double));
            else
                message(trans + (v * nc + e) * 16, part, msg + offsets[v], width, 0);
        }
        memset(up, 0, kept * sizeof(double));
        long end = columns_end;
        for (long j = n - 2; j >= 0; j--) {
            const long v = n + j, width = sizes[v], a = children[2 * j], b = children[2 * j + 1];
            end -= 2 * width;
            const double *outside = g + e * 4 * width;
            if (v != root) {
                const double *u = up + offsets[v], *m = trans + (v * nc + e) * 16;
                double *edge = grad + (v * nc + e) * 16;
                if (v == top) {
                    memset(edge, 0, 16 * sizeof(double));
                    memcpy(scratch, u, 4 * width * sizeof(double));
                } else {
                    const double mt[16] = {m[0], m[4], m[8], m[12], m[1], m[5], m[9], m[13],
                                           m[2], m[6], m[10], m[14], m[3], m[7], m[11], m[15]};
                    outer(u, low + offsets[v], edge, width);
                    message(mt, u, scratch, width, 0);
                }
                outside = scratch;
            }
            for (int s = 0; s < 4; s++) {
                const double *xa = msg + offsets[a] + s * sizes[a];
                const double *xb = msg + offsets[b] + s * sizes[b];
                double *ua = up + offsets[a] + s * sizes[a], *ub = up + offsets[b] + s * sizes[b];
                const double *o = outside + s * width;
                if (index) {
                    const int64_t *ia = index + end, *ib = ia + width;
                    for (long q = 0; q < width; q++) {
                        ua[ia[q]] += o[q] * xb[ib[q]];
                        ub[ib[q]] += o[q] * xa[ia[q]];
                    }
                } else {
                    for (long q = 0; q < width; q++) {
                        ua[q] += o[q] * xb[q];
                        ub[q] += o[q] * xa[q];
                    }
                }
            }
        }
        for (long k = 0; k < n; k++)
            outer(up + offsets[k], tips + offsets[k], grad + (k * nc + e) * 16, sizes[k]);
    }
}
