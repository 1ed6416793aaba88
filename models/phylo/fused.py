r"""Unscaled pruning passes and their gradients as compiled loops: `fused_root_partials`
for a batch of new topologies over every site pattern, `fused_repeats_root` for one topology
over its distinct clade columns, and their backward passes.

**A batch of new topologies.** With a topology per batch element and clades that do not
recur (new random topologies: no site repeats to exploit),
`models.phylo.scaled.forward_batched` prunes every pattern with three tensor operations
per row of the child table: a gather of both children's messages from a node-major buffer,
their product, and the next message $M_v = P_v L_v$, a batched $4 \times 4$ matrix product.
That pass is bound by memory traffic, not arithmetic: on DS1 (27 taxa, 934 patterns) ten
trees write ~39 MB a call (the leaf messages alone 8 MB) and the buffers, 15 MB, do not stay
in a core's cache. Here one C loop (`fused_pruning.c`) does the same arithmetic per batch
element $b$ and category $c$, node by node in the child table's order: $L_v = M_a \odot
M_b$ with a leaf's message $M_k = P_k x_k$ computed from its tip partials $x_k$ when it is
needed, and $M_v = P_v L_v$ written to a scratch buffer of $(n-1)\,4P$ doubles (DS1:
0.8 MB), which stays in the core's cache while the element is pruned.

**One topology over distinct clade columns.** `models.phylo.waves` and
`models.phylo.repeats` prune a node's $K_v$ distinct columns,
$L_v = M_a[\,\cdot, i_a] \odot M_b[\,\cdot, i_b]$; with few particles each tensor
operation there costs more in dispatch (2-3 µs) than in arithmetic, dozens a call. The same
recursion in C (`PackedPlan`: the plan as flat arrays) is one call; an element's messages
(DS1: 5253 columns, 170 kB) stay in the fastest cache.

Only the root's partials come back; `models.phylo.partials` does the rest (root likelihood,
log, pattern weights), so the result, and the underflow test on it, are those of the tensor
passes, equal to rounding (the same products; a matrix library may order the sums
differently).

**Gradients.** After a compiled forward pass, the backward pass is compiled too
(`fused_repeats_grad`, `fused_batched_grad`): per element, the forward pass again, now
keeping every node's partials $L_v$ and messages $M_v$ in scratch (recomputing costs less
than keeping megabytes alive until the backward pass), then the pre-order recursion of
`models.phylo.likelihood` (Ji et al. 2020): $U_a[\,\cdot, i_a] \mathrel{+}= G_v \odot
M_b[\,\cdot, i_b]$ onto each child's columns, $\partial/\partial P_k = U_k X_k^\top$ ($X_k$ the
partials, or a leaf's tip columns) and $G_k = P_k^\top U_k$. The tensor passes' backward is
the same recursion in tensor operations, a few per node, and costs four to ten times their
forward in dispatch and memory traffic. Written by hand because no library available from
PyTorch prunes a batch of different topologies, or a tree's clade columns, in one call, nor
differentiates through one (BEAGLE does one tree per instance over every pattern, through
its own C API and buffers).

**Availability.** The kernels are compiled with the C compiler found (`$CC`, else `cc`,
`gcc` or `clang`) into a temporary directory, once per process (~0.3 s), with
`-O3 -march=native` (else `-O3`). Without a compiler, on another device or dtype than
CPU float64, or with `VARINF_FUSED=0` in the environment, the forward kernels return `None`
and the tensor passes run, forward and backward: the answer never depends on it, only the
speed. Second derivatives never run here (`models.phylo.hessian`).
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["PackedPlan", "fused_batched_grad", "fused_repeats_grad", "fused_repeats_root",
           "fused_root_partials", "library"]  # fmt: skip

_SOURCE = Path(__file__).with_name("fused_pruning.c")
_FLAGS = (["-O3", "-march=native"], ["-O3"])  # the first that builds


def _compiler() -> str | None:
    name = os.environ.get("CC")
    candidates = ([name] if name else []) + ["cc", "gcc", "clang"]
    return next((path for c in candidates if (path := shutil.which(c)) is not None), None)


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernel, loaded (built on the first call of the process), or `None`
    without a C compiler or with `VARINF_FUSED=0`.

    Examples:
        >>> lib = library()
        >>> lib is None or hasattr(lib, "prune_batched")
        True
    """
    compiler = _compiler()
    if os.environ.get("VARINF_FUSED", "1") == "0" or compiler is None:
        return None
    with tempfile.TemporaryDirectory(prefix="varinf-fused-") as work:
        target = Path(work) / "fused_pruning.so"
        for flags in _FLAGS:
            build = [compiler, *flags, "-fPIC", "-shared", "-o", str(target), str(_SOURCE)]
            try:
                done = subprocess.run(build, capture_output=True, timeout=120)
            except (OSError, subprocess.SubprocessError):
                continue
            if done.returncode == 0:
                try:  # loaded into memory: the directory may go
                    lib = ctypes.CDLL(str(target))
                except OSError:
                    continue
                long, ptr = ctypes.c_long, ctypes.c_void_p
                lib.prune_batched.argtypes = [long] * 4 + [ptr] * 5
                lib.prune_repeats.argtypes = [long] * 2 + [ptr] * 8
                lib.prune_grad.argtypes = [long] * 4 + [ptr] * 9
                for kernel in (lib.prune_batched, lib.prune_repeats, lib.prune_grad):
                    kernel.restype = None
                return lib
    return None


def _bounds(n: int, device: torch.device) -> Tensor:
    """`(n-1, 1)` the node numbers `n + j`: row `j`'s children must be below."""
    return (n + torch.arange(n - 1, device=device))[:, None]


def fused_root_partials(trans_n: Tensor, tips: Tensor, children: Tensor, cache,
                        out: Tensor | None = None) -> Tensor | None:  # fmt: skip
    r"""The root's partials `(N, C, 4, P)` of the unscaled pass, or `None` where the kernel
    does not apply (see the module docstring) and the tensor pass should run.

    Args:
        trans_n: `(2n-2, N, C, 4, 4)` node-major transition matrices, the identity above
            node `2n-3` (as `models.phylo.pruning.Pruning` builds them).
        tips: `(n, 4, P)` tip partials.
        children: `(N, n-1, 2)` child tables. Rows whose children are not earlier nodes
            (not a post-order) are left to the tensor pass, which has its own checks.
        cache: the alignment's `models.phylo.cache.LikelihoodCache` (scratch memory).
        out: `(N, C, 4, P)` contiguous, where to write the root's partials (a backward pass
            will read them); scratch memory of the cache if omitted.

    Returns:
        The root's partials (`out`, or scratch valid until the next call), or `None`.

    Examples:
        >>> from models.phylo.topology import from_edges
        >>> from models.phylo.cache import LikelihoodCache
        >>> children, _ = from_edges(3, [(0, 3), (1, 3), (2, 3)], [0.1, 0.2, 0.3])
        >>> tips = torch.eye(4, dtype=torch.float64)[:, :3].expand(3, 4, 3).contiguous()
        >>> eye = torch.eye(4, dtype=torch.float64).expand(4, 1, 1, 4, 4).contiguous()
        >>> root = fused_root_partials(eye, tips, children[None], LikelihoodCache(tips))
        >>> root is None or torch.equal(root[0, 0], tips[0] ** 3)
        True
    """
    n, n_pat = tips.shape[0], tips.shape[-1]
    fits = trans_n.dtype == tips.dtype == torch.float64 and trans_n.device.type == "cpu"
    if not fits or tips.device.type != "cpu" or children.dim() != 3 or n < 2:
        return None
    lib = library()
    if lib is None:
        return None
    children = children.to(torch.int64).contiguous()
    if not bool(((children >= 0) & (children < _bounds(n, children.device))).all()):
        return None  # a child read before it is computed, or out of range
    trans_n, tips = trans_n.contiguous(), tips.contiguous()
    n_batch, n_cat = trans_n.shape[1:3]
    root = cache.workspace("fused root", (n_batch, n_cat, 4, n_pat), tips) if out is None else out
    work = cache.workspace("fused messages", (n * 4 * n_pat,), tips)
    lib.prune_batched(n, n_batch, n_cat, n_pat, trans_n.data_ptr(), tips.data_ptr(),
                      children.data_ptr(), root.data_ptr(), work.data_ptr())  # fmt: skip
    return root


class PackedPlan:
    """A `models.phylo.tree_plan.RepeatPlan` as the flat arrays of the compiled loop over
    distinct clade columns (`prune_repeats` in `fused_pruning.c`).

    Args:
        plan: the topology's `RepeatPlan`.

    Attributes:
        children: `(n-1, 2)` the child table.
        sizes: `(2n-1,)` distinct columns $K_v$ of every node.
        offsets: `(2n-1,)` where each node's `(4, K_v)` message starts in one batch
            element's scratch; the last entry, where the scratch for one node's partials
            starts.
        index: per row, the first children's columns, then the second's.
        tips: every leaf's distinct tip columns `(4, K_k)`, flattened, at `offsets[k]`.
        work: scratch doubles a batch element needs; `grad_work`, for the gradient.
    """

    def __init__(self, plan) -> None:
        n, device = len(plan.tips), plan.tips[0].device
        sizes = [plan.sizes[v] for v in range(2 * n - 1)]
        ends = [0]
        for v in range(2 * n - 2):  # every node but the root keeps its message
            ends.append(ends[-1] + 4 * sizes[v])
        columns = [c for pair in plan.columns for c in pair]
        long = {"dtype": torch.int64, "device": device}
        self.children = torch.tensor(plan.rows, **long)
        self.sizes, self.offsets = torch.tensor(sizes, **long), torch.tensor(ends, **long)
        self.index = torch.from_numpy(np.concatenate(columns).astype(np.int64)).to(device)
        self.tips = torch.cat([t.reshape(-1) for t in plan.tips]).contiguous()
        self.work, self.root_size = ends[-1] + 4 * max(sizes), sizes[-1]
        self.grad_work = 2 * ends[-1] + self.work  # and every node's partials and U

    @property
    def nbytes(self) -> int:
        """Bytes held, for the cache's bound."""
        arrays = (self.children, self.sizes, self.offsets, self.index, self.tips)
        return sum(t.numel() * t.element_size() for t in arrays)


def fused_repeats_root(trans_n: Tensor, packed: PackedPlan, cache, keep: bool = False
                       ) -> Tensor | None:  # fmt: skip
    r"""The root's partials `(N, C, 4, K_root)` of the unscaled pass over distinct clade
    columns of one topology, or `None` where the kernel does not apply (then the tensor
    pass runs).

    Args:
        trans_n: `(2n-2, N, C, 4, 4)` node-major transition matrices, the identity above
            node `2n-3`.
        packed: the topology's `PackedPlan`.
        cache: the alignment's `models.phylo.cache.LikelihoodCache` (scratch memory).
        keep: a backward pass will read the root's partials (fresh memory, not scratch).

    Returns:
        The root's partials at its distinct columns (unless `keep`, scratch memory of the
        cache, valid until the next call), or `None`.
    """
    fits = trans_n.dtype == packed.tips.dtype == torch.float64
    if not fits or trans_n.device.type != "cpu" or packed.tips.device.type != "cpu":
        return None
    lib = library()
    if lib is None:
        return None
    trans_n = trans_n.contiguous()
    n_batch, n_cat = trans_n.shape[1:3]
    nc = n_batch * n_cat
    shape = (n_batch, n_cat, 4, packed.root_size)
    root = trans_n.new_empty(shape) if keep else cache.workspace("fused root", shape, trans_n)
    work = cache.workspace("fused messages", (packed.work,), trans_n)
    arrays = (trans_n, packed.tips, packed.children, packed.sizes, packed.offsets,
              packed.index, root, work)  # fmt: skip
    lib.prune_repeats(packed.children.shape[0] + 1, nc,
                      *(t.data_ptr() for t in arrays))  # fmt: skip
    return root


def fused_repeats_grad(trans_n: Tensor, packed: PackedPlan, g: Tensor, cache) -> Tensor:
    r"""The gradient of the pass of `fused_repeats_root` with respect to the transition
    matrices, `(2n-2, N, C, 4, 4)` node-major (node `2n-3`'s entry zero): the forward pass
    again, keeping every node's partials and messages, then the pre-order pass of
    `models.phylo.repeats.backward_repeats` (outside partials summed onto each child's
    columns; an edge's gradient $U_k X_k^\top$), in C. Call it only where
    `fused_repeats_root` ran.

    Args:
        trans_n: `(2n-2, N, C, 4, 4)` as for `fused_repeats_root`.
        packed: the topology's `PackedPlan`.
        g: `(N, C, 4, K_root)` the root's outside partials $w_c \pi_s c_p / L_p$.
        cache: the alignment's `LikelihoodCache` (scratch memory).
    """
    lib = library()
    trans_n = trans_n.contiguous()
    nc = trans_n.shape[1] * trans_n.shape[2]
    g = g.reshape(nc, 4, packed.root_size).contiguous()
    grad = trans_n.new_empty(trans_n.shape)
    work = cache.workspace("fused gradient", (packed.grad_work,), trans_n)
    arrays = (trans_n, packed.tips, packed.children, packed.sizes, packed.offsets,
              packed.index, g, grad, work)  # fmt: skip
    lib.prune_grad(packed.children.shape[0] + 1, nc, 1, 0, *(t.data_ptr() for t in arrays))
    return grad


def fused_batched_grad(trans_n: Tensor, tips: Tensor, children: Tensor, g: Tensor,
                       cache) -> Tensor:  # fmt: skip
    r"""The gradient of the pass of `fused_root_partials` (a topology per batch element,
    every site pattern) with respect to the transition matrices, `(2n-2, N, C, 4, 4)`
    node-major (node `2n-3`'s entry zero), as `fused_repeats_grad` (the same C loop, with
    every node's columns the site patterns). Call it only where `fused_root_partials` ran.

    Args:
        trans_n: `(2n-2, N, C, 4, 4)` as for `fused_root_partials`.
        tips: `(n, 4, P)` tip partials.
        children: `(N, n-1, 2)` child tables.
        g: `(N, C, 4, P)` the root's outside partials.
        cache: the alignment's `LikelihoodCache` (scratch memory).
    """
    lib, n, n_pat = library(), tips.shape[0], tips.shape[-1]
    trans_n, tips = trans_n.contiguous(), tips.contiguous()
    n_batch, n_cat = trans_n.shape[1:3]
    long = {"dtype": torch.int64, "device": tips.device}
    sizes = torch.full((2 * n - 1,), n_pat, **long)
    offsets = 4 * n_pat * torch.arange(2 * n - 1, **long)
    grad = trans_n.new_empty(trans_n.shape)
    work = cache.workspace("fused gradient", (3 * (2 * n - 2) * 4 * n_pat + 4 * n_pat,), tips)
    children, g = children.to(torch.int64).contiguous(), g.contiguous()
    arrays = (trans_n, tips, children, sizes, offsets)
    lib.prune_grad(n, n_batch * n_cat, n_cat, 2 * (n - 1), *(t.data_ptr() for t in arrays), None,
                   g.data_ptr(), grad.data_ptr(), work.data_ptr())  # fmt: skip
    return grad
