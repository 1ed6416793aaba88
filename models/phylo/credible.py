r"""The posterior over a credible set of topologies from per-topology evidences.

For topologies $\tau_1 \dots \tau_B$ with log evidences $\log p(D \mid \tau_b)$ (branch lengths
integrated out) and the uniform topology prior,

$$p(\tau_b \mid D, \{\tau\}) = \frac{p(D \mid \tau_b)}{\sum_{b'} p(D \mid \tau_{b'})},$$

the posterior restricted to the set, as in Fourment et al. (2020), "19 dubious ways to compute
the marginal likelihood of a phylogenetic tree topology". `topology_problems` makes the $B$
per-topology densities one batched call of the pruning likelihood (every topology and particle
at once), for `varinf.estimators.batched.fast_evidences`; `compare_with_golden` scores a
posterior against pooled MrBayes "golden run" frequencies: KL divergence over the set and the
root-mean-square difference of split (bipartition) probabilities.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

import torch
from torch.distributions import Distribution, Exponential

from varinf.distributions.trees import clade_keys

from .alignment import Alignment
from .hessian import log_likelihood_hessian
from .likelihood import log_likelihood
from .trees import Tree, read_trees

__all__ = [
    "FAST_METHODS",
    "compare_with_golden",
    "credible_set_rows",
    "golden_frequencies",
    "log_density_hessian",
    "posterior_over_topologies",
    "split_probabilities",
    "topology_key",
    "topology_problems",
]


def topology_problems(
    alignment: Alignment,
    trees: Sequence[Tree],
    branch_prior: Distribution | None = None,
    substitution="JC69",
):
    r"""The $B$ topologies as `varinf.estimators.batched.BatchedProblems` over branch lengths.

    $\log p_b(D, \theta_b) = \log p(D \mid \tau_b, \theta_b) + \sum_e \log p(\theta_{be})$, with
    $\theta$ of shape ``(C, B, 2n-3)``, in one pruning pass (float64); exact Hessians in
    $\log\theta$ from `models.phylo.hessian.log_likelihood_hessian`.

    Args:
        alignment: the data.
        trees: the topologies (their branch lengths are ignored).
        branch_prior: prior of one branch length; default ``Exponential(10)``.
        substitution: the substitution model (name or instance, fixed parameters).
    """
    from varinf.estimators.batched import BatchedProblems

    children = torch.stack([tree.children for tree in trees])
    prior = (
        Exponential(torch.tensor(10.0, dtype=torch.float64))
        if branch_prior is None
        else (branch_prior)
    )

    def log_joint(theta: torch.Tensor) -> torch.Tensor:
        loglik = log_likelihood(alignment, children, theta, substitution)
        return loglik + prior.log_prob(theta).sum(-1)

    hessian = log_density_hessian(alignment, children, prior, substitution)
    dim = 2 * alignment.n_taxa - 3
    return BatchedProblems(log_joint, num_problems=len(trees), dim=dim, hessian=hessian)


def log_density_hessian(
    alignment: Alignment, children: torch.Tensor, prior: Distribution, substitution="JC69"
):
    r"""``z (..., 2n-3) -> (..., 2n-3, 2n-3)``: the exact Hessian in $z = \log b$ of
    $\log p(D \mid \tau, e^z) + \sum_e \log p(e^{z_e})$ (also that of the density of $z$, whose
    extra Jacobian term $\sum_e z_e$ is linear), for ``hessian=`` of `varinf.Laplace` and
    friends.

    Args:
        alignment: the data.
        children: ``(n-1, 2)`` topology, or ``(..., n-1, 2)`` matching the batch of ``z``.
        prior: prior of one branch length.
        substitution: the substitution model (name or instance, fixed parameters).
    """

    def hessian(z: torch.Tensor) -> torch.Tensor:
        exact = log_likelihood_hessian(alignment, children, z.exp(), substitution, log_lengths=True)
        return exact + torch.diag_embed(_prior_curvature(prior, z))

    return hessian


def _prior_curvature(prior: Distribution, z: torch.Tensor) -> torch.Tensor:
    r"""$\partial^2_{z} \log p(e^{z})$ elementwise (the prior is i.i.d. over branches)."""
    with torch.enable_grad():
        u = z.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(prior.log_prob(u.exp()).sum(), u, create_graph=True)
        (second,) = torch.autograd.grad(grad.sum(), u)
    return second


#: Methods `credible_set_rows` runs batched over topologies (`Estimator.name`s).
FAST_METHODS = ("gamma-laplus", "lognormal-laplus", "betaprime-laplus", "laplace", "is", "glis",
                "vbis")  # fmt: skip


def credible_set_rows(
    alignment: Alignment,
    trees: Sequence[Tree],
    methods: Sequence[str],
    *,
    branch_prior: Distribution | None = None,
    substitution="JC69",
    num_particles: int = 2000,
) -> list[dict]:
    r"""Log evidence of every tree by each fast method, all trees batched, with the posterior.

    Rows ``{"tree", "method", "estimate", "stderr", "num_evaluations", "seconds", "warnings",
    "posterior"}`` (trees numbered from 1); ``posterior`` is the normalised evidence times a
    uniform prior over ``trees``, ``num_evaluations`` and ``seconds`` are per tree (the
    batched cost divided by the number of trees). Used by ``varinf phylo evidence``.

    Raises:
        ValueError: for a method not in `FAST_METHODS`.
    """
    from varinf.estimators.batched import fast_evidences

    unknown = [m for m in methods if m not in FAST_METHODS]
    if unknown:
        raise ValueError(f"methods: {unknown} are not batched over topologies; use {FAST_METHODS}")
    problems = topology_problems(alignment, trees, branch_prior, substitution)
    start = torch.full((len(trees), problems.dim), math.log(0.05), dtype=torch.float64)
    results = fast_evidences(problems, start, methods=tuple(methods), num_particles=num_particles)
    rows = []
    for method in methods:
        result = results[method]
        posterior = posterior_over_topologies(result["value"])
        khat = result.get("khat", [math.nan] * len(trees))
        for b in range(len(trees)):
            warning = f"Pareto k-hat {khat[b]:.2f} > 0.7" if khat[b] > 0.7 else ""
            rows.append({
                "tree": b + 1, "method": method, "estimate": result["value"][b].item(),
                "stderr": result["stderr"][b].item(), "posterior": posterior[b].item(),
                "num_evaluations": result["num_evaluations"],
                "seconds": result["seconds"] / len(trees), "warnings": warning,
            })  # fmt: skip
    return rows


def posterior_over_topologies(log_evidence: torch.Tensor) -> torch.Tensor:
    r"""Normalise $\log p(D\mid\tau_b)$ times a uniform prior: ``softmax(log_evidence)``.

    Examples:
        >>> log_evidence = torch.tensor([0.0, math.log(3.0)], dtype=torch.float64)
        >>> posterior_over_topologies(log_evidence).tolist()
        [0.25, 0.75]
    """
    if not torch.isfinite(log_evidence).all():
        raise ValueError("log_evidence: every topology needs a finite log evidence")
    return torch.softmax(log_evidence.double(), 0)


def topology_key(tree: Tree) -> tuple[int, ...]:
    """A hashable key of the unrooted topology (trees read by `read_trees` are canonical)."""
    return tuple(tree.children.flatten().tolist())


def split_probabilities(trees: Sequence[Tree], probs: Sequence[float]) -> dict[int, float]:
    r"""$P(\text{split})= \sum_b p_b [\text{split} \in \tau_b]$ over the non-trivial splits.

    A split is keyed by the bitmask of its side without the last taxon (`clade_keys`).
    """
    totals: dict[int, float] = defaultdict(float)
    for tree, prob in zip(trees, probs, strict=True):
        n = tree.n_taxa
        keys = clade_keys(n, tree.children.tolist())
        for key in keys[n : 2 * n - 3]:  # internal nodes below the root's child: non-trivial
            totals[key] += float(prob)
    return dict(totals)


def golden_frequencies(paths: Sequence, taxa: Sequence[str]) -> tuple[list[Tree], list[float]]:
    """Pooled MrBayes ``.trprobs`` frequencies: each run's ``[&W p]`` averaged over runs."""
    pooled: dict[tuple[int, ...], float] = defaultdict(float)
    first: dict[tuple[int, ...], Tree] = {}
    for path in paths:
        for tree in read_trees(path, taxa=taxa):
            key = topology_key(tree)
            pooled[key] += (tree.weight or 0.0) / len(paths)
            first.setdefault(key, tree)
    keys = list(pooled)
    return [first[k] for k in keys], [pooled[k] for k in keys]


def compare_with_golden(
    trees: Sequence[Tree],
    probs: torch.Tensor,
    golden_trees: Sequence[Tree],
    golden_probs: Sequence[float],
) -> dict[str, float]:
    r"""KL divergence and split RMSD of a posterior over ``trees`` against golden frequencies.

    Returns:
        ``kl``: $\mathrm{KL}(g \,\|\, p) = \sum_b g_b \log(g_b / p_b)$, $g$ the golden
        frequencies of the same trees renormalised over the set; ``split_rmsd``: RMS over every
        split seen by either of $P_p(s) - P_g(s)$, with $P_g$ from all golden trees;
        ``split_rmsd_floor``: the same for $g$ itself (the error of restricting to the set);
        ``golden_mass``: the golden mass inside the set.
    """
    golden = dict(zip((topology_key(t) for t in golden_trees), golden_probs, strict=True))
    inside = torch.tensor([golden.get(topology_key(t), 0.0) for t in trees], dtype=torch.float64)
    g = inside / inside.sum()
    p = probs.double()
    kl = torch.where(g > 0, g * (g.log() - p.log()), torch.zeros_like(g)).sum().item()
    truth = split_probabilities(golden_trees, golden_probs)
    estimated = split_probabilities(trees, p.tolist())
    restricted = split_probabilities(trees, g.tolist())
    return {
        "kl": kl,
        "split_rmsd": _rmsd(estimated, truth),
        "split_rmsd_floor": _rmsd(restricted, truth),
        "golden_mass": inside.sum().item(),
    }


def _rmsd(a: dict[int, float], b: dict[int, float]) -> float:
    keys = set(a) | set(b)
    return math.sqrt(sum((a.get(k, 0.0) - b.get(k, 0.0)) ** 2 for k in keys) / len(keys))
