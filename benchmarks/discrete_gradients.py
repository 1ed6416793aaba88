"""Gradient variance of the discrete gradient estimators on the Bernoulli toy, k = 1 ... 8.

The toy of Kool, van Hoof and Welling (2020): three Bernoullis sharing a logit eta,
f(b) = sum_i (b_i - p0_i)^2 with p0 = (0.6, 0.51, 0.48); exact gradient -0.0450 at eta = 0 and
-0.0032 at eta = -4. For each estimator and number of evaluations k the script draws
``--repeats`` independent gradients (vectorised as a batch of problems) and prints their
variance, and the mean gradient next to the exact one (relaxed estimators are biased). With
``--pyro`` it also runs the Pyro-loss route: ``varinf.gradient_variance`` over VIMCO, the
leave-one-out score ELBO, Pyro's Trace_ELBO and EstimatorELBO (sum-and-sample, unordered set)
on a 3-state categorical latent.

Usage: python benchmarks/discrete_gradients.py [--repeats 10000] [--etas 0 -4] [--pyro]
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from varinf.gradients import (
    RELAX,
    GumbelSoftmax,
    ScoreFunction,
    StraightThrough,
    SumAndSample,
    UnorderedSet,
    mlp_control_variate,
)
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


def toy_tables(eta: float, repeats: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    variance, mean = {}, {}
    relax = trained_relax(eta)
    for name, (factory, smallest) in estimators().items():
        variance[name], mean[name] = {}, {}
        for k in range(smallest, MAX_K + 1):
            estimator = relax if factory is None else factory()
            if name == "score + moving average":  # one warm-up call fixes the average
                sample_gradients(estimator, eta, k, repeats, seed=10_000 + k)
            grads = sample_gradients(estimator, eta, k, repeats, seed=k)
            variance[name][k] = grads.var().item()
            mean[name][k] = grads.mean().item()
    return pd.DataFrame(variance).T, pd.DataFrame(mean).T


def pyro_route(repeats: int) -> pd.DataFrame:
    """Gradient variance of the Pyro losses via the core's gradient_variance()."""
    import pyro
    import pyro.distributions as dist
    from pyro.infer import Trace_ELBO

    from varinf import gradient_variance
    from varinf.gradients import VIMCO, EstimatorELBO, ScoreELBO

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
        return f"EstimatorELBO({loss.estimator.name}, k={loss.num_samples})"
    return f"{type(loss).__name__}(K={loss.num_particles})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10000)
    parser.add_argument("--etas", type=float, nargs="+", default=[0.0, -4.0])
    parser.add_argument("--pyro", action="store_true", help="also run the Pyro-loss route")
    parser.add_argument("--pyro-repeats", type=int, default=500)
    args = parser.parse_args()
    torch.set_num_threads(1)
    pd.set_option("display.width", 200)
    pd.set_option("display.float_format", lambda x: f"{x:.2e}")
    for eta in args.etas:
        start = time.perf_counter()
        variance, mean = toy_tables(eta, args.repeats)
        truth = exact_gradient(eta)
        print(
            f"\n== eta = {eta:g}: exact gradient {truth:.4f} (enumeration), "
            f"{args.repeats} repeats, {time.perf_counter() - start:.0f} s =="
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
