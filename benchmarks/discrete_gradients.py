"""Gradient variance of the discrete gradient estimators on the Bernoulli toy, k = 1 ... 8.

The toy of Kool, van Hoof and Welling (2020): three Bernoullis sharing a logit eta,
f(b) = sum_i (b_i - p0_i)^2 with p0 = (0.6, 0.51, 0.48); exact gradient -0.0450 at eta = 0 and
-0.0032 at eta = -4. The table comes from the core's ``varinf.gradient_variance``: each estimator
at each number of evaluations k is a Pyro loss, ``ExpectationLoss(estimator, k)``, on a model
whose factor is -f(b) and a guide with the discrete site b; ``--repeats`` independent gradients
d/deta per cell give its variance, and their mean is shown next to the exact gradient (relaxed
estimators are biased). The score function with a moving average is warmed up by one call and
then updates its average after every repeat, as in training; RELAX's control variate is trained
first (300 Adam steps at this eta) and the table reports the variance for eta only.
``tests/gradients/test_expectation.py`` checks these variances against the functional
estimators'. With ``--pyro`` it also compares the ELBO losses (VIMCO, the leave-one-out score
ELBO, Pyro's Trace_ELBO, EstimatorELBO with sum-and-sample and unordered set) on a 3-state
categorical latent.

Usage: python benchmarks/discrete_gradients.py [--repeats 2000] [--jobs 1] [--etas 0 -4] [--pyro]
"""

from __future__ import annotations

import argparse
import multiprocessing
import time

import pandas as pd
import pyro
import pyro.distributions as dist
import torch

from varinf import gradient_variance
from varinf.gradients import (
    RELAX,
    GumbelSoftmax,
    ScoreFunction,
    StraightThrough,
    SumAndSample,
    UnorderedSet,
    mlp_control_variate,
)
from varinf.gradients.expectation import ExpectationLoss
from varinf.gradients.toy import exact_gradient, f, sample_gradients, toy_dist

MAX_K = 8


def estimators() -> dict:
    """name -> (factory, smallest k)."""
    return {
        "score": (ScoreFunction, 1),
        "score + moving average": (lambda: ScoreFunction("moving-average"), 1),
        "score + leave-one-out": (lambda: ScoreFunction("leave-one-out"), 2),
        "sum-and-sample": (SumAndSample, 1),
        "unordered set (no baseline)": (lambda: UnorderedSet(baseline=False), 1),
        "unordered set + built-in baseline": (UnorderedSet, 2),
        "RELAX (trained control variate)": (None, 1),
        "Gumbel-softmax tau=0.5 (biased)": (lambda: GumbelSoftmax(0.5), 1),
        "straight-through tau=0.5 (biased)": (lambda: StraightThrough(0.5), 1),
    }


def trained_relax(eta: float, steps: int = 300, seed: int = 0) -> RELAX:
    """RELAX with a REBAR term and a small network, its variance minimised at this eta."""
    torch.manual_seed(seed)
    relax = RELAX(net=mlp_control_variate(3, 2, 16)).double()
    optimizer = torch.optim.Adam(relax.parameters(), lr=0.01)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        optimizer.zero_grad()
        etas = torch.full((64,), eta, dtype=torch.float64, requires_grad=True)
        relax.backward(relax.surrogate(toy_dist(etas), f, 1, generator).surrogate, [etas])
        optimizer.step()
    return relax


def toy_model() -> None:
    """f read off the model: the site b only names the variable, the factor is -f(b)."""
    prior = dist.Bernoulli(torch.tensor(0.5, dtype=torch.float64)).expand([3]).to_event(1)
    b = pyro.sample("b", prior)
    pyro.factor("f", -f(b))


def toy_guide() -> None:
    """q: three Bernoullis sharing the logit eta (the Pyro form of ``toy_dist``)."""
    eta = pyro.param("eta", torch.tensor(0.0, dtype=torch.float64))
    pyro.sample("b", dist.Bernoulli(logits=eta).expand([3]).to_event(1))


def toy_losses(eta: float, names: list[str]) -> tuple[list, list]:
    """``ExpectationLoss`` per (estimator, k) and their keys; moving averages warmed up."""
    relax = trained_relax(eta) if "RELAX (trained control variate)" in names else None
    losses, keys = [], []
    for name in names:
        factory, smallest = estimators()[name]
        for k in range(smallest, MAX_K + 1):
            estimator = relax if factory is None else factory()
            if name == "score + moving average":  # one warm-up call starts the average
                sample_gradients(estimator, eta, k, 10000, seed=10_000 + k)
            losses.append(ExpectationLoss(estimator, k))
            keys.append((name, k))
    return losses, keys


def toy_tables(
    eta: float, repeats: int, names: list[str] | None = None, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Variance and mean of d/deta by estimator (rows) and k (columns), from
    ``varinf.gradient_variance`` over ``ExpectationLoss`` on the Pyro toy model and guide."""
    names = list(estimators()) if names is None else names
    losses, keys = toy_losses(eta, names)
    pyro.clear_param_store()
    pyro.param("eta", torch.tensor(eta, dtype=torch.float64))
    result = gradient_variance(losses, toy_model, toy_guide, repeats=repeats, seed=seed)
    variance = {name: {} for name in names}
    mean = {name: {} for name in names}
    for (name, k), label in zip(keys, result.gradients, strict=True):
        grads = result.gradients[label]["eta"]
        variance[name][k] = grads.var().item()
        mean[name][k] = grads.mean().item()
    return pd.DataFrame(variance).T, pd.DataFrame(mean).T


def _one_row(job: tuple) -> tuple:
    eta, repeats, name, seed = job
    torch.set_num_threads(1)
    return eta, name, toy_tables(eta, repeats, [name], seed)


def all_tables(etas: list[float], repeats: int, jobs: int) -> dict:
    """``{eta: (variance, mean)}``, one process per (eta, estimator) row when ``jobs > 1``."""
    work = [(eta, repeats, name, 0) for eta in etas for name in estimators()]
    if jobs > 1:
        with multiprocessing.get_context("spawn").Pool(jobs) as pool:
            rows = pool.map(_one_row, work)
    else:
        rows = [_one_row(job) for job in work]
    tables = {}
    for eta in etas:
        parts = [t for e, _, t in rows if e == eta]
        tables[eta] = tuple(pd.concat([p[i] for p in parts]) for i in (0, 1))
    return tables


def pyro_route(repeats: int) -> pd.DataFrame:
    """Gradient variance of the Pyro losses via the core's gradient_variance()."""
    from pyro.infer import Trace_ELBO

    from varinf import VIMCO, ScoreELBO
    from varinf.gradients import EstimatorELBO

    means = torch.tensor([-1.0, 0.5, 2.0])
    data = torch.tensor([0.2, 0.9, 0.4])

    def model(data):
        z = pyro.sample("z", dist.Categorical(probs=torch.tensor([0.5, 0.3, 0.2])))
        with pyro.plate("data", len(data)):
            pyro.sample("x", dist.Normal(means[z], 1.0), obs=data)

    def guide(data):
        pyro.sample("z", dist.Categorical(logits=pyro.param("logits", torch.zeros(3))))

    losses = [
        Trace_ELBO(num_particles=k, vectorize_particles=True, max_plate_nesting=1)
        for k in (2, 4, 8)
    ]
    losses += [ScoreELBO(num_particles=k, max_plate_nesting=1) for k in (2, 4, 8)]
    losses += [VIMCO(num_particles=k, max_plate_nesting=1) for k in (2, 4, 8)]
    losses += [EstimatorELBO(SumAndSample(), 2), EstimatorELBO(UnorderedSet(), 2)]
    pyro.clear_param_store()
    result = gradient_variance(losses, model, guide, data, repeats=repeats, progress=False)
    table = result.table
    table.index = [_label(loss) for loss in losses]
    return table


def _label(loss) -> str:
    if hasattr(loss, "estimator"):
        return f"EstimatorELBO({loss.estimator.name}, k={loss.num_particles})"
    return f"{type(loss).__name__}(K={loss.num_particles})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2000)
    parser.add_argument("--jobs", type=int, default=1, help="processes, one per table row")
    parser.add_argument("--etas", type=float, nargs="+", default=[0.0, -4.0])
    parser.add_argument("--pyro", action="store_true", help="also run the Pyro-loss route")
    parser.add_argument("--pyro-repeats", type=int, default=500)
    args = parser.parse_args()
    torch.set_num_threads(1)
    pd.set_option("display.width", 200)
    pd.set_option("display.float_format", lambda x: f"{x:.2e}")
    start = time.perf_counter()
    tables = all_tables(args.etas, args.repeats, args.jobs)
    for eta in args.etas:
        variance, mean = tables[eta]
        truth = exact_gradient(eta)
        print(
            f"\n== eta = {eta:g}: exact gradient {truth:.4f} (enumeration), "
            f"{args.repeats} repeats by varinf.gradient_variance, "
            f"{time.perf_counter() - start:.0f} s in all =="
        )
        exact = variance < 1e-20  # k = 8 covers the whole support: no randomness left
        print("\nvariance of the gradient estimate, by number of evaluations k (0: exact)")
        print(variance.mask(exact, 0.0).to_string(na_rep="-"))
        print("\n(mean gradient - exact) / standard error  (|z| < 3 expected if unbiased)")
        z = (mean - truth) / (variance / args.repeats) ** 0.5
        z = z.map(lambda x: f"{x:.1f}").mask(exact & ((mean - truth).abs() < 1e-12), "exact")
        print(z.mask(variance.isna(), "-").to_string())
    if args.pyro:
        print("\n== Pyro losses via varinf.gradient_variance (3-state categorical latent) ==")
        print(pyro_route(args.pyro_repeats).to_string())


if __name__ == "__main__":
    main()
