"""ExpectationLoss: varinf.gradient_variance over it reports the functional estimators' variance
(the benchmark's table), exact at full support, one model run or k the same, and refusals."""

import copy
import importlib.util
import itertools
import math
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch

from varinf import gradient_variance
from varinf.gradients import (
    GumbelSoftmax,
    ScoreFunction,
    StraightThrough,
    SumAndSample,
    UnorderedSet,
)
from varinf.gradients.expectation import ExpectationLoss
from varinf.gradients.toy import exact_gradient, f, sample_gradients

_spec = importlib.util.spec_from_file_location(
    "discrete_gradients",
    Path(__file__).resolve().parents[2] / "benchmarks" / "discrete_gradients.py",
)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

PYRO_REPEATS = 300
REFERENCE_REPEATS = 10000
# (estimator name in the benchmark, eta, k): every row of the table, both etas, small and large k
CELLS = [
    ("score", -4.0, 1),
    ("score + moving average", 0.0, 3),
    ("score + leave-one-out", -4.0, 4),
    ("sum-and-sample", 0.0, 2),
    ("unordered set (no baseline)", 0.0, 3),
    ("unordered set + built-in baseline", 0.0, 7),
    ("RELAX (trained control variate)", 0.0, 2),
    ("Gumbel-softmax tau=0.5 (biased)", -4.0, 2),
    ("straight-through tau=0.5 (biased)", 0.0, 1),
]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pyro_gradients(losses, eta, repeats, seed=0):
    pyro.clear_param_store()
    pyro.param("eta", torch.tensor(eta, dtype=torch.float64))
    result = gradient_variance(
        losses, bench.toy_model, bench.toy_guide, repeats=repeats, seed=seed, progress=False
    )
    return [grads["eta"] for grads in result.gradients.values()]


def reference_gradients(estimator, eta, k):
    """The functional estimator's draws, vectorised (or one by one for a moving average, whose
    state changes after every call as it does under gradient_variance)."""
    if getattr(estimator, "baseline", None) == "moving-average":
        return torch.cat(
            [sample_gradients(estimator, eta, k, 1, seed=100 + r) for r in range(2000)]
        )
    return sample_gradients(estimator, eta, k, REFERENCE_REPEATS, seed=7)


def variance_z(pyro_draws, reference):
    r"""z-score of the difference of two independent sample variances; the variance of a sample
    variance is $(\mu_4 - \sigma^4 (n-3)/(n-1))/n$, moments estimated from the reference."""
    centred = reference - reference.mean()
    sigma2, mu4 = centred.pow(2).mean().item(), centred.pow(4).mean().item()

    def var_of_var(n):
        return (mu4 - sigma2**2 * (n - 3) / (n - 1)) / n

    stderr = math.sqrt(var_of_var(len(pyro_draws)) + var_of_var(len(reference)))
    return (pyro_draws.var().item() - reference.var().item()) / stderr


def test_gradient_variance_reports_the_functional_variance():
    relax = {0.0: bench.trained_relax(0.0, steps=30)}
    failures = []
    for name, eta, k in CELLS:
        factory, _ = bench.estimators()[name]
        estimator = relax[eta] if factory is None else factory()
        if name == "score + moving average":
            sample_gradients(estimator, eta, k, 10000, seed=10_000 + k)  # as the benchmark
        twin = copy.deepcopy(estimator)  # same state for the reference run
        (draws,) = pyro_gradients([ExpectationLoss(estimator, k)], eta, PYRO_REPEATS)
        reference = reference_gradients(twin, eta, k)
        z = variance_z(draws, reference)
        # 9 cells: |z| < 3.5 for all has probability ~0.996 if the variances are equal
        if not abs(z) < 3.5:
            failures.append((name, eta, k, draws.var().item(), reference.var().item(), z))
    assert not failures, failures


def test_full_support_is_exact():
    (draws,) = pyro_gradients([ExpectationLoss(UnorderedSet(), 8)], 0.0, 3)
    torch.testing.assert_close(draws, torch.full((3,), exact_gradient(0.0), dtype=draws.dtype))
    pyro.clear_param_store()
    loss = ExpectationLoss(SumAndSample(), 8).loss(bench.toy_model, bench.toy_guide)
    states = torch.tensor(list(itertools.product([0.0, 1.0], repeat=3)), dtype=torch.float64)
    assert loss == pytest.approx(f(states).mean().item(), abs=1e-12)  # q uniform at eta = 0


@pytest.mark.parametrize(
    "estimator",
    [ScoreFunction("leave-one-out"), UnorderedSet(), GumbelSoftmax(0.5), StraightThrough(0.5)],
    ids=lambda e: e.name,
)
def test_one_model_run_equals_k_runs(estimator):
    vectorised = pyro_gradients([ExpectationLoss(estimator, 4)], 0.3, 5, seed=3)[0]
    looped = pyro_gradients([ExpectationLoss(estimator, 4, vectorize=False)], 0.3, 5, seed=3)[0]
    torch.testing.assert_close(vectorised, looped)


def test_refusals():
    with pytest.raises(TypeError, match="estimator"):
        ExpectationLoss("unordered-set", 2)
    with pytest.raises(ValueError, match="num_particles"):
        ExpectationLoss(UnorderedSet(), 1)
    with pytest.raises(TypeError, match="num_particles"):
        ExpectationLoss(UnorderedSet(), 2.0)

    def continuous_guide():
        pyro.sample("b", dist.Normal(pyro.param("loc", torch.tensor(0.0)), 1.0))

    pyro.clear_param_store()
    with pytest.raises(ValueError, match="ExpectationLoss.*one latent site, discrete"):
        ExpectationLoss(UnorderedSet(), 2).loss_and_grads(bench.toy_model, continuous_guide)
