"""``varinf phylo loglik``: the log-likelihood of each tree of a file given an alignment.

Example::

    varinf phylo loglik --alignment DS1.fasta --tree trees.nwk --model GTR \\
        --rates 1.2 3.4 0.8 1.1 4.5 1 --freqs 0.3 0.2 0.22 0.28 --gamma-shape 0.37

prints one log-likelihood per tree, in file order. Bad files or arguments print one line
``varinf phylo loglik: error: ...`` on standard error and return exit status 2.
"""

from __future__ import annotations

import argparse
import sys

import torch

from . import evidence_cli
from .alignment import read_alignment
from .errors import PhyloFormatError
from .likelihood import log_likelihood
from .substitution import GTR, HKY, JC69, K80, discrete_gamma_rates
from .trees import read_trees
from .vbpi_cli import add_vbpi_parser

__all__ = ["add_parser", "run_loglik"]

MODELS = ("JC69", "K80", "HKY", "GTR")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``phylo`` (with its ``loglik`` subcommand) on an argparse subparsers object."""
    phylo = subparsers.add_parser("phylo", help="phylogenetic models: tree log-likelihoods")
    commands = phylo.add_subparsers(dest="phylo_command", metavar="COMMAND")
    commands.required = True
    loglik = commands.add_parser(
        "loglik", help="print the log-likelihood of every tree in a file, one per line"
    )
    loglik.add_argument("--alignment", required=True, help="FASTA, NEXUS or PHYLIP alignment")
    loglik.add_argument("--tree", required=True, help="Newick or NEXUS trees with branch lengths")
    loglik.add_argument("--model", default="JC69", type=str.upper, choices=MODELS)
    loglik.add_argument("--kappa", type=float, default=2.0, help="K80/HKY ratio (default 2)")
    loglik.add_argument("--rates", type=float, nargs=6, metavar="R",
                        help="GTR exchangeabilities AC AG AT CG CT GT (default all 1)")  # fmt: skip
    loglik.add_argument("--freqs", type=float, nargs=4, metavar="PI",
                        help="HKY/GTR base frequencies A C G T (default: empirical)")  # fmt: skip
    loglik.add_argument("--gamma-shape", type=float, default=None,
                        help="discrete-Gamma shape alpha (default: no rate variation)")  # fmt: skip
    loglik.add_argument("--gamma-categories", type=int, default=4)
    loglik.set_defaults(func=run_loglik)
    evidence_cli.add_parser(commands)
    add_vbpi_parser(commands)
    return phylo


def run_loglik(args: argparse.Namespace) -> int:
    """Compute and print the log-likelihoods; return the exit status (0, or 2 on bad input)."""
    try:
        values = _loglik(args)
    except (PhyloFormatError, ValueError) as err:
        message = " ".join(str(err).split())
        print(f"varinf phylo loglik: error: {message}", file=sys.stderr)
        return 2
    for value in values:
        print(f"{value:.6f}")
    return 0


def _loglik(args: argparse.Namespace) -> list[float]:
    aln = read_alignment(args.alignment)
    trees = read_trees(args.tree, taxa=aln.taxa)
    bare = next((i for i, t in enumerate(trees) if t.lengths is None), None)
    if bare is not None:
        raise PhyloFormatError(f"{args.tree}, tree {bare + 1}: no branch lengths")
    freqs = args.freqs if args.freqs is not None else aln.empirical_frequencies()
    freqs = torch.as_tensor(freqs, dtype=torch.float64)
    if (freqs <= 0).any():
        raise ValueError("--freqs must all be positive")
    freqs = freqs / freqs.sum()
    model = {
        "JC69": lambda: JC69(),
        "K80": lambda: K80(args.kappa),
        "HKY": lambda: HKY(args.kappa, freqs),
        "GTR": lambda: GTR(args.rates or [1.0] * 6, freqs),
    }[args.model]()
    rates = None
    if args.gamma_shape is not None:
        rates = discrete_gamma_rates(args.gamma_shape, args.gamma_categories)
    children = torch.stack([t.children for t in trees])
    lengths = torch.stack([t.lengths for t in trees])
    with torch.no_grad():
        return log_likelihood(aln, children, lengths, model, rates=rates).tolist()
