r"""One topology, pruned level by level over distinct clade columns: `WavePlan`.

`models.phylo.repeats.forward_repeats` visits the $n-1$ internal nodes one by one, about
five small tensor operations each; with one or a few particles those operations take
microseconds of dispatch for a few dozen columns, so the Python loop, not the arithmetic, is
the cost. Here the nodes are scheduled by height instead (a node's height is one more than
its children's largest, leaves are 0): every node of a level has its children ready, so a
whole level is one gather of both children's columns, one product and one batched matrix
product, whatever its number of nodes. A DS1 tree has 10 levels for its 26 internal nodes.

A level's nodes have different numbers of distinct columns $K_v$; a batched matrix product
needs one width, so a level is split into waves of nodes padded to a common width, a new
wave starting where padding would cost more than a quarter of the columns (plus 32). Padded
columns repeat a valid column of the child, so they hold finite values that no parent reads
(DS1, tree 1: 11 waves, 5581 padded for 5118 real columns). In the backward pass they
receive no outside partial, so they contribute nothing.

Messages live in one flat buffer, laid out so that every product writes its output in place
and nothing is copied: first the leaves `(n, N*C, 4, KL)` (each leaf's distinct tip columns,
zero-padded to the widest leaf, all computed in one `bmm`), then each wave
`(count, N*C, 4, width)`, the layout of its batched matrix product. Children are gathered by
element index, precomputed per plan and number of batch elements (`WavePlan.index`); it
grows with `N*C`, which is why this path is for a few particles. Written by hand: no
library schedules pruning by levels over site repeats.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .fused import fused_repeats_grad, fused_repeats_root
from .partials import root_patterns

__all__ = ["WAVES_UP_TO", "WavePlan", "WavesState", "backward_waves", "forward_waves"]

# particles x rate categories up to which one topology is pruned level by level (few, wide
# operations, for when dispatch dominates) rather than node by node
# (`models.phylo.repeats.forward_repeats`: no padded columns and no per-element index, for
# when memory traffic dominates). Measured on DS1: at N*C = 4 level by level is 1.2x faster
# forward and as fast with the gradient; at 10, 0.9x and 0.8x
WAVES_UP_TO = 4


def _group(nodes: list[int], sizes: dict[int, int]) -> list[list[int]]:
    """Split one level's nodes into waves of similar width (widest first): a node joins the
    current wave unless padding the wave to its widest node would exceed a quarter of its
    real columns plus 32."""
    waves: list[list[int]] = []
    for v in sorted(nodes, key=lambda v: -sizes[v]):
        if waves:
            wave = waves[-1]
            real = sum(sizes[u] for u in wave) + sizes[v]
            if sizes[wave[0]] * (len(wave) + 1) <= 1.25 * real + 32:  # wave[0]: the widest
                wave.append(v)
                continue
        waves.append([v])
    return waves


class WavePlan:
    """The level schedule of one topology's distinct clade columns (module docstring).

    Args:
        plan: the topology's `models.phylo.tree_plan.RepeatPlan` (clade columns per node).
        tip_columns: `(n, 4, KL)` every leaf's distinct tip columns, zero-padded.

    Attributes:
        waves: `(first, count, width)` per wave: its first node in `nodes`, its number of
            nodes and their padded width.
        nodes: `(sum of counts but the root's,)` the nodes of every wave but the last (the
            root's, which has no edge above it), in wave order.
        root_ids: `(P,)` the root's column of every site pattern.
    """

    def __init__(self, plan, tip_columns: Tensor) -> None:
        n, rows = len(plan.tips), plan.rows
        self.n, self.tip_columns, self.root_ids = n, tip_columns, plan.root_ids
        self.packed = plan.packed  # the compiled loop's arrays (forward without a gradient)
        height = [0] * (2 * n - 1)
        for j, (a, b) in enumerate(rows):
            height[n + j] = 1 + max(height[a], height[b])
        levels: dict[int, list[int]] = {}
        for v in range(n, 2 * n - 1):
            levels.setdefault(height[v], []).append(v)
        kl = tip_columns.shape[-1]
        # per node: its wave's first column (in units of 4 * N*C entries), its place there
        # and its width; leaves form a wave of their own
        self._where = {c: (0, c, kl) for c in range(n)}
        self.waves, self._columns, order, column = [], [], [], n * kl
        for level in sorted(levels):
            for wave in _group(levels[level], plan.sizes):
                width = plan.sizes[wave[0]]
                cols = np.empty((2, len(wave), width), dtype=np.int64)
                for i, v in enumerate(wave):
                    self._where[v] = (column, i, width)
                    for side, cs in enumerate(plan.columns[v - n]):
                        cols[side, i, : cs.size] = cs
                        cols[side, i, cs.size :] = 0  # padding: a valid column
                self.waves.append((len(order), len(wave), width))
                self._columns.append((cols, [rows[v - n] for v in wave]))
                order += wave
                column += len(wave) * width
        self.columns = column  # buffer entries: 4 * N*C per column
        self.nodes = torch.tensor(order[:-1], device=tip_columns.device)  # the root is last

    @property
    def nbytes(self) -> int:
        """Bytes held, for the cache's bound: the column arrays (the element index, which grows
        with the batch, is built with the buffer's views and kept by the cache)."""
        return sum(cols.nbytes for cols, _ in self._columns) + self.nodes.numel() * 8

    def size(self, nc: int) -> int:
        """Entries of the buffer for `nc` batch elements: the messages, then scratch room for
        one wave's gathered children and partials."""
        widest = max(count * width for _, count, width in self.waves)
        return 4 * nc * (self.columns + 3 * widest)

    def views(self, buffer: Tensor, nc: int) -> tuple[Tensor, Tensor, list[tuple]]:
        """Views of `buffer` (`size(nc)` entries): the messages, the leaves' block of them
        `(n, nc*4, KL)` and, per wave, `(index, scratch for its gathered children (flat and
        shaped) and its partials, its messages' block or None for the root)`."""
        kl = self.tip_columns.shape[-1]
        messages, end = buffer[: 4 * nc * self.columns], self.n * nc * 4 * kl
        leaves, steps = messages[:end].view(self.n, nc * 4, kl), []
        scratch = buffer[4 * nc * self.columns :]  # apart: a gather may not write its input
        for w, ((_, count, width), index) in enumerate(zip(self.waves, self._entries(nc),
                                                           strict=True)):  # fmt: skip
            size, out = count * nc * 4 * width, None
            gathered = scratch[: 2 * size]
            part = scratch[2 * size : 3 * size].view(count * nc, 4, width)
            if w < len(self.waves) - 1:
                out, end = messages[end : end + size].view(part.shape), end + size
            steps.append((index, gathered, gathered.view(2, *part.shape), part, out))
        return messages, leaves, steps

    def _entries(self, nc: int) -> list[Tensor]:
        """Per wave, `(2 * count * nc * 4 * width,)` buffer entries of the first children's
        columns, then of the second's, for `nc` batch elements."""
        batch = np.arange(nc)[:, None, None] * 4 + np.arange(4)[:, None]  # (nc, 4, 1)
        out = []
        for cols, kids in self._columns:
            where = np.array([[self._where[c] for c in pair] for pair in kids])  # (count,2,3)
            first, place, width = (where[..., k].T[:, :, None, None, None] for k in range(3))
            entry = 4 * nc * (first + place * width) + batch * width + cols[:, :, None, None]
            out.append(torch.from_numpy(entry.ravel()).to(self.nodes.device))
        return out


@dataclass
class WavesState:
    """What `backward_waves` needs: the plan, its steps (`WavePlan.views`) and each wave's
    gathered children and partials."""

    plan: WavePlan
    steps: list[tuple]
    saved: list[tuple[Tensor, Tensor]]
    compiled: bool = False  # the pass ran in C (`models.phylo.fused`): so does its backward


def _wave_mats(trans_n: Tensor, plan: WavePlan) -> list[Tensor]:
    """`(count * N*C, 4, 4)` transition matrices of each wave but the root's, from one
    gather of node-major `trans_n`."""
    nc = trans_n.shape[1] * trans_n.shape[2]
    mats = trans_n.view(-1, nc, 4, 4).index_select(0, plan.nodes).view(-1, 4, 4)
    return mats.split([count * nc for _, count, _ in plan.waves[:-1]])


def forward_waves(trans_n, plan: WavePlan, freqs, cat_w, weights, keep, cache):
    """Unscaled pruning of one topology over distinct clade patterns, level by level; returns
    what `models.phylo.repeats.forward_repeats` returns (log-likelihoods of the root's
    patterns, the state for `backward_waves`, likelihoods, root partials, root pattern
    weights, smallest likelihood). The compiled loop of `models.phylo.fused` runs instead
    where it is available (and so does the backward)."""
    if (root := fused_repeats_root(trans_n, plan.packed, cache, keep)) is not None:
        logl, lik, root_w, smallest = root_patterns(root, plan.root_ids, freqs, cat_w, weights)
        return logl, WavesState(plan, [], [], compiled=True), lik, root, root_w, smallest
    n, (n_batch, n_cat) = plan.n, trans_n.shape[1:3]
    nc = n_batch * n_cat
    # views made once for as long as the cache hands out the same buffer: a dozen fewer
    # tensor operations a call, a tenth of the time on DS1
    _, (messages, leaves, steps) = cache.workspace_views(
        "wave messages", (plan.size(nc),), trans_n, (plan, nc), plan.views
    )
    torch.bmm(trans_n[:n].view(n, nc * 4, 4), plan.tip_columns, out=leaves)
    saved = []
    for (index, flat, shaped, scratch, out), mats in zip(steps, _wave_mats(trans_n, plan)
                                                         + (None,), strict=True):  # fmt: skip
        if keep:  # fresh tensors, kept for the backward pass
            both = messages.index_select(0, index).view(shaped.shape)
            part = torch.prod(both, 0)  # (count * N*C, 4, width)
            saved.append((both, part))
        else:  # scratch: no allocation, no view
            torch.index_select(messages, 0, index, out=flat)
            part = torch.prod(shaped, 0, out=scratch)
        if out is not None:  # every wave but the root's: messages, written in place
            torch.bmm(mats, part, out=out)
    root = part.view(n_batch, n_cat, 4, -1)
    logl, lik, root_w, smallest = root_patterns(root, plan.root_ids, freqs, cat_w, weights)
    return logl, WavesState(plan, steps, saved), lik, root, root_w, smallest


def backward_waves(trans_n, state: WavesState, g, cache):
    r"""Pre-order pass of `forward_waves`, wave by wave from the root: a wave's outside
    partials are $G_v = P_v^\top U_v$ from the summed outside messages $U_v$ of its
    columns, its edges' gradients $U_v L_v^\top$, and $G_v$ times each child's sibling
    message is added onto the child's columns (summing over the parent's columns that share
    a child column, as the chain rule asks). `g` is the root's $G$ `(N, C, 4, K)`. After the
    compiled forward, in C (`models.phylo.fused.fused_repeats_grad`)."""
    plan, saved = state.plan, state.saved
    if state.compiled:
        return fused_repeats_grad(trans_n, plan.packed, g, cache)[:-1].transpose(0, 1)
    n, (n_batch, n_cat) = plan.n, trans_n.shape[1:3]
    nc, kl = n_batch * n_cat, plan.tip_columns.shape[-1]
    # U of every buffer entry, in the cache's scratch memory (nothing returned refers to it)
    upper = cache.workspace("wave outside messages", (4 * nc * plan.columns,), trans_n)
    upper.zero_()
    mats, index = _wave_mats(trans_n, plan), [step[0] for step in state.steps]
    ends = np.cumsum([n * nc * 4 * kl] + [count * nc * 4 * width
                                          for _, count, width in plan.waves[:-1]])  # fmt: skip
    g = g.reshape(nc, 4, -1)  # the root's wave: one node
    grads = []
    for w in range(len(plan.waves) - 1, -1, -1):
        both, part = saved[w]
        if w < len(mats):
            u = upper[ends[w] : ends[w + 1]].view(part.shape)
            grads.append(torch.bmm(u, part.mT))  # d out / d P = U L^T
            g = torch.bmm(mats[w].mT, u)
        sides = both.flip(0) * g  # [G * m_b, G * m_a]: U of each child
        upper.index_add_(0, index[w], sides.view(-1))
    grad_n = torch.empty_like(trans_n)
    leaf_u = upper[: ends[0]].view(n, nc * 4, kl)
    grad_n[:n] = torch.bmm(leaf_u, plan.tip_columns.mT).view(grad_n[:n].shape)
    inner = torch.cat(grads[::-1]).view(-1, n_batch, n_cat, 4, 4)  # wave order
    grad_n.index_copy_(0, plan.nodes, inner)
    return grad_n[: 2 * n - 3].transpose(0, 1)
