"""Speed of the phylogenetic likelihood on DS1 (27 taxa, 934 site patterns), JC69, float64.

Prints milliseconds per call and per tree for the log-likelihood alone and with its gradient
with respect to the branch lengths, for 1, 10 and 100 particles (branch-length vectors) on one
topology and for 10 different topologies at once; side by side with torchtree
(``pip install -c constraints.txt torchtree``) when it is installed, which has no batching over
topologies (its 10-topology row is a Python loop); ``torchtree`` is its rescaled pruning
(as ours), ``tt-noscale`` the one without rescaling (underflows beyond ~100 taxa). ``varinf``
is the default (an unscaled pass, kept unless a pattern likelihood falls below 1e-290, else the
rescaled pass); ``varinf-rs`` always rescales (``optimistic=False``). Run with ``python
benchmarks/phylo_likelihood.py [--device cuda] [--repeats 20]``; one intra-op thread. The
checkout's own ``models`` package is imported (not an installed copy elsewhere).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # measure this checkout, not whatever `models` is installed

from models.phylo import (  # noqa: E402
    JC69,
    pruning_log_likelihood,
    read_alignment,
    read_trees,
    stack_trees,
)

DATA = ROOT / ".." / "shared" / "data" / "phylo" / "bito_ds1"


def timed(fn, repeats: int, device: torch.device) -> float:
    """Best-of-5 mean milliseconds per call (the machine is shared: the minimum is stablest)."""
    fn()
    best = float("inf")
    for _ in range(5):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - start) / repeats * 1e3)
    return best


def ours(tips, weights, children, lengths, optimistic=True):
    trans = JC69().transition_matrices({}, lengths)[..., None, :, :]
    freqs = torch.full((4,), 0.25, dtype=lengths.dtype, device=lengths.device)
    return pruning_log_likelihood(tips, weights, children, trans, freqs, optimistic=optimistic)


def ours_rescaled(tips, weights, children, lengths):
    return ours(tips, weights, children, lengths, optimistic=False)


def torchtree_fn(rescale: bool = True):
    try:
        from torchtree.evolution.tree_likelihood import (
            calculate_treelikelihood_discrete,
            calculate_treelikelihood_discrete_rescaled,
        )
    except ImportError:
        return None
    pruning = (
        calculate_treelikelihood_discrete_rescaled if rescale else calculate_treelikelihood_discrete
    )

    def run(tips, weights, children, lengths):
        n = tips.shape[0]
        eye = torch.eye(4, dtype=lengths.dtype, device=lengths.device)
        mats = JC69().transition_matrices({}, lengths)
        mats = torch.cat([mats, eye.expand(*mats.shape[:-3], 1, 4, 4)], -3)[..., None, :, :]
        freqs = torch.full((1, 4), 0.25, dtype=lengths.dtype, device=lengths.device)
        props = torch.ones(1, 1, 1, dtype=lengths.dtype, device=lengths.device)
        out = []
        for b in range(children.shape[0] if children.dim() == 3 else 1):
            rows = (children[b] if children.dim() == 3 else children).tolist()
            post = [(n + j, a, c) for j, (a, c) in enumerate(rows)]
            partials = list(tips) + [None] * (n - 1)
            m = mats[b] if children.dim() == 3 else mats
            out.append(pruning(partials, weights, post, m, freqs, props))
        return torch.stack(out)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    device = torch.device(args.device)
    aln = read_alignment(DATA / "ds1.fasta")
    trees = read_trees(DATA / "ds1.credible.with-branches.nwk", taxa=aln.taxa)
    tips = aln.partials(device=device).mT.contiguous()
    weights = aln.weights.to(device)
    children10, lengths10 = (x.to(device) for x in stack_trees(trees[:10]))
    one, lengths1 = trees[0].children.to(device), trees[0].lengths.to(device)
    jitter = torch.Generator().manual_seed(0)
    cases = [("1 particle", one, lengths1[None])]
    for k in (10, 100):
        noise = torch.rand(k, 51, generator=jitter, dtype=torch.float64).to(device)
        cases.append((f"{k} particles", one, lengths1 * (0.5 + noise)))
    cases.append(("10 topologies", children10, lengths10))
    impls = [("varinf", ours), ("varinf-rs", ours_rescaled)]
    tt = torchtree_fn()
    if tt is not None:
        impls += [("torchtree", tt), ("tt-noscale", torchtree_fn(rescale=False))]
    print(f"DS1, JC69, float64, {device}, 1 thread; ms per call (ms per tree)")
    print(f"{'case':<15}{'impl':<11}{'loglik':>20}{'loglik+grad':>22}")
    for name, children, lengths in cases:
        values = []
        for impl, fn in impls:
            with torch.no_grad():
                values.append(fn(tips, weights, children, lengths).flatten())

            def fwd(fn=fn, children=children, lengths=lengths):
                with torch.no_grad():
                    fn(tips, weights, children, lengths)

            def grad(fn=fn, children=children, lengths=lengths):
                x = lengths.clone().requires_grad_()
                fn(tips, weights, children, x).sum().backward()

            k = len(lengths)
            f, g = timed(fwd, args.repeats, device), timed(grad, args.repeats, device)
            print(f"{name:<15}{impl:<11}{f:>10.3f} ({f / k:>6.3f}){g:>12.3f} ({g / k:>6.3f})")
        for other in values[1:]:
            assert torch.allclose(values[0], other, atol=1e-8), "implementations disagree"
    if tt is None:
        print("torchtree not installed: pip install -c constraints.txt torchtree")


if __name__ == "__main__":
    main()
