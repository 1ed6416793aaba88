r"""The pruning kernel behind `pruning_log_likelihood`: one path chosen per call, and its
analytic gradient.

Inputs are flattened to one batch dimension $N$: transition matrices `(N, 2n-3, C, 4, 4)`,
frequencies `(N, 4)`, category weights `(N, C)`, tip partials `(n, 4, P)`, pattern weights
`(P,)` and either one shared `(n-1, 2)` topology or `(N, n-1, 2)` topologies, plus the
alignment's `models.phylo.cache.LikelihoodCache`.

**Dispatch.** `Pruning.forward` tries the paths below in order and keeps the first whose
result is safe; each records a small dataclass with what its backward pass needs.

| path | runs when | rescaling | kernel |
| --- | --- | --- | --- |
| `Path.WAVES` | one tree, `optimistic`, no underflow, $NC \le 4$ (c) | none | `forward_waves` (d) |
| `Path.REPEATS` | one tree, `optimistic`, no underflow, $NC > 4$ | none | `forward_repeats` (d) |
| `Path.BATCH_REPEATS` | clades recur (a), no underflow seen | none | `forward_batched_repeats` |
| `Path.SHARED` | one tree, otherwise | 0 (b), `every`, 1 | `forward_shared` |
| `Path.BATCHED` | a topology per element, otherwise | 0 (b), `every`, 1 | `forward_batched` (d) |

Why: (a) `optimistic`, and the batch's clades recur enough to pay for the set-up
(`models.phylo.batch_layout.BatchPlan.worthwhile`); (b) the unscaled pass over every pattern
first, when `optimistic` but a batch's clades do not recur; (c) $N$ batch elements times $C$
rate categories: with few, a pass is all dispatch overhead and `models.phylo.waves` prunes a
whole level of the tree per operation; with many, memory traffic dominates and the
node-by-node pass wastes no padded columns. The repeats paths prune distinct
clade columns only (`models.phylo.repeats`; DS1: 5118 of 24284 columns); `SHARED` keeps a
tensor per node, a small working set; `BATCHED` gathers from node-major buffers
(`models.phylo.scaled`). (d) These unscaled passes and their backward passes are each one
compiled loop (`models.phylo.fused`, where a C compiler is found): over clade columns a pass
of tensor operations is all dispatch, over every pattern (new random topologies have no
repeats) it is bound by memory traffic.

An unscaled pass (the repeats paths, or period 0) is kept when every pattern's likelihood
exceeds 1e-290, which float64 reaches on trees of a few hundred taxa: then no partial lost
more than ~1e-18 of itself to underflow. Otherwise the cache remembers that this alignment
underflows (`LikelihoodCache.unscaled_underflows`) and later calls go straight to the
rescaled passes; a likelihood that is truly zero (the rescaled pass gives $-\infty$ too) is
not taken for underflow, so one such point does not slow every later call. A rescaled pass
is kept unless a factor fell below 1e-200 (rescaled too rarely), in which case it is redone
rescaling at every node. The answer never depends on
luck, only the cost does.

The backward pass is the pre-order recursion of `models.phylo.likelihood` (Ji et al. 2020),
written by hand; under `create_graph=True` it is autograd through
`models.phylo.hessian.differentiable_pruning`, so the kernel is twice differentiable.
"""

from __future__ import annotations

import enum

import torch

from .batch_layout import batch_plan_for
from .repeats import (
    backward_batched_repeats,
    backward_repeats,
    forward_batched_repeats,
    forward_repeats,
)
from .scaled import Schedule, backward_batched, backward_shared, forward_batched, forward_shared
from .tree_plan import plan_for
from .waves import WAVES_UP_TO, backward_waves, forward_waves

__all__ = ["Path", "Pruning"]

_TINY_SCALE = 1e-200  # below this, partials were rescaled too rarely: redo every step
# A pattern's likelihood is sum_s O_v[s] L_v[s] with outside probabilities summing to at most
# one, so every node's largest partial entry is at least the likelihood: above this bound no
# partial lost more than ~1e-18 of it to underflow (float64's smallest normal is 2.2e-308).
_SAFE_UNSCALED = 1e-290
_WAVES_UP_TO = WAVES_UP_TO  # particles x categories pruned level by level (Path.WAVES)

# the kernels, looked up here at call time (tests spy on them)
_forward_shared, _forward_batched = forward_shared, forward_batched


class Path(enum.Enum):
    """The pruning paths of the module docstring's table."""

    WAVES = "unscaled, one topology, distinct clade columns, level by level"
    REPEATS = "unscaled, one topology, distinct clade columns, node by node"
    BATCH_REPEATS = "unscaled, a topology per element, distinct clade columns"
    SHARED = "every site pattern, one topology"
    BATCHED = "every site pattern, a topology per element"


def _passes(every: int) -> list[int]:
    """Rescaling periods to try in turn; each is kept unless it underflowed."""
    return [every] + ([1] if every > 1 else [])


def _accept(period: int, smallest) -> bool:
    bound = _SAFE_UNSCALED if period == 0 else _TINY_SCALE
    return period == 1 or bool(smallest >= bound)  # False for NaN: try the next period


def _unscaled_repeats(trans_n, tips, sched, children, freqs, cat_w, weights, keep, cache):
    """The repeats path that applies, run; `(path, result)` or `(None, None)` when the batch's
    clades do not recur enough."""
    if sched.shared:
        plan = plan_for(cache, children)
        sched.rows = plan.rows
        if trans_n.shape[1] * trans_n.shape[2] <= _WAVES_UP_TO:
            return Path.WAVES, forward_waves(trans_n, plan.waves, freqs, cat_w, weights,
                                             keep, cache)  # fmt: skip
        return Path.REPEATS, forward_repeats(trans_n, plan, plan.rows, freqs, cat_w, weights,
                                             keep, cache)  # fmt: skip
    plan = batch_plan_for(cache, children, keep)
    if not plan.worthwhile:
        return None, None
    return Path.BATCH_REPEATS, forward_batched_repeats(trans_n, plan, freqs, cat_w, weights,
                                                       keep, cache)  # fmt: skip


def _scaled(trans, trans_n, tips, sched, freqs, cat_w, weights, periods, keep, cache):
    """The every-pattern path, over rescaling periods until one is kept."""
    n, (n_batch, _, n_cat), n_pat = tips.shape[0], trans.shape[:3], tips.shape[2]
    if sched.shared:
        args = (trans_n, tips, sched.rows, freqs, cat_w, weights)
        for period in periods:
            logl, state, lik, smallest = _forward_shared(*args, period, keep)
            if _accept(period, smallest):
                break
            cache.unscaled_underflows |= period == 0
        return Path.SHARED, logl, state, lik, state.low[2 * n - 2] if keep else None
    low = trans.new_empty(n - 1 if keep else 1, n_batch, n_cat, 4, n_pat)
    args = (trans_n, tips, sched, freqs, cat_w, weights)
    for period in periods:
        logl, state, lik, smallest = _forward_batched(*args, period, low, cache)
        if _accept(period, smallest):
            break
        cache.unscaled_underflows |= period == 0
    return Path.BATCHED, logl, state, lik, low[n - 2] if keep else None


class Pruning(torch.autograd.Function):
    """Log-likelihoods `(N,)` with analytic gradients for transition matrices, frequencies
    and category weights; `apply(trans, freqs, cat_w, tips, weights, children, every,
    optimistic, per_pattern, cache)` with the shapes of the module docstring (`optimistic`:
    unscaled pass first; `per_pattern`: return the terms `(N, P)`). Twice differentiable:
    the first derivative is the analytic pre-order pass; under `create_graph=True` the
    backward is autograd through `models.phylo.hessian.differentiable_pruning`."""

    @staticmethod
    def forward(ctx, trans, freqs, cat_w, tips, weights, children, every, optimistic,
                per_pattern, cache):  # fmt: skip
        n_batch, _, n_cat = trans.shape[:3]
        eye = torch.eye(4, dtype=trans.dtype, device=trans.device)
        # (2n-2, N, C, 4, 4) with the identity on the zero-length edge above node 2n-3
        trans_n = torch.cat([trans, eye.expand(n_batch, 1, n_cat, 4, 4)], 1)
        trans_n = trans_n.transpose(0, 1).contiguous()
        sched = Schedule(children, n_batch)
        keep = any(ctx.needs_input_grad[:3])
        periods, path, root_ids, suspect = _passes(every), None, None, False
        if optimistic and not cache.unscaled_underflows:
            path, result = _unscaled_repeats(trans_n, tips, sched, children, freqs, cat_w,
                                             weights, keep, cache)  # fmt: skip
            if path is None:  # unscaled over every site pattern first
                periods = [0, *periods]
            elif _accept(0, result[-1]):
                logl, state, lik, root, scaled_w, _ = result
                root_ids = state.plan.root_ids
            else:
                path, suspect = None, True
        if path is None:
            path, logl, state, lik, root = _scaled(trans, trans_n, tips, sched, freqs, cat_w,
                                                   weights, periods, keep, cache)  # fmt: skip
            scaled_w = weights
        if suspect:  # underflow, unless a likelihood is truly zero (a change of state across
            # an edge of length 0, as a wild leapfrog step makes): then rescaling gives -inf too
            cache.unscaled_underflows = bool(logl.isfinite().all())
        if keep:
            ctx.save_for_backward(trans_n, freqs, cat_w, tips, scaled_w, lik, root, trans)
            ctx.path, ctx.sched, ctx.state = path, sched, state
            ctx.per_pattern, ctx.pattern_w, ctx.root_ids = per_pattern, weights, root_ids
            ctx.cache = cache  # its scratch workspaces serve the backward pass
        if per_pattern:  # n_p log L_p (N, P)
            return (logl if root_ids is None else logl[:, root_ids]) * weights
        return (logl * scaled_w).sum(-1)

    @staticmethod
    def backward(ctx, grad):
        if torch.is_grad_enabled():  # create_graph=True: a second derivative will be taken
            return _differentiable_backward(ctx, grad)
        trans_n, freqs, cat_w, tips, weights, lik, root, _ = ctx.saved_tensors
        if ctx.per_pattern:  # d out / d log L_p, summed onto the root's columns
            coef = grad * ctx.pattern_w
            if ctx.root_ids is not None:
                coef = coef.new_zeros(lik.shape).index_add_(1, ctx.root_ids, coef)
        else:
            coef = grad[:, None] * weights  # d out / d log L_p
        root_coef = (coef / lik)[:, None, None, :]
        grad_freqs = (root * root_coef * cat_w[:, :, None, None]).sum((1, 3))
        grad_cat = (root * root_coef * freqs[:, None, :, None]).sum((2, 3))
        g = cat_w[:, :, None, None] * freqs[:, None, :, None] * root_coef
        sched, state = ctx.sched, ctx.state
        grad_trans = {
            Path.WAVES: lambda: backward_waves(trans_n, state, g, ctx.cache),
            Path.REPEATS: lambda: backward_repeats(sched.rows, trans_n, state, g, ctx.cache),
            Path.BATCH_REPEATS: lambda: backward_batched_repeats(trans_n, state, g, ctx.cache),
            Path.SHARED: lambda: backward_shared(sched.rows, trans_n, tips, state, g),
            Path.BATCHED: lambda: backward_batched(sched, trans_n, tips, state, g, ctx.cache),
        }[ctx.path]()
        return grad_trans, grad_freqs, grad_cat, *([None] * 7)


def _differentiable_backward(ctx, grad):
    """The gradient as a differentiable function of the inputs (and of `grad`): autograd
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
    return (*grads, *([None] * 7))
