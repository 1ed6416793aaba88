r"""The support of a subsplit Bayesian network: root splits and parent-child subsplit pairs.

Built from tree samples (MCMC ``.t``/``.trprobs``, bootstrap or UFBoot trees, or any list of
topologies): every root split and every parent-child subsplit pair (PCSP) that appears under
*any* of the $2n-3$ rootings of *any* sample tree (Zhang & Matsen 2018, Section 3). A PCSP is
a conditional $p(Y_1|Y_2 \mid Y, Z)$: clade $Y$ with sister $Z$ splits into $Y_1, Y_2$.
Clades are numbered (``clade ids``) and looked up by exact comparison of their packed words
(`varinf.distributions.sbn.bits`), so any number of taxa works.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from varinf.distributions.sbn.bits import all_words, check_tables, num_words, popcount
from varinf.distributions.sbn.terms import TreeTerms, tree_terms

_MULTIPLIERS = (1, 0x5851F42D4C957F2D, 0x14057B7EF767814F, 0x2545F4914F6CDD1D)


def _hash(words: Tensor) -> Tensor:
    """An int64 key per clade; exact (the word itself) for up to 62 taxa."""
    w = words.shape[-1]
    mult = [_MULTIPLIERS[i % 4] * (i // 4 * 2 + 1) % (1 << 63) for i in range(w)]
    return (words * torch.tensor(mult, dtype=torch.long, device=words.device)).sum(-1)


def _find(sorted_keys: Tensor, keys: Tensor) -> Tensor:
    """Index of each key in a sorted key vector, ``-1`` where absent."""
    if sorted_keys.numel() == 0:
        return torch.full_like(keys, -1)
    idx = torch.searchsorted(sorted_keys, keys).clamp(max=sorted_keys.numel() - 1)
    return torch.where(sorted_keys[idx] == keys, idx, -1)


class SBNSupport:
    r"""Root splits and PCSPs of a subsplit Bayesian network, with their lookup tables.

    Attributes:
        n_taxa: $n$.
        taxa: taxon names (leaf ``i`` is ``taxa[i]``) or ``None``.
        clades: ``(C, W)`` words of every clade met, sorted by key.
        root_clades: ``(S,)`` clade ids of the root splits (side without taxon ``n-1``).
        context_clade, context_sister: ``(Q,)`` clade ids of the contexts $(Y, Z)$.
        entry_context, entry_first, entry_second: ``(E,)`` context and the two child clades
            (``entry_first`` the smaller id) of each PCSP.
        context_entries: ``(Q, K)`` PCSP ids of each context, padded with ``-1``.
        entry_child_contexts, root_child_contexts: ``(E, 2)`` and ``(S, 2)`` contexts of the
            two children of each PCSP and root split (``-1`` for a leaf): sampling in the
            support is then integer table look-ups only.

    Use `from_trees`; `SubsplitBayesianNetwork` holds one.

    Examples:
        >>> import torch
        >>> star = torch.tensor([[0, 1], [4, 2], [5, 3]])  # ((0,1),2,3) on 4 taxa
        >>> s = SBNSupport.from_trees(star)
        >>> s.num_root_splits, s.num_entries
        (5, 10)
    """

    def __init__(self, n_taxa: int, terms_words: tuple[Tensor, Tensor], taxa=None) -> None:
        self.n_taxa = n_taxa
        self.taxa = None if taxa is None else tuple(taxa)
        roots, pcsps = terms_words  # (S, W), (E, 4, W)
        everything = torch.cat([roots, pcsps.reshape(-1, roots.shape[-1])])
        clades = torch.unique(everything, dim=0)
        keys = _hash(clades)
        order = keys.argsort()
        self.clades, self.clade_keys = clades[order], keys[order]
        if self.clade_keys.unique().numel() != self.clade_keys.numel():  # pragma: no cover
            raise RuntimeError("clade key collision; please report this tree set")
        self.clade_sizes = popcount(self.clades)
        self.root_clades = self.clade_ids(roots).unique()
        ids = self.clade_ids(pcsps)  # (E, 4)
        first = ids[:, 2:].min(-1).values
        num = self.clades.shape[0]
        ctx = torch.unique(ids[:, 0] * num + ids[:, 1])
        self.context_keys = ctx
        self.context_clade, self.context_sister = ctx // num, ctx % num
        entry = torch.unique(_find(ctx, ids[:, 0] * num + ids[:, 1]) * num + first)
        self.entry_keys = entry
        self.entry_context = entry // num
        self.entry_first = entry % num
        union = self.clades[self.context_clade[self.entry_context]]
        self.entry_second = self.clade_ids(union ^ self.clades[self.entry_first])
        self.context_entries = _pad_groups(self.entry_context, ctx.numel())
        # the contexts each PCSP and each root split hands to its two children (-1: a leaf)
        self.entry_child_contexts = torch.stack(
            [
                self._ctx(self.entry_first, self.entry_second),
                self._ctx(self.entry_second, self.entry_first),
            ],
            -1,
        )
        complement = self.clade_ids(all_words(n_taxa) ^ self.clades[self.root_clades])
        self.root_child_contexts = torch.stack(
            [self._ctx(self.root_clades, complement), self._ctx(complement, self.root_clades)], -1
        )

    def _ctx(self, clade: Tensor, sister: Tensor) -> Tensor:
        num = self.clades.shape[0]
        ctx = _find(self.context_keys, clade * num + sister)
        return torch.where(self.clade_sizes[clade] >= 2, ctx, -1)

    @classmethod
    def from_trees(cls, trees: Tensor | Sequence, taxa: Sequence[str] | None = None) -> SBNSupport:
        r"""Support of all rootings of the given trees.

        Args:
            trees: a ``(B, n-1, 2)`` child-table tensor, a sequence of ``(n-1, 2)`` tables, or
                a sequence of tree objects with ``children`` and ``taxa`` (e.g.
                ``models.phylo.read_trees(path)``); duplicates are fine.
            taxa: taxon names; must equal the trees' own ``taxa`` when they have them.

        Raises:
            ValueError: no trees, mixed taxa, or not valid child tables.
        """
        children, taxa = as_tables(trees, taxa, "trees")
        roots, pcsps = [], []
        for chunk in children.split(512):
            terms = tree_terms(chunk)
            roots.append(terms.root[:, terms.rootings].reshape(-1, terms.root.shape[-1]))
            pcsps.append(terms.cond[terms.cond_valid])
            roots[-1], pcsps[-1] = roots[-1].unique(dim=0), pcsps[-1].unique(dim=0)
        return cls(children.shape[-2] + 1, (torch.cat(roots), torch.cat(pcsps)), taxa)

    @property
    def num_root_splits(self) -> int:
        return int(self.root_clades.numel())

    @property
    def num_entries(self) -> int:
        return int(self.entry_keys.numel())

    @property
    def num_contexts(self) -> int:
        return int(self.context_keys.numel())

    def clade_ids(self, words: Tensor) -> Tensor:
        """Clade id of each ``(..., W)`` word vector, ``-1`` for clades never met."""
        idx = _find(self.clade_keys, _hash(words))
        same = (self.clades[idx.clamp(min=0)] == words).all(-1)
        return torch.where(same, idx, -1)

    def lookup(self, terms: TreeTerms) -> tuple[Tensor, Tensor]:
        """Root-split index ``(B, M)`` and PCSP index ``(B, M, 5)``; ``-1`` outside support."""
        root = _find(self.root_clades, self.clade_ids(terms.root))
        ids = self.clade_ids(terms.cond)  # (B, M, 5, 4)
        num = self.clades.shape[0]
        known = (ids >= 0).all(-1)
        ctx = _find(self.context_keys, ids[..., 0] * num + ids[..., 1])
        first = ids[..., 2:].min(-1).values
        entry = _find(self.entry_keys, ctx * num + first)
        entry = torch.where(known & (ctx >= 0), entry, -1)
        return root, torch.where(terms.cond_valid, entry, -2)  # -2: slot does not apply

    def context_index(self, clade: Tensor, sister: Tensor) -> Tensor:
        """Context id of each ``(clade, sister)`` pair of ``(..., W)`` words, ``-1`` if unknown."""
        num = self.clades.shape[0]
        y, z = self.clade_ids(clade), self.clade_ids(sister)
        ctx = _find(self.context_keys, y * num + z)
        return torch.where((y >= 0) & (z >= 0), ctx, -1)

    def context_known(self, terms: TreeTerms) -> Tensor:
        """``(B, M, 5)``: whether each slot's context $(Y, Z)$ is in the support."""
        return self.context_index(terms.cond[..., 0, :], terms.cond[..., 1, :]) >= 0

    def to(self, device) -> SBNSupport:
        """A copy with every table on ``device``."""
        new = object.__new__(SBNSupport)
        for key, value in vars(self).items():
            setattr(new, key, value.to(device) if isinstance(value, Tensor) else value)
        return new

    @property
    def num_words(self) -> int:
        return num_words(self.n_taxa)


def _pad_groups(group: Tensor, num_groups: int) -> Tensor:
    """``(G, K)`` member indices of each group (``group`` sorted), padded with ``-1``."""
    counts = torch.bincount(group, minlength=num_groups)
    width = int(counts.max()) if group.numel() else 1
    start = torch.cumsum(counts, 0) - counts
    pos = torch.arange(group.numel(), device=group.device) - start[group]
    out = torch.full((num_groups, width), -1, dtype=torch.long, device=group.device)
    out[group, pos] = torch.arange(group.numel(), device=group.device)
    return out


def as_tables(trees, taxa, name: str) -> tuple[Tensor, tuple[str, ...] | None]:
    """``(B, n-1, 2)`` long tables and taxa from any accepted form of a tree collection."""
    if isinstance(trees, Tensor):
        children = trees if trees.dim() == 3 else trees.reshape(-1, *trees.shape[-2:])
    else:
        trees = list(trees)
        if not trees:
            raise ValueError(f"{name} is empty: give at least one tree")
        if hasattr(trees[0], "children"):
            own = {tuple(t.taxa) for t in trees}
            if len(own) > 1:
                raise ValueError(f"{name}: the trees are on different taxa")
            own_taxa = own.pop()
            if taxa is not None and tuple(taxa) != own_taxa:
                extra = set(own_taxa) ^ set(taxa)
                what = f"{sorted(extra)[0]!r} is in only one" if extra else "different order"
                raise ValueError(
                    f"{name}: the trees' taxa differ from `taxa` ({what}); read the trees "
                    "with read_trees(path, taxa=alignment.taxa)"
                )
            taxa = own_taxa
            trees = [t.children for t in trees]
        children = torch.stack([torch.as_tensor(t) for t in trees])
    if children.shape[0] == 0:
        raise ValueError(f"{name} is empty: give at least one tree")
    children = children.long()
    n = children.shape[-2] + 1
    if n < 3:
        raise ValueError(f"{name}: a tree needs at least 3 taxa, got {n}")
    if taxa is not None and len(taxa) != n:
        raise ValueError(f"{name}: {len(taxa)} taxa given for trees on {n} leaves")
    check_tables(children, n, name)
    return children, None if taxa is None else tuple(taxa)
