"""The posterior over DS1's 42-tree credible set from fast evidences, against golden runs.

For every tree of the "19 dubious ways" DS1 credible set (JC69, Exp(10) branch lengths), the
log evidence by Gamma Laplus, GLIS, Laplace, importance sampling with the Laplace Student-t and
VBIS, all 42 topologies batched through one pruning pass per call
(`varinf.estimators.batched`); then the posterior over the set (uniform topology prior) against
the pooled frequencies of the 10 MrBayes golden runs: KL divergence and the RMSD of split
probabilities. Writes a markdown table, a CSV of per-tree values and a plot of estimated
against golden posterior probabilities.

    python benchmarks/credible_set_posterior.py [--trees 42] [--particles 2000] \
        [--out docs/img/credible_set.png] [--csv credible.csv]

One thread (``torch.set_num_threads(1)``); on a shared machine the seconds are noisy.
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path

import torch

from models.phylo import datasets, read_alignment, read_trees
from models.phylo.credible import (
    compare_with_golden,
    golden_frequencies,
    posterior_over_topologies,
    topology_problems,
)
from varinf.estimators.batched import fast_evidences

METHODS = ("gamma-laplus", "glis", "laplace", "is", "vbis")


def run(num_trees: int, num_particles: int, seed: int = 0) -> tuple[list, dict, list, list]:
    torch.manual_seed(seed)
    alignment = read_alignment(datasets.path("DS1"))
    trees = read_trees(datasets.path("DS1-credible"), taxa=alignment.taxa)[:num_trees]
    golden_trees, golden_probs = golden_frequencies(datasets.runs("DS1"), alignment.taxa)
    problems = topology_problems(alignment, trees)
    start = torch.full((len(trees), problems.dim), math.log(0.05), dtype=torch.float64)
    began = time.perf_counter()
    results = fast_evidences(problems, start, methods=METHODS, num_particles=num_particles)
    print(f"all methods, {len(trees)} trees: {time.perf_counter() - began:.1f} s", flush=True)
    return trees, results, golden_trees, golden_probs


def table(trees, results, golden_trees, golden_probs) -> tuple[str, dict]:
    lines = [
        "| method | KL(golden, estimate) | split RMSD | max stderr | seconds |",
        "| --- | --- | --- | --- | --- |",
    ]
    posteriors = {}
    for method in METHODS:
        probs = posterior_over_topologies(results[method]["value"])
        posteriors[method] = probs
        scores = compare_with_golden(trees, probs, golden_trees, golden_probs)
        stderr = results[method]["stderr"]
        worst = "nan" if torch.isnan(stderr).all() else f"{stderr.max().item():.3f}"
        lines.append(
            f"| {method} | {scores['kl']:.4f} | {scores['split_rmsd']:.4f} | {worst} | "
            f"{results[method]['seconds']:.0f} |"
        )
    lines.append(
        f"\nGolden mass inside the set: {scores['golden_mass']:.3f}; split RMSD of the golden "
        f"frequencies restricted to the set (the floor): {scores['split_rmsd_floor']:.4f}."
    )
    return "\n".join(lines), posteriors


def plot(path: Path, trees, posteriors, golden_trees, golden_probs) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from models.phylo.credible import topology_key

    golden = dict(zip((topology_key(t) for t in golden_trees), golden_probs, strict=True))
    inside = torch.tensor([golden.get(topology_key(t), 0.0) for t in trees])
    g = (inside / inside.sum()).numpy()
    fig, ax = plt.subplots(figsize=(5, 5))
    for method, probs in posteriors.items():
        ax.scatter(g, probs.numpy(), s=14, label=method, alpha=0.8)
    ax.plot([1e-4, 1], [1e-4, 1], color="gray", lw=0.8)
    ax.set(xscale="log", yscale="log", xlim=(1e-4, 1), ylim=(1e-6, 1),
           xlabel="golden-run posterior (renormalised over the set)",
           ylabel="posterior from estimated evidences",
           title=f"DS1 credible set ({len(trees)} trees)")  # fmt: skip
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", type=int, default=42)
    parser.add_argument("--particles", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=None, help="plot file")
    parser.add_argument("--csv", type=Path, default=None, help="per-tree log evidences")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    trees, results, golden_trees, golden_probs = run(args.trees, args.particles)
    text, posteriors = table(trees, results, golden_trees, golden_probs)
    print(text)
    if args.out is not None:
        plot(args.out, trees, posteriors, golden_trees, golden_probs)
    if args.csv is not None:
        with args.csv.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["tree", "method", "log_evidence", "stderr", "posterior"])
            for method in METHODS:
                for b in range(len(trees)):
                    writer.writerow([b + 1, method, results[method]["value"][b].item(),
                                     results[method]["stderr"][b].item(),
                                     posteriors[method][b].item()])  # fmt: skip


if __name__ == "__main__":
    main()
