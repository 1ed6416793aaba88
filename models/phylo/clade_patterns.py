r"""Distinct clade patterns: which site columns a node's partial likelihood can tell apart.

A node's partial likelihood at a site depends only on the tip columns of its clade there, so
sites whose clade columns agree share one partial (subtree site repeats; Kobert, Stamatakis &
Flouri 2017). For a clade :math:`v` with :math:`K_v` distinct columns we keep

* ``ids_v`` ``(P,)``: the distinct column of every site pattern, numbered in order of first
  occurrence (a canonical order, so it depends on the clade alone, not on how the subtree
  below it is resolved), and
* ``reps_v`` ``(K_v,)``: the first site of each distinct column.

For a node :math:`v = a \cup b` of a tree, ``x = (ids_a[reps_v], ids_b[reps_v])`` are the
children's columns that each column of :math:`v` is built from, so that
:math:`L_v = (P_a L_a)[\,\cdot, x_0] \odot (P_b L_b)[\,\cdot, x_1]`. ``ids_v`` comes from
``ids_a * K_b + ids_b`` with one `numpy.unique` (the pair of child columns identifies the
parent's column). The table is cached per alignment (`patterns_for`) and keyed by clades
(bitmasks as Python ints, so any number of taxa), so the topologies a variational guide
samples over and over, which share most of their clades, cost a dictionary lookup per node.
A clade is computed on its second sighting; a node whose clade is not kept uses one column per
site (``ids`` the identity), which needs no set-up. Written by hand: no library keeps
clade-indexed site repeats.

`RepeatPlan` lays this out for one topology (`models.phylo.repeats.forward_repeats`);
`BatchPlan` for a batch of different topologies (`forward_batched_repeats`).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from varinf.distributions.trees import clade_keys

from .workspace import workspace

_CACHE_BYTES = 1 << 27  # per alignment and table: clades, tree layouts (128 MiB each)
_WORTHWHILE = 0.6  # largest share of all site columns for which repeats pay for their setup
_PROBE_FIRST, _PROBE_LAST = 8, 64
_ALIGNMENTS: list = []  # (copy of tips, tips, its version, CladePatterns), most recent last
_ALIGNMENTS_KEPT = 4


def _first_occurrence(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, reps)``: ``keys`` numbered by first occurrence (`pandas.factorize`, a hash
    table, no sort) and the position of each distinct key's first occurrence."""
    ids, _ = pd.factorize(keys)
    # ids first appear in increasing order: a first occurrence tops every id before it
    seen = np.maximum.accumulate(np.concatenate([[-1], ids[:-1]]))
    return ids, np.flatnonzero(ids > seen)


def _distinct_columns(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, reps)`` of the distinct rows of ``rows`` ``(P, d)`` (columns of a block)."""
    _, inverse = np.unique(rows, axis=0, return_inverse=True)
    return _first_occurrence(inverse.reshape(-1))


class CladePatterns:
    """Distinct-column tables of one alignment's clades (see the module docstring).

    Args:
        tips: ``(n, 4, P)`` tip partials.
    """

    def __init__(self, tips: Tensor) -> None:
        block = tips.detach().cpu().numpy()
        self.n, self.n_patterns = block.shape[0], block.shape[-1]
        self.sites = np.arange(self.n_patterns)
        self._leaves = [_distinct_columns(column.T) for column in block]  # (ids, reps) each
        self.leaf_width = max(reps.size for _, reps in self._leaves)
        cols = np.zeros((self.n, 4, self.leaf_width), dtype=block.dtype)
        for c, (_, reps) in enumerate(self._leaves):
            cols[c, :, : reps.size] = block[c][:, reps]
        self.tip_columns = torch.from_numpy(cols).to(tips.device)  # zero-padded (n, 4, KL)
        # each cache within _CACHE_BYTES: a clade's ids are P int64, a tree's columns and
        # index row at most 2(n-1)P each
        self._max_entries = max(256, _CACHE_BYTES // (8 * self.n_patterns))
        self._max_trees = max(16, _CACHE_BYTES // (32 * (self.n - 1) * self.n_patterns))
        self._clades: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._seen: OrderedDict[int, None] = OrderedDict()  # clades met once, not yet kept
        self._trees: OrderedDict[bytes, TreeLayout] = OrderedDict()
        self.root_key = (1 << self.n) - 1
        self._root_columns = _distinct_columns(block.reshape(-1, self.n_patterns).T)
        # plans of one topology, and of batches met twice (keys: ("tree"|"batch", bytes))
        self.plans: OrderedDict[tuple[str, bytes], RepeatPlan | BatchPlan] = OrderedDict()
        self.batches_seen: OrderedDict[bytes, None] = OrderedDict()
        self._layout: Layout | None = None
        # whether the last batch examined used repeats; if not, when and how far apart to look
        self._paying, self._batches, self._next, self._interval = True, 0, 0, _PROBE_FIRST
        self._root: Tensor | None = None

    def known(self, key: int) -> tuple[np.ndarray, np.ndarray] | None:
        """``(ids (P,), reps (K,))`` of the clade whose taxa are the set bits of ``key``, if
        it is a leaf or kept; ``reps`` are the first sites of its distinct columns."""
        if key & (key - 1) == 0:  # a single taxon
            return self._leaves[key.bit_length() - 1]
        if key == self.root_key:  # every tree has it: kept apart, never evicted
            return self._root_columns
        hit = self._clades.get(key)
        if hit is not None:
            self._clades.move_to_end(key)
        return hit

    def seen_before(self, key: int) -> bool:
        """Whether clade ``key`` was asked about before (it is remembered from now on)."""
        if key in self._seen:
            return True
        self._remember(self._seen, key, None, 4 * self._max_entries)
        return False

    def combine(self, key: int, ids_a: np.ndarray, ids_b: np.ndarray, k_b: int):
        """The kept ``(ids, reps)`` of clade ``key``, the union of two disjoint clades with
        distinct-column ids ``ids_a`` and ``ids_b`` (``k_b`` distinct): the pair of child
        columns identifies the parent's column."""
        if key == self.root_key:
            return self._root_columns
        value = _first_occurrence(ids_a * k_b + ids_b)
        return self._remember(self._clades, key, value, self._max_entries)

    def fit_layout(self, widths: np.ndarray, last_child: np.ndarray) -> Layout:
        """The alignment's `Layout`, widened (a new version) if a batch's step widths or
        dependencies do not fit it."""
        if self._layout is None or not self._layout.holds(widths, last_child):
            if self._layout is not None:
                widths = np.maximum(widths, self._layout.step_max)
                last_child = np.maximum(last_child, self._layout.last_child)
            version = 0 if self._layout is None else self._layout.version + 1
            self._layout = Layout(widths, last_child, version)
        return self._layout

    def should_try(self) -> bool:
        """Whether a batch of topologies should look for repeats: always while they pay,
        else at probes spaced 8, 16, 32 then 64 batches apart (new random topologies share
        few clades, and looking costs ~0.1 ms a tree; the probes learn the clades that
        recur, and a probe that pays makes every batch look again)."""
        self._batches += 1
        return self._paying or self._batches >= self._next

    def record(self, paying: bool) -> None:
        """The outcome of a batch that looked."""
        self._paying = paying
        if paying:
            self._interval = _PROBE_FIRST
        else:
            self._next = self._batches + self._interval
            self._interval = min(2 * self._interval, _PROBE_LAST)

    def tree(self, rows: np.ndarray) -> TreeLayout:
        """The `TreeLayout` of one topology ``(n-1, 2)``, kept once every clade in it is
        compressed (until then, each sighting may compress more)."""
        key = rows.tobytes()
        hit = self._trees.get(key)
        if hit is not None:
            self._trees.move_to_end(key)
            return hit
        layout = TreeLayout(self, rows.tolist())
        if layout.complete:
            self._remember(self._trees, key, layout, self._max_trees)
        return layout

    def root_ids(self, device: torch.device) -> Tensor:
        """``(P,)``: the root's (all taxa) distinct column of every site pattern."""
        if self._root is None or self._root.device != device:
            self._root = torch.from_numpy(self._root_columns[0]).to(device)
        return self._root

    @staticmethod
    def _remember(table: OrderedDict, key, value, limit: int):
        table[key] = value
        if len(table) > limit:
            table.popitem(last=False)
        return value


def patterns_for(tips: Tensor) -> CladePatterns:
    """The `CladePatterns` of ``tips`` ``(n, 4, P)``, cached by content (a model evaluates the
    same alignment at every step); the same unmodified tensor is recognised without comparing
    its values."""
    for i, (copy, source, version, patterns) in enumerate(_ALIGNMENTS):
        same = source is tips and tips._version == version
        if same or (copy.shape == tips.shape and copy.dtype == tips.dtype
                    and copy.device == tips.device and torch.equal(copy, tips)):  # fmt: skip
            _ALIGNMENTS.append(_ALIGNMENTS.pop(i))
            return patterns
    patterns = CladePatterns(tips)
    _ALIGNMENTS.append((tips.detach().clone(), tips, tips._version, patterns))
    del _ALIGNMENTS[:-_ALIGNMENTS_KEPT]
    return patterns


class RepeatPlan:
    """Distinct clade patterns of one topology, row by row (every clade computed and kept:
    one topology evaluated many times).

    Attributes:
        tips: per leaf, its distinct tip columns ``(4, K_c)``.
        index: per row ``j``, the child columns ``(i_a, i_b)`` of node ``n+j``'s patterns,
            ``None`` where the gather would be the identity.
        sizes: :math:`K_v` per node.
        root_ids: ``(P,)`` distinct root pattern of every site pattern.
        leaf_cols: per row, each leaf child's tip columns at the row's patterns (else ``None``).
    """

    def __init__(self, tips: Tensor, rows: list[list[int]]) -> None:
        patterns = patterns_for(tips)
        n, device = patterns.n, tips.device
        keys = clade_keys(n, rows)
        ids = {c: patterns.known(1 << c)[0] for c in range(n)}
        self.sizes = {c: int(ids[c].max()) + 1 for c in range(n)}
        self.tips = [patterns.tip_columns[c, :, : self.sizes[c]].to(tips) for c in range(n)]
        self.index, self.leaf_cols = [], []
        for j, (a, b) in enumerate(rows):
            hit = patterns.known(keys[n + j])
            if hit is None:
                hit = patterns.combine(keys[n + j], ids[a], ids[b], self.sizes[b])
            ids[n + j], reps = hit
            x = torch.from_numpy(np.stack([ids[a][reps], ids[b][reps]])).to(device)
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


_INT64 = torch.empty(0, dtype=torch.long)


def _scratch(name: str, size: int) -> np.ndarray:
    """A reused int64 array: the plan's arrays are megabytes, and fresh ones cost more in
    page faults than the arithmetic that fills them (on a virtual machine, ~0.5 ms a MB)."""
    return workspace(name, (int(size),), _INT64).numpy()


def _repeat(values: np.ndarray, counts: np.ndarray, step: int, out: np.ndarray) -> np.ndarray:
    """``np.repeat(values, counts) + step * (position in out)`` for positive ``counts``,
    written into ``out`` as the cumulative sum of its jumps (np.repeat has no ``out``)."""
    out[:] = step
    out[np.cumsum(counts)[:-1]] = np.diff(values) + step
    out[0] = values[0]
    return np.cumsum(out, out=out)


def _waves(widths: list[int], last_child: list[int]) -> list[tuple[int, int, int]]:
    """Group steps into waves ``(first step, count, padded width)`` of consecutive steps that
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
    per site pattern (``ids`` the identity), which costs nothing to set up. The root is
    always compressed.

    Attributes:
        nodes: ``(n-1,)`` node of each step.
        sizes: ``(n-1,)`` columns :math:`K` of each step's node.
        child_steps: ``(n-1, 2)`` step of each child, or ``-1-c`` for leaf ``c``.
        columns: ``(2, sum K)`` per step, the children's columns behind each of its columns
            (built when first asked for).
        complete: whether every clade is compressed.
    """

    def __init__(self, patterns: CladePatterns, rows: list[list[int]]) -> None:
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

    def row(self, layout: Layout, leaf_end: int, leaf_width: int) -> np.ndarray:
        """This tree's index row in ``layout`` (`_assemble` for a batch of one), kept."""
        if getattr(self, "_row_version", None) != layout.version:
            spans = sum(count * w for _, count, w in layout.waves)
            out = np.empty(2 * spans, dtype=np.int64)
            self._row = _assemble([self], layout.waves, layout.widths, leaf_end, leaf_width, out)
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


_PLANS_KEPT = 4  # per alignment and kind


def plan_for(tips: Tensor, rows: list[list[int]]) -> RepeatPlan:
    """The `RepeatPlan` of ``tips`` and a topology's rows, kept (a model with a fixed
    topology evaluates the same plan at every step)."""
    patterns = patterns_for(tips)
    key = ("tree", np.asarray(rows).tobytes())
    plan = patterns.plans.get(key)
    if plan is None:
        plan = patterns._remember(patterns.plans, key, RepeatPlan(tips, rows), 2 * _PLANS_KEPT)
    patterns.plans.move_to_end(key)
    return plan


def _assemble(trees, waves, widths, leaf_end: int, leaf_width: int, out: np.ndarray):
    """Both children's buffer columns at every step of every tree, into ``out``: wave after
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
    # each split column's place in ``index``: its segment's head plus its rank in it
    shift = head.reshape(2, -1) - ends + k
    shift[1] -= ends[-1]  # one run over both sides: positions go on past the first
    columns = _repeat(shift.ravel(), np.tile(k, 2), 1, _scratch("plan columns", 2 * ends[-1]))
    split_columns = _scratch("plan split columns", 2 * ends[-1]).reshape(2, -1)
    np.concatenate([t.columns for t in trees], 1, out=split_columns)
    # (torch: numpy's fancy ``+=`` is ten times slower)
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
    r"""Distinct clade patterns of a batch of ``N`` different topologies, laid out for one
    pass over all of them (``reuse``: the index arrays may live in scratch memory that the
    next plan overwrites, for a pass that keeps nothing for a backward pass).

    Each tree's internal nodes are visited in order of clade size (children before parents,
    so a valid postorder), and step ``r`` handles the ``r``-th smallest clade of every tree
    at once: clades of equal size have similar numbers of distinct columns, so padding each
    step to its widest tree wastes little (ten DS1 credible-set trees: 6334 padded columns
    for 5584 real ones, against 24284 without repeats). The last two steps are node ``2n-3``
    (identity matrix above it) and the root in every tree. Consecutive steps that do not
    depend on each other form a wave, run as one (`_waves`; DS1: 26 steps in 12 waves). When
    every tree of the batch is compressed, widths and waves are the alignment's `Layout` (the
    running maximum over the trees met), so each tree's index row is computed once and a new
    batch only stacks rows; otherwise they are the batch's own.

    Messages live in one buffer ``(N, C, 4, width)``: leaf ``c`` at columns
    ``c*KL … c*KL+K_c``, then each wave's steps, side by side, each ``width`` columns wide.
    Padded columns point at a valid column, so they hold finite values that no parent reads,
    and in the backward pass they receive no gradient (`backward_batched_repeats`).

    Attributes:
        examined: whether the batch was looked at (`CladePatterns.should_try`).
        worthwhile: whether it was, and the padded columns are at most 60% of ``(n-1) * P``
            (measured on DS1: above that, the set-up costs more than the repeats save); if
            not, the attributes below are not set.
        waves: ``(first step, count, width)`` of each wave.
        index: per wave, ``(N, 1, 1, 2 * count * width)`` buffer columns of the first
            children, then of the second.
        starts: per wave, its first buffer column.
        trans_index: ``((steps - 1) * N,)`` rows ``node * N + tree`` of node-major transition
            matrices, every step but the root's (which has no edge above it).
        width: buffer columns.
        steps: ``n - 1``, one per internal node.
        tip_columns: ``(n, 4, KL)`` distinct tip columns, zero-padded.
        root_ids: ``(P,)`` root column of every site pattern (the same for every tree).
    """

    def __init__(self, tips: Tensor, children: Tensor, reuse: bool = False) -> None:
        patterns = patterns_for(tips)
        n, device, n_batch = patterns.n, tips.device, children.shape[0]
        leaf_width, steps = patterns.leaf_width, n - 1
        self.examined, self.worthwhile = patterns.should_try(), False
        if not self.examined:
            return
        trees = [patterns.tree(tree) for tree in children.cpu().numpy()]
        sizes = np.stack([t.sizes for t in trees])  # (N, steps); numpy: ~1 µs an op, not ~5
        last_child = np.stack([t.child_steps for t in trees]).max((0, 2))
        layout = None
        if all(t.complete for t in trees):  # the alignment's layout, each tree's rows kept
            layout = patterns.fit_layout(sizes.max(0), last_child)
            self.waves = layout.waves
        else:
            self.waves = _waves(sizes.max(0).tolist(), last_child.tolist())
        widths = np.array([w for _, count, w in self.waves for _ in range(count)])
        # few repeats (new random topologies): the plain pass over every pattern is cheaper
        self.worthwhile = widths.sum() <= _WORTHWHILE * steps * patterns.n_patterns
        patterns.record(self.worthwhile)
        if not self.worthwhile:
            return
        offsets = n * leaf_width + np.concatenate([[0], np.cumsum(widths)[:-1]])
        spans = np.array([count * w for _, count, w in self.waves])
        total = n_batch * 2 * int(spans.sum())
        out = _scratch("plan index", total) if reuse else np.empty(total, dtype=np.int64)
        if layout is None:
            index = _assemble(trees, self.waves, widths, n * leaf_width, leaf_width, out)
        else:  # stack the trees' rows, wave by wave
            rows = _scratch("plan rows", total).reshape(n_batch, -1)
            np.stack([t.row(layout, n * leaf_width, leaf_width) for t in trees], out=rows)
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


def batch_plan_for(tips: Tensor, children: Tensor, keep: bool) -> BatchPlan:
    """The `BatchPlan` of ``tips`` and topologies ``(N, n-1, 2)``: kept once the same batch
    comes a second time (a fixed set of topologies evaluated at every step), else built in
    scratch memory unless ``keep`` (a backward pass will read it)."""
    patterns, table = patterns_for(tips), children.cpu().numpy().tobytes()
    key = ("batch", table)
    plan = patterns.plans.get(key)
    if plan is not None:
        patterns.plans.move_to_end(key)
        return plan
    if table not in patterns.batches_seen:
        patterns._remember(patterns.batches_seen, table, None, 4 * _PLANS_KEPT)
        return BatchPlan(tips, children, reuse=not keep)
    plan = BatchPlan(tips, children)
    if plan.worthwhile:
        patterns._remember(patterns.plans, key, plan, 2 * _PLANS_KEPT)
    return plan
