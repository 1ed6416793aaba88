r"""Felsenstein's pruning likelihood, batched over particles and topologies.

For a rooted binary tree with transition matrices $P_k$ on the edge above node
$k$, the conditional likelihoods (partials) are $L_v = (P_a L_a) \odot (P_b L_b)$
for the children $a, b$ of $v$, and a site pattern's likelihood is
$L_p = \sum_c w_c \sum_s \pi_s L_{\text{root},c,p,s}$ over rate categories $c$
(Felsenstein 1981). The log-likelihood is $\sum_p n_p \log L_p$ for pattern counts
$n_p$.

One loop of $n-1$ steps visits the rows of the ``(…, n-1, 2)`` child table
(`models.phylo.topology`); each step is one product and one batched matrix product over every
particle, topology, rate category and site pattern at once (`models.phylo.pruning`). A first
pass runs unscaled and over each node's distinct clade patterns only (`models.phylo.repeats`;
for a batch of topologies, once their clades recur); it is kept when every pattern's
likelihood exceeds 1e-290. Otherwise
partials are rescaled by their maximum over states and categories every few nodes and the logs
of the factors summed, so thousands of taxa do not underflow in float64.

Gradients are analytic: a pre-order pass computes the outside partials
$U_k = G_{\text{parent}} \odot (P_{\text{sib}} L_{\text{sib}})$,
$G_k = U_k P_k$, $G_{\text{root}} = w_c\pi$, and

$$
\frac{\partial \log L_p}{\partial (P_k)_{c,ij}} = \frac{U_{k,c,i} L_{k,c,j}}
{\sum_{c,i} U_{k,c,i} (P_k L_k)_{c,i}},
$$

where the denominator equals $L_p$ up to the rescaling factors (Ji et al. 2020,
"Gradients do grow on trees"). Starting from $G_{\text{root}} = w_c\pi\,/\tilde L_p$
and dividing each outside partial by its node's forward rescaling factor makes every
denominator one, so the pass needs neither normalisation nor rescaling of its own. Autograd
carries these gradients to branch lengths and substitution parameters.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .alignment import Alignment
from .cache import LikelihoodCache
from .pruning import Pruning
from .substitution import SubstitutionModel, get_model, transition_matrices

__all__ = ["pruning_log_likelihood", "log_likelihood"]

_CHUNK = 16  # topologies per pass of the batched-topology kernel


def pruning_log_likelihood(
    tips: Tensor,
    weights: Tensor,
    children: Tensor,
    trans: Tensor,
    freqs: Tensor,
    category_weights: Tensor | None = None,
    rescale_every: int = 4,
    optimistic: bool = True,
    per_pattern: bool = False,
    cache: LikelihoodCache | None = None,
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
        optimistic: first try a pass without any rescaling, kept when every pattern's
            likelihood exceeds 1e-290 (then no partial can have underflowed); otherwise the
            rescaled pass above runs. Cheaper on trees of up to a few hundred taxa.
        cache: the alignment's `LikelihoodCache` (clade tables, plans, buffers and the
            underflow memory kept between calls); a fresh one for this call if omitted, so
            pass one when calling repeatedly (`phylo_model` and `log_likelihood` do).
        per_pattern: return the weighted per-pattern terms ``(..., P)``,
            $n_p \log L_p$, whose sum over the last dimension is the log-likelihood.

    Returns:
        ``(...)`` log-likelihoods, the batch shapes of all arguments broadcast together
        (``(..., P)`` with ``per_pattern``).
        Differentiable in ``trans``, ``freqs`` and ``category_weights``.
    """
    n = tips.shape[0]
    if isinstance(rescale_every, bool) or not isinstance(rescale_every, int) or rescale_every < 1:
        raise ValueError(f"rescale_every must be a positive int, got {rescale_every!r}")
    if children.shape[-2:] != (n - 1, 2):
        raise ValueError(f"children must have shape (..., {n - 1}, 2), got {tuple(children.shape)}")
    if trans.shape[-4:-2] != (2 * n - 3,) + trans.shape[-3:-2] or trans.shape[-2:] != (4, 4):
        raise ValueError(f"trans must have shape (..., {2 * n - 3}, C, 4, 4), "
                         f"got {tuple(trans.shape)}")  # fmt: skip
    n_cat = trans.shape[-3]
    if category_weights is None:
        category_weights = trans.new_full((n_cat,), 1.0 / n_cat)
    batch = _broadcast_shapes(
        children.shape[:-2], trans.shape[:-4], freqs.shape[:-1], category_weights.shape[:-1]
    )
    n_batch = math.prod(batch)
    flat_trans = trans.expand(*batch, *trans.shape[-4:]).reshape(n_batch, *trans.shape[-4:])
    flat_freqs = freqs.to(trans).expand(*batch, 4).reshape(n_batch, 4)
    flat_cat = category_weights.to(trans).expand(*batch, n_cat).reshape(n_batch, n_cat)
    if not torch.is_grad_enabled():  # views of leaves still require grad under no_grad:
        # detached, the kernels see that no backward pass will come and keep nothing for one
        flat_trans, flat_freqs, flat_cat = (x.detach() for x in (flat_trans, flat_freqs, flat_cat))
    if children.dim() > 2:
        children = children.expand(*batch, n - 1, 2).reshape(n_batch, n - 1, 2)
    tips = tips.to(trans)
    weights = weights.to(trans)
    if cache is None:
        cache = LikelihoodCache(tips)
    cache.check(tips)
    if children.dim() == 2:
        out = Pruning.apply(flat_trans, flat_freqs, flat_cat, tips, weights, children,
                            rescale_every, optimistic, per_pattern, cache)  # fmt: skip
        return out.reshape(batch + out.shape[1:])
    # different topologies: chunks bound the memory of the node-major buffers
    chunks = [
        Pruning.apply(
            flat_trans[i : i + _CHUNK],
            flat_freqs[i : i + _CHUNK],
            flat_cat[i : i + _CHUNK],
            tips,
            weights,
            children[i : i + _CHUNK],
            rescale_every,
            optimistic,
            per_pattern,
            cache,
        )  # fmt: skip
        for i in range(0, n_batch, _CHUNK)
    ]
    out = torch.cat(chunks)
    return out.reshape(batch + out.shape[1:])


def _broadcast_shapes(*shapes: torch.Size) -> torch.Size:
    """`torch.broadcast_shapes`, answered at once when every shape is empty or the longest
    (the usual case, and `torch.broadcast_shapes` costs ~10 µs, a twentieth of a call)."""
    longest = max(shapes, key=len)
    if all(not s or s == longest for s in shapes):
        return longest
    return torch.broadcast_shapes(*shapes)


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

    Examples:
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
    cache = alignment.likelihood_cache(lengths.dtype, lengths.device)
    trans = transition_matrices(model, params, lengths, rates)
    freqs = model.frequencies(params).to(lengths)
    weights = alignment.weights.to(lengths)
    return pruning_log_likelihood(cache.tips, weights, children.to(lengths.device), trans, freqs,
                                  cache=cache)  # fmt: skip
