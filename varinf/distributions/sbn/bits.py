r"""Clades as packed bitmasks, and the clades around every node of a batch of trees.

A clade (a set of taxa) is stored as ``W = ceil(n / 62)`` int64 *words*, 62 taxa per word
(bit ``i % 62`` of word ``i // 62`` is taxon ``i``), so every bitwise operation is one tensor
operation over a whole batch, for any number of taxa. Trees come in the project's child-table
encoding (``(..., n-1, 2)`` children, leaves ``0 … n-1``, internal nodes in postorder, the root
``2n-2`` with children ``(2n-3, n-1)``; see ``varinf.distributions.trees`` / ``models.phylo``):
read as unrooted, it is the tree hanging from leaf ``n-1``, node ``2n-3`` (the *top*) being
the internal node next to it. Written by hand because no maintained library packs clades into
batched tensors.
"""

from __future__ import annotations

import torch
from torch import Tensor

BITS = 62  # taxa per int64 word (bit 63 unused, so shifts stay arithmetic-safe)


def num_words(n: int) -> int:
    """Words per clade for ``n`` taxa."""
    return (n + BITS - 1) // BITS


def leaf_words(n: int, device=None) -> Tensor:
    """``(n, W)`` words of the single-taxon clades."""
    out = torch.zeros(n, num_words(n), dtype=torch.long, device=device)
    idx = torch.arange(n, device=device)
    out[idx, idx // BITS] = torch.ones(n, dtype=torch.long, device=device) << (idx % BITS)
    return out


def all_words(n: int, device=None) -> Tensor:
    """``(W,)`` words of the clade of all ``n`` taxa."""
    return leaf_words(n, device).sum(0)


def popcount(words: Tensor) -> Tensor:
    """Number of taxa of each clade ``(..., W) -> (...)`` (SWAR bit count)."""
    x = words - ((words >> 1) & 0x5555555555555555)
    x = (x & 0x3333333333333333) + ((x >> 2) & 0x3333333333333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0F
    return ((x * 0x0101010101010101) >> 56).sum(-1)  # top byte < 64: the product stays >= 0


def to_masks(words: Tensor, n: int) -> Tensor:
    """Boolean taxon masks ``(..., W) -> (..., n)``."""
    idx = torch.arange(n, device=words.device)
    return ((words[..., idx // BITS] >> (idx % BITS)) & 1).bool()


def from_masks(masks: Tensor) -> Tensor:
    """Words of boolean taxon masks ``(..., n) -> (..., W)``."""
    n = masks.shape[-1]
    return (masks.long()[..., None, :] * leaf_words(n, masks.device).T).sum(-1)


def contains(words: Tensor, taxon: int) -> Tensor:
    """Whether each clade holds ``taxon``, ``(..., W) -> (...)``."""
    return ((words[..., taxon // BITS] >> (taxon % BITS)) & 1).bool()


def node_words(children: Tensor) -> Tensor:
    """Clade words of every node, ``(..., n-1, 2) -> (..., 2n-1, W)`` (one pass over rows)."""
    n = children.shape[-2] + 1
    batch = children.shape[:-2]
    flat = children.reshape(-1, n - 1, 2)
    num = flat.shape[0]
    words = torch.zeros(num, 2 * n - 1, num_words(n), dtype=torch.long, device=children.device)
    words[:, :n] = leaf_words(n, children.device)
    rows = torch.arange(num, device=children.device)
    for j in range(n - 1):
        words[:, n + j] = words[rows, flat[:, j, 0]] | words[rows, flat[:, j, 1]]
    return words.reshape(*batch, 2 * n - 1, -1)


def parent_and_sibling(children: Tensor) -> tuple[Tensor, Tensor]:
    """Parent and sibling of every node ``(..., 2n-1)``, read as unrooted from leaf ``n-1``.

    The top node ``2n-3`` gets parent ``n-1`` and sibling ``-1``; leaf ``n-1`` and the
    (degree-2) root ``2n-2`` get ``-1`` for both.
    """
    n = children.shape[-2] + 1
    batch = children.shape[:-2]
    flat = children.reshape(-1, n - 1, 2)
    num = flat.shape[0]
    dev = children.device
    parent = torch.full((num, 2 * n - 1), -1, dtype=torch.long, device=dev)
    sibling = torch.full((num, 2 * n - 1), -1, dtype=torch.long, device=dev)
    owner = torch.arange(n, 2 * n - 1, device=dev)[None, :, None].expand(num, n - 1, 2)
    parent.scatter_(1, flat.reshape(num, -1), owner.reshape(num, -1))
    sibling.scatter_(1, flat.reshape(num, -1), flat.flip(-1).reshape(num, -1))
    parent[:, 2 * n - 3] = n - 1
    parent[:, [n - 1, 2 * n - 2]] = -1
    sibling[:, [n - 1, 2 * n - 3, 2 * n - 2]] = -1
    return parent.reshape(*batch, -1), sibling.reshape(*batch, -1)


def check_tables(children: Tensor, n: int, name: str = "value") -> None:
    """Raise ``ValueError`` unless ``children`` holds valid ``(..., n-1, 2)`` child tables."""
    if children.dtype in (torch.float16, torch.float32, torch.float64, torch.bool):
        raise ValueError(f"{name} must be an integer child table, got dtype {children.dtype}")
    if children.dim() < 2 or children.shape[-2:] != (n - 1, 2):
        raise ValueError(
            f"{name} must have shape (..., {n - 1}, 2) for {n} taxa, got {tuple(children.shape)}"
        )
    flat = children.reshape(-1, n - 1, 2)
    owner = torch.arange(n, 2 * n - 1, device=children.device)[None, :, None]
    counts = torch.zeros(flat.shape[0], 2 * n - 1, dtype=torch.long, device=children.device)
    counts.scatter_add_(1, flat.clamp(0, 2 * n - 2).reshape(flat.shape[0], -1),
                        torch.ones_like(flat).reshape(flat.shape[0], -1))  # fmt: skip
    ok = ((flat >= 0) & (flat < owner)).all(-1).all(-1) & (counts[:, :-1] == 1).all(-1)
    ok &= (flat[:, -1, 0] == 2 * n - 3) & (flat[:, -1, 1] == n - 1)
    if not bool(ok.all()):
        bad = int((~ok).nonzero()[0, 0])
        raise ValueError(
            f"{name}[{bad}] is not a valid child table: each node below the root must be the "
            f"child of exactly one later node and the last row must be ({2 * n - 3}, {n - 1}); "
            "canonicalize trees with models.phylo.canonicalize"
        )
