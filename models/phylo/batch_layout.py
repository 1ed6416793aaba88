r"""Batches of different topologies over distinct clade columns: `BatchPlan`.

Each tree's internal nodes are visited in order of clade size (children before parents, so a
valid postorder), and step $r$ handles the $r$-th smallest clade of every tree at once;
consecutive independent steps form waves, each one gather, one product and one matrix
product (`models.phylo.repeats.forward_batched_repeats`). A clade is compressed on its second
sighting (`models.phylo.clade_table`); a batch whose padded columns would exceed
`LikelihoodCache.worthwhile` of $(n-1) P$ runs the plain pass instead, and while batches do
not pay only probes look again (`models.phylo.probes`). Tree layouts and the plans of batches met
twice live in the alignment's `models.phylo.cache.LikelihoodCache`.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import Tensor

from varinf.distributions.trees import clade_keys

from .probes import may_pay

__all__ = ["BatchPlan", "Layout", "TreeLayout", "batch_plan_for"]


def _repeat(values: np.ndarray, counts: np.ndarray, step: int, out: np.ndarray) -> np.ndarray:
    """`np.repeat(values, counts) + step * (position in out)` for positive `counts`,
    written into `out` as the cumulative sum of its jumps (np.repeat has no `out`)."""
    out[:] = step
    out[np.cumsum(counts)[:-1]] = np.diff(values) + step
    out[0] = values[0]
    return np.cumsum(out, out=out)


def _waves(widths: list[int], last_child: list[int]) -> list[tuple[int, int, int]]:
    """Group steps into waves `(first step, count, padded width)` of consecutive steps that
    no step of the same wave depends on, padded to a common width when that costs at most a
    quarter more columns (plus 32): each wave is one gather, product and matrix product,
    where each step alone would be several ~5 µs kernel launches for a few dozen columns."""
    waves = [(0, 1, widths[0])]
    for r in range(1, len(widths)):
        first, count, width = waves[-1]
        wide = max(width, widths[r])
        if last_child[r] < first and wide * (count + 1) <= 1.25 * sum(widths[first : r + 1]) + 32:
            waves[-1] = (first, count + 1, wide)
        else:
            waves.append((r, 1, widths[r]))
    return waves


class TreeLayout:
    """One topology's internal nodes in order of clade size, for `BatchPlan`.

    A clade is compressed to its distinct columns when they are kept, or computed on the
    spot from compressed children when the clade was met before: a clade met once (most
    clades of random topologies) is not worth a `numpy.unique`, so its node keeps one column
    per site pattern (`ids` the identity), which costs nothing to set up. The root is
    always compressed.

    Attributes:
        nodes: `(n-1,)` node of each step.
        sizes: `(n-1,)` columns $K$ of each step's node.
        child_steps: `(n-1, 2)` step of each child, or `-1-c` for leaf `c`.
        columns: `(2, sum K)` per step, the children's columns behind each of its columns
            (built when first asked for).
        complete: whether every clade is compressed.
    """

    def __init__(self, patterns, rows: list[list[int]]) -> None:
        n = patterns.n
        keys = clade_keys(n, rows)
        order = sorted(range(n - 1), key=lambda j: keys[n + j].bit_count())  # stable
        step = {n + j: r for r, j in enumerate(order)}
        ids = {c: patterns.known(1 << c)[0] for c in range(n)}  # None: one column per site
        self._parts = []  # per step: its reps and its children's ids (None: sites)
        for j in order:
            a, b = rows[j]
            v, both = keys[n + j], ids[a] is not None and ids[b] is not None
            hit = patterns.known(v)
            if hit is None and patterns.seen_before(v) and both:
                hit = patterns.combine(v, ids[a], ids[b], int(ids[b].max()) + 1)
            ids[n + j], reps = hit if hit is not None else (None, patterns.sites)
            self._parts.append((reps, ids[a], ids[b]))
        self.nodes = np.array([n + j for j in order])
        self.child_steps = np.array([[step.get(c, -1 - c) for c in rows[j]] for j in order])
        self.sizes = np.array([reps.size for reps, _, _ in self._parts])
        self.complete = all(i is not None for i in ids.values())
        self._columns = None

    @property
    def nbytes(self) -> int:
        """Bytes held once used, for the cache's bound: its step arrays, its columns and its
        index row (two int64 entries per column each; counted before they are built, since
        the cache measures a layout when it keeps it)."""
        arrays = self.nodes.nbytes + self.child_steps.nbytes + self.sizes.nbytes
        return arrays + 2 * 16 * int(self.sizes.sum())

    def row(self, layout: Layout, leaf_end: int, leaf_width: int, cache) -> np.ndarray:
        """This tree's index row in `layout` (`_assemble` for a batch of one), kept."""
        if getattr(self, "_row_version", None) != layout.version:
            spans = sum(count * w for _, count, w in layout.waves)
            out = np.empty(2 * spans, dtype=np.int64)
            self._row = _assemble([self], layout.waves, layout.widths, leaf_end, leaf_width, out,
                                  cache)  # fmt: skip
            self._row_version = layout.version
        return self._row

    @property
    def columns(self) -> np.ndarray:
        if self._columns is None:  # built on first use: a batch may not use the layout
            steps = [[reps if i is None else i[reps] for i in (ids_a, ids_b)]
                     for reps, ids_a, ids_b in self._parts]  # fmt: skip
            self._columns = np.concatenate([np.stack(x) for x in steps], axis=1)
            del self._parts
        return self._columns


def _assemble(trees, waves, widths, leaf_end: int, leaf_width: int, out: np.ndarray, cache):
    """Both children's buffer columns at every step of every tree, into `out`: wave after
    wave, tree after tree within a wave, the first children's columns then the second's;
    a step's columns are padded to its width with its child's first column."""
    n_batch = len(trees)
    sizes = np.stack([t.sizes for t in trees])
    child = np.stack([t.child_steps for t in trees]).transpose(2, 0, 1)  # (2, N, steps)
    starts = np.concatenate([[0], np.cumsum(widths)[:-1]])  # each step's first column
    offsets = leaf_end + starts
    # every child's first buffer column: its leaf block, or the block of its step
    base = np.where(child >= 0, offsets[np.maximum(child, 0)], (-1 - child) * leaf_width)
    wave_of = np.repeat(np.arange(len(waves)), [count for _, count, _ in waves])
    spans = np.array([count * w for _, count, w in waves])
    wave_starts = np.concatenate([[0], np.cumsum(spans)[:-1]])
    within = starts - starts[[waves[w][0] for w in wave_of]]  # step's place in its wave
    tree_side = np.arange(n_batch)[:, None] * 2 + np.arange(2)[:, None, None]  # (2, N, 1)
    head = n_batch * 2 * wave_starts[wave_of] + tree_side * spans[wave_of] + within
    order = np.argsort(head.ravel(), kind="stable")
    # padding columns repeat the child's first column; real ones add the split's columns
    index = _repeat(base.ravel()[order], np.broadcast_to(widths, base.shape).ravel()[order],
                    0, out)  # fmt: skip
    k = sizes.ravel()
    ends = np.cumsum(k)
    # each split column's place in `index`: its segment's head plus its rank in it
    shift = head.reshape(2, -1) - ends + k
    shift[1] -= ends[-1]  # one run over both sides: positions go on past the first
    columns = _repeat(shift.ravel(), np.tile(k, 2), 1, cache.scratch("plan columns", 2 * ends[-1]))
    split_columns = cache.scratch("plan split columns", 2 * ends[-1]).reshape(2, -1)
    np.concatenate([t.columns for t in trees], 1, out=split_columns)
    # (torch: numpy's fancy `+=` is ten times slower)
    torch.from_numpy(index).index_add_(0, torch.from_numpy(columns),
                                       torch.from_numpy(split_columns).flatten())  # fmt: skip
    return index


class Layout:
    """An alignment's step widths and waves, shared by every batch of compressed trees so
    that each tree's index rows are computed once (`TreeLayout.row`): the widths are the
    running maximum over the trees met, and the waves respect every tree's dependencies."""

    def __init__(self, widths: np.ndarray, last_child: np.ndarray, version: int) -> None:
        self.step_max, self.last_child, self.version = widths, last_child, version
        self.waves = _waves(widths.tolist(), last_child.tolist())
        self.widths = np.array([w for _, count, w in self.waves for _ in range(count)])

    def holds(self, widths: np.ndarray, last_child: np.ndarray) -> bool:
        return bool((widths <= self.step_max).all() and (last_child <= self.last_child).all())


class BatchPlan:
    r"""Distinct clade patterns of a batch of `N` different topologies, laid out for one
    pass over all of them (`reuse`: the index arrays may live in scratch memory that the
    next plan overwrites, for a pass that keeps nothing for a backward pass).

    Each tree's internal nodes are visited in order of clade size (children before parents,
    so a valid postorder), and step `r` handles the `r`-th smallest clade of every tree
    at once: clades of equal size have similar numbers of distinct columns, so padding each
    step to its widest tree wastes little (ten DS1 credible-set trees: 6334 padded columns
    for 5584 real ones, against 24284 without repeats). The last two steps are node `2n-3`
    (identity matrix above it) and the root in every tree. Consecutive steps that do not
    depend on each other form a wave, run as one (`_waves`; DS1: 26 steps in 12 waves). When
    every tree of the batch is compressed, widths and waves are the alignment's `Layout` (the
    running maximum over the trees met), so each tree's index row is computed once and a new
    batch only stacks rows; otherwise they are the batch's own.

    Messages live in one buffer `(N, C, 4, width)`: leaf `c` at columns
    `c*KL … c*KL+K_c`, then each wave's steps, side by side, each `width` columns wide.
    Padded columns point at a valid column, so they hold finite values that no parent reads,
    and in the backward pass they receive no gradient (`backward_batched_repeats`).

    Attributes:
        examined: whether the batch was looked at (`models.phylo.probes.ProbeSchedule`).
        worthwhile: whether it was, and the padded columns are at most `cache.worthwhile`
            (60%) of `(n-1) * P`
            (measured on DS1: above that, the set-up costs more than the repeats save); if
            not, the attributes below are not set.
        waves: `(first step, count, width)` of each wave.
        index: per wave, `(N, 1, 1, 2 * count * width)` buffer columns of the first
            children, then of the second.
        starts: per wave, its first buffer column.
        trans_index: `((steps - 1) * N,)` rows `node * N + tree` of node-major transition
            matrices, every step but the root's (which has no edge above it).
        width: buffer columns.
        steps: `n - 1`, one per internal node.
        tip_columns: `(n, 4, KL)` distinct tip columns, zero-padded.
        root_ids: `(P,)` root column of every site pattern (the same for every tree).
    """

    def __init__(self, cache, children: Tensor, reuse: bool = False) -> None:
        patterns = cache.patterns
        n, device, n_batch = patterns.n, cache.tips.device, children.shape[0]
        leaf_width, steps = patterns.leaf_width, n - 1
        self.examined, self.worthwhile = cache.probes.should_try(), False
        if not self.examined:
            return
        # a probe after batches that did not pay first bounds the width cheaply; while
        # batches pay, their layouts are kept and the bound would only add its cost
        if not cache.probes.paying and not may_pay(cache, children.cpu().numpy()):
            cache.probes.record(False)
            return
        trees = [tree_layout(cache, tree) for tree in children.cpu().numpy()]
        sizes = np.stack([t.sizes for t in trees])  # (N, steps); numpy: ~1 µs an op, not ~5
        last_child = np.stack([t.child_steps for t in trees]).max((0, 2))
        layout = None
        if all(t.complete for t in trees):  # the alignment's layout, each tree's rows kept
            layout = fit_layout(patterns, sizes.max(0), last_child)
            self.waves = layout.waves
        else:
            self.waves = _waves(sizes.max(0).tolist(), last_child.tolist())
        widths = np.array([w for _, count, w in self.waves for _ in range(count)])
        # few repeats (new random topologies): the plain pass over every pattern is cheaper
        self.worthwhile = widths.sum() <= cache.worthwhile * steps * patterns.n_patterns
        cache.probes.record(self.worthwhile)
        if not self.worthwhile:
            return
        offsets = n * leaf_width + np.concatenate([[0], np.cumsum(widths)[:-1]])
        spans = np.array([count * w for _, count, w in self.waves])
        total = n_batch * 2 * int(spans.sum())
        out = cache.scratch("plan index", total) if reuse else np.empty(total, dtype=np.int64)
        if layout is None:
            index = _assemble(trees, self.waves, widths, n * leaf_width, leaf_width, out, cache)
        else:  # stack the trees' rows, wave by wave
            rows = cache.scratch("plan rows", total).reshape(n_batch, -1)
            np.stack([t.row(layout, n * leaf_width, leaf_width, cache) for t in trees], out=rows)
            index, edges = out, np.concatenate([[0], np.cumsum(2 * spans)])
            for lo, hi in itertools.pairwise(edges):
                index[n_batch * lo : n_batch * hi].reshape(n_batch, -1)[:] = rows[:, lo:hi]
        cuts = np.concatenate([[0], np.cumsum(n_batch * 2 * spans)])
        blocks = [index[lo:hi] for lo, hi in itertools.pairwise(cuts)]
        nodes = np.stack([t.nodes for t in trees])[:, : steps - 1].T * n_batch
        blocks.append((nodes + np.arange(n_batch)).ravel())
        if device.type == "cpu":  # no concatenation, no fresh memory
            *index, self.trans_index = map(torch.from_numpy, blocks)
        else:  # one host-to-device copy
            flat = torch.from_numpy(np.concatenate(blocks)).to(device)
            *index, self.trans_index = flat.split([b.size for b in blocks])
        self.index = [i.view(n_batch, 1, 1, -1) for i in index]
        self.starts = offsets[[first for first, _, _ in self.waves]].tolist()
        self.width = int(offsets[-1] + widths[-1])
        self.tip_columns = patterns.tip_columns.to(device)
        self.root_ids = patterns.root_ids(device)
        self.n, self.steps, self.leaf_width = n, steps, leaf_width


def _plan_nbytes(plan: BatchPlan) -> int:
    """Bytes of the index tensors a kept `BatchPlan` owns (tips and root ids are shared)."""
    return sum(t.numel() * t.element_size() for t in [*plan.index, plan.trans_index]) + 64


def batch_plan_for(cache, children: Tensor, keep: bool) -> BatchPlan:
    """The `BatchPlan` of topologies `(N, n-1, 2)`: kept once the same batch comes a second
    time (a fixed set of topologies evaluated at every step), else built in scratch memory
    unless `keep` (a backward pass will read it)."""
    plans, table = cache.tables["plans"], children.cpu().numpy().tobytes()
    plan = plans.get(("batch", table))
    if plan is not None:
        return plan
    if ("seen", table) not in plans:
        plans.put(("seen", table), True, len(table))
        return BatchPlan(cache, children, reuse=not keep)
    plan = BatchPlan(cache, children)
    if plan.worthwhile:
        plans.put(("batch", table), plan, _plan_nbytes(plan))
    return plan


def tree_layout(cache, rows: np.ndarray) -> TreeLayout:
    """The `TreeLayout` of one topology `(n-1, 2)`, kept once every clade in it is
    compressed (until then, each sighting may compress more)."""
    trees, key = cache.tables["trees"], rows.tobytes()
    hit = trees.get(key)
    if hit is not None:
        return hit
    layout = TreeLayout(cache.patterns, rows.tolist())
    if layout.complete:
        trees.put(key, layout)
    return layout


def fit_layout(patterns, widths: np.ndarray, last_child: np.ndarray) -> Layout:
    """The alignment's `Layout`, widened (a new version) if a batch's step widths or
    dependencies do not fit it."""
    old = patterns.layout
    if old is None or not old.holds(widths, last_child):
        if old is not None:
            widths = np.maximum(widths, old.step_max)
            last_child = np.maximum(last_child, old.last_child)
        patterns.layout = Layout(widths, last_child, 0 if old is None else old.version + 1)
    return patterns.layout
