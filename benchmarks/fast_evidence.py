"""Fast evidence methods on DS1's top topology (JC69, Exp(10) branch lengths, 51 dimensions).

Every method of the Laplace and importance-sampling family: value, standard error, likelihood
evaluations and wall time, and the time each importance sampler needs to reach a standard error
of 0.04 and 0.01 nats, with the baseline (importance sampling with a multivariate Student-t
fitted by Laplace in log-branch-length space) measured side by side in the same run.
Reference: about -7036.5 (MrBayes stepping stone, Fourment et al. 2020).

    python benchmarks/fast_evidence.py [--data DIR] [--nested] [--out table.md]

One thread (``torch.set_num_threads(1)``); timings on a shared machine are noisy, so read the
ratios.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.distributions import Exponential

from models.phylo import datasets, phylo_model, read_alignment, read_trees
from models.phylo.credible import log_density_hessian
from varinf import (
    GLIS,
    MAP,
    VBIS,
    BatchedNestedSampling,
    BetaPrimeLaplus,
    FittedELBO,
    GammaLaplus,
    ImportanceSampling,
    Laplace,
    LogNormalLaplus,
    MaximumLikelihood,
)

DATA = datasets.root()  # the shipped data, laid out as ../shared/data/phylo
REFERENCE = -7036.5


def ds1_top_model(data: Path):
    """The model and the exact Hessian of its log density in log-branch-length space."""
    alignment = read_alignment(data / "alignments_fasta" / "DS1.fasta")
    credible = data / "credible_sets_19dubious" / "JC_no_gamma_credible_set_ds1"
    tree = read_trees(credible, taxa=alignment.taxa)[0]
    prior = Exponential(torch.tensor(10.0, dtype=torch.float64))
    return phylo_model(alignment, tree), log_density_hessian(alignment, tree.children, prior)


def methods(nested: bool, hessian) -> list:
    starts = {"num_starts": 2}
    mode = {**starts, "hessian": hessian}
    found = [
        MAP(**starts, seed=0),
        MaximumLikelihood(**starts, seed=0),
        Laplace(**mode, seed=0),
        GammaLaplus(**mode, seed=0),
        LogNormalLaplus(**mode, seed=0),
        BetaPrimeLaplus(**mode, seed=0),
        FittedELBO(1000, fit={"num_steps": 300}, seed=0),
        ImportanceSampling(10000, laplace=mode, batch_size=500, seed=0),
        GLIS(10000, laplus=mode, batch_size=500, seed=0),
        VBIS(10000, fit={"num_steps": 300}, batch_size=500, seed=0),
        VBIS(10000, guide="flow", fit={"laplace": mode}, batch_size=500, seed=0),
    ]
    if nested:  # dynesty's NestedSampling did not finish here in 23 minutes (one point a call)
        found.append(BatchedNestedSampling(num_live=100, num_replace=50, dlogz=0.5, seed=0))
    return found


def to_target(target: float, hessian) -> list:
    """The baseline and our best sampler, each run until its standard error reaches target."""
    mode = {"num_starts": 2, "hessian": hessian}
    options = {"batch_size": 500, "target_stderr": target, "seed": 1}
    return [
        ("baseline: IS, Laplace Student-t (log space)",
         ImportanceSampling(400000, laplace=mode, **options)),
        ("GLIS (gamma-Laplus proposal)", GLIS(400000, laplus=mode, **options)),
    ]  # fmt: skip


def row(label: str, result) -> str:
    if label == "vbis" and result.diagnostics.get("fit", "").endswith(", depth 4"):
        label = "vbis (flow)"
    khat = result.diagnostics.get("khat", float("nan"))
    return (
        f"| {label} | {result.value:.3f} | {result.stderr:.3f} | {result.num_evaluations} | "
        f"{result.elapsed:.1f} | {khat:.2f} |"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--nested", action="store_true", help="also batched nested sampling (slow)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model, hessian = ds1_top_model(args.data)
    header = "| method | log Z | stderr | evaluations | seconds | k-hat |\n" + "| --- " * 6 + "|"
    lines = [f"DS1 top topology, reference {REFERENCE}", "", header]
    print("\n".join(lines), flush=True)
    for estimator in methods(args.nested, hessian):
        lines.append(row(estimator.name, estimator.estimate(model)))
        print(lines[-1], flush=True)
    for target in (0.04, 0.01):
        lines += ["", f"Run until the standard error is below {target}:", "", header]
        print("\n".join(lines[-4:]), flush=True)
        for label, estimator in to_target(target, hessian):
            start = time.perf_counter()
            result = estimator.estimate(model)
            assert abs(result.elapsed - (time.perf_counter() - start)) < 5
            lines.append(row(label, result))
            print(lines[-1], flush=True)
    if args.out is not None:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
