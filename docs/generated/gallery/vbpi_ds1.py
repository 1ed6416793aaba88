"""Variational Bayesian phylogenetic inference (VBPI) on DS1 (27 taxa, 1949 sites).

The model: JC69, i.i.d. Exponential(10) branch lengths, a uniform prior over unrooted
topologies. The guide: a subsplit Bayesian network over the topologies of a tree sample (here
the 100 DS1 topologies shipped with the package) times log-normal branch lengths whose means and
scales are sums of split and primary-subsplit-pair embeddings. Training: K=10 VIMCO with a
likelihood annealed from 0.001 to 1 (Zhang & Matsen 2019). Then the ELBO, the importance-sampling
marginal likelihood and, unless ``--no-golden``, KL(golden runs || q) and the most probable
topologies beside their golden-run frequencies.

    python examples/vbpi_ds1.py [--iterations 2000] [--is-particles 200] [--no-golden]

Short runs are far from the published numbers (-7108.42, after 200k steps); see docs/vbpi.md.
"""

from __future__ import annotations

import argparse

import torch

from models.phylo import datasets, phylo_model, read_alignment, read_trees
from models.phylo.vbpi_cli import read_golden
from varinf.distributions import SBNSupport
from varinf.guides import VBPIGuide, VBPITrainer, tree_kl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--is-particles", type=int, default=200)
    parser.add_argument("--no-golden", action="store_true", help="skip the KL to the golden runs")
    args = parser.parse_args()
    torch.manual_seed(0)

    aln = read_alignment(datasets.path("DS1"))
    support_trees = read_trees(datasets.path("DS1-topologies"), taxa=aln.taxa)
    support = SBNSupport.from_trees(support_trees, taxa=aln.taxa)
    golden = None if args.no_golden else read_golden(datasets.runs("DS1", "golden"), aln.taxa)
    guide = VBPIGuide(support, taxa=aln.taxa)
    warm = max(args.iterations // 2, 1)
    trainer = VBPITrainer(
        phylo_model(aln), guide, golden=golden, warm_start=warm,
        eval_every=max(args.iterations // 10, 1), progress=False, seed=0,
    )  # fmt: skip
    history = trainer.run(args.iterations)
    print("step  lower bound (K=10)" + ("  KL(golden||q)" if golden else ""))
    for i, step in enumerate(history.iteration):
        kl = f"  {history.kl[i]:.4f}" if golden else ""
        print(f"{step:5d}  {history.lower_bound[i]:.2f}{kl}")
    out = trainer.evidence(args.is_particles, chunk=min(100, args.is_particles))
    print(f"elbo {out['elbo']:.2f} +- {out['elbo_stderr']:.2f}")
    print(
        f"marginal likelihood {out['marginal_likelihood']:.2f} "
        f"+- {out['marginal_likelihood_stderr']:.2f} ({out['num_particles']} samples)"
    )
    print(f"{trainer.elapsed / trainer.iteration * 1000:.1f} ms per step")
    if golden is not None:
        tables, probs = golden
        order = probs.argsort(descending=True)
        tables, probs = tables[order], probs[order]
        print(f"KL(golden || q) {tree_kl(guide, tables, probs):.4f}")
        with torch.no_grad():
            q = guide.topology_distribution(outside="zero").log_prob(tables[:5]).exp()
        for rank, (p, qq) in enumerate(zip(probs[:5].tolist(), q.tolist(), strict=True)):
            print(f"topology {rank + 1}: golden {p:.3f}  vbpi {qq:.3f}")


if __name__ == "__main__":
    main()
