r"""Gradient and ELBO variance of RQMC against i.i.d. Monte Carlo (Buchholz, Wenzel and Mandt 2018).

Setting: Bayesian logistic regression on scikit-learn's breast-cancer data (569 x 30,
standardised, intercept, prior N(0, 10 I); `models.regression.LogisticRegression`), at a
mean-field Gaussian guide fitted by SVI. For N = 4 ... 1024 particles it measures, over
``--repeats`` randomisations (independent i.i.d. draws, independently scrambled Sobol sets):

- the total variance of the reparameterised ELBO gradient w.r.t. the guide's parameters
  (`varinf.gradient_variance`), i.i.d. ("mc") and RQMC, their ratio, and each one's log-log
  slope against N (i.i.d.: -1; RQMC: steeper for smooth integrands);
- the same for the ELBO's value (`varinf.compare`);
- how the ratio at N = 64 changes with the latent dimension d = 2 ... 500, on a Gaussian target
  (the conjugate Gaussian model, with a guide 1.5x wider than the posterior and offset by half a
  standard deviation) and on a synthetic logistic regression (200 points, d features): the fall
  on the second is RQMC's known weak point; the first shows why a Gaussian target hides it.

    python benchmarks/rqmc_variance.py                # about five minutes on one core
    python benchmarks/rqmc_variance.py --repeats 100 --particles 4 16 64
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from torch.distributions.constraints import positive

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # measure this checkout

from models.conjugate import ConjugateGaussian  # noqa: E402
from models.regression import LogisticRegression  # noqa: E402
from varinf import ELBO, compare, gradient_variance  # noqa: E402


def fit_guide(problem: LogisticRegression, steps: int, seed: int) -> None:
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    svi = pyro.infer.SVI(problem.model, problem.guide, pyro.optim.Adam({"lr": 0.02}), ELBO(16))
    for _ in range(steps):
        svi.step()


def slope(particles, variances) -> float:
    return float(np.polyfit(np.log(particles), np.log(variances), 1)[0])


def logistic_table(particles, repeats: int, seed: int) -> list[dict]:
    problem = LogisticRegression.breast_cancer()
    start = time.perf_counter()
    fit_guide(problem, steps=3000, seed=seed)
    print(f"guide fitted in {time.perf_counter() - start:.1f} s; ", end="")
    print(f"ELBO(1024) = {ELBO(1024, seed=seed).estimate(problem.model, problem.guide).value:.3f}")
    rows = []
    for n in particles:
        losses = [ELBO(n), ELBO(n, sampler="rqmc")]
        grads = gradient_variance(
            losses, problem.model, problem.guide, repeats=repeats, seed=seed, progress=False
        ).table["total_variance"]
        values = compare(
            losses, problem.model, problem.guide, repeats=repeats, seed=seed, progress=False
        ).table["std"]
        row = {
            "N": n,
            "grad_mc": grads.iloc[0],
            "grad_rqmc": grads.iloc[1],
            "value_mc": values.iloc[0] ** 2,
            "value_rqmc": values.iloc[1] ** 2,
        }
        rows.append(row)
        print(
            f"N={n:5d}  gradient variance mc {row['grad_mc']:.4g} rqmc {row['grad_rqmc']:.4g} "
            f"ratio {row['grad_mc'] / row['grad_rqmc']:6.2f}   ELBO variance mc "
            f"{row['value_mc']:.4g} rqmc {row['value_rqmc']:.4g} "
            f"ratio {row['value_mc'] / row['value_rqmc']:6.2f}",
            flush=True,
        )
    return rows


def perturbed_guide(problem: ConjugateGaussian):
    loc, scale = problem.posterior

    def guide():
        shift = pyro.param("shift", torch.zeros_like(loc))
        pyro.sample("mean", dist.Normal(loc + 0.5 * scale + shift, 1.5 * scale).to_event(1))

    return guide


def synthetic_logistic(d: int, seed: int, num_data: int = 200) -> LogisticRegression:
    """Logistic regression with ``d`` standard-normal features and weights N(0, 1/d), prior
    N(0, I); its guide starts at the true weights with scale 0.2."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(num_data, d, generator=generator, dtype=torch.float64)
    w = torch.randn(d, generator=generator, dtype=torch.float64) / math.sqrt(d)
    y = torch.bernoulli(torch.sigmoid(x @ w), generator=generator)
    problem = LogisticRegression(x, y, prior_scale=1.0)
    pyro.param("w_loc", w.clone())
    pyro.param("w_scale", torch.full((d,), 0.2, dtype=torch.float64), constraint=positive)
    return problem


def dimension_table(dimensions, n: int, repeats: int, seed: int) -> list[dict]:
    """Gradient-variance ratio against the dimension on two targets: a Gaussian (where the
    reparameterised gradient is affine in the noise, a sum of one-dimensional integrands that
    RQMC integrates almost exactly in any dimension) and logistic regression (where the
    coordinates interact through $x^\top w$)."""
    rows = []
    for d in dimensions:
        row = {"d": d}
        for target in ("gaussian", "logistic"):
            pyro.clear_param_store()
            if target == "gaussian":
                problem = ConjugateGaussian.example(num_data=10, dim=d, seed=seed)
                guide = perturbed_guide(problem)
            else:
                problem = synthetic_logistic(d, seed)
                guide = problem.guide
            table = gradient_variance(
                [ELBO(n), ELBO(n, sampler="rqmc")],
                problem.model,
                guide,
                repeats=repeats,
                seed=seed,
                progress=False,
            ).table["total_variance"]
            row[target] = table.iloc[0] / table.iloc[1]
        rows.append(row)
        print(
            f"d={d:4d}  N={n}  gradient variance ratio mc / rqmc: Gaussian target "
            f"{row['gaussian']:8.2f}, logistic regression {row['logistic']:7.2f}",
            flush=True,
        )
    return rows


def plot(rows, dims, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["N"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), constrained_layout=True)
    for ax, key, title in ((axes[0], "grad", "gradient"), (axes[1], "value", "ELBO value")):
        ax.loglog(n, [r[f"{key}_mc"] for r in rows], "o-", label="i.i.d. MC")
        ax.loglog(n, [r[f"{key}_rqmc"] for r in rows], "s-", label="RQMC")
        ax.set(xlabel="particles N", ylabel="variance", title=f"{title} (logistic regression)")
        ax.legend()
    for target in ("gaussian", "logistic"):
        axes[2].loglog([r["d"] for r in dims], [r[target] for r in dims], "o-", label=target)
    axes[2].legend()
    axes[2].axhline(1, color="k", ls=":", lw=1)
    axes[2].set(
        xlabel="latent dimension d", ylabel="gradient variance ratio MC / RQMC",
        title="N = 64",
    )  # fmt: skip
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, nargs="+", default=[4, 16, 64, 256, 1024])
    parser.add_argument("--dimensions", type=int, nargs="+", default=[2, 5, 10, 50, 100, 500])
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default="rqmc_variance.png")
    parser.add_argument(
        "--only", choices=["particles", "dimensions"], help="run one of the two studies"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows, dims = [], []
    if args.only != "dimensions":
        rows = logistic_table(args.particles, args.repeats, args.seed)
        n = [r["N"] for r in rows]
        for key, what in (("grad", "gradient"), ("value", "ELBO value")):
            mc = slope(n, [r[f"{key}_mc"] for r in rows])
            rqmc = slope(n, [r[f"{key}_rqmc"] for r in rows])
            print(f"{what} variance log-log slope: mc {mc:.2f}, rqmc {rqmc:.2f}")
        assert all(math.isfinite(r["grad_rqmc"]) for r in rows)
    if args.only != "particles":
        dims = dimension_table(args.dimensions, 64, max(args.repeats // 3, 30), args.seed)
    if rows and dims:
        plot(rows, dims, args.plot)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
