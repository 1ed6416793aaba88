r"""Pruning over every site pattern, rescaled every few nodes, and its analytic gradient.

Two layouts. With one topology (particles; `forward_shared`), each node is its own
`(N, C, 4, P)` tensor, freed (or kept for the gradient) as soon as its parent is done: a small
working set and no page faults from huge buffers. With a topology per batch element
(`forward_batched`), node-major buffers `(nodes, N, C, 4, P)` are gathered by index at each
step. Partials are rescaled every `every` steps (never with `every = 0`: the unscaled pass);
values only shrink in between, so underflow shows as a factor below 1e-200 and
`models.phylo.pruning` redoes the pass rescaling at every node.

The backward passes are the pre-order recursion of `models.phylo.likelihood` (Ji et al. 2020),
written by hand because autograd through in-place buffers costs $O(n^2)$ memory traffic.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor

from .fused import fused_batched_grad, fused_root_partials
from .partials import finish, internal_message, leaf_message, rescale_, root_likelihood

__all__ = ["BatchedState", "SharedState", "backward_batched", "backward_shared",
           "forward_batched", "forward_shared"]  # fmt: skip


@dataclass
class SharedState:
    """What `backward_shared` needs: every node's message, partials and rescaling factors."""

    msg: dict[int, Tensor]
    low: dict[int, Tensor]
    factor: dict[int, Tensor]


@dataclass
class BatchedState:
    """What `backward_batched` needs: each row's gathered children, the partials `(n-1, N, C,
    4, P)` and each rescaled row's factors."""

    pairs: list[tuple[Tensor, Tensor]]
    low: Tensor
    factor: dict[int, Tensor]
    compiled: bool = False  # the pass ran in C (`models.phylo.fused`): so does its backward


class Schedule:
    """Row-wise gathers from node-major buffers `(nodes, N, ...)` and parent positions
    (built on first use: a batch pruned over clade repeats needs neither)."""

    def __init__(self, children: Tensor, n_batch: int) -> None:
        self.shared = children.dim() == 2
        self.children, self.n_batch = children, n_batch

    @functools.cached_property
    def rows(self) -> list[list[int]]:
        """One topology's rows (plain slices, no index tensors)."""
        return self.children.tolist()

    @functools.cached_property
    def idx(self) -> Tensor:
        """`(rows, 2, N)` rows of both children in the flattened node-major buffer."""
        ar = torch.arange(self.n_batch, device=self.children.device)
        return (self.children * self.n_batch + ar[:, None, None]).permute(1, 2, 0).contiguous()

    @functools.cached_property
    def slot(self) -> Tensor:
        """`(nodes, N)` position `2 * row + side` of every node in its parent's row."""
        children, n_batch = self.children, self.n_batch
        m = children.shape[-2]
        ar = torch.arange(n_batch, device=children.device)
        slots = torch.arange(2 * m, device=children.device).expand(n_batch, 2 * m)
        pos = torch.zeros(n_batch, 2 * m + 1, dtype=torch.long, device=children.device)
        pos.scatter_(1, children.reshape(n_batch, 2 * m), slots)
        return (pos * n_batch + ar[:, None]).T.contiguous()  # into (2m*N)


def forward_batched(trans_n, tips, sched, freqs, cat_w, weights, every, low, cache):
    """Pruning for a different topology per batch element: node-major buffers, gathers
    (the unscaled pass: the compiled loop of `models.phylo.fused` where it is available,
    and so is its backward; the root's partials in `low[n-2]` then)."""
    n, keep = tips.shape[0], low.shape[0] > 1
    if not every:
        root = fused_root_partials(trans_n, tips, sched.children, cache, low[n - 2] if keep
                                   else None)  # fmt: skip
        if root is not None:
            lik = root_likelihood(root, freqs, cat_w)
            logl, smallest = finish(lik, [])
            return logl, BatchedState([], low, {}, compiled=True), lik, smallest
    shape = (2 * n - 2, *trans_n.shape[1:3], 4, tips.shape[-1])
    msg = cache.workspace("node messages", shape, trans_n)
    # leaves: one (N*C*4, 4) @ (4, P) product per leaf, batched over the leaves
    torch.bmm(trans_n[:n].flatten(1, 3), tips, out=msg[:n].view(n, -1, tips.shape[-1]))
    n_batch = trans_n.shape[1]
    flat = msg.flatten(0, 1)
    # per row, both children of every tree in one gather; tensors unbound once, not per row
    idx, parts = sched.idx.flatten(1).unbind(0), low.unbind(0)
    upper, msgs = trans_n[n:].unbind(0), msg[n:].unbind(0)
    scratch = None if keep else msg.new_empty(2 * n_batch, *msg.shape[2:])
    scales, pairs, factor = [], [], {}
    for j in range(n - 1):
        part = parts[j] if keep else parts[0]
        if keep:  # keep the gathered children for the backward pass
            both = flat.index_select(0, idx[j])
        else:  # gathered into the same scratch tensor at every row
            both = torch.index_select(flat, 0, idx[j], out=scratch)
        pair = (both[:n_batch], both[n_batch:])
        if keep:
            pairs.append(pair)
        torch.mul(*pair, out=part)
        if every and (j % every == every - 1 or j == n - 2):
            scales.append(rescale_(part))
            factor[j] = scales[-1]
        if j < n - 2:
            torch.matmul(upper[j], part, out=msgs[j])
    lik = root_likelihood(part, freqs, cat_w)
    logl, smallest = finish(lik, scales)
    return logl, BatchedState(pairs, low, factor), lik, smallest


def forward_shared(trans_n, tips, rows, freqs, cat_w, weights, every, keep):
    """Pruning for one topology with a tensor per node, freed (or kept for the gradient)
    as soon as its parent is done: small working set, no page faults from huge buffers."""
    n = tips.shape[0]
    low, msg, scales, factor = {}, {}, [], {}

    def message(c: int) -> Tensor:
        if c < n:
            m = leaf_message(trans_n[c], tips[c])
        else:
            m = internal_message(trans_n, c, low[c] if keep else low.pop(c), n)
        if keep:
            msg[c] = m
        return m

    for j, (c0, c1) in enumerate(rows):
        first, second = message(c0), message(c1)
        part = first * second if keep or c0 == 2 * n - 3 else first.mul_(second)
        if every and (j % every == every - 1 or j == n - 2):
            scales.append(rescale_(part))
            if keep:
                factor[n + j] = scales[-1]
        low[n + j] = part
    lik = root_likelihood(part, freqs, cat_w)
    logl, smallest = finish(lik, scales)
    return logl, SharedState(msg, low, factor), lik, smallest


def backward_shared(rows, trans_n, tips, state: SharedState, g):
    r"""Pre-order pass for one topology, per-node tensors, gradients written per edge.

    `g` is $G_{\text{root}} = w_c \pi_s\, c_p / \tilde L_p$ with $c_p$ the
    incoming gradient times the pattern weight and $\tilde L_p$ the scaled likelihood.
    Dividing each node's outside partial by the forward rescaling factor of that node keeps
    $\sum G_v \odot L_v = c_p$ at every node, so $U_k L_k^\top$ is the gradient
    itself: no per-edge normalisation, no rescaling, and a zero incoming gradient stays zero.
    """
    n, n_pat = tips.shape[0], tips.shape[-1]
    msg, low, factor = state.msg, state.low, state.factor
    grad_n = torch.empty_like(trans_n)
    outer = {}  # G of internal nodes, consumed by their own row
    for j in range(n - 2, -1, -1):
        if j < n - 2:
            g = outer.pop(n + j)
        if n + j in factor:
            g = g / factor[n + j][:, None, None, :]
        c = rows[j]
        m = (msg[c[0]], msg[c[1]])  # not popped: backward may run more than once
        for side in (0, 1):
            k = c[side]
            u = g * m[1 - side]
            if k >= n:
                outer[k] = trans_n[k].transpose(-1, -2) @ u
                torch.matmul(u, low[k].transpose(-1, -2), out=grad_n[k])
            else:
                leaf = u.view(-1, n_pat) @ tips[k].transpose(-1, -2)
                grad_n[k] = leaf.view(grad_n.shape[1:])
    return grad_n[: 2 * n - 3].transpose(0, 1)


def backward_batched(sched, trans_n, tips, state: BatchedState, g, cache):
    """Pre-order pass for a different topology per batch element (gathers by index).

    `msg[j]` holds the two children's messages of row `j` gathered in the forward pass,
    `factor[j]` its rescaling factor; `g` and the normalisation are as in
    `backward_shared`, so every edge's gradient is one product at the end. Its buffers are
    the `cache`'s scratch workspaces.
    """
    if state.compiled:
        return fused_batched_grad(trans_n, tips, sched.children, g, cache)[:-1].transpose(0, 1)
    n = tips.shape[0]
    msg, low, factor = state.pairs, state.low, state.factor
    # U of each row's two children; scratch (megabytes: fresh pages cost more than the
    # arithmetic), which nothing returned refers to
    upper = cache.workspace("outside messages", (n - 1, 2, *low.shape[1:]), low)
    flat_upper = upper.flatten(0, 2)
    for j in range(n - 2, -1, -1):
        if j < n - 2:
            u_v = flat_upper.index_select(0, sched.slot[n + j])
            g = trans_n[n + j].transpose(-1, -2) @ u_v
        if j in factor:
            g = g / factor[j][:, None, None, :]
        m0, m1 = msg[j]
        torch.mul(g, m1, out=upper[j, 0])
        torch.mul(g, m0, out=upper[j, 1])
    # every edge at once: d out / d P_k = U_k L_k^T
    edges = 2 * n - 3
    u = cache.workspace("edge outside messages", (edges * low.shape[1], *low.shape[2:]), low)
    torch.index_select(flat_upper, 0, sched.slot[:edges].flatten(), out=u)
    u = u.unflatten(0, (edges, -1))
    grad_leaf = torch.bmm(u[:n].flatten(1, 3), tips.transpose(-1, -2))
    grad_leaf = grad_leaf.view(n, *u.shape[1:3], 4, 4)
    grad_inner = u[n:] @ low[: n - 3].transpose(-1, -2)
    return torch.cat([grad_leaf, grad_inner]).transpose(0, 1)
