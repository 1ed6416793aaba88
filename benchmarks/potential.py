"""Overhead of `varinf.potential.Potential` on the phylogenetic model.

DS1's most probable topology (first line of the "19 dubious ways" credible set; 27 taxa, 934
site patterns), JC69, i.i.d. Exp(10) branch lengths: 51 unconstrained dimensions. For C chains
we time the log density and its gradient through `Potential.value_and_grad` (one traced run of
`models.phylo.phylo_model` under the chain plate, one backward pass) against the same quantity
computed by hand: the pruning likelihood called directly on the ``(C, 51)`` branch lengths
``exp(z)``, plus the Exp(10) log prior and the log-Jacobian ``sum(z)``, differentiated by
autograd. Timings interleave the two round by round (the machine may be shared); the table
shows each one's best round and the median over rounds of the within-round ratio. Run with
``python benchmarks/potential.py [--chains 64] [--repeats 20] [--rounds 7] [--device cuda]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # measure this checkout

from models.phylo import (  # noqa: E402
    datasets,
    log_likelihood,
    phylo_model,
    read_alignment,
    read_trees,
)
from varinf.potential import Potential  # noqa: E402


def direct(aln, children, prior):
    def value_and_grad(z):
        z = z.detach().requires_grad_(True)
        lengths = z.exp()
        value = log_likelihood(aln, children, lengths) + prior.log_prob(lengths).sum(-1) + z.sum(-1)
        (grad,) = torch.autograd.grad(value.sum(), z)
        return value.detach(), grad

    return value_and_grad


def through_potential(potential):
    def value_and_grad(z):
        value, grad, _ = potential.value_and_grad(z)
        return value, grad

    return value_and_grad


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(1)
    device = torch.device(args.device)
    aln = read_alignment(datasets.path("DS1"))
    tree = read_trees(datasets.path("DS1-credible"), aln.taxa)[0]
    potential = Potential(phylo_model(aln, tree))
    prior = torch.distributions.Exponential(torch.tensor(10.0, dtype=torch.float64))
    print(f"DS1 top topology, JC69, Exp(10): D = {potential.dim}; {args.device}, 1 thread")
    print("| chains | direct (ms) | Potential (ms) | ratio (median of rounds) |")
    print("| --- | --- | --- | --- |")
    for chains in args.chains:
        torch.manual_seed(0)
        z = potential.initial_points(chains).to(device)
        fns = {
            "direct": direct(aln, tree.children, prior),
            "potential": through_potential(potential),
        }
        v_direct, g_direct = fns["direct"](z)
        v_pot, g_pot = fns["potential"](z)
        torch.testing.assert_close(v_pot, v_direct)
        torch.testing.assert_close(g_pot, g_direct)
        times = {name: [] for name in fns}
        for _ in range(args.rounds):
            for name, fn in fns.items():
                fn(z)
                sync(device)
                start = time.perf_counter()
                for _ in range(args.repeats):
                    fn(z)
                sync(device)
                times[name].append(1e3 * (time.perf_counter() - start) / args.repeats)
        ratio = statistics.median(
            p / d for p, d in zip(times["potential"], times["direct"], strict=True)
        )
        print(
            f"| {chains} | {min(times['direct']):.2f} | {min(times['potential']):.2f} | "
            f"{ratio:.2f}x |"
        )


if __name__ == "__main__":
    main()
