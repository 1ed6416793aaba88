r"""The layout of distinct clade columns for one topology (`RepeatPlan`, `plan_for`).

Every clade of the topology is compressed to its distinct columns
(`models.phylo.clade_table`), and each row of the child table gets the children's columns
behind its own: the unscaled pass `models.phylo.repeats.forward_repeats` then prunes
$\sum_v K_v$ columns instead of $(n-1) P$ (DS1: 5118 instead of 24284).
"""

from __future__ import annotations

import numpy as np
import torch

from varinf.distributions.trees import clade_keys

from .fused import PackedPlan
from .waves import WavePlan

__all__ = ["RepeatPlan", "plan_for"]


class RepeatPlan:
    """Distinct clade patterns of one topology, row by row (every clade computed and kept:
    one topology evaluated many times).

    Args:
        cache: the alignment's `models.phylo.cache.LikelihoodCache`.
        rows: the topology's `(n-1, 2)` child table as nested lists.

    Attributes:
        tips: per leaf, its distinct tip columns `(4, K_c)`.
        index: per row `j`, the child columns `(i_a, i_b)` of node `n+j`'s patterns,
            `None` where the gather would be the identity.
        sizes: $K_v$ per node.
        root_ids: `(P,)` distinct root pattern of every site pattern.
        columns: per row, the children's columns `(i_a, i_b)` as numpy arrays.
        waves: the level schedule of these columns (`models.phylo.waves.WavePlan`).
        packed: these columns as the compiled loop's arrays (`models.phylo.fused.PackedPlan`).
        leaf_cols: per row, each leaf child's tip columns at the row's patterns (else `None`).
    """

    def __init__(self, cache, rows: list[list[int]]) -> None:
        patterns, tips = cache.patterns, cache.tips
        n, device = patterns.n, tips.device
        keys = clade_keys(n, rows)
        ids = {c: patterns.known(1 << c)[0] for c in range(n)}
        self.sizes = {c: int(ids[c].max()) + 1 for c in range(n)}
        self.tips = [patterns.tip_columns[c, :, : self.sizes[c]].to(tips) for c in range(n)]
        self.index, self.leaf_cols, self.columns = [], [], []
        for j, (a, b) in enumerate(rows):
            hit = patterns.known(keys[n + j])
            if hit is None:
                hit = patterns.combine(keys[n + j], ids[a], ids[b], self.sizes[b])
            ids[n + j], reps = hit
            self.columns.append((ids[a][reps], ids[b][reps]))
            x = torch.from_numpy(np.stack(self.columns[-1])).to(device)
            self.sizes[n + j] = x.shape[1]
            identity = [x.shape[1] == self.sizes[c] and bool(
                (x[s] == torch.arange(x.shape[1], device=device)).all())
                for s, c in enumerate((a, b))]  # fmt: skip
            self.index.append(tuple(None if same else x[s] for s, same in enumerate(identity)))
            # a leaf's columns gathered at its parent's patterns once per plan: its message
            # there is one small product, with no gather forward and no scatter backward
            cols = [None if c >= n else self.tips[c][:, x[s]] for s, c in enumerate((a, b))]
            self.leaf_cols.append(tuple(cols))
        self.root_ids = patterns.root_ids(device)
        self.rows, self._steps = rows, {}
        self.packed = PackedPlan(self)  # for the compiled loop (models.phylo.fused)
        self.waves = WavePlan(self, patterns.tip_columns)  # the level schedule, for few particles

    @property
    def nbytes(self) -> int:
        """Bytes of the storages this plan owns, for the cache's bound (`tips` are views of
        the alignment's tip columns, and the expanded `steps` views of `index`)."""
        owned = [t for pair in (*self.index, *self.leaf_cols) for t in pair if t is not None]
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in owned}
        columns = sum(a.nbytes for pair in self.columns for a in pair)
        return sum(storages.values()) + columns + self.waves.nbytes + self.packed.nbytes

    def expanded(self, width: int) -> list[tuple]:
        """`index` with each index expanded to `(width, 4, K)` (views, kept per width)."""
        return [tuple(idx for _, idx, _ in row) for row in self.steps(width)]

    def steps(self, width: int) -> list[tuple]:
        """Per row, for both children: `(child, index expanded to (width, 4, K) or None, its
        tip columns if a leaf else None)`, kept per width: the loop of `forward_repeats`."""
        if width not in self._steps:
            self._steps[width] = [
                tuple((c, None if i is None else i.expand(width, 4, -1), cols)
                      for c, i, cols in zip(row, pair, leaves, strict=True))
                for row, pair, leaves in zip(self.rows, self.index, self.leaf_cols, strict=True)
            ]  # fmt: skip
        return self._steps[width]


def plan_for(cache, children) -> RepeatPlan:
    """The `RepeatPlan` of a topology `(n-1, 2)`, kept in the cache (a model with a fixed
    topology evaluates the same plan at every step)."""
    key = ("tree", children.cpu().numpy().tobytes())
    plan = cache.tables["plans"].get(key)
    if plan is None:
        plan = RepeatPlan(cache, children.tolist())
        cache.tables["plans"].put(key, plan)
    return plan
