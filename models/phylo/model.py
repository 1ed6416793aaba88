r"""The phylogenetic Pyro model and the uniform prior over unrooted topologies.

.. math::
    \tau \sim \mathrm{Uniform}(\mathcal{T}_n),\quad
    b_e \overset{iid}{\sim} p(b),\ e = 1 … 2n-3,\quad
    \theta \sim p(\theta),\quad
    \log p(D \mid \tau, b, \theta) = \sum_p n_p \log L_p(\tau, b, \theta),

with :math:`|\mathcal{T}_n| = (2n-5)!!` unrooted binary topologies, :math:`p(b)` the branch
length prior (Exponential(10) in MrBayes, SBN and VBPI benchmarks), :math:`\theta` the
substitution and rate parameters (fixed or latent) and :math:`L_p` Felsenstein's likelihood of
site pattern :math:`p` (`models.phylo.likelihood`). Zhang & Matsen (2019), "Variational
Bayesian phylogenetic inference", use exactly this model.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor
from torch.distributions import Distribution

from .alignment import Alignment
from .errors import PhyloFormatError
from .likelihood import pruning_log_likelihood
from .substitution import SubstitutionModel, discrete_gamma_rates, get_model, transition_matrices
from .topology import UniformTopology, topology_constraint
from .trees import Tree

__all__ = ["UniformTopology", "phylo_model"]


def phylo_model(
    alignment: Alignment,
    topology: Tree | Tensor | None = None,
    substitution: str | SubstitutionModel = "JC69",
    branch_prior: Distribution | None = None,
    gamma_shape: float | Tensor | Distribution | None = None,
    gamma_categories: int = 4,
    rescale_every: int = 4,
    per_site: bool = False,
) -> Callable[[], Tensor]:
    r"""A Pyro model of an alignment evolving along a tree.

    Sample sites: ``"topology"`` (only if ``topology`` is ``None``; `UniformTopology`),
    ``"branch_lengths"`` (``branch_prior`` expanded to :math:`2n-3` branches, one event), each
    distribution-valued substitution parameter under its own name (``"kappa"``, ``"rates"``,
    ``"freqs"``), ``"gamma_shape"`` if it is a distribution; then
    ``pyro.factor("alignment", log_likelihood)``. No plates are declared: run it inside
    ``pyro.plate("particles", K, dim=-1)`` (or more plates to the left) and every site gets those
    batch dimensions; the likelihood is evaluated for all particles (and all sampled
    topologies) in one pass, in float64 whatever the dtype of the branch lengths.

    Args:
        alignment: the data.
        topology: a fixed `Tree` on the alignment's taxa, or a ``(n-1, 2)`` canonical table,
            or ``None`` for a latent topology.
        substitution: model name or instance (see `models.phylo.substitution`).
        branch_prior: prior of one branch length; default ``Exponential(10)``.
        gamma_shape: discrete-Gamma shape (fixed or a prior); ``None`` for no rate variation.
        gamma_categories: number of Gamma categories.
        rescale_every: see `pruning_log_likelihood`.
        per_site: put the likelihood as one term per site pattern,
            ``with pyro.plate("patterns", P, dim=-1): pyro.factor("alignment", terms)`` with
            ``terms`` $= n_p \log L_p$ (the pattern count times the pattern's
            log-likelihood), for per-datum estimators (CPO, pointwise predictive densities).
            Particle and chain plates then go at ``dim=-2`` or further left. Default: one
            ``pyro.factor("alignment", log_likelihood)``.

    Returns:
        The model, a callable without arguments that returns the log-likelihood. Its
        attribute ``model.site_weights`` holds the pattern counts $n_p$, shape ``(P,)``
        (divide the per-pattern terms by them for per-site log-likelihoods).

    Example:
        >>> aln = Alignment.from_sequences(["a", "b", "c", "d"], ["ACGT", "ACGA", "TCGA", "TCGG"])
        >>> model = phylo_model(aln)
        >>> with pyro.plate("particles", 7, dim=-1):
        ...     trace = pyro.poutine.trace(model).get_trace()
        >>> topology, factor = trace.nodes["topology"], trace.nodes["alignment"]
        >>> topology["value"].shape, factor["fn"].batch_shape
        (torch.Size([7, 3, 2]), torch.Size([7]))
    """
    if not isinstance(alignment, Alignment):
        raise TypeError(f"alignment must be an Alignment, got {type(alignment).__name__}")
    n = alignment.n_taxa
    if n < 3:
        raise PhyloFormatError(f"alignment has {n} taxa; a tree needs at least 3")
    children = _fixed_topology(topology, alignment)
    model_sub = get_model(substitution)
    prior = dist.Exponential(10.0) if branch_prior is None else branch_prior
    tips = alignment.partials().mT.contiguous()
    weights = alignment.weights

    def model() -> Tensor:
        tau = pyro.sample("topology", UniformTopology(n)) if children is None else children
        lengths = pyro.sample("branch_lengths", prior.expand([2 * n - 3]).to_event(1))
        lengths = lengths.to(torch.float64)
        params = model_sub.sample()
        shape = gamma_shape
        if isinstance(shape, Distribution):
            shape = pyro.sample("gamma_shape", shape)
        rates = None if shape is None else discrete_gamma_rates(shape, gamma_categories)
        trans = transition_matrices(model_sub, params, lengths, rates)
        freqs = model_sub.frequencies(params).to(lengths)
        loglik = pruning_log_likelihood(
            tips.to(lengths.device), weights.to(lengths.device), tau.to(lengths.device),
            trans, freqs, rescale_every=rescale_every, per_pattern=per_site,
        )  # fmt: skip
        if not per_site:
            pyro.factor("alignment", loglik)
            return loglik
        terms = _drop_pattern_dim(loglik)
        with pyro.plate("patterns", weights.shape[0], dim=-1):
            pyro.factor("alignment", terms)
        return loglik.sum(-1)  # the latents' batch shape, as without per_site

    model.site_weights = weights
    return model


def _drop_pattern_dim(terms: Tensor) -> Tensor:
    """`(*batch, 1, P)` per-pattern terms as `(*batch, P)`: the batch's last dimension is the
    one the patterns plate takes (particle and chain plates sit to its left)."""
    if terms.dim() == 1:
        return terms
    if terms.shape[-2] != 1:
        raise ValueError(
            "phylo_model(per_site=True) declares pyro.plate('patterns', dim=-1): put particle "
            f"and chain plates at dim=-2 or further left (got batch shape "
            f"{tuple(terms.shape[:-1])}, whose last dimension is not 1)"
        )
    return terms.squeeze(-2)


def _fixed_topology(topology, alignment: Alignment) -> Tensor | None:
    n = alignment.n_taxa
    if topology is None:
        return None
    if isinstance(topology, Tree):
        if topology.taxa != alignment.taxa:
            extra = set(topology.taxa) ^ set(alignment.taxa)
            what = f"taxon {sorted(extra)[0]!r} is in only one of them" if extra else "order"
            raise PhyloFormatError(
                f"topology: the tree's taxa differ from the alignment's ({what}); "
                "read the tree with read_trees(path, taxa=alignment.taxa)"
            )
        return topology.children
    topology = torch.as_tensor(topology)
    if topology.shape != (n - 1, 2) or not topology_constraint(n).check(topology):
        raise ValueError(
            f"topology must be a Tree or a valid ({n - 1}, 2) child table, "
            f"got shape {tuple(topology.shape)}"
        )
    return topology.long()
