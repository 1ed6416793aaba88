r"""When a batch of topologies looks for clade repeats: `ProbeSchedule` and `may_pay`.

Building a `models.phylo.batch_layout.BatchPlan` costs about a millisecond a tree (a
`pandas.factorize` per clade met twice, index arrays), and it pays only when the batch's
clades recur. New random topologies share few clades, so while batches do not pay only
probes spaced ever further apart look again (`ProbeSchedule`), and a probe first asks
`may_pay`: a lower bound on the batch's padded width from one dictionary lookup per clade.
When even the bound exceeds `LikelihoodCache.worthwhile` of all site columns the plan is not
built; the probe only remembers the batch's clades as seen, so that the next probe can
compress the ones that come back (a clade is compressed on its second sighting).
"""

from __future__ import annotations

import numpy as np

from varinf.distributions.trees import clade_keys

__all__ = ["ProbeSchedule", "may_pay"]


class ProbeSchedule:
    """Whether a batch of topologies should look for repeats: always while they pay, else at
    probes spaced `cache.probe_first` (8), twice that, ... up to `cache.probe_last` (64)
    batches apart (the probes learn the clades that recur, and a probe that pays makes every
    batch look again)."""

    def __init__(self, cache) -> None:
        self.cache, self.paying, self.batches, self.next = cache, True, 0, 0
        self.interval = cache.probe_first

    def should_try(self) -> bool:
        self.batches += 1
        return self.paying or self.batches >= self.next

    def record(self, paying: bool) -> None:
        """The outcome of a batch that looked."""
        self.paying = paying
        if paying:
            self.interval = self.cache.probe_first
        else:
            self.next = self.batches + self.interval
            self.interval = min(2 * self.interval, self.cache.probe_last)


def may_pay(cache, batch: np.ndarray) -> bool:
    r"""Whether topologies `(N, n-1, 2)` could be worth a `BatchPlan`; if not, their clades
    are marked as seen.

    The plan's step $r$ is the $r$-th smallest clade of every tree, padded to the widest,
    so $\sum_r \max_t K_{t,r}$ bounds its columns from below, with $K$ a kept clade's
    distinct columns, at least $\max(K_a, K_b)$ for a clade seen before (its children's
    columns are functions of its own) and $P$ for a new one (a plan keeps its sites)."""
    patterns = cache.patterns
    n, n_pat = patterns.n, patterns.n_patterns
    widths, new = np.zeros(n - 1, dtype=np.int64), []
    for rows in batch.tolist():
        keys = clade_keys(n, rows)
        size = [patterns.known(1 << c)[1].size for c in range(n)] + [0] * (n - 1)
        for j, (a, b) in enumerate(rows):
            hit = patterns.known(keys[n + j])
            if hit is not None:
                size[n + j] = hit[1].size
            elif patterns.seen(keys[n + j]):
                size[n + j] = max(size[a], size[b])
            else:
                size[n + j] = n_pat
                new.append(keys[n + j])
        order = sorted(range(n - 1), key=lambda j: keys[n + j].bit_count())  # as TreeLayout
        np.maximum(widths, [size[n + j] for j in order], out=widths)
    if widths.sum() <= cache.worthwhile * (n - 1) * n_pat:
        return True
    for key in new:
        patterns.seen_before(key)
    return False
