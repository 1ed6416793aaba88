r"""Steps every pruning pass shares: messages, rescaling, the root.

A node's message to its parent is $M_k = P_k L_k$ ($P_k$ the transition matrices of the edge
above it, $L_k$ its partials, or its tip columns for a leaf); a node's partials are the
product of its children's messages; at the root a pattern's likelihood is
$L_p = \sum_c w_c \sum_s \pi_s L_{\mathrm{root}, c, s, p}$. The edge above node $2n-3$ (the
root's first child) has length zero: its message is its partials.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["finish", "internal_message", "leaf_message", "rescale_", "root_likelihood",
           "root_patterns"]  # fmt: skip


def leaf_message(trans: Tensor, tip_columns: Tensor) -> Tensor:
    """`(N, C, 4, K)` message of a leaf: `trans` `(N, C, 4, 4)` times its tip columns
    `(4, K)`, as one `(N*C*4, 4) @ (4, K)` product."""
    return (trans.reshape(-1, 4) @ tip_columns).view(*trans.shape[:-1], -1)


def internal_message(trans_n: Tensor, node: int, partials: Tensor, n: int) -> Tensor:
    """Message of internal `node` from its partials `(N, C, 4, K)` (node-major `trans_n`)."""
    return partials if node == 2 * n - 3 else trans_n[node] @ partials


def root_likelihood(root: Tensor, freqs: Tensor, cat_w: Tensor) -> Tensor:
    r"""`(N, K)` pattern likelihoods $\sum_c w_c \sum_s \pi_s L_{c,s}$ from the root's partials
    `(N, C, 4, K)`, frequencies `(N, 4)` and category weights `(N, C)`."""
    w = (cat_w[:, :, None] * freqs[:, None, :]).view(-1, 1, root.shape[1] * 4)  # w_c pi_s
    return torch.bmm(w, root.reshape(root.shape[0], -1, root.shape[-1]))[:, 0]


def root_patterns(root: Tensor, root_ids: Tensor, freqs: Tensor, cat_w: Tensor,
                  weights: Tensor) -> tuple:  # fmt: skip
    """What an unscaled pass over the root's distinct columns returns from the root's
    partials `(N, C, 4, K)`: log-likelihoods and likelihoods `(N, K)`, the columns' pattern
    weights `(K,)` (summed over the patterns `root_ids` maps there) and the smallest
    likelihood."""
    lik = root_likelihood(root, freqs, cat_w)
    root_w = weights.new_zeros(lik.shape[-1]).index_add_(0, root_ids, weights)
    return lik.log(), lik, root_w, lik.min()


def rescale_(x: Tensor) -> Tensor:
    """Divide `x` `(N, C, 4, P)` in place by its max over C and states; return the factors
    `(N, P)`."""
    s = x.amax(dim=(1, 2), keepdim=True).clamp_min_(torch.finfo(x.dtype).tiny)
    x.div_(s)
    return s[:, 0, 0]


def finish(lik: Tensor, scales: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Per-pattern log-likelihoods `(N, P)` from scaled pattern likelihoods and factors; the
    smallest value seen (underflow shows there)."""
    if not scales:  # unscaled pass
        return lik.log(), lik.min()
    scales = torch.stack(scales)
    return lik.log() + scales.log().sum(0), torch.minimum(scales.min(), lik.min())
