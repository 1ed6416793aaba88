r"""The pruning pass and its analytic gradient (the kernel behind `pruning_log_likelihood`).

Inputs are flattened to one batch dimension ``N``: transition matrices ``(N, 2n-3, C, 4, 4)``,
frequencies ``(N, 4)``, category weights ``(N, C)``, tip partials ``(n, 4, P)``, pattern weights
``(P,)`` and either one shared ``(n-1, 2)`` topology or ``(N, n-1, 2)`` topologies.

Optimistic first pass: without any rescaling (no reductions, no divisions, no logs of scale
factors). It is kept when every pattern's likelihood exceeds 1e-290, which float64 reaches on
trees of a few hundred taxa; otherwise (deep trees, long branches) the pass is redone with
rescaling, so the answer never depends on luck, only the cost does. The unscaled pass prunes
each node over its distinct clade patterns (`models.phylo.repeats`): always for one topology,
and for a batch of topologies when their clades recur enough to pay for the set-up
(`models.phylo.clade_patterns.BatchPlan`; otherwise over every site pattern).

Two paths. With one topology (particles), each node is its own ``(N, C, 4, P)`` tensor, freed
(or kept for the gradient) as soon as its parent is done: a small working set and no page
faults from huge buffers. With a topology per batch element, node-major buffers
``(nodes, N, C, 4, P)`` are gathered by index at each step. Partials are rescaled every
``every`` steps; values only shrink in between, so underflow shows as a factor below 1e-200 and
the pass is redone rescaling at every node.

The backward pass is the pre-order recursion of `models.phylo.likelihood` (Ji et al. 2020),
written by hand because autograd through in-place buffers costs :math:`O(n^2)` memory traffic.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from .clade_patterns import batch_plan_for, plan_for
from .repeats import (
    backward_batched_repeats,
    backward_repeats,
    forward_batched_repeats,
    forward_repeats,
)
from .workspace import workspace

_TINY_SCALE = 1e-200  # below this, partials were rescaled too rarely: redo every step
# A pattern's likelihood is sum_s O_v[s] L_v[s] with outside probabilities summing to at most
# one, so every node's largest partial entry is at least the likelihood: above this bound no
# partial lost more than ~1e-18 of it to underflow (float64's smallest normal is 2.2e-308).
_SAFE_UNSCALED = 1e-290


def _rescale_(x: Tensor) -> Tensor:
    """Divide ``x`` (N, C, 4, P) in place by its max over C and states; return the factors."""
    s = x.amax(dim=(1, 2), keepdim=True).clamp_min_(torch.finfo(x.dtype).tiny)
    x.div_(s)
    return s[:, 0, 0]


def _finish(lik: Tensor, scales: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Per-pattern log-likelihoods ``(N, P)`` from scaled pattern likelihoods and factors; the
    smallest value seen."""
    if not scales:  # unscaled pass
        return lik.log(), lik.min()
    scales = torch.stack(scales)
    return lik.log() + scales.log().sum(0), torch.minimum(scales.min(), lik.min())


def _passes(every: int) -> list[int]:
    """Rescaling periods to try in turn; each is kept unless it underflowed."""
    return [every] + ([1] if every > 1 else [])


def _accept(period: int, smallest: Tensor) -> bool:
    bound = _SAFE_UNSCALED if period == 0 else _TINY_SCALE
    return period == 1 or bool(smallest >= bound)  # False for NaN: try the next period


class _Schedule:
    """Row-wise gathers from node-major buffers ``(nodes, N, ...)`` and parent positions
    (built on first use: a batch pruned over clade repeats needs neither)."""

    def __init__(self, children: Tensor, n_batch: int) -> None:
        self.shared = children.dim() == 2
        self.children, self.n_batch = children, n_batch
        if self.shared:  # one topology: plain slices, no index tensors
            self.rows = children.tolist()

    @functools.cached_property
    def idx(self) -> Tensor:
        """``(rows, 2, N)`` rows of both children in the flattened node-major buffer."""
        ar = torch.arange(self.n_batch, device=self.children.device)
        return (self.children * self.n_batch + ar[:, None, None]).permute(1, 2, 0).contiguous()

    @functools.cached_property
    def slot(self) -> Tensor:
        """``(nodes, N)`` position ``2 * row + side`` of every node in its parent's row."""
        children, n_batch = self.children, self.n_batch
        m = children.shape[-2]
        ar = torch.arange(n_batch, device=children.device)
        slots = torch.arange(2 * m, device=children.device).expand(n_batch, 2 * m)
        pos = torch.zeros(n_batch, 2 * m + 1, dtype=torch.long, device=children.device)
        pos.scatter_(1, children.reshape(n_batch, 2 * m), slots)
        return (pos * n_batch + ar[:, None]).T.contiguous()  # into (2m*N)


def _forward_batched(trans_n, tips, sched, freqs, cat_w, weights, every, low):
    """Pruning for a different topology per batch element: node-major buffers, gathers."""
    n = tips.shape[0]
    msg = workspace("node messages", (2 * n - 2, *trans_n.shape[1:3], 4, tips.shape[-1]), trans_n)
    # leaves: one (N*C*4, 4) @ (4, P) product per leaf, batched over the leaves
    torch.bmm(trans_n[:n].flatten(1, 3), tips, out=msg[:n].view(n, -1, tips.shape[-1]))
    keep, n_batch = low.shape[0] > 1, trans_n.shape[1]
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
            scales.append(_rescale_(part))
            factor[j] = scales[-1]
        if j < n - 2:
            torch.matmul(upper[j], part, out=msgs[j])
    site = (freqs[:, None, None, :] @ part)[:, :, 0]  # (N, C, P)
    lik = (cat_w[:, None, :] @ site)[:, 0]  # (N, P)
    logl, smallest = _finish(lik, scales)
    return logl, (pairs, factor), lik, smallest


class Pruning(torch.autograd.Function):
    """Log-likelihoods ``(N,)`` with analytic gradients for transition matrices, frequencies
    and category weights; ``apply(trans, freqs, cat_w, tips, weights, children, every,
    optimistic, per_pattern)`` with the shapes of the module docstring (``optimistic``:
    unscaled pass first; ``per_pattern``: return the terms ``(N, P)``). Twice differentiable:
    the first derivative is the analytic pre-order pass; under ``create_graph=True`` the
    backward is autograd through `models.phylo.hessian.differentiable_pruning`."""

    @staticmethod
    def forward(ctx, trans, freqs, cat_w, tips, weights, children, every, optimistic,
                per_pattern=False):  # fmt: skip
        n_batch, _, n_cat = trans.shape[:3]
        n, n_pat = tips.shape[0], tips.shape[2]
        eye = torch.eye(4, dtype=trans.dtype, device=trans.device)
        # (2n-2, N, C, 4, 4) with the identity on the zero-length edge above node 2n-3
        trans_n = torch.cat([trans, eye.expand(n_batch, 1, n_cat, 4, 4)], 1)
        trans_n = trans_n.transpose(0, 1).contiguous()
        sched = _Schedule(children, n_batch)
        keep = any(ctx.needs_input_grad[:3])
        ctx.repeats, periods = False, _passes(every)
        ctx.per_pattern, pattern_w, root_ids = per_pattern, weights, None
        if optimistic:  # unscaled, over distinct clade patterns only, when they pay
            result = None
            if sched.shared:
                plan, rows = plan_for(tips, sched.rows), sched.rows
                result = forward_repeats(trans_n, plan, rows, freqs, cat_w, weights, keep)
            elif (plan := batch_plan_for(tips, children, keep)).worthwhile:
                result = forward_batched_repeats(trans_n, plan, freqs, cat_w, weights, keep)
            if result is None:  # unscaled over every site pattern first
                periods = [0, *periods]
            else:
                logl, state, lik, root, root_w, smallest = result
                ctx.repeats = _accept(0, smallest)
                if ctx.repeats:
                    weights, root_ids = root_w, state[0].root_ids
        if not ctx.repeats and sched.shared:  # rescaled, every site pattern
            args = (trans_n, tips, sched.rows, freqs, cat_w, weights)
            for period in periods:
                logl, state, lik, smallest = _forward_shared(*args, period, keep)
                if _accept(period, smallest):
                    break
            root = state[1][2 * n - 2] if keep else None
        elif not ctx.repeats:
            low = trans.new_empty(n - 1 if keep else 1, n_batch, n_cat, 4, n_pat)
            args = (trans_n, tips, sched, freqs, cat_w, weights)
            for period in periods:
                logl, state, lik, smallest = _forward_batched(*args, period, low)
                if _accept(period, smallest):
                    break
            state = (state[0], low, state[1])
            root = low[n - 2] if keep else None
        if keep:
            ctx.save_for_backward(trans_n, freqs, cat_w, tips, weights, lik, root, trans)
            ctx.sched, ctx.state = sched, state
            ctx.pattern_w, ctx.root_ids = pattern_w, root_ids
        if per_pattern:  # n_p log L_p (N, P)
            return (logl if root_ids is None else logl[:, root_ids]) * pattern_w
        return (logl * weights).sum(-1)

    @staticmethod
    def backward(ctx, grad):
        if torch.is_grad_enabled():  # create_graph=True: a second derivative will be taken
            return _differentiable_backward(ctx, grad)
        trans_n, freqs, cat_w, tips, weights, lik, root, _ = ctx.saved_tensors
        sched = ctx.sched
        if ctx.per_pattern:  # d out / d log L_p, summed onto the root's columns
            coef = grad * ctx.pattern_w
            if ctx.root_ids is not None:
                coef = coef.new_zeros(lik.shape).index_add_(1, ctx.root_ids, coef)
        else:
            coef = grad[:, None] * weights  # d out / d log L_p
        root_coef = (coef / lik)[:, None, None, :]
        grad_freqs = (root * root_coef * cat_w[:, :, None, None]).sum((1, 3))
        grad_cat = (root * root_coef * freqs[:, None, :, None]).sum((2, 3))
        g_root = cat_w[:, :, None, None] * freqs[:, None, :, None]
        if ctx.repeats and sched.shared:
            grad_trans = backward_repeats(sched.rows, trans_n, *ctx.state, g_root * root_coef)
        elif ctx.repeats:
            grad_trans = backward_batched_repeats(trans_n, *ctx.state, g_root * root_coef)
        elif sched.shared:
            grad_trans = _backward_shared(sched.rows, trans_n, tips, *ctx.state, g_root * root_coef)
        else:
            grad_trans = _backward_batched(sched, trans_n, tips, *ctx.state, g_root * root_coef)
        return grad_trans, grad_freqs, grad_cat, None, None, None, None, None, None


def _differentiable_backward(ctx, grad):
    """The gradient as a differentiable function of the inputs (and of ``grad``): autograd
    through `models.phylo.hessian.differentiable_pruning`, for second derivatives."""
    from .hessian import differentiable_pruning

    _, freqs, cat_w, tips, _, _, _, trans = ctx.saved_tensors
    inputs = (trans, freqs, cat_w)
    wanted = [x for x, need in zip(inputs, ctx.needs_input_grad[:3], strict=True) if need]
    with torch.enable_grad():
        out = differentiable_pruning(tips, ctx.pattern_w, ctx.sched.children, trans, freqs,
                                     cat_w, ctx.per_pattern)  # fmt: skip
    found = iter(torch.autograd.grad(out, wanted, grad, create_graph=True, allow_unused=True))
    grads = [next(found) if need else None for need in ctx.needs_input_grad[:3]]
    return (*grads, None, None, None, None, None, None)


def _forward_shared(trans_n, tips, rows, freqs, cat_w, weights, every, keep):
    """Pruning for one topology with a tensor per node, freed (or kept for the gradient)
    as soon as its parent is done: small working set, no page faults from huge buffers."""
    n, n_pat = tips.shape[0], tips.shape[-1]
    shape = (*trans_n.shape[1:3], 4, n_pat)
    low, msg, scales, factor = {}, {}, [], {}

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
        if every and (j % every == every - 1 or j == n - 2):
            scales.append(_rescale_(part))
            if keep:
                factor[n + j] = scales[-1]
        low[n + j] = part
    site = (freqs[:, None, None, :] @ part)[:, :, 0]  # (N, C, P)
    lik = (cat_w[:, None, :] @ site)[:, 0]  # (N, P)
    logl, smallest = _finish(lik, scales)
    return logl, (msg, low, factor), lik, smallest


def _backward_shared(rows, trans_n, tips, msg, low, factor, g):
    r"""Pre-order pass for one topology, per-node tensors, gradients written per edge.

    ``g`` is :math:`G_{\text{root}} = w_c \pi_s\, c_p / \tilde L_p` with :math:`c_p` the
    incoming gradient times the pattern weight and :math:`\tilde L_p` the scaled likelihood.
    Dividing each node's outside partial by the forward rescaling factor of that node keeps
    :math:`\sum G_v \odot L_v = c_p` at every node, so :math:`U_k L_k^\top` is the gradient
    itself: no per-edge normalisation, no rescaling, and a zero incoming gradient stays zero.
    """
    n, n_pat = tips.shape[0], tips.shape[-1]
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


def _backward_batched(sched, trans_n, tips, msg, low, factor, g):
    """Pre-order pass for a different topology per batch element (gathers by index).

    ``msg[j]`` holds the two children's messages of row ``j`` gathered in the forward pass,
    ``factor[j]`` its rescaling factor; ``g`` and the normalisation are as in
    `_backward_shared`, so every edge's gradient is one product at the end.
    """
    n = tips.shape[0]
    upper = low.new_empty(n - 1, 2, *low.shape[1:])  # U of each row's two children
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
    u = flat_upper.index_select(0, sched.slot[:edges].flatten()).unflatten(0, (edges, -1))
    grad_leaf = torch.bmm(u[:n].flatten(1, 3), tips.transpose(-1, -2))
    grad_leaf = grad_leaf.view(n, *u.shape[1:3], 4, 4)
    grad_inner = u[n:] @ low[: n - 3].transpose(-1, -2)
    return torch.cat([grad_leaf, grad_inner]).transpose(0, 1)
