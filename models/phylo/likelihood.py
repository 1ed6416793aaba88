r"""Felsenstein's pruning likelihood, batched over particles and topologies.

For a rooted binary tree with transition matrices :math:`P_k` on the edge above node
:math:`k`, the conditional likelihoods (partials) are :math:`L_v = (P_a L_a) \odot (P_b L_b)`
for the children :math:`a, b` of :math:`v`, and a site pattern's likelihood is
:math:`L_p = \sum_c w_c \sum_s \pi_s L_{\text{root},c,p,s}` over rate categories :math:`c`
(Felsenstein 1981). The log-likelihood is :math:`\sum_p n_p \log L_p` for pattern counts
:math:`n_p`.

One loop of :math:`n-1` steps visits the rows of the ``(…, n-1, 2)`` child table
(`models.phylo.topology`); each step is one gather, one product and one batched matrix product
over every particle, topology, rate category and site pattern at once. Partials are rescaled
at every node by their maximum over states and categories, the logs of the factors are summed,
so thousands of taxa do not underflow in float64.

Gradients are analytic (written here because autograd through the in-place buffers costs
:math:`O(n^2)` memory traffic): a pre-order pass computes the outside partials
:math:`U_k = G_{\text{parent}} \odot (P_{\text{sib}} L_{\text{sib}})`,
:math:`G_k = U_k P_k`, :math:`G_{\text{root}} = w_c\pi`, and

.. math:: \frac{\partial \log L_p}{\partial (P_k)_{c,ij}} = \frac{U_{k,c,i} L_{k,c,j}}
          {\sum_{c,i} U_{k,c,i} (P_k L_k)_{c,i}},

where the denominator equals :math:`L_p` up to the rescaling factors, which cancel (Ji et al.
2020, "Gradients do grow on trees"). Autograd carries these to branch lengths and substitution
parameters.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .alignment import Alignment
from .substitution import SubstitutionModel, get_model

__all__ = ["pruning_log_likelihood", "log_likelihood"]


_TINY_SCALE = 1e-200  # below this, partials were rescaled too rarely: redo every step


def _rescale_(x: Tensor) -> Tensor:
    """Divide ``x`` (N, C, 4, P) in place by its max over C and states; return the factors."""
    s = x.amax(dim=(1, 2), keepdim=True).clamp_min_(torch.finfo(x.dtype).tiny)
    x.div_(s)
    return s[:, 0, 0]


class _Schedule:
    """Row-wise gathers from node-major buffers ``(nodes, N, ...)`` and parent positions."""

    def __init__(self, children: Tensor, n_batch: int) -> None:
        self.shared = children.dim() == 2
        if self.shared:  # one topology: plain slices, no index tensors
            self.rows = children.tolist()
            return
        m = children.shape[-2]
        ar = torch.arange(n_batch, device=children.device)
        self.idx = (children * n_batch + ar[:, None, None]).permute(1, 2, 0).contiguous()
        # position (2 * row + side) of every node in its parent's row, per tree
        slots = torch.arange(2 * m, device=children.device).expand(n_batch, 2 * m)
        pos = torch.zeros(n_batch, 2 * m + 1, dtype=torch.long, device=children.device)
        pos.scatter_(1, children.reshape(n_batch, 2 * m), slots)
        self.slot = (pos * n_batch + ar[:, None]).T.contiguous()  # (nodes, N) into (2m*N)
        self.row = ((pos // 2) * n_batch + ar[:, None]).T.contiguous()  # into (m*N)

    def take(self, buf: Tensor, j: int, side: int) -> Tensor:
        if self.shared:
            return buf[self.rows[j][side]]
        return buf.flatten(0, 1).index_select(0, self.idx[j, side])


def _forward(trans_n, tips, children_rows, sched, freqs, cat_w, weights, every, low):
    n = tips.shape[0]
    msg = trans_n.new_empty(2 * n - 2, *trans_n.shape[1:3], 4, tips.shape[-1])
    # leaves: one (N*C*4, 4) @ (4, P) product per leaf, batched over the leaves
    torch.bmm(trans_n[:n].flatten(1, 3), tips, out=msg[:n].view(n, -1, tips.shape[-1]))
    scales, pairs = [], []
    for j in range(n - 1):
        part = low[j] if low.shape[0] > 1 else low[0]
        pair = (sched.take(msg, j, 0), sched.take(msg, j, 1))
        if low.shape[0] > 1:  # keep the gathered children for the backward pass
            pairs.append(pair)
        torch.mul(*pair, out=part)
        if j % every == every - 1 or j == n - 2:
            scales.append(_rescale_(part))
        if j < n - 2:
            torch.matmul(trans_n[n + j], part, out=msg[n + j])
    site = (freqs[:, None, None, :] @ part)[:, :, 0]  # (N, C, P)
    lik = (cat_w[:, None, :] @ site)[:, 0]  # (N, P)
    scales = torch.stack(scales)
    out = ((lik.log() + scales.log().sum(0)) * weights).sum(-1)
    return out, pairs, lik, scales.min()


class _Pruning(torch.autograd.Function):
    # Buffers are node-major, (nodes, N, C, 4, P): states before patterns, so that each step's
    # matrix product is a batch of (4, 4) @ (4, P).
    @staticmethod
    def forward(ctx, trans, freqs, cat_w, tips, weights, children, every):
        n_batch, _, n_cat = trans.shape[:3]
        n, n_pat = tips.shape[0], tips.shape[2]
        eye = torch.eye(4, dtype=trans.dtype, device=trans.device)
        # (2n-2, N, C, 4, 4) with the identity on the zero-length edge above node 2n-3
        trans_n = torch.cat([trans, eye.expand(n_batch, 1, n_cat, 4, 4)], 1)
        trans_n = trans_n.transpose(0, 1).contiguous()
        sched = _Schedule(children, n_batch)
        keep = any(ctx.needs_input_grad[:3])
        if sched.shared:
            args = (trans_n, tips, sched.rows, freqs, cat_w, weights)
            out, msg, low, lik, smallest = _forward_shared(*args, every, keep)
            if every > 1 and smallest < _TINY_SCALE:
                out, msg, low, lik, _ = _forward_shared(*args, 1, keep)
            root = low[2 * n - 2] if keep else None
        else:
            low = trans.new_empty(n - 1 if keep else 1, n_batch, n_cat, 4, n_pat)
            args = (trans_n, tips, children, sched, freqs, cat_w, weights)
            out, msg, lik, smallest = _forward(*args, every, low)
            if every > 1 and smallest < _TINY_SCALE:
                out, msg, lik, _ = _forward(*args, 1, low)
            root = low[n - 2] if keep else None
        if keep:
            ctx.save_for_backward(trans_n, freqs, cat_w, tips, weights, lik, root)
            ctx.sched, ctx.msg, ctx.low, ctx.every = sched, msg, low, every
        return out

    @staticmethod
    def backward(ctx, grad):
        trans_n, freqs, cat_w, tips, weights, lik, root = ctx.saved_tensors
        sched, msg, low = ctx.sched, ctx.msg, ctx.low
        coef = grad[:, None] * weights  # d out / d log L_p
        root_coef = (coef / lik)[:, None, None, :]
        grad_freqs = (root * root_coef * cat_w[:, :, None, None]).sum((1, 3))
        grad_cat = (root * root_coef * freqs[:, None, :, None]).sum((2, 3))
        g_root = cat_w[:, :, None, None] * freqs[:, None, :, None]
        if sched.shared:
            args = (sched.rows, trans_n, tips, msg, low, coef, g_root)
            grad_trans = _backward_shared(*args, every=ctx.every)
        else:
            grad_trans = _backward_batched(sched, trans_n, tips, msg, low, coef, g_root)
        return grad_trans, grad_freqs, grad_cat, None, None, None, None


def _forward_shared(trans_n, tips, rows, freqs, cat_w, weights, every, keep):
    """Pruning for one topology with a tensor per node, freed (or kept for the gradient)
    as soon as its parent is done: small working set, no page faults from huge buffers."""
    n, n_pat = tips.shape[0], tips.shape[-1]
    shape = (*trans_n.shape[1:3], 4, n_pat)
    low, msg, scales = {}, {}, []

    def message(c: int) -> Tensor:
        if c < n:  # one (N*C*4, 4) @ (4, P) product
            m = (trans_n[c].reshape(-1, 4) @ tips[c]).view(shape)
        else:
            x = low[c] if keep else low.pop(c)
            m = x if c == 2 * n - 3 else trans_n[c] @ x  # zero-length edge above 2n-3
        if keep:
            msg[c] = m
        return m

    for j, (c0, c1) in enumerate(rows):
        first, second = message(c0), message(c1)
        part = first * second if keep or c0 == 2 * n - 3 else first.mul_(second)
        if j % every == every - 1 or j == n - 2:
            scales.append(_rescale_(part))
        low[n + j] = part
    site = (freqs[:, None, None, :] @ part)[:, :, 0]  # (N, C, P)
    lik = (cat_w[:, None, :] @ site)[:, 0]  # (N, P)
    scales = torch.stack(scales)
    out = ((lik.log() + scales.log().sum(0)) * weights).sum(-1)
    return out, msg, low, lik, torch.minimum(scales.min(), lik.min())


def _backward_shared(rows, trans_n, tips, msg, low, coef, g, every=4):
    """Pre-order pass for one topology, per-node tensors, gradients written per edge.

    Outside partials are rescaled every ``every`` levels of depth; if a factor falls below
    1e-200 or a gradient is not finite, the pass is redone rescaling at every node.
    """
    n, n_pat = tips.shape[0], tips.shape[-1]
    g_root = g
    grad_n = torch.empty_like(trans_n)
    outer = {}  # G of internal nodes, consumed by their own row
    depth = {2 * n - 2: 0}
    factors = []
    for j in range(n - 2, -1, -1):
        if j < n - 2:
            g = outer.pop(n + j)
        c = rows[j]
        depth[c[0]] = depth[c[1]] = depth[n + j] + 1
        m = (msg[c[0]], msg[c[1]])  # not popped: backward may run more than once
        u = g * m[1]
        f = (coef / (u * m[0]).sum((1, 2)))[:, None, None, :]
        for side in (0, 1):
            k = c[side]
            if side == 1:
                u = g * m[0]
            if k >= n:
                outer[k] = trans_n[k].transpose(-1, -2) @ u
                if depth[k] % every == 0:
                    factors.append(_rescale_(outer[k]))
                torch.matmul(u.mul_(f), low[k].transpose(-1, -2), out=grad_n[k])
            else:
                leaf = u.mul_(f).view(-1, n_pat) @ tips[k].transpose(-1, -2)
                grad_n[k] = leaf.view(grad_n.shape[1:])
    if every > 1 and (
        (factors and torch.cat(factors).min() < _TINY_SCALE) or not torch.isfinite(grad_n).all()
    ):
        return _backward_shared(rows, trans_n, tips, msg, low, coef, g_root, every=1)
    return grad_n[: 2 * n - 3].transpose(0, 1)


def _backward_batched(sched, trans_n, tips, msg, low, coef, g):
    """Pre-order pass for a different topology per batch element (gathers by index);
    ``msg[j]`` holds the two children's messages of row ``j``, gathered in the forward pass."""
    n = tips.shape[0]
    # outside partials of each row's two children, and dlogL_p/dL_p per row
    upper = low.new_empty(n - 1, 2, *low.shape[1:])
    factor = coef.new_empty(n - 1, *coef.shape)
    flat_upper = upper.flatten(0, 2)
    for j in range(n - 2, -1, -1):
        if j < n - 2:
            u_v = flat_upper.index_select(0, sched.slot[n + j])
            g = trans_n[n + j].transpose(-1, -2) @ u_v
            _rescale_(g)
        m0, m1 = msg[j]
        torch.mul(g, m1, out=upper[j, 0])
        torch.mul(g, m0, out=upper[j, 1])
        factor[j] = coef / (upper[j, 0] * m0).sum((1, 2))
    # every edge at once: d out / d P_k = sum_p f_p U_k L_k^T
    edges = 2 * n - 3
    u = flat_upper.index_select(0, sched.slot[:edges].flatten()).unflatten(0, (edges, -1))
    f = factor.flatten(0, 1).index_select(0, sched.row[:edges].flatten())
    u.mul_(f.unflatten(0, (edges, -1))[:, :, None, None, :])
    grad_leaf = torch.bmm(u[:n].flatten(1, 3), tips.transpose(-1, -2))
    grad_leaf = grad_leaf.view(n, *u.shape[1:3], 4, 4)
    grad_inner = u[n:] @ low[: n - 3].transpose(-1, -2)
    return torch.cat([grad_leaf, grad_inner]).transpose(0, 1)


def pruning_log_likelihood(
    tips: Tensor,
    weights: Tensor,
    children: Tensor,
    trans: Tensor,
    freqs: Tensor,
    category_weights: Tensor | None = None,
    rescale_every: int = 4,
) -> Tensor:
    r"""Log-likelihood of site patterns on a batch of trees, from transition matrices.

    Args:
        tips: ``(n, 4, P)`` tip partials (`Alignment.partials` transposed).
        weights: ``(P,)`` pattern counts.
        children: ``(..., n-1, 2)`` canonical child tables (`models.phylo.topology`).
        trans: ``(..., 2n-3, C, 4, 4)`` transition matrices of the edges above nodes
            ``0 … 2n-4`` for each of ``C`` rate categories.
        freqs: ``(..., 4)`` root (stationary) frequencies.
        category_weights: ``(..., C)`` rate-category probabilities; uniform if omitted.
        rescale_every: rescale partials every this many steps (and at the root). Values only
            shrink between rescalings, so underflow shows as a tiny scale factor; if one falls
            below 1e-200 the pass is redone rescaling at every node.

    Returns:
        ``(...)`` log-likelihoods, the batch shapes of all arguments broadcast together.
        Differentiable in ``trans``, ``freqs`` and ``category_weights``.
    """
    n = tips.shape[0]
    if children.shape[-2:] != (n - 1, 2):
        raise ValueError(f"children must have shape (..., {n - 1}, 2), got {tuple(children.shape)}")
    if trans.shape[-4:-2] != (2 * n - 3,) + trans.shape[-3:-2] or trans.shape[-2:] != (4, 4):
        raise ValueError(f"trans must have shape (..., {2 * n - 3}, C, 4, 4), "
                         f"got {tuple(trans.shape)}")  # fmt: skip
    n_cat = trans.shape[-3]
    if category_weights is None:
        category_weights = trans.new_full((n_cat,), 1.0 / n_cat)
    batch = torch.broadcast_shapes(
        children.shape[:-2], trans.shape[:-4], freqs.shape[:-1], category_weights.shape[:-1]
    )
    n_batch = math.prod(batch)
    flat_trans = trans.expand(*batch, *trans.shape[-4:]).reshape(n_batch, *trans.shape[-4:])
    flat_freqs = freqs.to(trans).expand(*batch, 4).reshape(n_batch, 4)
    flat_cat = category_weights.to(trans).expand(*batch, n_cat).reshape(n_batch, n_cat)
    if children.dim() > 2:
        children = children.expand(*batch, n - 1, 2).reshape(n_batch, n - 1, 2)
    tips = tips.to(trans)
    out = _Pruning.apply(
        flat_trans, flat_freqs, flat_cat, tips, weights.to(trans), children, rescale_every
    )
    return out.reshape(batch)


def log_likelihood(
    alignment: Alignment,
    children: Tensor,
    lengths: Tensor,
    substitution: str | SubstitutionModel = "JC69",
    params: dict[str, Tensor] | None = None,
    rates: Tensor | None = None,
) -> Tensor:
    r"""Log-likelihood of an alignment on trees with branch lengths.

    Args:
        alignment: an `Alignment`.
        children: ``(..., n-1, 2)`` topologies.
        lengths: ``(..., 2n-3)`` branch lengths (expected substitutions per site).
        substitution: a model or its name; its fixed parameters are used unless ``params``.
        params: parameter values (e.g. from `SubstitutionModel.sample`).
        rates: ``(..., C)`` rate multipliers of equally likely categories
            (`discrete_gamma_rates`); one category of rate 1 if omitted.

    Returns:
        ``(...)`` log-likelihoods.

    Example:
        >>> from models.phylo.alignment import Alignment
        >>> from models.phylo.topology import from_edges
        >>> aln = Alignment.from_sequences(["a", "b", "c"], ["AC", "AC", "AG"])
        >>> children, lengths = from_edges(3, [(0, 3), (1, 3), (2, 3)], [0.1, 0.2, 0.3])
        >>> round(log_likelihood(aln, children, lengths).item(), 4)
        -6.1076
    """
    model = get_model(substitution)
    if params is None:
        params = model.params
    tips = alignment.partials(dtype=lengths.dtype, device=lengths.device).mT.contiguous()
    if rates is None:
        rates = lengths.new_ones(1)
    rates = rates.to(lengths)
    t = lengths[..., :, None] * rates[..., None, :]
    trans = model.transition_matrices(params, t.flatten(-2)).unflatten(-3, t.shape[-2:])
    freqs = model.frequencies(params).to(lengths)
    weights = alignment.weights.to(lengths)
    return pruning_log_likelihood(tips, weights, children.to(lengths.device), trans, freqs)
