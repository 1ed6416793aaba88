r"""Second derivatives of the phylogenetic log-likelihood.

Two ways in, both exact (no finite differences):

- `log_likelihood_hessian` gives the Hessian of $\ell = \log p(D \mid \tau, b)$ with respect
  to the branch lengths $b$ (or their logarithms) of one or more trees, by an inside-outside
  recursion written by hand (no library computes it): DS1 (27 taxa, 51 branches) in a few
  milliseconds.
- The pruning kernel `models.phylo.pruning.Pruning` is twice differentiable: its first
  derivative is the fast analytic pre-order pass; when a second derivative is asked for
  (`create_graph=True`, e.g. `torch.autograd.functional.hessian` through `phylo_model`), its
  backward differentiates `differentiable_pruning` instead, so any parameter (branch lengths,
  substitution parameters, Gamma shape) gets exact second derivatives.

In log space, with $u_k = \log b_k$,
$\partial^2 \ell / \partial u_i \partial u_j = b_i b_j\, \partial^2 \ell / \partial b_i
\partial b_j + \delta_{ij}\, b_i\, \partial \ell / \partial b_i$.

`differentiable_pruning` is Felsenstein's recursion written with plain differentiable torch
operations (no in-place buffers, no custom backward), rescaling every partial by its largest
entry over states and categories; the factors are treated as constants, which changes neither
the value nor any derivative because $\log L = \log(L/s) + \log s$ for every $s > 0$.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .alignment import Alignment
from .substitution import SubstitutionModel, get_model, transition_matrices

__all__ = ["differentiable_pruning", "log_likelihood_hessian"]


def differentiable_pruning(
    tips: Tensor,
    weights: Tensor,
    children: Tensor,
    trans: Tensor,
    freqs: Tensor,
    category_weights: Tensor,
    per_pattern: bool = False,
) -> Tensor:
    r"""Pruning log-likelihood from plain torch operations, differentiable any number of times.

    Args:
        tips: `(n, 4, P)` tip partials.
        weights: `(P,)` pattern counts $n_p$.
        children: `(n-1, 2)` child table shared by the batch, or `(N, n-1, 2)`.
        trans: `(N, 2n-3, C, 4, 4)` transition matrices.
        freqs: `(N, 4)` root frequencies.
        category_weights: `(N, C)` rate-category probabilities.
        per_pattern: return the terms $n_p \log L_p$, `(N, P)`, instead of their sum.

    Returns:
        `(N,)` log-likelihoods (or `(N, P)` terms).

    Examples:
        >>> tips = torch.eye(4, dtype=torch.float64)[:, :3].T.reshape(3, 4, 1).expand(3, 4, 2)
        >>> trans = torch.full((1, 3, 1, 4, 4), 0.25, dtype=torch.float64)
        >>> freqs, cat = torch.full((1, 4), 0.25, dtype=torch.float64), torch.ones(1, 1)
        >>> children = torch.tensor([[0, 1], [3, 2]])
        >>> out = differentiable_pruning(tips, torch.ones(2), children, trans, freqs, cat)
        >>> round(out.item() / torch.tensor(1 / 64).log().item(), 6)
        2.0
    """
    if children.dim() == 3:  # a topology per batch element: one pass each (rarely needed)
        return torch.cat([
            differentiable_pruning(tips, weights, children[i], trans[i : i + 1],
                                   freqs[i : i + 1], category_weights[i : i + 1], per_pattern)
            for i in range(children.shape[0])
        ])  # fmt: skip
    n = tips.shape[0]
    partial: dict[int, Tensor] = {}
    log_scale = 0.0

    def message(c: int) -> Tensor:
        if c < n:
            return trans[:, c] @ tips[c]  # (N, C, 4, P)
        return partial.pop(c) if c == 2 * n - 3 else trans[:, c] @ partial.pop(c)

    for j, (a, b) in enumerate(children.tolist()):
        v = message(a) * message(b)
        s = v.detach().amax(dim=(1, 2), keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)
        partial[n + j] = v / s
        log_scale = log_scale + s[:, 0, 0].log()
    root = partial[2 * n - 2]
    site = (freqs[:, None, :, None] * root).sum(2)  # (N, C, P)
    terms = ((category_weights[:, :, None] * site).sum(1).log() + log_scale) * weights
    return terms if per_pattern else terms.sum(-1)


def log_likelihood_hessian(
    alignment: Alignment,
    children: Tensor,
    lengths: Tensor,
    substitution: str | SubstitutionModel = "JC69",
    params: dict[str, Tensor] | None = None,
    rates: Tensor | None = None,
    log_lengths: bool = False,
) -> Tensor:
    r"""Exact Hessian of the log-likelihood with respect to the branch lengths.

    With partials $L_v$, messages $M_k = P_k L_k$ and normalised outside partials $G_u$
    ($\langle G_u, L_u \rangle = 1$ per pattern), edge derivatives use
    $P_k' = r_c Q P_k$ and $P_k'' = r_c^2 Q^2 P_k$. For each pattern, with $R$ the derivatives
    of $L_p$ divided by $L_p$: $R_i = \langle U_i, P_i' L_i \rangle$ and
    $R_{ii} = \langle U_i, P_i'' L_i\rangle$ ($U_i$ the outside partial above edge $i$);
    $R_{ij} = \langle P_i'^\top U_i, \partial L_i / \partial b_j\rangle$ when edge $j$ lies
    below edge $i$; otherwise $R_{ij} = \langle G_w, E_a^{(i)} \odot E_b^{(j)}\rangle$ at their
    last common ancestor $w$ with children $a \ni i$, $b \ni j$, where
    $E_a^{(i)} = \partial M_a / \partial b_i$. The inside derivatives
    $\partial L_u / \partial b_j$ are carried up the tree for every edge $j$ below $u$ (one
    stacked tensor per node), rescaled with $L_u$. Then
    $\partial^2 \ell / \partial b_i \partial b_j = \sum_p n_p (R_{ij} - R_i R_j)$.

    Args:
        alignment: the data.
        children: `(n-1, 2)` topology, or `(..., n-1, 2)` matching the batch of `lengths`.
        lengths: `(..., 2n-3)` branch lengths, non-negative and finite.
        substitution: model or name; its fixed parameters unless `params` (held fixed).
        params: substitution parameter values (held fixed).
        rates: `(C,)` rate multipliers of equally likely categories; one of rate 1 if omitted.
        log_lengths: differentiate with respect to $u = \log b$ instead of $b$:
            $b_i b_j H_{ij} + \delta_{ij} b_i\, \partial \ell / \partial b_i$.

    Returns:
        `(..., 2n-3, 2n-3)` symmetric Hessians, float64.

    Examples:
        >>> from models.phylo.topology import from_edges
        >>> aln = Alignment.from_sequences(["a", "b", "c"], ["ACGT", "ACGA", "TCGA"])
        >>> children, lengths = from_edges(3, [(0, 3), (1, 3), (2, 3)], [0.1, 0.2, 0.3])
        >>> h = log_likelihood_hessian(aln, children, lengths)
        >>> h.shape, bool(torch.allclose(h, h.T))
        (torch.Size([3, 3]), True)
    """
    n, edges = alignment.n_taxa, 2 * alignment.n_taxa - 3
    if lengths.shape[-1] != edges:
        raise ValueError(f"lengths must have shape (..., {edges}), got {tuple(lengths.shape)}")
    if not torch.isfinite(lengths).all() or (lengths < 0).any():
        raise ValueError("lengths must be non-negative and finite")
    model = get_model(substitution)
    params = {k: torch.as_tensor(v).detach() for k, v in (params or model.params).items()}
    b = lengths.detach().to(torch.float64)
    rates = b.new_ones(1) if rates is None else rates.detach().to(b).reshape(-1)
    q = model.rate_matrix(params).to(b)
    tips = alignment.partials(device=b.device).mT.contiguous()
    weights, freqs = alignment.weights.to(b), model.frequencies(params).to(b)
    cat_w = b.new_full(rates.shape, 1.0 / rates.shape[0])
    flat = b.reshape(-1, edges)
    topologies = children.expand(*b.shape[:-1], n - 1, 2).reshape(-1, n - 1, 2).tolist()
    out = []
    for x, rows in zip(flat, topologies, strict=True):
        trans = transition_matrices(model, params, x, rates)  # (E, C, 4, 4)
        d1 = rates[:, None, None] * (q @ trans)
        d2 = rates[:, None, None] * (q @ d1)
        h, grad = _hessian(tips, weights, rows, (trans, d1, d2), freqs, cat_w)
        if log_lengths:
            h = x[:, None] * h * x[None, :] + torch.diag(x * grad)
        out.append(h)
    return torch.stack(out).reshape(*b.shape[:-1], edges, edges)


def _hessian(tips, weights, rows, mats, freqs, cat_w) -> tuple[Tensor, Tensor]:
    """Hessian `(E, E)` and gradient `(E,)` of one tree (see `log_likelihood_hessian`)."""
    trans, d1, d2 = mats
    n, n_pat, n_cat = tips.shape[0], tips.shape[-1], trans.shape[1]
    top, root = 2 * n - 3, 2 * n - 2  # the edge above `top` is the identity: no parameter
    part = {c: tips[c].expand(n_cat, 4, n_pat) for c in range(n)}
    msg = {c: trans[c] @ tips[c] for c in range(n)}
    scale, below, stacks = {}, {}, {}  # below[u]: (edges j under u, dL_u/db_j stacked)
    for j, (a, c) in enumerate(rows):
        u = n + j
        sides = [_inside_derivatives(x, part, below, trans, d1, top) for x in (a, c)]
        v = msg[a] * msg[c]
        scale[u] = v.amax(dim=(0, 1)).clamp_min(torch.finfo(v.dtype).tiny)
        part[u] = v / scale[u]
        (ids_a, e_a), (ids_c, e_c) = sides
        below[u] = (ids_a + ids_c, torch.cat([e_a * msg[c], msg[a] * e_c]) / scale[u])
        stacks[u] = sides
        if u < top:
            msg[u] = trans[u] @ part[u]
        elif u == top:
            msg[u] = part[u]
    lik = (cat_w[:, None] * (freqs[:, None] * part[root]).sum(1)).sum(0)  # (P,) scaled
    outside = {root: cat_w[:, None, None] * freqs[:, None] / lik}
    edges = 2 * n - 3
    h = weights.new_zeros(edges, edges)
    first = weights.new_zeros(edges, n_pat)  # (dL_p / db_i) / L_p
    for j in range(n - 2, -1, -1):
        u = n + j
        g = outside.pop(u) / scale[u]
        (ids_a, e_a), (ids_c, e_c) = stacks[u]
        cross = (e_a * (g * weights)).flatten(1) @ e_c.flatten(1).T  # last common ancestor u
        h[torch.tensor(ids_a)[:, None], torch.tensor(ids_c)[None, :]] += cross
        h[torch.tensor(ids_c)[:, None], torch.tensor(ids_a)[None, :]] += cross.T
        for x, sibling in zip(rows[j], rows[j][::-1], strict=True):
            up = g * msg[sibling]  # outside partial above edge x
            if x == top:
                outside[x] = up
                continue
            first[x] = (up * (d1[x] @ part[x])).sum((0, 1))
            h[x, x] += ((up * (d2[x] @ part[x])).sum((0, 1)) * weights).sum()
            if x >= n:
                ids, deriv = below[x]
                ancestor = (deriv * (d1[x].mT @ up * weights)).flatten(1).sum(1)
                h[x, ids] += ancestor
                h[ids, x] += ancestor
                outside[x] = trans[x].mT @ up
    h -= (first * weights) @ first.T
    return h, first @ weights


def _inside_derivatives(x, part, below, trans, d1, top):
    """Edges whose lengths the message of node `x` depends on, and the message's derivatives
    `(J, C, 4, P)`: its own edge first (unless `x` is `top`), then every edge below it."""
    ids, stack = [], []
    if x != top:
        ids.append(x)
        stack.append((d1[x] @ part[x])[None])
    if x in below:
        sub_ids, deriv = below[x]
        ids += sub_ids
        stack.append(deriv if x == top else trans[x] @ deriv)
    return ids, torch.cat(stack)
