r"""Fitting tree-probability estimators to tree samples: SBN-SA, SBN-EM, SBN-EM-$\alpha$, CCD, SRF.

Zhang & Matsen (2018), Section 4. From weighted unrooted sample trees $\{(\tau_b, w_b)\}$:

- **SBN-SA** (simple average) treats every rooting of a sample tree as observed with weight
  $w_b/(2n-3)$ and takes relative frequencies of root splits and PCSPs. Counting a PCSP once
  per rooting or once per tree gives the same conditionals (every PCSP of a context
  $(Y, Z)$ occurs in the same number of rootings, those outside $Y \cup Z$); we count once
  per tree, $\tilde m$, as the reference implementation (``zcrabbit/sbn``) does, which also
  sets the prior mass of SBN-EM-$\alpha$ below.
- **SBN-EM** maximises $\sum_b w_b \log q(\tau_b)$ by EM, the rooting being the latent
  variable: the E-step weighs each rooting by $p(k \mid \tau_b)$, the M-step takes the
  weighted relative frequencies. Started from SBN-SA, perturbed by a relative $10^{-3}$:
  SBN-SA can be an exact but unstable fixed point of EM (DS2 is an example), where an
  unperturbed EM would stop at once.
- **SBN-EM-$\alpha$** adds a Dirichlet prior centred on SBN-SA with equivalent sample size
  $\alpha$ (MAP-EM): $p(s) = (m_s + \alpha \tilde m_s)/(1 + \alpha)$ for root splits and
  $p(t \mid s) = (m_{s,t} + \alpha \tilde m_s / |\mathrm{ch}(s)|)/(m_s + \alpha \tilde m_s)$
  for PCSPs, $\tilde m$ the SA frequencies and $|\mathrm{ch}(s)|$ the PCSPs of context $s$.
- **CCD** (conditional clade distribution, Larget 2013), rooted at the last taxon:
  $q(\tau) = \prod_Y p(s_Y \mid Y)$ over the clades $Y$ of $\tau$ seen from taxon $n-1$,
  $p(s \mid Y)$ the frequency of subsplit $s$ among sample trees with clade $Y$.
- **SRF** (sample relative frequencies): the empirical distribution of the sample.

The E-step's expected counts are gradients: $\partial_{\log p_j} \sum_b w_b \log q(\tau_b)$
is the posterior expected number of uses of parameter $j$, so autograd through the two-pass
`rooting_log_probs` gives the E-step of all trees at once (SA is the same with a mean over
rootings in place of the log-sum-exp).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from varinf.distributions.sbn.distribution import SubsplitBayesianNetwork
from varinf.distributions.sbn.support import SBNSupport, _find, as_tables
from varinf.distributions.sbn.terms import R, V, rooting_log_probs_masked, tree_terms

METHODS = ("sa", "em", "em-alpha")


def unique_trees(trees, weights=None, taxa=None) -> tuple[Tensor, Tensor, tuple | None]:
    """Distinct tables and their normalised total weights (tree weights from the file if any)."""
    listed = trees if isinstance(trees, Tensor) else list(trees)
    if weights is None and not isinstance(listed, Tensor) and listed:
        if hasattr(listed[0], "weight") and all(t.weight is not None for t in listed):
            weights = [t.weight for t in listed]
    children, taxa = as_tables(listed, taxa, "trees")
    w = torch.ones(children.shape[0], dtype=torch.float64)
    if weights is not None:
        w = torch.as_tensor(weights, dtype=torch.float64).flatten()
        if w.shape[0] != children.shape[0] or bool((w < 0).any()) or not w.sum() > 0:
            raise ValueError(
                f"weights must be {children.shape[0]} non-negative numbers with a positive sum"
            )
    uniq, inverse = torch.unique(children, dim=0, return_inverse=True)
    total = torch.zeros(uniq.shape[0], dtype=torch.float64).index_add_(0, inverse, w)
    return uniq, total / total.sum(), taxa


@dataclass
class _Indexed:
    """Precomputed factor indices of the training trees (one chunk)."""

    terms: object
    root: Tensor
    entry: Tensor
    weight: Tensor


def _index(support: SBNSupport, children: Tensor, weights: Tensor, chunk: int) -> list[_Indexed]:
    out = []
    for c, w in zip(children.split(chunk), weights.split(chunk), strict=True):
        terms = tree_terms(c)
        root, entry = support.lookup(terms)
        out.append(_Indexed(terms, root, entry, w))
    return out


def _expected_counts(support, indexed, root_lp, entry_lp, average: bool):
    """Gradient of $\\sum_b w_b \\log q(\\tau_b)$ (or of the rooting mean): expected counts."""
    root_lp = root_lp.detach().clone().requires_grad_(True)
    entry_lp = entry_lp.detach().clone().requires_grad_(True)
    total = root_lp.new_zeros(())
    for part in indexed:
        r = root_lp[part.root.clamp(min=0)]
        e = torch.where(part.entry >= 0, entry_lp[part.entry.clamp(min=0)], 0.0)
        lp = rooting_log_probs_masked(part.terms, r, e)
        per_tree = lp.mean(-1) if average else lp.logsumexp(-1)
        total = total + (part.weight * per_tree).sum()
    root_counts, entry_counts = torch.autograd.grad(total, (root_lp, entry_lp))
    return root_counts, entry_counts, float(total.detach())


def _presence_counts(support, indexed) -> tuple[Tensor, Tensor]:
    """SA counts with each root split and PCSP of a tree counted once, weight $w/(2n-3)$."""
    root = torch.zeros(support.num_root_splits, dtype=torch.float64)
    entry = torch.zeros(support.num_entries, dtype=torch.float64)
    for part in indexed:
        rootings = part.terms.rootings
        w = part.weight / rootings.numel()
        idx = part.root[:, rootings]
        root.index_add_(0, idx.flatten(), w[:, None].expand_as(idx).flatten())
        valid = part.entry >= 0
        wide = w[:, None, None].expand_as(part.entry)
        entry.index_add_(0, part.entry[valid], wide[valid])
    return root, entry


def _context_sums(support: SBNSupport, entry_counts: Tensor) -> Tensor:
    return torch.zeros(support.num_contexts, dtype=entry_counts.dtype).index_add_(
        0, support.entry_context, entry_counts
    )


def _log_normalise(support, root_counts, entry_counts, prior=None, alpha=0.0):
    """Log root-split and PCSP probabilities from counts (with the EM-alpha prior if given)."""
    root, entry = root_counts, entry_counts
    if prior is not None and alpha > 0:
        prior_root, prior_entry = prior
        ctx_prior = _context_sums(support, prior_entry)
        size = torch.bincount(support.entry_context, minlength=support.num_contexts)
        root = root + alpha * prior_root
        entry = entry + alpha * (ctx_prior / size)[support.entry_context]
    ctx = _context_sums(support, entry)[support.entry_context]
    size = torch.bincount(support.entry_context, minlength=support.num_contexts)
    with torch.no_grad():
        log_root = torch.log(root) - torch.log(root.sum())
        # a context that no tree reaches any more keeps a uniform conditional
        unused = -torch.log(size[support.entry_context].to(entry))
        log_entry = torch.where(ctx > 0, torch.log(entry) - torch.log(ctx), unused)
    return log_root, log_entry


def fit_sbn(
    trees: Tensor | Sequence,
    weights: Tensor | Sequence[float] | None = None,
    method: str = "em",
    alpha: float = 1e-4,
    max_iter: int = 1000,
    min_iter: int = 50,
    tol: float = 1e-5,
    taxa: Sequence[str] | None = None,
    chunk: int = 512,
    perturbation: float = 1e-3,
    **kwargs: Any,
) -> SubsplitBayesianNetwork:
    r"""Fit an SBN to weighted sample trees by SA, EM or EM-$\alpha$ (module docstring).

    Args:
        trees: sample trees (any form `SBNSupport.from_trees` takes); file weights (e.g.
            ``.trprobs`` posterior frequencies) are used when ``weights`` is omitted.
        weights: optional ``(B,)`` tree weights (counts or frequencies).
        method: ``"sa"``, ``"em"`` or ``"em-alpha"``.
        alpha: equivalent sample size of the SA-centred prior of ``"em-alpha"``.
        max_iter: EM stops after ``max_iter`` steps at most,
        min_iter: or, once past ``min_iter`` steps,
        tol: when the mean log-likelihood changes by less than ``tol``.
        taxa: taxon names.
        chunk: trees per batched E-step pass (memory).
        perturbation: relative size of the fixed-seed perturbation of EM's SA start (0: start
            exactly at SA, as the reference implementation does; see the module docstring).
        **kwargs: passed to `SubsplitBayesianNetwork` (``outside``, ``smoothing``).

    Returns:
        The fitted `SubsplitBayesianNetwork`, with the mean log-likelihood trace of EM as its
        ``fit_trace`` attribute.

    Examples:
        >>> import torch
        >>> trees = torch.tensor([[[0, 1], [5, 2], [6, 3], [7, 4]],
        ...                       [[0, 1], [2, 3], [5, 6], [7, 4]]])
        >>> q = fit_sbn(trees, method="em")
        >>> [round(x, 3) for x in q.log_prob(trees).exp().tolist()]
        [0.5, 0.5]
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    children, w, taxa = unique_trees(trees, weights, taxa)
    support = SBNSupport.from_trees(children, taxa)
    indexed = _index(support, children, w, chunk)
    sa_root, sa_entry = _presence_counts(support, indexed)
    log_root, log_entry = _log_normalise(support, sa_root, sa_entry)
    trace: list[float] = []
    if method != "sa":
        prior = (sa_root, sa_entry) if method == "em-alpha" else None
        a = alpha if method == "em-alpha" else 0.0
        # SA can be an exact, unstable fixed point of EM (every rooting equally likely): start
        # from SA perturbed by a relative 1e-3 (fixed seed) so that EM leaves it.
        gen = torch.Generator().manual_seed(0)
        size = perturbation
        jitter_r = 1 + size * torch.rand(sa_root.shape, generator=gen, dtype=torch.float64)
        jitter_e = 1 + size * torch.rand(sa_entry.shape, generator=gen, dtype=torch.float64)
        log_root, log_entry = _log_normalise(support, sa_root * jitter_r, sa_entry * jitter_e)
        if prior is not None:
            log_root, log_entry = _log_normalise(support, sa_root, sa_entry, prior, a)
        for step in range(max_iter):
            root_c, entry_c, value = _expected_counts(
                support, indexed, log_root, log_entry, average=False
            )
            trace.append(value)
            log_root, log_entry = _log_normalise(support, root_c, entry_c, prior, a)
            if step > min_iter and abs(trace[-1] - trace[-2]) < tol:
                break
    sbn = SubsplitBayesianNetwork(support, log_root, log_entry, **kwargs)
    sbn.fit_trace = trace
    return sbn


class ConditionalCladeDistribution:
    r"""Conditional clade distribution (CCD, Larget 2013) of unrooted trees, rooted at taxon $n-1$.

    $\log q(\tau) = \sum_Y \log p(s_Y \mid Y)$ over the clades of $\tau$ seen from taxon
    $n-1$; $p(s \mid Y)$ is the weighted frequency of subsplit $s$ of $Y$ among the sample
    trees having clade $Y$ (any orientation). Topologies with an unseen clade or subsplit get
    ``-inf``. Normalised over unrooted topologies (rooting at a fixed leaf is a bijection),
    and the same whichever leaf it is rooted at: the product of the counts of every internal
    node's three splits over the counts of the internal splits.

    Examples:
        >>> import torch
        >>> trees = torch.tensor([[[0, 1], [5, 2], [6, 3], [7, 4]],
        ...                       [[0, 1], [2, 3], [5, 6], [7, 4]]])
        >>> ccd = ConditionalCladeDistribution(trees)
        >>> [round(x, 3) for x in ccd.log_prob(trees).exp().tolist()]
        [0.5, 0.5]
    """

    def __init__(self, trees, weights=None, taxa=None) -> None:
        children, w, self.taxa = unique_trees(trees, weights, taxa)
        self.support = SBNSupport.from_trees(children, self.taxa)
        keys, counts = [], []
        for c, wc in zip(children.split(512), w.split(512), strict=True):
            key, valid = self._keys(tree_terms(c), (R, V))
            keys.append(key[valid])
            counts.append(wc[:, None, None].expand_as(key)[valid])
        key, inverse = torch.unique(torch.cat(keys), return_inverse=True)
        count = torch.zeros(key.numel(), dtype=torch.float64).index_add_(
            0, inverse, torch.cat(counts)
        )
        num = self.support.clades.shape[0]
        clade_total = torch.zeros(num, dtype=torch.float64).index_add_(0, key // num, count)
        self.keys = key
        self.log_probs = torch.log(count) - torch.log(clade_total[key // num])

    def _keys(self, terms, slots) -> tuple[Tensor, Tensor]:
        ids = self.support.clade_ids(terms.cond[:, :, list(slots)])  # (B, M, s, 4)
        num = self.support.clades.shape[0]
        first = ids[..., 2:].min(-1).values
        key = ids[..., 0] * num + first
        known = (ids[..., [0, 2, 3]] >= 0).all(-1)
        return torch.where(known, key, -1), terms.cond_valid[:, :, list(slots)]

    def log_prob(self, value: Tensor) -> Tensor:
        """``(...)`` log probabilities of ``(..., n-1, 2)`` canonical tables."""
        n = value.shape[-2] + 1
        flat = value.reshape(-1, n - 1, 2).long()
        key, valid = self._keys(tree_terms(flat), (R,))
        found = _find(self.keys, key)
        lp = torch.where(found >= 0, self.log_probs[found.clamp(min=0)], -math.inf)
        lp = torch.where(valid, lp, 0.0)
        return lp.sum((-1, -2)).reshape(value.shape[:-2])


def sample_frequencies(trees, weights=None, taxa=None):
    r"""SRF: a function ``log_prob(value)`` giving the log sample frequency of each topology.

    Examples:
        >>> import torch
        >>> trees = torch.tensor([[[0, 1], [5, 2], [6, 3], [7, 4]],
        ...                       [[0, 1], [2, 3], [5, 6], [7, 4]]])
        >>> srf = sample_frequencies(trees, weights=[3, 1])
        >>> srf(trees).exp().tolist()
        [0.75, 0.25]
    """
    children, w, _ = unique_trees(trees, weights, taxa)

    def log_prob(value: Tensor) -> Tensor:
        n = value.shape[-2] + 1
        flat = value.reshape(-1, n - 1, 2).long()
        both = torch.cat([children, flat])
        _, inverse = torch.unique(both, dim=0, return_inverse=True)
        table = torch.full((int(inverse.max()) + 1,), -math.inf, dtype=torch.float64)
        table[inverse[: children.shape[0]]] = torch.log(w)
        return table[inverse[children.shape[0] :]].reshape(value.shape[:-2])

    return log_prob
