"""Speed of the phylogenetic likelihood on DS1 (27 taxa, 934 site patterns), JC69, float64.

Prints milliseconds per call and per tree for the log-likelihood alone and with its gradient
with respect to the branch lengths, side by side with torchtree (``pip install -c
constraints.txt torchtree``) when it is installed, and our speed-up over torchtree's faster
variant. Cases: 1, 10 and 100 particles (branch-length vectors) on one topology; 10 different
topologies at once, the same ten credible-set trees at every call; 10 drawn at every call
from the 40 credible-set trees (a variational guide's batches: a fixed support, batches that
change); 10 random topologies at every call (nothing recurs, the worst case for site
repeats). torchtree has no batching over topologies (its rows there are a Python loop).
``torchtree`` is its rescaled pruning, ``tt-noscale`` the unscaled one that torchtree's
likelihood runs first (underflows beyond ~100 taxa); ``varinf`` is our default (an unscaled
pass, over clade site repeats where they pay, kept unless a pattern likelihood falls below
1e-290, else the rescaled pass), ``varinf-rs`` always rescales (``optimistic=False``).

Timings interleave the implementations round by round (the machine is shared): the table
shows each one's best round, the speed-ups the median over rounds of the ratio within a
round. Run with ``python benchmarks/phylo_likelihood.py [--device cuda]
[--repeats 20] [--rounds 7]``; one intra-op thread. The checkout's own ``models`` package is
imported (not an installed copy elsewhere).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # measure this checkout, not whatever `models` is installed

from models.phylo import (  # noqa: E402
    JC69,
    pruning_log_likelihood,
    random_topologies,
    read_alignment,
    read_trees,
    stack_trees,
)

DATA = ROOT / "models" / "phylo" / "data" / "bito_ds1"  # shipped: models.phylo.datasets


def timed_rounds(fns, repeats: int, rounds: int, device: torch.device) -> list[list[float]]:
    """Mean milliseconds per call of each function in each round; a round runs every
    function ``repeats`` times in turn, so within a round they meet the same load."""
    for fn in fns:
        fn()
    times = []
    for _ in range(rounds):
        times.append([])
        for fn in fns:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(repeats):
                fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[-1].append((time.perf_counter() - start) / repeats * 1e3)
    return times


def speedup(times: list[list[float]]) -> float:
    """Median over rounds of torchtree's faster variant's time over ours (paired by round)."""
    return statistics.median(min(row[2:]) / row[0] for row in times)


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


def cycling(batches):
    """A function returning the next ``(children, lengths)`` of ``batches`` at each call."""
    state = {"i": -1}

    def next_batch():
        state["i"] = (state["i"] + 1) % len(batches)
        return batches[state["i"]]

    return next_batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    device = torch.device(args.device)
    aln = read_alignment(DATA / "ds1.fasta")
    trees = read_trees(DATA / "ds1.credible.with-branches.nwk", taxa=aln.taxa)
    tips = aln.partials(device=device).mT.contiguous()
    weights = aln.weights.to(device)
    one, lengths1 = trees[0].children.to(device), trees[0].lengths.to(device)
    gen = torch.Generator().manual_seed(0)
    cases = [("1 particle", [(one, lengths1[None])])]
    for k in (10, 100):
        noise = torch.rand(k, 51, generator=gen, dtype=torch.float64).to(device)
        cases.append((f"{k} particles", [(one, lengths1 * (0.5 + noise))]))
    cases.append(("10 topologies", [tuple(x.to(device) for x in stack_trees(trees[:10]))]))
    # enough batches that none comes back within one round of one implementation
    calls = args.repeats * (args.rounds + 1) + 1
    drawn = [stack_trees([trees[i] for i in torch.randperm(40, generator=gen)[:10].tolist()])
             for _ in range(calls)]  # fmt: skip
    cases.append(("10 of 40", [tuple(x.to(device) for x in batch) for batch in drawn]))
    random = [random_topologies(27, 10, gen).to(device) for _ in range(calls)]
    cases.append(("10 random", [(c, lengths1.expand(10, -1)) for c in random]))
    impls = [("varinf", ours), ("varinf-rs", ours_rescaled)]
    tt = torchtree_fn()
    if tt is not None:
        impls += [("torchtree", tt), ("tt-noscale", torchtree_fn(rescale=False))]
    print(f"DS1, JC69, float64, {device}, 1 thread; ms per call (ms per tree)")
    print(f"{'case':<15}{'impl':<11}{'loglik':>20}{'loglik+grad':>22}")
    summary = []
    for name, batches in cases:
        children, lengths = batches[0]
        with torch.no_grad():
            values = [fn(tips, weights, children, lengths).flatten() for _, fn in impls]
        for other in values[1:]:
            assert torch.allclose(values[0], other, atol=1e-8), "implementations disagree"
        fwd, grad = [], []
        for _, fn in impls:
            batch = cycling(batches)  # every implementation sees the same sequence

            def forward(fn=fn, batch=batch):
                children, lengths = batch()
                with torch.no_grad():
                    fn(tips, weights, children, lengths)

            def gradient(fn=fn, batch=batch):
                children, lengths = batch()
                x = lengths.clone().requires_grad_()
                fn(tips, weights, children, x).sum().backward()

            fwd.append(forward)
            grad.append(gradient)
        f_rounds = timed_rounds(fwd, args.repeats, args.rounds, device)
        g_rounds = timed_rounds(grad, args.repeats, args.rounds, device)
        f, g = (list(map(min, zip(*rounds, strict=True))) for rounds in (f_rounds, g_rounds))
        k = len(lengths)
        for (impl, _), fi, gi in zip(impls, f, g, strict=True):
            print(f"{name:<15}{impl:<11}{fi:>10.3f} ({fi / k:>6.3f}){gi:>12.3f} ({gi / k:>6.3f})")
        if tt is not None:
            summary.append((name, speedup(f_rounds), speedup(g_rounds)))
    if tt is None:
        print("torchtree not installed: pip install -c constraints.txt torchtree")
        return
    print("\nspeed-up over torchtree's faster variant (its time / ours, median of rounds)")
    print(f"{'case':<15}{'loglik':>9}{'+grad':>10}")
    for name, sf, sg in summary:
        print(f"{name:<15}{sf:>8.2f}x{sg:>9.2f}x")


if __name__ == "__main__":
    main()
