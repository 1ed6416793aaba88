r"""The VBPI guide: an SBN over topologies times log-normal branch lengths (Zhang & Matsen 2019).

Zhang & Matsen (2019), "Variational Bayesian phylogenetic inference" (ICLR), and Zhang (2020),
"Improved variational Bayesian phylogenetic inference with normalizing flows" (NeurIPS):

$$
q(\tau, b) = q_\phi(\tau)\, \prod_{e} \mathrm{LogNormal}\big(b_e;\ \mu(e, \tau),
    \sigma(e, \tau)\big),
$$

with $q_\phi$ a `SubsplitBayesianNetwork` and, for the edge $e$ with split $X|\bar X$,

$$
(\mu, \log\sigma)(e, \tau) = \psi^{\text{split}}(X|\bar X)
    + \psi^{\text{psp}}(s_X \mid X, \bar X) + \psi^{\text{psp}}(s_{\bar X} \mid \bar X, X),
$$

learned 2-vectors for the split and its two *primary subsplit pairs* (the subsplits at both
ends of the edge, PSP; the PSP terms are dropped with ``psp=False``). With ``flow_layers > 0``
the log branch lengths also pass through RealNVP affine coupling layers (VBPI-NF). The guide
draws the sites ``"topology"`` and ``"branch_lengths"`` of `models.phylo.phylo_model`; inside a
particle plate all $K$ trees are drawn, embedded and scored as one batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pyro import module as pyro_module
from pyro import sample as pyro_sample
from pyro.distributions import LogNormal, Normal, TransformedDistribution
from pyro.distributions.transforms import ExpTransform, Permute, affine_coupling
from torch import Tensor, nn

from varinf.distributions.sbn import SBNSupport, SubsplitBayesianNetwork
from varinf.distributions.sbn.terms import R, V

__all__ = ["VBPIGuide"]


class VBPIGuide(nn.Module):
    r"""Variational family of VBPI for the sites ``topology`` and ``branch_lengths``.

    Args:
        support: the SBN support (e.g. ``SBNSupport.from_trees(ufboot_trees)``).
        psp: add the primary-subsplit-pair embeddings to the split embeddings.
        flow_layers: number of RealNVP coupling layers on the log branch lengths (0: none).
        hidden: hidden width of each coupling layer's network.
        loc_offset: added to every mean log branch length ($-2$: lengths near 0.14 at start).
        name: the `pyro.module` name of the parameters.
        taxa: the model's taxa (e.g. ``alignment.taxa``); if given, they must be the support's.

    Raises:
        ValueError: ``taxa`` differ from the taxa the support was built on.

    Examples:
        >>> import pyro, torch
        >>> trees = torch.tensor([[[0, 1], [5, 2], [6, 3], [7, 4]],
        ...                       [[0, 1], [2, 3], [5, 6], [7, 4]]])
        >>> guide = VBPIGuide(SBNSupport.from_trees(trees))
        >>> with pyro.plate("particles", 3, dim=-1):
        ...     tr = pyro.poutine.trace(guide).get_trace()
        >>> tr.nodes["topology"]["value"].shape, tr.nodes["branch_lengths"]["value"].shape
        (torch.Size([3, 4, 2]), torch.Size([3, 7]))
    """

    def __init__(
        self,
        support: SBNSupport,
        psp: bool = True,
        flow_layers: int = 0,
        hidden: int = 50,
        loc_offset: float = -2.0,
        name: str = "vbpi",
        taxa: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(support, SBNSupport):
            raise TypeError(
                f"support must be an SBNSupport, got {type(support).__name__}; "
                "build one with SBNSupport.from_trees(trees)"
            )
        if taxa is not None:
            _check_taxa(tuple(taxa), support)
        self.support = support
        self.n_taxa = support.n_taxa
        self.psp = psp
        self.loc_offset = loc_offset
        self.name = name
        dtype = torch.float64
        self.root_logits = nn.Parameter(torch.zeros(support.num_root_splits, dtype=dtype))
        self.pcsp_logits = nn.Parameter(torch.zeros(support.num_entries, dtype=dtype))
        split = torch.empty(support.num_root_splits, 2, dtype=dtype)
        self.split_embedding = nn.Parameter(nn.init.xavier_uniform_(split))
        if psp:
            pair = torch.empty(support.num_entries, 2, dtype=dtype)
            self.psp_embedding = nn.Parameter(nn.init.xavier_uniform_(pair))
        n_edges = 2 * self.n_taxa - 3
        layers = [affine_coupling(n_edges, hidden_dims=[hidden]) for _ in range(flow_layers)]
        self.flow = nn.ModuleList(layers).to(dtype)
        perms = [torch.randperm(n_edges) for _ in range(max(flow_layers - 1, 0))]
        self.register_buffer("permutations", torch.stack(perms) if perms else torch.zeros(0))
        # branch k is the edge above node k; branch n-1 is the top node's edge to leaf n-1
        nodes = torch.arange(n_edges)
        nodes[self.n_taxa - 1] = 2 * self.n_taxa - 3
        self.register_buffer("edge_nodes", nodes)

    def topology_distribution(self, **kwargs) -> SubsplitBayesianNetwork:
        """The SBN $q_\\phi(\\tau)$ with the current parameters (``kwargs``: ``outside``...)."""
        return SubsplitBayesianNetwork(self.support, self.root_logits, self.pcsp_logits, **kwargs)

    def branch_parameters(self, sbn: SubsplitBayesianNetwork, tau: Tensor) -> tuple[Tensor, Tensor]:
        r"""Mean and standard deviation of the log branch lengths, ``(..., 2n-3)`` each."""
        terms, root_idx, entry_idx = sbn.lookup(tau)
        if bool((root_idx[:, self.edge_nodes] < 0).any()):
            raise ValueError("branch_parameters: a topology has a split outside the support")
        feats = self.split_embedding[root_idx[:, self.edge_nodes]]
        if self.psp:
            for slot in (R, V):
                idx = entry_idx[:, self.edge_nodes, slot]
                emb = self.psp_embedding[idx.clamp(min=0)]
                feats = feats + torch.where((idx >= 0)[..., None], emb, 0.0)
        feats = feats.reshape(*tau.shape[:-2], -1, 2)
        return feats[..., 0] + self.loc_offset, feats[..., 1].exp()

    def branch_distribution(self, loc: Tensor, scale: Tensor):
        """LogNormal branch lengths, through the RealNVP layers if there are any."""
        if not len(self.flow):
            return LogNormal(loc, scale).to_event(1)
        transforms = []
        for i, layer in enumerate(self.flow):
            transforms.append(layer)
            if i < len(self.permutations):
                transforms.append(Permute(self.permutations[i]))
        return TransformedDistribution(
            Normal(loc, scale).to_event(1), [*transforms, ExpTransform()]
        )

    def forward(self, *args, **kwargs) -> Tensor:
        pyro_module(self.name, self)
        sbn = self.topology_distribution()
        tau = pyro_sample("topology", sbn)
        loc, scale = self.branch_parameters(sbn, tau)
        return pyro_sample("branch_lengths", self.branch_distribution(loc, scale))


def _check_taxa(taxa: tuple, support: SBNSupport) -> None:
    if support.taxa is None:
        if len(taxa) != support.n_taxa:
            raise ValueError(f"taxa: {len(taxa)} given, the support has {support.n_taxa}")
        return
    if taxa != support.taxa:
        diff = sorted(set(taxa) ^ set(support.taxa))
        what = f"{diff[0]!r} is in only one of them" if diff else "same names, another order"
        raise ValueError(
            f"taxa: the support trees' taxa differ from the model's ({what}); read the support "
            "with read_trees(path, taxa=alignment.taxa)"
        )
