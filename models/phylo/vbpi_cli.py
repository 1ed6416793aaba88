"""``varinf phylo vbpi``: variational Bayesian phylogenetic inference on an alignment.

Example::

    varinf phylo vbpi --alignment DS1.fasta --support DS1_ufboot_rep_*.gz \\
        --iterations 20000 --golden golden/rep_*/DS1.trprobs --plots out/

fits the VBPI guide (an SBN over the support's topologies, log-normal branch lengths with
split + PSP embeddings) to the JC69 / Exp(10) / uniform-topology model with annealed VIMCO
(K=10), showing the lower bound in a progress bar, then prints the ELBO, the importance-sampling
marginal likelihood with its standard error (``--is-particles`` draws through ``IWAE``), and
KL(golden || q) when ``--golden`` tree files are given; ``--plots DIR`` writes the lower bound
and KL against iterations and the most probable topologies against their golden frequencies.
``--checkpoint PATH`` saves the run every ``--checkpoint-every`` steps and resumes from PATH if
it exists. Bad input prints ``varinf phylo vbpi: error: ...`` and returns exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from varinf.distributions.sbn import SBNSupport
from varinf.distributions.sbn.fitting import unique_trees

from .alignment import read_alignment
from .errors import PhyloFormatError
from .model import phylo_model
from .trees import read_trees

__all__ = ["add_vbpi_parser", "run_vbpi", "read_support", "read_golden"]


def add_vbpi_parser(commands) -> argparse.ArgumentParser:
    """Register ``vbpi`` on the ``phylo`` subcommands."""
    p = commands.add_parser("vbpi", help="variational Bayesian phylogenetic inference (VBPI)")
    p.add_argument("--alignment", required=True, help="FASTA, NEXUS or PHYLIP alignment")
    p.add_argument("--support", required=True, nargs="+", help="tree files giving the SBN support")
    p.add_argument("--iterations", type=int, required=True, help="training steps in total")
    p.add_argument("--golden", nargs="*", default=(), help="ground-truth tree files (.trprobs)")
    p.add_argument("--particles", type=int, default=10, help="K of the VIMCO bound (10)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam step size (1e-3)")
    p.add_argument("--warm-start", type=int, default=100000,
                   help="likelihood annealing length in steps (0: none; 100000)")  # fmt: skip
    p.add_argument("--no-psp", action="store_true", help="split embeddings only")
    p.add_argument("--flow-layers", type=int, default=0, help="RealNVP layers (0: none)")
    p.add_argument("--eval-every", type=int, default=1000, help="steps between records")
    p.add_argument("--is-particles", type=int, default=1000, help="draws for the evidence")
    p.add_argument("--checkpoint", default=None, help="checkpoint file (resumed if present)")
    p.add_argument("--checkpoint-every", type=int, default=5000)
    p.add_argument("--plots", default=None, help="folder for the plots")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_vbpi)
    return p


def read_support(paths, taxa) -> SBNSupport:
    """The SBN support of all trees in the files (taxa checked against the alignment)."""
    tables = []
    for path in paths:
        trees = read_trees(path, taxa=taxa)
        tables.append(torch.stack([t.children for t in trees]))
    if not tables:
        raise ValueError("--support: give at least one tree file")
    return SBNSupport.from_trees(torch.unique(torch.cat(tables), dim=0), taxa=taxa)


def read_golden(paths, taxa) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled topology frequencies of several runs (each normalised, then averaged)."""
    tables, weights = [], []
    for path in paths:
        trees = read_trees(path, taxa=taxa)
        w = torch.tensor(
            [1.0 if t.weight is None else t.weight for t in trees], dtype=torch.float64
        )
        tables.append(torch.stack([t.children for t in trees]))
        weights.append(w / w.sum())
    children, probs, _ = unique_trees(torch.cat(tables), torch.cat(weights))
    return children, probs


def run_vbpi(args: argparse.Namespace) -> int:
    """Train, report and plot; return the exit status (0, or 2 on bad input)."""
    try:
        report = _vbpi(args)
    except (PhyloFormatError, ValueError) as err:
        print(f"varinf phylo vbpi: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    for key, value in report.items():
        print(f"{key}: {value}")
    return 0


def _vbpi(args: argparse.Namespace) -> dict:
    from varinf.guides import VBPIGuide, VBPITrainer, tree_kl

    if args.iterations < 1:
        raise ValueError(f"--iterations must be positive, got {args.iterations}")
    torch.manual_seed(args.seed)
    aln = read_alignment(args.alignment)
    support = read_support(args.support, aln.taxa)
    golden = read_golden(args.golden, aln.taxa) if args.golden else None
    guide = VBPIGuide(support, psp=not args.no_psp, flow_layers=args.flow_layers, taxa=aln.taxa)
    trainer = VBPITrainer(
        phylo_model(aln), guide, num_particles=args.particles, lr=args.lr,
        warm_start=args.warm_start, golden=golden, eval_every=args.eval_every,
        checkpoint=args.checkpoint, checkpoint_every=args.checkpoint_every,
        progress=not args.quiet, seed=args.seed,
    )  # fmt: skip
    if args.checkpoint and os.path.exists(args.checkpoint):
        trainer.load(args.checkpoint)
    trainer.run(args.iterations)
    evidence = trainer.evidence(args.is_particles, chunk=min(100, args.is_particles))
    report = {
        "iterations": trainer.iteration,
        "seconds_per_iteration": f"{trainer.elapsed / max(trainer.iteration, 1):.4f}",
        "elbo": f"{evidence['elbo']:.2f} +- {evidence['elbo_stderr']:.2f}",
        "marginal_likelihood": (
            f"{evidence['marginal_likelihood']:.2f} +- {evidence['marginal_likelihood_stderr']:.2f}"
            f" ({evidence['num_particles']} importance samples)"
        ),
    }
    if golden is not None:
        report["kl_golden_q"] = f"{tree_kl(guide, *golden):.4f}"
    if args.plots:
        plot_run(trainer, golden, Path(args.plots))
        report["plots"] = args.plots
    return report


def plot_run(trainer, golden, folder: Path) -> None:
    """Lower bound and KL against iterations; top topologies: q against golden frequency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    h = trainer.history
    fig, axes = plt.subplots(1, 3 if golden is not None else 1, figsize=(12, 3.5), squeeze=False)
    axes = axes[0]
    axes[0].plot(h.iteration, h.lower_bound)
    if len(h.lower_bound) > 10:  # the first records (annealing starts) would flatten the rest
        settled = h.lower_bound[len(h.lower_bound) // 10 :]
        span = max(settled) - min(settled)
        axes[0].set_ylim(min(settled) - 0.05 * span, max(settled) + 0.05 * span)
    axes[0].set(xlabel="iteration", ylabel=f"lower bound (K={trainer.loss.num_particles})")
    if golden is not None:
        axes[1].semilogy(h.iteration, h.kl)
        axes[1].set(xlabel="iteration", ylabel="KL(golden || q)")
        tables, probs = golden
        top = probs.argsort(descending=True)[:50]
        with torch.no_grad():
            q = trainer.guide.topology_distribution(outside="zero").log_prob(tables[top]).exp()
        axes[2].loglog(probs[top], q.clamp(min=1e-6), "o", ms=3)
        lims = [float(probs[top].min()) / 2, 1.0]
        axes[2].plot(lims, lims, "k--", lw=0.8)
        axes[2].set(xlabel="golden-run frequency", ylabel="VBPI probability (top 50)")
    fig.tight_layout()
    fig.savefig(folder / "vbpi.png", dpi=120)
    plt.close(fig)
