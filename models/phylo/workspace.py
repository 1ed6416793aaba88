"""Scratch buffers reused between calls of the pruning kernels.

The message buffers of a batch of topologies are megabytes, and a fresh one costs as much in
page faults as the products that fill it (DS1, 10 trees, 15 MB: ~0.2 ms; on a virtual machine
a fresh MB can cost ~0.5 ms). A kernel only reads its buffer within one forward pass, so one
flat storage per (purpose, dtype, device), grown when too small, serves every call.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_STORAGE: dict[tuple[str, torch.dtype, torch.device], Tensor] = {}


def workspace(name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
    """An uninitialised contiguous tensor of ``shape`` (dtype and device of ``like``) on the
    storage kept under ``name``; valid until the next call with the same ``name``."""
    key, size = (name, like.dtype, like.device), math.prod(shape)
    storage = _STORAGE.get(key)
    if storage is None or storage.numel() < size:
        storage = _STORAGE[key] = like.new_empty(max(size, 5 * size // 4))  # room to vary
    return storage[:size].view(shape)
