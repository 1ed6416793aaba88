r"""``varinf phylo evidence``: marginal likelihoods of fixed topologies by many estimators.

Example::

    varinf phylo evidence --alignment DS1 --trees credible-set --max-trees 3 \
        --methods stepping-stone path-sampling bridge-sampling --csv ds1.csv --plot ds1.png \
        --checkpoint ds1.ckpt
    varinf phylo evidence --alignment DS1 --trees credible-set \
        --methods laplace gamma-laplus glis vbis is --csv ds1_credible.csv --plot posterior.png

For each tree, one power-posterior run (every temperature and replicate in one batched MCMC)
feeds the power-posterior methods, and one posterior run feeds bridge sampling, the harmonic
means, CPO, PPD and the generalized stepping stone's reference; any other ``--methods`` name is
looked up among the estimators exported by `varinf` (by ``Estimator.name``) and run with its
defaults; the fast methods (`models.phylo.credible.FAST_METHODS`) instead run on every tree
at once through the batched likelihood. With several trees, each method's evidences become a
posterior over the trees, scored against golden runs (`models.phylo.evidence_posterior`).
Prints a table, writes CSV and a plot. With ``--checkpoint DIR`` finished (tree,
method) rows are kept in ``DIR/results.csv`` and an interrupted sampler saves its state there
(Ctrl-C), so rerunning the same command resumes where it stopped. Bad files or arguments print
one line ``varinf phylo evidence: error: ...`` and return exit status 2.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import torch

from . import evidence_posterior as posterior
from .alignment import read_alignment
from .credible import FAST_METHODS
from .errors import PhyloFormatError
from .evidence_runs import branch_prior, estimator_classes, evaluate_tree, substitution
from .trees import read_trees

__all__ = ["add_parser", "run_evidence"]

COLUMNS = ("tree", "method", "estimate", "stderr", "num_evaluations", "seconds", "warnings")


def add_parser(commands) -> argparse.ArgumentParser:
    """Register ``evidence`` on the ``varinf phylo`` subcommands."""
    p = commands.add_parser(
        "evidence", help="estimate the marginal likelihood of fixed topologies by many methods"
    )
    p.add_argument(
        "--alignment",
        required=True,
        help="FASTA, NEXUS or PHYLIP alignment, or a shipped data set DS1..DS4",
    )
    p.add_argument("--trees", required=True,
                   help="Newick/NEXUS topologies, or 'credible-set': the shipped credible set "
                        "of --alignment DS1..DS4 (42 trees for DS1)")  # fmt: skip
    p.add_argument("--max-trees", type=int, default=None, help="only the first N trees")
    p.add_argument("--model", default="JC69", type=str.upper, choices=("JC69", "K80", "HKY", "GTR"))
    p.add_argument("--kappa", type=float, default=2.0, help="K80/HKY ratio (default 2)")
    p.add_argument("--rates", type=float, nargs=6, metavar="R", help="GTR exchangeabilities")
    p.add_argument("--freqs", type=float, nargs=4, metavar="PI", help="base frequencies A C G T")
    p.add_argument("--branch-prior", default="exp:10",
                   help="exp:RATE, gamma:SHAPE,RATE or lognormal:LOC,SCALE")  # fmt: skip
    p.add_argument("--methods", nargs="+", default=["stepping-stone", "path-sampling"],
                   help="estimator names (Estimator.name), e.g. stepping-stone path-sampling "
                        "modified-path-sampling generalized-stepping-stone bridge-sampling "
                        "harmonic-mean cpo ppd smc")  # fmt: skip
    p.add_argument("--num-steps", type=int, default=50, help="temperatures - 1 (default 50)")
    p.add_argument("--alpha", type=float, default=0.3, help="Beta(alpha, 1) quantiles (0.3)")
    p.add_argument("--control-variates", choices=("quadratic", "linear", "none"),
                   help="zero-variance control variates of the power-posterior methods "
                        "(default: each method's own, quadratic for the stepping stones, "
                        "none for path sampling)")  # fmt: skip
    p.add_argument("--replicates", type=int, default=2, help="chains per temperature (2)")
    p.add_argument("--chains", type=int, default=4, help="posterior-run chains (4)")
    p.add_argument("--warmup", type=int, default=200, help="warm-up iterations per chain")
    p.add_argument("--draws", type=int, default=200, help="draws per chain")
    p.add_argument(
        "--particles",
        type=int,
        default=2000,
        help="importance draws per tree of the batched fast methods (2000)",
    )
    p.add_argument(
        "--golden",
        type=Path,
        nargs="+",
        metavar="TRPROBS",
        help="MrBayes .trprobs golden runs (pooled) to score the posterior over "
        "the trees; default: the shipped golden runs of DS1..DS4",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--csv", type=Path, help="write the table as CSV")
    p.add_argument("--plot", type=Path, help="write a plot of the estimates (PNG, PDF, ...)")
    p.add_argument("--checkpoint", type=Path, help="folder to keep results and sampler states")
    p.add_argument("--progress", action="store_true", help="show the samplers' progress bars")
    p.set_defaults(func=run_evidence)
    return p


def run_evidence(args: argparse.Namespace) -> int:
    """Run the command; return the exit status (0, 2 on bad input, 130 if interrupted)."""
    try:
        rows, scores = _run(args)
    except (PhyloFormatError, ValueError, FloatingPointError, OSError) as err:
        message = " ".join(str(err).split())
        print(f"varinf phylo evidence: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        where = f"; rerun with --checkpoint {args.checkpoint} to resume" if args.checkpoint else ""
        print(f"varinf phylo evidence: interrupted{where}", file=sys.stderr)
        return 130
    _print_table(rows)
    if scores is not None:
        posterior.print_scores(rows, *scores)
    if args.csv:
        _write_csv(args.csv, rows)
    if args.plot and scores is not None and any("golden" in r for r in rows):
        posterior.plot_posterior(args.plot, rows)
    elif args.plot:
        _plot(args.plot, rows)
    return 0


def _run(args: argparse.Namespace) -> tuple[list[dict], tuple | None]:
    """The rows, and ``(golden scores, methods without a posterior)`` for several trees."""
    classes = estimator_classes(args.methods)
    prior = branch_prior(args.branch_prior)
    if args.particles < 2:
        raise ValueError(f"--particles must be at least 2, got {args.particles}")
    alignment_path, data_set = posterior.resolve_alignment(args.alignment)
    aln = read_alignment(alignment_path)
    trees = read_trees(posterior.resolve_trees(args.trees, data_set), taxa=aln.taxa)
    if args.max_trees is not None:
        if args.max_trees < 1:
            raise ValueError(f"--max-trees must be at least 1, got {args.max_trees}")
        trees = trees[: args.max_trees]
    model_sub = substitution(args, aln)
    golden_paths = posterior.resolve_golden(args.golden, data_set) if len(trees) > 1 else []
    golden = posterior.load_golden(golden_paths, trees, aln.taxa)
    done = _load_checkpoint(args.checkpoint)
    fast = [c for c in classes if c.name in FAST_METHODS]
    rows = _fast_rows(args, aln, trees, model_sub, prior, fast, done)
    classes_per_tree = [c for c in classes if c not in fast]
    for index, tree in enumerate(trees if classes_per_tree else [], start=1):
        wanted = [c for c in classes_per_tree if (index, c.name) not in done]
        rows += [done[(index, c.name)] for c in classes_per_tree if (index, c.name) in done]
        if not wanted:
            continue
        _say(f"tree {index}/{len(trees)}: {', '.join(c.name for c in wanted)}")
        started = time.perf_counter()
        for row in evaluate_tree(aln, tree, model_sub, prior, wanted, args, index):
            row["tree"] = index
            rows.append(row)
            _save_row(args.checkpoint, row)
        _say(f"tree {index}/{len(trees)} done in {time.perf_counter() - started:.1f} s")
    order = {c.name: i for i, c in enumerate(classes)}
    rows = sorted(rows, key=lambda r: (int(r["tree"]), order[r["method"]]))
    if len(trees) < 2:
        return rows, None
    skipped = posterior.add_posterior(rows, len(trees))
    scores = posterior.golden_scores(rows, trees, golden) if golden else {}
    return rows, (scores, skipped)


def _fast_rows(args, aln, trees, model_sub, prior, fast, done) -> list[dict]:
    """The fast methods over every tree at once (batched), or their checkpointed rows."""
    numbers = range(1, len(trees) + 1)
    missing = [c.name for c in fast if any((i, c.name) not in done for i in numbers)]
    kept = [done[(i, c.name)] for c in fast if c.name not in missing for i in numbers]
    if not missing:
        return kept
    _say(f"{len(trees)} trees batched: {', '.join(missing)}")
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    rows = posterior.fast_rows(aln, trees, missing, model_sub, prior, args.particles)
    _say(f"{len(trees)} trees batched: done in {time.perf_counter() - started:.1f} s")
    for row in rows:
        row.pop("posterior", None)
        _save_row(args.checkpoint, row)
    return kept + rows


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _load_checkpoint(folder: Path | None) -> dict:
    if folder is None or not (folder / "results.csv").exists():
        return {}
    with open(folder / "results.csv", newline="") as handle:
        return {(int(r["tree"]), r["method"]): r for r in csv.DictReader(handle)}


def _save_row(folder: Path | None, row: dict) -> None:
    if folder is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "results.csv"
    new = not path.exists()
    with open(path, "a", newline="") as handle:
        writer = csv.DictWriter(handle, COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow({k: row.get(k, "") for k in COLUMNS})


def _print_table(rows: list[dict]) -> None:
    print(f"{'tree':>4}  {'method':<28} {'estimate':>14} {'stderr':>9} {'evals':>11} {'s':>8}")
    for r in rows:
        print(
            f"{int(r['tree']):>4}  {r['method']:<28} {float(r['estimate']):>14.4f} "
            f"{float(r['stderr']):>9.4f} {int(float(r['num_evaluations'])):>11d} "
            f"{float(r['seconds']):>8.1f}"
        )
        if r.get("warnings"):
            print(f"      warning: {r['warnings']}")


def _write_csv(path: Path, rows: list[dict]) -> None:
    extra = tuple(k for k in ("posterior", "golden") if any(k in r for r in rows))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, COLUMNS + extra)
        writer.writeheader()
        writer.writerows({k: r.get(k, "") for k in COLUMNS + extra} for r in rows)


def _plot(path: Path, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, ax = plt.subplots(figsize=(6, 0.5 + 0.4 * len(rows)))
    for i, r in enumerate(rows):
        colour = f"C{methods.index(r['method']) % 10}"
        ax.errorbar(float(r["estimate"]), i, xerr=2 * float(r["stderr"]), fmt="o", color=colour)
    ax.set_yticks(range(len(rows)), [f"tree {r['tree']}: {r['method']}" for r in rows])
    ax.set_xlabel("log marginal likelihood (± 2 standard errors)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
