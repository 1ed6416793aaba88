"""Marginal likelihood of DS1's top topology by every method, against MrBayes's stepping stone.

Model: DS1 (27 taxa, 1949 sites), JC69, i.i.d. Exponential(10) branch lengths, topology fixed
at the first tree of the "19 dubious ways" credible set (the most probable one of the golden
runs). For each method in `METHODS`, over ``--replicates`` independent repeats: the mean
estimate, its standard deviation across repeats, the mean reported standard error, wall time
and likelihood evaluations. Then the wall time our stepping stone and SMC need for a standard
error of 0.05 nats, against MrBayes 3.2.7's stepping stone (``mb``, run here on the same model
from ``benchmarks/mrbayes_ds1.nex``, in the same process, so under the same load), as ratios.
The power-posterior run has 100 temperatures (the estimators' default is the paper's 50): with
the stepping stone's control variates (`varinf.estimators.control_variates`) its error falls
with the size of each step, $\\Delta\\beta\\,\\mathrm{sd}(\\ell)$, so 100 stones of half the
draws each reached 0.034 nats where 50 reached 0.062 (one run each, 4 chains; plain stepping
stone: 0.107 and 0.110). Times for 0.05 nats are extrapolated by the $1/\\sqrt{n}$ rule from
the runs made here: for MrBayes ``time * (spread / 0.05)^2`` (its burn-in is a share of each
step's generations), for ours ``warm-up + draw time * (error / 0.05)^2`` (warm-up is a fixed
cost; the draw time is the run's time times the share of its likelihood evaluations spent on
draws).

Add a method by appending a `Method` to `METHODS`: a name and a function of the shared
`Context` (the model and this repeat's runs) returning an `Estimate`. `FAST_METHODS` are the
Laplace, Laplus, importance-sampling and nested-sampling rows (no MCMC run; run them alone
with e.g. ``--methods laplace glis vbis vbis-flow nested-batched``, which skips MrBayes).

Run: ``python benchmarks/phylo_evidence.py [--replicates 3] [--mrbayes-ngen 4000000]``; one
intra-op thread. The machine may be shared: compare ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import math
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyro.distributions
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # measure this checkout

import varinf  # noqa: E402
from models.phylo import datasets, phylo_model, read_alignment, read_trees  # noqa: E402
from varinf.estimators.runs import PosteriorRun, PowerPosteriorRun  # noqa: E402
from varinf.estimators.temperatures import beta_quantile_temperatures  # noqa: E402

MRBAYES_INPUT = ROOT / "benchmarks" / "mrbayes_ds1.nex"
TARGET_STDERR = 0.05


@dataclass
class Context:
    """What a method may use: the model, this repeat's shared runs, the options."""

    model: Callable
    options: argparse.Namespace
    seed: int
    runs: dict = field(default_factory=dict)

    def power(self) -> PowerPosteriorRun:
        if "power" not in self.runs:
            o = self.options
            temps = beta_quantile_temperatures(o.num_steps, o.alpha)
            self.runs["power"] = _timed(lambda: PowerPosteriorRun.sample(
                self.model, temperatures=temps, num_replicates=o.num_replicates,
                num_warmup=o.warmup, num_draws=o.draws, seed=self.seed,
            ))  # fmt: skip
        return self.runs["power"]

    def posterior(self) -> PosteriorRun:
        if "posterior" not in self.runs:
            o = self.options
            self.runs["posterior"] = _timed(lambda: PosteriorRun.sample(
                self.model, num_chains=o.num_chains, num_warmup=o.warmup,
                num_draws=o.posterior_draws, seed=self.seed + 1,
            ))  # fmt: skip
        return self.runs["posterior"]


@dataclass
class Method:
    """``run(context) -> (Estimate, seconds[, fixed seconds])``: seconds include the shared run
    it used (its full cost, as if run alone); fixed seconds, the part that more draws would
    not repeat (the power-posterior warm-up)."""

    name: str
    run: Callable


def _timed(make):
    started = time.perf_counter()
    value = make()
    value.seconds = time.perf_counter() - started
    return value


def _with_power(cls, **options):
    def run(ctx):
        power = ctx.power()
        started = time.perf_counter()
        estimate = cls(run=power, **options).estimate(ctx.model)
        draw_evaluations = float(power.mcmc.diagnostics["n_steps"].sum())
        warmup = power.seconds * (1 - draw_evaluations / power.num_evaluations)
        return estimate, power.seconds + time.perf_counter() - started, warmup

    return run


def _with_posterior(cls, **options):
    def run(ctx):
        posterior = ctx.posterior()
        started = time.perf_counter()
        estimate = cls(run=posterior, **options).estimate(ctx.model)
        return estimate, posterior.seconds + time.perf_counter() - started

    return run


def _gss(ctx):
    o, posterior = ctx.options, ctx.posterior()
    started = time.perf_counter()
    estimator = varinf.GeneralizedSteppingStone(
        beta_quantile_temperatures(o.gss_steps, 1.0), posterior_run=posterior,
        num_replicates=o.num_replicates, num_warmup=o.warmup, num_draws=o.draws,
    )  # fmt: skip
    estimate = estimator.estimate(ctx.model)
    cost = estimate.num_evaluations + posterior.num_evaluations
    estimate = _replace_cost(estimate, cost)
    return estimate, posterior.seconds + time.perf_counter() - started


def _smc(ctx):
    o = ctx.options
    estimator = varinf.SequentialMonteCarlo(o.smc_particles, num_groups=o.smc_groups)
    started = time.perf_counter()
    return estimator.estimate(ctx.model), time.perf_counter() - started


def _replace_cost(estimate, cost):
    from dataclasses import replace

    return replace(estimate, num_evaluations=cost)


METHODS = [
    Method("stepping-stone", _with_power(varinf.SteppingStone)),
    Method("stepping-stone-uncontrolled", _with_power(varinf.SteppingStone, control_variates=None)),
    Method("path-sampling", _with_power(varinf.PathSampling)),
    Method("modified-path-sampling", _with_power(varinf.ModifiedPathSampling)),
    Method(
        "controlled-modified-path-sampling",
        _with_power(varinf.ModifiedPathSampling, control_variates="quadratic"),
    ),
    Method("generalized-stepping-stone", _gss),
    Method("bridge-sampling", _with_posterior(varinf.BridgeSampling)),
    Method("harmonic-mean", _with_posterior(varinf.HarmonicMean)),
    Method("stabilized-harmonic-mean", _with_posterior(varinf.StabilizedHarmonicMean)),
    Method("smc", _smc),
]


# ---- Fast methods (Laplace, Laplus, importance and nested sampling; issue 12) -----------------
# Each needs no MCMC run; the mode-based ones use the exact inside-outside Hessian of DS1's
# log density in log-branch-length space. `--methods` picks any of them by name, alone or with
# the methods above; "nested-batched" (11 minutes) runs only when asked for.


def _ds1_hessian():
    from models.phylo.credible import log_density_hessian

    aln = read_alignment(datasets.path("DS1"))
    tree = read_trees(datasets.path("DS1-credible"), taxa=aln.taxa)[0]
    prior = torch.distributions.Exponential(torch.tensor(10.0, dtype=torch.float64))
    return log_density_hessian(aln, tree.children, prior)


def _fast(make):
    """A `Method` run from ``make(hessian, seed) -> Estimator`` (no shared run)."""

    def run(ctx):
        if "hessian" not in ctx.runs:
            ctx.runs["hessian"] = _ds1_hessian()
        estimator = make({"num_starts": 2, "hessian": ctx.runs["hessian"]}, ctx.seed)
        started = time.perf_counter()
        return estimator.estimate(ctx.model), time.perf_counter() - started

    return run


FAST_METHODS = [
    Method("map", _fast(lambda mode, seed: varinf.MAP(num_starts=2, seed=seed))),
    Method("ml", _fast(lambda mode, seed: varinf.MaximumLikelihood(num_starts=2, seed=seed))),
    Method("laplace", _fast(lambda mode, seed: varinf.Laplace(**mode, seed=seed))),
    Method("gamma-laplus", _fast(lambda mode, seed: varinf.GammaLaplus(**mode, seed=seed))),
    Method("betaprime-laplus", _fast(lambda m, seed: varinf.BetaPrimeLaplus(**m, seed=seed))),
    Method("fitted-elbo", _fast(lambda m, seed: varinf.FittedELBO(1000, seed=seed))),
    Method("is", _fast(lambda mode, seed: varinf.ImportanceSampling(
        10000, laplace=mode, batch_size=500, seed=seed))),
    Method("glis", _fast(lambda mode, seed: varinf.GLIS(
        10000, laplus=mode, batch_size=500, seed=seed))),
    Method("vbis", _fast(lambda mode, seed: varinf.VBIS(10000, batch_size=500, seed=seed))),
    Method("vbis-flow", _fast(lambda mode, seed: varinf.VBIS(
        10000, guide="flow", fit={"laplace": mode}, batch_size=500, seed=seed))),
    Method("nested-batched", _fast(lambda mode, seed: varinf.BatchedNestedSampling(
        num_live=400, num_replace=200, dlogz=0.5, seed=seed))),
]  # fmt: skip
FAST_DEFAULT = [m.name for m in FAST_METHODS if m.name != "nested-batched"]


def ds1_model():
    aln = read_alignment(datasets.path("DS1"))
    tree = read_trees(datasets.path("DS1-credible"), taxa=aln.taxa)[0]
    return phylo_model(aln, tree, "JC69", pyro.distributions.Exponential(10.0), per_site=True)


def run_mrbayes(ngen: int, nruns: int, workdir: Path, seed: int = 1) -> dict:
    """MrBayes's stepping stone on ``mrbayes_ds1.nex`` with ``ngen`` generations, ``nruns``
    independent runs and ``seed``: per-run values, their spread, and wall and CPU seconds per
    run."""
    if shutil.which("mb") is None:
        return {}
    text = MRBAYES_INPUT.read_text()
    text = re.sub(r"ss ngen=\d+", f"ss ngen={ngen}", text)
    text = re.sub(r"nruns=\d+", f"nruns={nruns}", text)
    text = re.sub(r"seed=\d+ swapseed=\d+", f"seed={seed} swapseed={seed}", text)
    (workdir / "ds1.nex").write_text(text)
    started, cpu = time.perf_counter(), _children_cpu()
    out = subprocess.run(["mb", "ds1.nex"], cwd=workdir, capture_output=True, text=True).stdout
    wall, cpu = time.perf_counter() - started, _children_cpu() - cpu
    table = out.split("Marginal likelihood (ln)")[-1]
    values = [float(v) for v in re.findall(r"^\s+\d+\s+(-\d+\.\d+)", table, re.M)][:nruns]
    spread = statistics.stdev(values) if len(values) > 1 else math.nan
    return {
        "values": values, "mean": statistics.mean(values), "spread": spread,
        "wall_per_run": wall / nruns, "cpu_per_run": cpu / nruns, "ngen": ngen,
    }  # fmt: skip


def _variance_interval(dof: int) -> tuple[float, float]:
    """95% interval of a variance over its estimate from ``dof`` degrees of freedom (chi-square),
    as factors: MrBayes's spread comes from a few runs, so its time for 0.05 nats is uncertain."""
    from scipy.stats import chi2

    return dof / chi2.ppf(0.975, dof), dof / chi2.ppf(0.025, dof)


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replicates", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=[m.name for m in METHODS] + FAST_DEFAULT)
    parser.add_argument("--num-steps", type=int, default=100)
    parser.add_argument("--alpha", type=float, default=0.3)
    parser.add_argument("--num-replicates", type=int, default=4, help="chains per temperature")
    parser.add_argument("--num-chains", type=int, default=8, help="posterior-run chains")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument("--posterior-draws", type=int, default=500)
    parser.add_argument("--gss-steps", type=int, default=10)
    parser.add_argument("--smc-particles", type=int, default=128)
    parser.add_argument("--smc-groups", type=int, default=4)
    parser.add_argument("--mrbayes-ngen", type=int, default=4_000_000)
    parser.add_argument("--mrbayes-runs", type=int, default=4)
    parser.add_argument("--mrbayes-seed", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args()
    torch.set_num_threads(1)
    model = ds1_model()
    methods = [m for m in METHODS + FAST_METHODS if m.name in options.methods]
    results = {m.name: [] for m in methods}
    for r in range(options.replicates):
        torch.manual_seed(options.seed + r)
        context = Context(model, options, seed=options.seed + 100 * r)
        for method in methods:
            estimate, seconds, *fixed = method.run(context)
            results[method.name].append((estimate, seconds, sum(fixed)))
            print(f"replicate {r}: {estimate} ({seconds:.1f} s with its runs)", flush=True)
    mrbayes = {}
    if any(m in METHODS for m in methods):  # the fast methods alone need no MrBayes run
        with tempfile.TemporaryDirectory() as folder:
            mrbayes = run_mrbayes(
                options.mrbayes_ngen, options.mrbayes_runs, Path(folder), options.mrbayes_seed
            )
    report(results, mrbayes)


def report(results: dict, mrbayes: dict) -> None:
    print("\n| method | mean estimate | sd across replicates | mean reported stderr | "
          "wall s | likelihood evaluations |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- |")
    for name, rows in results.items():
        values = [e.value for e, _, _ in rows]
        sd = statistics.stdev(values) if len(values) > 1 else math.nan
        print(f"| {name} | {statistics.mean(values):.3f} | {sd:.3f} | "
              f"{statistics.mean(e.stderr for e, _, _ in rows):.3f} | "
              f"{statistics.mean(s for _, s, _ in rows):.1f} | "
              f"{statistics.mean(e.num_evaluations for e, _, _ in rows):.3g} |")  # fmt: skip
    if not mrbayes:
        print("\nNo MrBayes comparison (mb not found, or only fast methods were run)")
        return
    print(f"| MrBayes 3.2.7 SS ({mrbayes['ngen']:.0e} gen) | {mrbayes['mean']:.3f} | "
          f"{mrbayes['spread']:.3f} | - | {mrbayes['wall_per_run']:.1f} per run | - |")  # fmt: skip
    mb_time = mrbayes["wall_per_run"] * (mrbayes["spread"] / TARGET_STDERR) ** 2
    low, high = _variance_interval(len(mrbayes["values"]) - 1)
    print(f"\nMrBayes runs: {mrbayes['values']}; CPU {mrbayes['cpu_per_run']:.1f} s per run")
    print(f"MrBayes wall time for a 0.05 spread (1/sqrt(n) rule): {mb_time:.0f} s "
          f"(95% interval from the spread of {len(mrbayes['values'])} runs: "
          f"{mb_time * low:.0f}-{mb_time * high:.0f} s)")  # fmt: skip
    timed = ("stepping-stone", "stepping-stone-uncontrolled", "controlled-modified-path-sampling",
             "smc")  # fmt: skip
    for name in timed:
        if name not in results:
            continue
        rows = results[name]
        sds = [e.stderr for e, _, _ in rows]
        error = statistics.stdev(e.value for e, _, _ in rows) if len(rows) > 2 else max(sds)
        error = max(error, statistics.mean(sds))
        fixed = statistics.mean(f for _, _, f in rows)
        scaled = statistics.mean(s for _, s, _ in rows) - fixed
        ours = fixed + scaled * (error / TARGET_STDERR) ** 2
        print(
            f"{name}: {ours:.0f} s for a 0.05 error ({fixed:.0f} s of warm-up) -> "
            f"{mb_time / ours:.2f}x MrBayes's time ({mb_time * low / ours:.2f}-"
            f"{mb_time * high / ours:.2f}x from MrBayes's spread alone)"
        )


if __name__ == "__main__":
    main()
