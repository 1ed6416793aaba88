r"""Every factor that any rooting of an unrooted tree uses, and the two-pass sum over rootings.

Root an unrooted topology on the edge above node $k$ (node numbering of `bits`, the top
node $2n-3$ standing for the edge to leaf $n-1$); its SBN probability is

$$
p(\tau, k) = p(X_k \mid \bar X_k)\cdot
    \underbrace{p(s_k \mid X_k, \bar X_k)\, D^\downarrow_k}_{\text{below } k}\cdot
    \underbrace{p(\bar s_k \mid \bar X_k, X_k)\, D^\uparrow_k}_{\text{above } k},
$$

with $X_k$ the clade of $k$, $\bar X_k$ its complement, $s_k$ the subsplit of $k$ and
$\bar s_k = (X_{\text{sib}(k)}, \bar X_{\text{par}(k)})$ the subsplit of the parent side.
Every conditional is $p(\text{subsplit of } Y \mid Y, \text{sister } Z)$ (conditional
probability sharing: one parameter per parent-child subsplit pair wherever it sits). In log
space $D^\downarrow$ and $D^\uparrow$ are sums over the tree (Zhang & Matsen 2018, the
two-pass algorithm of their Section 4):

$$
\log D^\downarrow_k = \sum_{m \text{ strictly below } k} \log p(s_m \mid X_m, X_{\text{sib}(m)}),
\qquad
\log D^\uparrow_k = \sum_{a \supseteq k,\ a \ne \text{top}} w_{\text{sib}(a)},
$$

$w_s = \log p(s_s \mid X_s, \bar X_{\text{par}(s)}) + \log D^\downarrow_s +
\log p(\bar s_{\text{par}(s)} \mid \bar X_{\text{par}(s)}, X_s)$. Both are products with the
descendant matrix of the tree, so all $2n-3$ rootings of a batch of trees cost two batched
matrix-vector products: $O(n)$ work per tree and rooting, with no Python loop over trees.

The five conditional *slots* per node $k$ (zero where they do not apply):
``R`` $p(s_k\mid X_k,\bar X_k)$, ``T`` $p(s_k\mid X_k,X_{\text{sib}})$, ``U1``
$p(s_k\mid X_k,\bar X_{\text{par}})$, ``V`` $p(\bar s_k\mid \bar X_k, X_k)$, ``U2``
$p(\bar s_{\text{par}}\mid \bar X_{\text{par}}, X_k)$.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from varinf.distributions.sbn.bits import all_words, leaf_words, node_words, parent_and_sibling

R, T, U1, V, U2 = range(5)
NUM_SLOTS = 5


@dataclass
class TreeTerms:
    """Clade words of every factor of every rooting of ``B`` trees (``M = 2n-2`` nodes).

    Attributes:
        root: ``(B, M, W)`` root-split clade $X_k$ (the side without taxon ``n-1``).
        cond: ``(B, M, 5, 4, W)`` per slot: clade $Y$, sister $Z$ and the two parts of the
            subsplit of $Y$.
        cond_valid: ``(B, M, 5)`` which slots exist (internal $Y$, node not the top, ...).
        desc: ``(B, M, M)`` boolean, ``desc[a, m]``: node $m$ is $a$ or below it.
        sibling: ``(B, M)`` sibling node, ``-1`` for the top and leaf ``n-1``.
        rootings: the ``2n-3`` node indices that stand for edges (all but leaf ``n-1``).
    """

    root: Tensor
    cond: Tensor
    cond_valid: Tensor
    desc: Tensor
    sibling: Tensor
    rootings: Tensor


def tree_terms(children: Tensor) -> TreeTerms:
    """Collect the factors of every rooting of a batch ``(B, n-1, 2)`` of child tables."""
    n = children.shape[-2] + 1
    m = 2 * n - 2
    top = 2 * n - 3
    dev = children.device
    x = node_words(children)[:, :m]  # (B, M, W)
    full = all_words(n, dev)
    xbar = full ^ x
    parent, sibling = parent_and_sibling(children)
    parent, sibling = parent[:, :m], sibling[:, :m]
    rows = torch.arange(x.shape[0], device=dev)[:, None]
    nodes = torch.arange(m, device=dev)
    leaves = leaf_words(n, dev)
    # clades of the two children of each internal node (zeros for leaves)
    kid = torch.zeros(x.shape[0], m, 2, dtype=torch.long, device=dev)
    kid[:, n:] = children[:, : n - 2]
    kid_a = torch.where((nodes >= n)[None, :, None], x[rows, kid[..., 0]], 0)
    kid_b = torch.where((nodes >= n)[None, :, None], x[rows, kid[..., 1]], 0)
    par = parent.clamp(min=0)
    x_par = torch.where((par == n - 1)[..., None], leaves[n - 1], x[rows, par])
    xbar_par = full ^ x_par
    x_sib = x[rows, sibling.clamp(min=0)]
    par_sib = sibling.gather(1, par.clamp(max=m - 1))
    x_par_sib = x[rows, par_sib.clamp(min=0)]
    grand = parent.gather(1, par.clamp(max=m - 1)).clamp(min=0)
    x_grand = torch.where((grand == n - 1)[..., None], leaves[n - 1], x[rows, grand])
    xbar_grand = full ^ x_grand
    slots = [
        (x, xbar, kid_a, kid_b),
        (x, x_sib, kid_a, kid_b),
        (x, xbar_par, kid_a, kid_b),
        (xbar, x, x_sib, xbar_par),
        (xbar_par, x, x_par_sib, xbar_grand),
    ]
    cond = torch.stack([torch.stack(s, -2) for s in slots], -3)  # (B, M, 5, 4, W)
    internal = nodes >= n
    below_top = (nodes != top) & (nodes != n - 1)
    valid = torch.stack(
        [
            internal.expand(x.shape[0], m),
            (internal & (nodes != top)).expand(x.shape[0], m),
            (internal & (nodes != top)).expand(x.shape[0], m),
            below_top.expand(x.shape[0], m),
            below_top & (parent != top),
        ],
        -1,
    )
    desc = ((x[:, None, :, :] & ~x[:, :, None, :]) == 0).all(-1)  # [a, m]: X_m within X_a
    rootings = torch.cat([nodes[: n - 1], nodes[n:]])
    return TreeTerms(x, cond, valid, desc, sibling, rootings)


def rooting_log_probs(terms: TreeTerms, root_lp: Tensor, cond_lp: Tensor) -> Tensor:
    r"""$\log p(\tau, k)$ for every tree and rooting, ``(B, 2n-3)``.

    Args:
        terms: from `tree_terms`.
        root_lp: ``(B, M)`` log root-split probabilities of $X_k$ (finite).
        cond_lp: ``(B, M, 5)`` log conditionals per slot, zero where a slot does not apply
            (finite; outside-support factors are handled by the caller).
    """
    desc = terms.desc.to(cond_lp.dtype)
    strict = desc - torch.eye(desc.shape[-1], dtype=desc.dtype, device=desc.device)
    down = (strict @ cond_lp[..., T, None])[..., 0]
    w = cond_lp[..., U1] + down + cond_lp[..., U2]
    w_sib = torch.where(terms.sibling >= 0, w.gather(1, terms.sibling.clamp(min=0)), 0.0)
    up = (desc.mT @ w_sib[..., None])[..., 0]
    total = root_lp + cond_lp[..., R] + down + cond_lp[..., V] + up
    return total[:, terms.rootings]


def rooting_log_probs_masked(terms: TreeTerms, root_lp: Tensor, cond_lp: Tensor) -> Tensor:
    """`rooting_log_probs` where factors may be ``-inf``: those rootings get ``-inf`` (no NaN)."""
    root_zero, cond_zero = torch.isneginf(root_lp), torch.isneginf(cond_lp)
    total = rooting_log_probs(
        terms, torch.where(root_zero, 0.0, root_lp), torch.where(cond_zero, 0.0, cond_lp)
    )
    if not (bool(root_zero.any()) or bool(cond_zero.any())):
        return total
    zeros = rooting_log_probs(terms, root_zero.to(total), cond_zero.to(total))
    return torch.where(zeros > 0.5, -math.inf, total)
