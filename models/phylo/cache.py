r"""What the likelihood keeps between calls on one alignment: `LikelihoodCache`.

A model evaluates the same alignment thousands of times, on the same topology or on
topologies that share most of their clades. Everything worth keeping between those calls
lives in one `LikelihoodCache` per alignment (`phylo_model` and `Alignment.likelihood_cache`
make one; `pruning_log_likelihood(..., cache=)` takes one), bounded in bytes, clearable, and
passed down to the kernels explicitly (no module-level state):

| kept | what for | bound |
| --- | --- | --- |
| clade tables (`models.phylo.clade_table`) | distinct site columns of each clade | bytes |
| one-topology plans (`models.phylo.tree_plan`) | a topology evaluated at every step | bytes |
| tree layouts, batch plans (`models.phylo.batch_layout`) | batches of topologies | bytes |
| scratch buffers | kernels' working memory (fresh pages cost more than the arithmetic) | size |
| `unscaled_underflows` | the unscaled pass underflowed once: skip it from then on | a flag |

The tables split one byte budget (`max_bytes`, 256 MiB by default), each an `LRU`; scratch
buffers are sized by the largest call and freed by `clear`.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

__all__ = ["LRU", "LikelihoodCache"]


def nbytes(value) -> int:
    """Approximate bytes held by a cached value: arrays and tensors, or what it reports."""
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, tuple | list):
        return sum(nbytes(v) for v in value) + 64
    size = getattr(value, "nbytes", None)
    return int(size) if size is not None else 64


class LRU:
    """A least-recently-used table bounded by the bytes of its values.

    Args:
        max_bytes: evict the least recently used entries beyond this many bytes.

    Examples:
        >>> table = LRU(max_bytes=100)
        >>> table.put("a", np.zeros(10))  # 80 bytes
        >>> table.put("b", np.zeros(5))  # 40 more: "a" goes
        >>> "a" in table, table.get("b").size, table.nbytes
        (False, 5, 40)
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self._table: OrderedDict = OrderedDict()

    def __contains__(self, key) -> bool:
        return key in self._table

    def __len__(self) -> int:
        return len(self._table)

    def get(self, key, default=None):
        """The value of ``key`` (now the most recently used), or ``default``."""
        hit = self._table.get(key)
        if hit is None:
            return default
        self._table.move_to_end(key)
        return hit[0]

    def put(self, key, value, size: int | None = None) -> None:
        """Keep ``value`` under ``key`` (``size`` bytes, measured if omitted)."""
        size = nbytes(value) if size is None else size
        old = self._table.pop(key, None)
        if old is not None:
            self.nbytes -= old[1]
        self._table[key] = (value, size)
        self.nbytes += size
        while self.nbytes > self.max_bytes and len(self._table) > 1:
            _, (_, dropped) = self._table.popitem(last=False)
            self.nbytes -= dropped

    def get_or_make(self, key, make: Callable[[], object]):
        """The value of ``key``, made and kept on a miss."""
        value = self.get(key)
        if value is None:
            value = make()
            self.put(key, value)
        return value

    def clear(self) -> None:
        self._table.clear()
        self.nbytes = 0


class LikelihoodCache:
    """Everything kept between likelihood calls on one alignment (module docstring).

    Args:
        tips: `(n, 4, P)` tip partials of the alignment (its dtype and device are the
            cache's).
        max_bytes: bound on the bytes of all kept tables together.

    Attributes:
        tips: the tip partials this cache belongs to.
        tables: the `LRU` tables (``"clades"``, ``"seen"``, ``"trees"``, ``"plans"``), whose
            byte bounds add up to ``max_bytes``.
        unscaled_underflows: whether the unscaled pass underflowed on this alignment (then
            only rescaled passes run, as torchtree does).
        worthwhile: largest share of all site columns for which a batch's clade repeats pay
            for their set-up (measured on DS1).
        probe_first, probe_last: while batches do not pay, look again only at probes this
            many batches apart, doubling from the first to the last.

    Examples:
        >>> tips = torch.ones(3, 4, 5, dtype=torch.float64)
        >>> cache = LikelihoodCache(tips, max_bytes=1 << 20)
        >>> cache.workspace("x", (2, 3), tips).shape, cache.nbytes > 0
        (torch.Size([2, 3]), True)
        >>> cache.clear(); cache.nbytes
        0
    """

    def __init__(self, tips: Tensor, max_bytes: int = 1 << 28) -> None:
        if tips.dim() != 3 or tips.shape[1] != 4:
            raise ValueError(f"tips must have shape (n, 4, P), got {tuple(tips.shape)}")
        self.tips = tips
        self.max_bytes = int(max_bytes)
        self.worthwhile, self.probe_first, self.probe_last = 0.6, 8, 64
        budget = self.max_bytes // 16  # shares of the budget, in sixteenths
        self.tables = {"clades": LRU(8 * budget), "seen": LRU(budget), "trees": LRU(4 * budget),
                       "plans": LRU(3 * budget)}  # fmt: skip
        self._storage: dict[tuple, Tensor] = {}
        self._views: dict[str, tuple] = {}  # views of workspaces (`workspace_views`)
        self._patterns = None
        self.unscaled_underflows = False

    @property
    def patterns(self):
        """The alignment's `models.phylo.clade_table.CladePatterns` (built on first use)."""
        if self._patterns is None:
            from .clade_table import CladePatterns
            from .probes import ProbeSchedule

            self._patterns = CladePatterns(self.tips, self)
            self.probes = ProbeSchedule(self)
        return self._patterns

    def check(self, tips: Tensor) -> None:
        """Refuse tips of another alignment (a cache belongs to one)."""
        if tips is not self.tips and tips.shape != self.tips.shape:
            raise ValueError(
                f"this LikelihoodCache belongs to tips of shape {tuple(self.tips.shape)}, "
                f"got {tuple(tips.shape)}: make one cache per alignment"
            )

    def workspace(self, name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """An uninitialised contiguous tensor of ``shape`` (dtype and device of ``like``),
        on storage kept under ``name``: valid until the next call with the same ``name``."""
        key, size = (name, like.dtype, like.device), math.prod(shape)
        storage = self._storage.get(key)
        if storage is None or storage.numel() < size:
            storage = self._storage[key] = like.new_empty(max(size, 5 * size // 4))
        return storage[:size].view(shape)

    def workspace_views(self, name: str, shape: tuple[int, ...], like: Tensor, owner,
                        make: Callable) -> tuple[Tensor, object]:  # fmt: skip
        """The `workspace` ``name`` and views of it made by ``make(buffer, *owner[1:])``,
        kept while the same ``owner`` (compared by identity, then equality) asks for the
        same storage: views cost a tensor operation each, a call may need dozens."""
        buffer = self.workspace(name, shape, like)
        key, kept = self._views.get(name, (None, None))
        if key is None or key[0] is not owner[0] or key[1:] != (*owner[1:], buffer.data_ptr()):
            kept = make(buffer, *owner[1:])
            self._views[name] = ((*owner, buffer.data_ptr()), kept)
        return buffer, kept

    def scratch(self, name: str, size: int) -> np.ndarray:
        """A reused int64 numpy array of ``size`` (plan arrays; see `workspace`)."""
        return self.workspace(name, (int(size),), _INT64).numpy()

    @property
    def nbytes(self) -> int:
        """Bytes held: the kept tables and the scratch buffers."""
        buffers = sum(s.numel() * s.element_size() for s in self._storage.values())
        # views of buffers counted as if they owned their elements: an upper bound
        buffers += sum(nbytes(kept) for _, kept in self._views.values())
        return sum(t.nbytes for t in self.tables.values()) + buffers

    def clear(self) -> None:
        """Forget everything: tables, plans, buffers and the underflow flag."""
        for table in self.tables.values():
            table.clear()
        self._storage.clear()
        self._views.clear()
        self._patterns = None
        self.unscaled_underflows = False


_INT64 = torch.empty(0, dtype=torch.long)
