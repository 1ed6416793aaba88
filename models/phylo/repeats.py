r"""Pruning over distinct clade patterns only (subtree site repeats), without rescaling.

A node's partial likelihood at a site depends only on the tip states of its clade there, so
sites whose clade columns agree share one partial; `models.phylo.clade_table` finds them
(Kobert, Stamatakis & Flouri 2017, "Efficient detection of repeating sites to accelerate
phylogenetic likelihood calculations"). On DS1 (27 taxa, 934 patterns) the internal nodes hold
5118 columns in all instead of 24284; tips have at most 16 distinct columns (5 on DS1). The
site patterns' weights are summed onto the root's distinct patterns.

The forward pass is $L_v = (P_a X_a)[\,\cdot, i_a] \odot (P_b X_b)[\,\cdot, i_b]$
with `gather`; the backward pass scatters each child's outside partial back onto its own
columns with `scatter_add_` before the usual pre-order products, which sums the
contributions of all sites sharing a child pattern, exactly as the chain rule asks.

Two layouts: `forward_repeats` for one topology (a tensor per node; a leaf child's tip
columns are gathered once per plan at its parent's patterns, so its message there is the
product $P_a\,T_a[\,\cdot, i_a]$ and its gradient $U_a\,T_a[\,\cdot, i_a]^\top$),
and `forward_batched_repeats` for a different topology per batch element (one buffer, steps
ordered by clade size, see `models.phylo.batch_layout.BatchPlan`).

Both run without rescaling (the optimistic pass of `models.phylo.pruning`); underflow there
falls back to the uncompressed rescaled pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .batch_layout import BatchPlan
from .fused import fused_repeats_grad, fused_repeats_root
from .partials import root_likelihood, root_patterns
from .tree_plan import RepeatPlan


@dataclass
class RepeatsState:
    """What `backward_repeats` needs: the plan, each row's two gathered child messages and
    every node's partials."""

    plan: RepeatPlan
    pairs: list[list[Tensor]]
    low: dict[int, Tensor]
    compiled: bool = False  # the pass ran in C (`models.phylo.fused`): so does its backward


@dataclass
class BatchRepeatsState:
    """What `backward_batched_repeats` needs: the plan and each wave's gathered children and
    partials."""

    plan: BatchPlan
    saved: list[tuple[Tensor, Tensor]]


def forward_repeats(trans_n, plan, rows, freqs, cat_w, weights, keep, cache):
    """Unscaled pruning over distinct clade patterns; returns what `Pruning` needs: the
    log-likelihoods of the root's patterns `(N, K_root)`, the state for
    `backward_repeats`, the root's pattern likelihoods `(N, K_root)`, the root partials,
    the root's pattern weights and the smallest likelihood.

    Partials are `(N*C, 4, K)`, so that every message is one `bmm` (a 4-D broadcast matmul
    costs three times as much at these sizes), and the plan's indices come expanded to that
    shape once (an `expand` per gather costs as much as the gather). The compiled loop of
    `models.phylo.fused` runs instead where it is available (and so does the backward)."""
    if (root := fused_repeats_root(trans_n, plan.packed, cache, keep)) is not None:
        logl, lik, root_w, smallest = root_patterns(root, plan.root_ids, freqs, cat_w, weights)
        return logl, RepeatsState(plan, [], {}, compiled=True), lik, root, root_w, smallest
    n, (n_batch, n_cat) = len(plan.tips), trans_n.shape[1:3]
    nc, top = n_batch * n_cat, 2 * n - 3
    mats = trans_n.view(-1, nc, 4, 4).unbind(0)  # one op, not one select a node
    leaf_mats = trans_n[:n].view(n, -1, 4).unbind(0)
    low, pairs = {}, []
    for j, steps in enumerate(plan.steps(nc)):
        ms = []
        for c, idx, cols in steps:
            if cols is not None:  # a leaf's tip columns at the parent's patterns
                ms.append(torch.mm(leaf_mats[c], cols).view(nc, 4, -1))
                continue
            x = low[c] if keep else low.pop(c)
            m = x if c == top else torch.bmm(mats[c], x)
            ms.append(m if idx is None else m.gather(-1, idx))
        if keep:
            pairs.append(ms)
        # without keep, ms[0] is a fresh message or a partial nothing else needs
        low[n + j] = part = ms[0] * ms[1] if keep else ms[0].mul_(ms[1])
    root = part.view(n_batch, n_cat, 4, -1)
    logl, lik, root_w, smallest = root_patterns(root, plan.root_ids, freqs, cat_w, weights)
    return logl, RepeatsState(plan, pairs, low), lik, root, root_w, smallest


def backward_repeats(rows, trans_n, state: RepeatsState, g, cache):
    r"""Pre-order pass over distinct patterns (`models.phylo.scaled.backward_shared` with
    each child's outside partial summed onto its own columns first), in the `(N*C, 4, K)`
    layout of `forward_repeats` (or in C, `models.phylo.fused.fused_repeats_grad`, after
    the compiled forward)."""
    plan, pairs, low = state.plan, state.pairs, state.low
    if state.compiled:
        return fused_repeats_grad(trans_n, plan.packed, g, cache)[:-1].transpose(0, 1)
    n, (n_batch, n_cat) = len(plan.tips), trans_n.shape[1:3]
    nc = n_batch * n_cat
    mats = trans_n.view(-1, nc, 4, 4)
    grad_n = torch.empty_like(trans_n)
    grads = grad_n.view(-1, nc, 4, 4)
    index = plan.expanded(nc)
    g = g.reshape(nc, 4, -1)
    outer = {}
    for j in range(n - 2, -1, -1):
        if j < n - 2:
            g = outer.pop(n + j)
        for side, k in enumerate(rows[j]):
            u = g * pairs[j][1 - side]
            if k < n:  # the leaf's columns at this node's patterns: no scatter needed
                leaf = u.view(-1, u.shape[-1]) @ plan.leaf_cols[j][side].mT
                grads[k] = leaf.view(nc, 4, 4)
                continue
            idx = index[j][side]
            if idx is not None:
                u = u.new_zeros(nc, 4, plan.sizes[k]).scatter_add_(-1, idx, u)
            outer[k] = torch.bmm(mats[k].mT, u)
            torch.bmm(u, low[k].mT, out=grads[k])
    return grad_n[: 2 * n - 3].transpose(0, 1)


def forward_batched_repeats(trans_n, plan: BatchPlan, freqs, cat_w, weights, keep, cache):
    """Unscaled pruning of a different topology per batch element over distinct clade
    patterns, wave by wave (`models.phylo.batch_layout.BatchPlan`); returns what
    `forward_repeats` returns (the state for `backward_batched_repeats` is the plan and each
    wave's gathered children and partials)."""
    n, n_batch, n_cat = plan.n, trans_n.shape[1], trans_n.shape[2]
    buffer = cache.workspace("clade messages", (n_batch, n_cat, 4, plan.width), trans_n)
    leaves = torch.bmm(trans_n[:n].flatten(1, 3), plan.tip_columns)  # (n, N*C*4, KL)
    buffer[..., : n * plan.leaf_width].view(n_batch, n_cat, 4, n, -1).copy_(
        leaves.view(n, n_batch, n_cat, 4, -1).permute(1, 2, 3, 0, 4))  # fmt: skip
    mats = _step_matrices(trans_n, plan)
    saved = []
    for (first, count, width), start, index in zip(plan.waves, plan.starts, plan.index,
                                                   strict=True):  # fmt: skip
        shape = (n_batch, n_cat, 4, index.shape[-1])
        if keep:  # kept for the backward pass
            both = buffer.gather(-1, index.expand(shape))
        else:  # scratch memory: no page faults for a fresh tensor at every wave
            scratch = cache.workspace("gathered children", shape, trans_n)
            both = torch.gather(buffer, -1, index.expand(shape), out=scratch)
        both = both.view(n_batch, n_cat, 4, 2, count, width)
        first_child, second_child = both.unbind(3)
        part = first_child * second_child if keep else first_child.mul_(second_child)
        if keep:
            saved.append((both, part))
        if first + count < plan.steps:  # all but the root's wave
            up = cache.workspace("messages up", (n_batch, n_cat, count, 4, width), trans_n)
            torch.matmul(mats[:, :, first : first + count], part.transpose(2, 3), out=up)
            block = buffer[..., start : start + count * width]
            block.view(n_batch, n_cat, 4, count, width).copy_(up.transpose(2, 3))
    root = part[:, :, :, 0]  # (N, C, 4, K_root)
    lik = root_likelihood(root, freqs, cat_w)  # (N, K_root)
    root_w = weights.new_zeros(lik.shape[-1]).index_add_(0, plan.root_ids, weights)
    return lik.log(), BatchRepeatsState(plan, saved), lik, root, root_w, lik.min()


def _step_matrices(trans_n: Tensor, plan: BatchPlan) -> Tensor:
    """`(N, C, steps-1, 4, 4)` transition matrix above every step's node, every tree."""
    n_batch, n_cat = trans_n.shape[1:3]
    mats = trans_n.flatten(0, 1).index_select(0, plan.trans_index)
    return mats.view(-1, n_batch, n_cat, 4, 4).permute(1, 2, 0, 3, 4)


def backward_batched_repeats(trans_n, state: BatchRepeatsState, g, cache):
    r"""Pre-order pass of `forward_batched_repeats`, wave by wave from the root: each wave's
    outside partials, times the sibling messages, are scattered onto the children's columns
    of a buffer shaped like the forward one, where each child later finds them summed over
    its parent's columns.

    Padded columns get no gradient: the root has none, and a node's padded columns receive
    nothing from its parent's scatter, so their outside partials, and what they scatter onto
    their children, are zero."""
    plan, saved = state.plan, state.saved
    n, n_batch, n_cat = plan.n, trans_n.shape[1], trans_n.shape[2]
    # summed U of every node, in the cache's scratch memory (nothing returned refers to it)
    upper = cache.workspace("clade outside messages", (n_batch, n_cat, 4, plan.width), trans_n)
    upper.zero_()
    mats = _step_matrices(trans_n, plan)
    g = g[:, :, :, None]  # the root's wave: one step
    grads = []
    for r in range(len(plan.waves) - 1, -1, -1):
        (first, count, width), start, index = plan.waves[r], plan.starts[r], plan.index[r]
        both, part = saved[r]
        if r < len(plan.waves) - 1:
            u = upper[..., start : start + count * width].view(n_batch, n_cat, 4, count, width)
            u = u.transpose(2, 3)  # (N, C, s, 4, w)
            grads.append(u @ part.permute(0, 1, 3, 4, 2))  # d out / d P = U L^T
            g = (mats[:, :, first : first + count].transpose(-1, -2) @ u).transpose(2, 3)
        sides = both.flip(3) * g[:, :, :, None]  # [G * m_b, G * m_a]: U of each child
        upper.scatter_add_(-1, index.expand(n_batch, n_cat, 4, -1), sides.flatten(3))
    leaf_u = upper[..., : n * plan.leaf_width].view(n_batch, n_cat, 4, n, -1)
    leaf_u = leaf_u.permute(3, 0, 1, 2, 4).reshape(n, -1, plan.leaf_width)
    grad_n = torch.zeros_like(trans_n)
    grad_n[:n] = torch.bmm(leaf_u, plan.tip_columns.transpose(-1, -2)).view(grad_n[:n].shape)
    inner = torch.cat(grads[::-1], 2).permute(2, 0, 1, 3, 4)  # (steps-1, N, C, 4, 4)
    grad_n.flatten(0, 1).index_copy_(0, plan.trans_index, inner.flatten(0, 1))
    return grad_n[: 2 * n - 3].transpose(0, 1)
