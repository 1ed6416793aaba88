r"""Distinct clade columns: which site columns a node's partial likelihood can tell apart.

A node's partial likelihood at a site depends only on the tip columns of its clade there, so
sites whose clade columns agree share one partial (subtree site repeats; Kobert, Stamatakis &
Flouri 2017). For a clade $v$ with $K_v$ distinct columns we keep

- `ids_v` `(P,)`: the distinct column of every site pattern, numbered in order of first
  occurrence (a canonical order, so it depends on the clade alone, not on how the subtree
  below it is resolved), and
- `reps_v` `(K_v,)`: the first site of each distinct column.

For a node $v = a \cup b$ of a tree, $x = (\mathrm{ids}_a[\mathrm{reps}_v],
\mathrm{ids}_b[\mathrm{reps}_v])$ are the children's columns that each column of $v$ is built
from, so that $L_v = (P_a L_a)[\cdot, x_0] \odot (P_b L_b)[\cdot, x_1]$. `ids_v` comes from
`ids_a * K_b + ids_b` with one `pandas.factorize` (the pair of child columns identifies the
parent's column). The table belongs to the alignment's `LikelihoodCache` and is keyed by
clades as Python-int bitmasks (`varinf.distributions.trees.clade_keys`: hashable, any number
of taxa; tensors use boolean masks), so the topologies a variational guide samples over and
over, which share most of their clades, cost a dictionary lookup per node. Written by hand:
no library keeps clade-indexed site repeats.

`models.phylo.tree_plan` lays this out for one topology, `models.phylo.batch_layout` for a
batch of different topologies.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import Tensor

__all__ = ["CladePatterns"]


def _first_occurrence(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`(ids, reps)`: `keys` numbered by first occurrence (`pandas.factorize`, a hash
    table, no sort) and the position of each distinct key's first occurrence."""
    ids, _ = pd.factorize(keys)
    # ids first appear in increasing order: a first occurrence tops every id before it
    seen = np.maximum.accumulate(np.concatenate([[-1], ids[:-1]]))
    return ids, np.flatnonzero(ids > seen)


def _distinct_columns(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`(ids, reps)` of the distinct rows of `rows` `(P, d)` (columns of a block)."""
    _, inverse = np.unique(rows, axis=0, return_inverse=True)
    return _first_occurrence(inverse.reshape(-1))


class CladePatterns:
    """Distinct-column tables of one alignment's clades (module docstring).

    Args:
        tips: `(n, 4, P)` tip partials.
        cache: the alignment's `models.phylo.cache.LikelihoodCache`, whose ``"clades"`` and
            ``"seen"`` tables hold the clades.

    Attributes:
        n, n_patterns: taxa and site patterns.
        leaf_width: the most distinct columns of any leaf (at most 16).
        tip_columns: `(n, 4, leaf_width)` each leaf's distinct columns, zero-padded.
        root_key: the bitmask of all taxa.
    """

    def __init__(self, tips: Tensor, cache) -> None:
        block = tips.detach().cpu().numpy()
        self.n, self.n_patterns = block.shape[0], block.shape[-1]
        self.sites = np.arange(self.n_patterns)
        self._leaves = [_distinct_columns(column.T) for column in block]  # (ids, reps) each
        self.leaf_width = max(reps.size for _, reps in self._leaves)
        cols = np.zeros((self.n, 4, self.leaf_width), dtype=block.dtype)
        for c, (_, reps) in enumerate(self._leaves):
            cols[c, :, : reps.size] = block[c][:, reps]
        self.tip_columns = torch.from_numpy(cols).to(tips.device)
        self._clades, self._seen = cache.tables["clades"], cache.tables["seen"]
        self.root_key = (1 << self.n) - 1
        self._root_columns = _distinct_columns(block.reshape(-1, self.n_patterns).T)
        self._root: Tensor | None = None
        self.layout = None  # the alignment's batch layout (models.phylo.batch_layout)

    def known(self, key: int) -> tuple[np.ndarray, np.ndarray] | None:
        """`(ids (P,), reps (K,))` of the clade whose taxa are the set bits of `key`, if it
        is a leaf or kept; `reps` are the first sites of its distinct columns."""
        if key & (key - 1) == 0:  # a single taxon
            return self._leaves[key.bit_length() - 1]
        if key == self.root_key:  # every tree has it: kept apart, never evicted
            return self._root_columns
        return self._clades.get(key)

    def seen(self, key: int) -> bool:
        """Whether clade `key` was asked about before (`seen_before`), without marking it."""
        return key in self._seen

    def seen_before(self, key: int) -> bool:
        """Whether clade `key` was asked about before (it is remembered from now on)."""
        if key in self._seen:
            return True
        self._seen.put(key, True, 16)
        return False

    def combine(self, key: int, ids_a: np.ndarray, ids_b: np.ndarray, k_b: int):
        """The kept `(ids, reps)` of clade `key`, the union of two disjoint clades with
        distinct-column ids `ids_a` and `ids_b` (`k_b` distinct): the pair of child
        columns identifies the parent's column."""
        if key == self.root_key:
            return self._root_columns
        value = _first_occurrence(ids_a * k_b + ids_b)
        self._clades.put(key, value)
        return value

    def root_ids(self, device: torch.device) -> Tensor:
        """`(P,)`: the root's (all taxa) distinct column of every site pattern."""
        if self._root is None or self._root.device != device:
            self._root = torch.from_numpy(self._root_columns[0]).to(device)
        return self._root
