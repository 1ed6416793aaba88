"""Bias of the deterministic approximations (and the fitted ELBO) on models with known evidence.

Prints a markdown table of estimate minus analytic log evidence for MAP, ML, Laplace, the three
Laplus fits and the fitted mean-field ELBO, on the conjugate models of ``models.conjugate``.

    python benchmarks/fast_bias.py
"""

from __future__ import annotations

import warnings

import torch

from models.conjugate import (
    BayesianLinearRegression,
    ConjugateGaussian,
    GammaPoisson,
    LocalGaussian,
)
from varinf import (
    MAP,
    BetaPrimeLaplus,
    FittedELBO,
    GammaLaplus,
    Laplace,
    LogNormalLaplus,
    MaximumLikelihood,
)

PROBLEMS = {
    "Gaussian mean (D=2)": ConjugateGaussian.example,
    "local Gaussians (D=20)": LocalGaussian.example,
    "linear regression (D=10)": BayesianLinearRegression.diabetes,
    "Gamma-Poisson (D=3, positive)": GammaPoisson.example,
}


def estimators() -> list:
    return [
        MAP(seed=0),
        MaximumLikelihood(seed=0),
        Laplace(seed=0),
        GammaLaplus(seed=0),
        LogNormalLaplus(seed=0),
        BetaPrimeLaplus(seed=0),
        FittedELBO(4000, seed=0),
    ]


def main() -> None:
    torch.set_num_threads(1)
    names = [e.name for e in estimators()]
    print("| model | log Z | " + " | ".join(names) + " |")
    print("| --- " * (len(names) + 2) + "|")
    for label, make in PROBLEMS.items():
        problem = make()
        truth = problem.log_evidence
        cells = []
        for estimator in estimators():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cells.append(f"{estimator.estimate(problem.model).value - truth:+.3f}")
        print(f"| {label} | {truth:.3f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
