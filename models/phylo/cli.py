"""``varinf phylo loglik``: the log-likelihood of each tree of a file given an alignment.

Example::

    varinf phylo loglik --alignment DS1.fasta --tree trees.nwk --model GTR \\
        --rates 1.2 3.4 0.8 1.1 4.5 1 --freqs 0.3 0.2 0.22 0.28 --gamma-shape 0.37

prints one log-likelihood per tree, in file order. Bad files or arguments print one line
``varinf phylo loglik: error: ...`` on standard error and return exit status 2.
"""

from __future__ import annotations

import argparse
import math
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


# Bounds of the substitution parameters the command accepts: ratios beyond a million to one
# and Gamma shapes outside [1e-3, 1e4] (IQ-TREE and RAxML-NG allow [0.02, 1000]) describe no
# real data and only overflow or underflow the transition matrices.
RATIO_BOUNDS = (1e-6, 1e6)
GAMMA_SHAPE_BOUNDS = (1e-3, 1e4)
MAX_GAMMA_CATEGORIES = 64


def _check_parameters(args: argparse.Namespace) -> None:
    """Refuse non-finite and absurd substitution parameters, naming the option."""
    lo, hi = RATIO_BOUNDS
    options = {"--kappa": [args.kappa], "--rates": args.rates or [], "--freqs": args.freqs or []}
    for option, values in options.items():
        bad = next((v for v in values if not math.isfinite(v) or v <= 0), None)
        if bad is not None:
            raise ValueError(f"{option} must be positive and finite, got {bad}")
        if option != "--freqs" and any(not lo <= v <= hi for v in values):
            raise ValueError(f"{option} must lie in [{lo:g}, {hi:g}], got {values}")
    if args.freqs is not None and max(args.freqs) / min(args.freqs) > hi:
        raise ValueError(f"--freqs differ by more than {hi:g} to one: {args.freqs}")
    if args.gamma_shape is not None:
        lo, hi = GAMMA_SHAPE_BOUNDS
        if not lo <= args.gamma_shape <= hi:  # False for NaN
            raise ValueError(f"--gamma-shape must lie in [{lo:g}, {hi:g}], got {args.gamma_shape}")
    if not 1 <= args.gamma_categories <= MAX_GAMMA_CATEGORIES:
        raise ValueError(f"--gamma-categories must be between 1 and {MAX_GAMMA_CATEGORIES}, "
                         f"got {args.gamma_categories}")  # fmt: skip


def _check_lengths(trees, path: str) -> None:
    for i, tree in enumerate(trees):
        if tree.lengths is None:
            raise PhyloFormatError(f"{path}, tree {i + 1}: no branch lengths")
        if not torch.isfinite(tree.lengths).all():
            raise PhyloFormatError(
                f"{path}, tree {i + 1}: infinite branch length; every branch needs a finite "
                "length (expected substitutions per site)"
            )


def _loglik(args: argparse.Namespace) -> list[float]:
    _check_parameters(args)
    aln = read_alignment(args.alignment)
    trees = read_trees(args.tree, taxa=aln.taxa)
    _check_lengths(trees, args.tree)
    freqs = args.freqs if args.freqs is not None else aln.empirical_frequencies()
    freqs = torch.as_tensor(freqs, dtype=torch.float64)
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
