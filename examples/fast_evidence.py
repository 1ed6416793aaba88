"""Fast evidence methods side by side on a model with known evidence.

Runs MAP, maximum likelihood, Laplace, the three Laplus fits, the fitted mean-field ELBO,
importance sampling (Laplace Student-t), GLIS, VBIS and nested sampling on the Gamma-Poisson
model (positive rates, analytic evidence) through one `varinf.compare` call, and prints one
table: value, standard deviation over repeats, bias, cost in likelihood evaluations and time.

    python examples/fast_evidence.py [--repeats 3] [--particles 2000]
"""

from __future__ import annotations

import argparse

import torch

from models.conjugate import GammaPoisson
from varinf import (
    GLIS,
    MAP,
    VBIS,
    BetaPrimeLaplus,
    FittedELBO,
    GammaLaplus,
    ImportanceSampling,
    Laplace,
    LogNormalLaplus,
    MaximumLikelihood,
    NestedSampling,
    compare,
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--particles", type=int, default=2000)
    parser.add_argument("--nested", action="store_true", help="add nested sampling (slower)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    problem = GammaPoisson.example()
    k = args.particles
    estimators = [
        MAP(),
        MaximumLikelihood(),
        Laplace(),
        GammaLaplus(),
        LogNormalLaplus(),
        BetaPrimeLaplus(),
        FittedELBO(k, fit={"num_steps": 100}),
        ImportanceSampling(k),
        GLIS(k),
        VBIS(k, fit={"num_steps": 100}),
    ]
    if args.nested:
        estimators.append(NestedSampling(num_live=100, sample="unif", dlogz=0.5))
    result = compare(estimators, problem.model, repeats=args.repeats,
                     truth=problem.log_evidence, progress=False)  # fmt: skip
    print(f"Gamma-Poisson, log p(x) = {problem.log_evidence:.4f}")
    print(result)


if __name__ == "__main__":
    main()
