r"""Canonical child tables of sampled trees, batched (no Python loop over trees).

A rooted sample is the list of its $n-2$ non-root internal nodes, each a clade $Y$ split into
$A, B$ (the parent side being $\bar Y$). Read from leaf $n-1$, each node has the clade $C$
of the side away from $n-1$ and two children. The canonical table (children ordered by their
smallest taxon, internal nodes numbered in the postorder that order induces) follows from
two facts: taxon $i$'s position in the canonical leaf order is
$\sum_v |L_v|\,[i \in R_v]$ over internal nodes $v$ with left and right children $L_v, R_v$;
and postorder sorts nodes by (position of their last leaf, clade size).
"""

from __future__ import annotations

import torch
from torch import Tensor

from varinf.distributions.sbn.bits import all_words, contains, popcount, to_masks


def tables_from_subsplits(y: Tensor, a: Tensor, b: Tensor, n: int) -> Tensor:
    """Canonical ``(B, n-1, 2)`` tables from ``(B, n-2, W)`` node clades and their two parts."""
    full = all_words(n, y.device)
    ybar = full ^ y
    last_in_a = contains(a, n - 1)[..., None]
    last_in_b = contains(b, n - 1)[..., None]
    flip = last_in_a | last_in_b
    clade = torch.where(flip, full ^ torch.where(last_in_a, a, b), y)
    c1 = torch.where(last_in_a, b, a)
    c2 = torch.where(flip, ybar, b)
    m1, m2 = to_masks(c1, n), to_masks(c2, n)
    first1 = m1.int().argmax(-1)
    first2 = m2.int().argmax(-1)
    swap = (first2 < first1)[..., None]
    left, right = torch.where(swap, c2, c1), torch.where(swap, c1, c2)
    lmask, rmask = torch.where(swap, m2, m1), torch.where(swap, m1, m2)
    pos = (rmask.to(torch.long) * popcount(left)[..., None]).sum(-2)  # (B, n)
    cmask = to_masks(clade, n)
    end = torch.where(cmask, pos[:, None, :], -1).max(-1).values
    key = end * (n + 1) + popcount(clade)
    rank = key.argsort(-1).argsort(-1)  # postorder position of each node
    node_id = n + rank

    def ident(child: Tensor, mask: Tensor) -> Tensor:
        same = (child[:, :, None, :] == clade[:, None, :, :]).all(-1)  # (B, n-2, n-2)
        internal = node_id.gather(1, same.int().argmax(-1))
        leaf = mask.int().argmax(-1)
        return torch.where(popcount(child) == 1, leaf, internal)

    kids = torch.stack([ident(left, lmask), ident(right, rmask)], -1)  # (B, n-2, 2)
    out = torch.empty(y.shape[0], n - 1, 2, dtype=torch.long, device=y.device)
    out[:, :-1] = torch.empty_like(kids).scatter_(1, rank[..., None].expand_as(kids), kids)
    out[:, -1, 0], out[:, -1, 1] = 2 * n - 3, n - 1
    return out
