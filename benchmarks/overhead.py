"""Time per estimate of varinf's ELBO and IWAE against Pyro's own vectorised objectives.

Same model, same particle counts, one thread; prints the median time per call and our/Pyro
ratio (target: ≤ 1.2). Pyro's references: ``Trace_ELBO(vectorize_particles=True)`` for the
ELBO and ``RenyiELBO(alpha=0)`` (the IWAE bound) with ``vectorize_particles=True``.

    python benchmarks/overhead.py [--repeats 200]
"""

from __future__ import annotations

import argparse
import statistics
import time

import pyro
import torch

from models.conjugate import BayesianLinearRegression, LocalGaussian
from varinf import ELBO, IWAE


def median_seconds(fn, repeats: int) -> float:
    for _ in range(5):  # warm-up: caches, first-call imports
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    problems = {
        "linear regression (global latent, n=100)": BayesianLinearRegression.diabetes(100),
        "local Gaussian (per-datum latents, n=20)": LocalGaussian.example(20),
    }
    rows = []
    for title, problem in problems.items():
        problem.guide()
        nesting = 1
        for k in (10, 1000):
            pairs = [
                (
                    "elbo",
                    ELBO(k, max_plate_nesting=nesting),
                    pyro.infer.Trace_ELBO(k, vectorize_particles=True, max_plate_nesting=nesting),
                ),
                (
                    "iwae",
                    IWAE(k, max_plate_nesting=nesting),
                    pyro.infer.RenyiELBO(
                        0.0, k, vectorize_particles=True, max_plate_nesting=nesting
                    ),
                ),
            ]
            for name, ours, theirs in pairs:
                for mode in ("value", "value+grad"):
                    ours_fn, theirs_fn = _calls(mode, ours, theirs, problem)
                    t_ours = median_seconds(ours_fn, args.repeats)
                    t_pyro = median_seconds(theirs_fn, args.repeats)
                    rows.append((title, name, k, mode, t_ours, t_pyro))
    print(
        f"{'model':44} {'est':5} {'K':>5} {'mode':11} {'varinf ms':>10} {'pyro ms':>9} {'ratio':>6}"
    )
    for title, name, k, mode, t_ours, t_pyro in rows:
        print(
            f"{title:44} {name:5} {k:5d} {mode:11} {1e3 * t_ours:10.3f} {1e3 * t_pyro:9.3f} "
            f"{t_ours / t_pyro:6.2f}"
        )


def _calls(mode, ours, theirs, problem):
    params = lambda: [p.unconstrained() for p in pyro.get_param_store().values()]  # noqa: E731

    def zero():
        for p in params():
            p.grad = None

    if mode == "value":
        return (
            lambda: ours.loss(problem.model, problem.guide),
            lambda: theirs.loss(problem.model, problem.guide),
        )

    def ours_fn():
        ours.loss_and_grads(problem.model, problem.guide)
        zero()

    def theirs_fn():
        theirs.loss_and_grads(problem.model, problem.guide)
        zero()

    return ours_fn, theirs_fn


if __name__ == "__main__":
    main()
