"""One contract over every estimator exported by `varinf`: what estimate() returns and how it
behaves. The estimators are found from ``varinf.__all__``, so a new one is covered when it is
exported; each must be constructible with its defaults."""

import inspect
import math

import pyro
import pyro.optim
import pytest
import torch

import varinf
from models.conjugate import LocalGaussian
from varinf import IWAE, Estimate, Estimator
from varinf.estimators.objective import ParticleObjective

EXPORTED = sorted(
    (
        obj
        for obj in (getattr(varinf, name) for name in varinf.__all__)
        if inspect.isclass(obj) and issubclass(obj, Estimator) and obj is not Estimator
    ),
    key=lambda cls: cls.__name__,
)

#: Cheaper (or extra) settings than the defaults, where the defaults would make this test slow.
#: Keys are class names; estimators not listed run with their defaults.
_POWER_POSTERIOR = {"num_steps": 2, "num_warmup": 10, "num_draws": 10}
_POSTERIOR = {"num_warmup": 10, "num_draws": 20}
_SMC = {"num_particles": 16, "num_groups": 2, "num_moves": 1, "num_leapfrog": 3}
CHEAP = {
    "SUMO": {"num_particles": 3},
    "ImportanceSampling": {"num_particles": 200},
    "GLIS": {"num_particles": 200},
    "VBIS": {"num_particles": 200, "fit": {"num_steps": 20}},
    "FittedELBO": {"num_particles": 100, "fit": {"num_steps": 20}},
    "NestedSampling": {"num_live": 41, "max_calls": 1000},
    "BatchedNestedSampling": {"num_live": 40, "walks": 5, "dlogz": 0.5},
    **{name: {"num_starts": 1} for name in ("MAP", "MaximumLikelihood", "Laplace")},
    **{name: {"num_starts": 1} for name in ("GammaLaplus", "LogNormalLaplus", "BetaPrimeLaplus")},
    **dict.fromkeys(
        ["SteppingStone", "PathSampling", "ModifiedPathSampling", "GeneralizedSteppingStone"],
        _POWER_POSTERIOR,
    ),
    **dict.fromkeys(
        [
            "BridgeSampling",
            "HarmonicMean",
            "StabilizedHarmonicMean",
            "CPO",
            "PointwisePredictiveDensity",
        ],
        _POSTERIOR,
    ),  # fmt: skip
    **dict.fromkeys(["SequentialMonteCarlo", "AnnealedImportanceSampling"], _SMC),
}

#: Variants exercised on top of the defaults: the knobs of the guided estimators.
VARIANTS = [IWAE(7, gradient="dreg"), varinf.ELBO(3, gradient="score")]


def instances():
    """Every exported estimator, with its defaults and as the contract test runs it."""
    made = []
    for cls in EXPORTED:
        cls()  # constructible with its defaults
        made.append(cls(**CHEAP.get(cls.__name__, {})))
    return made + VARIANTS


ESTIMATORS = instances()
IDS = [estimator.label for estimator in ESTIMATORS]


def test_every_exported_estimator_is_found():
    names = {cls.__name__ for cls in EXPORTED}
    assert {"ELBO", "IWAE", "RQMCELBO", "SUMO", "VIMCO", "ScoreELBO", "NaiveMonteCarlo"} <= names


def run(estimator, problem, seed=None):
    estimator.seed = seed
    guide = problem.guide if estimator.requires_guide else None
    return estimator.estimate(problem.model, guide)


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=IDS)
def test_contract(estimator):
    problem = LocalGaussian.example()
    result = run(estimator, problem, seed=11)
    assert isinstance(result, Estimate)
    assert result.estimator == estimator.name and result.kind == estimator.kind
    assert math.isfinite(result.value)
    if math.isnan(result.stderr):  # allowed only with a reason
        assert result.diagnostics["stderr"]
    else:
        assert math.isfinite(result.stderr) and result.stderr >= 0
    if getattr(estimator, "sampler", "iid") == "rqmc":
        assert math.isnan(result.stderr)  # dependent particles
    assert result.num_evaluations >= 1 and result.elapsed >= 0
    if isinstance(estimator, ParticleObjective):
        assert result.log_weights.shape[0] == result.num_evaluations
        assert result.log_weights.shape[1:] == (len(problem.data),)
    if result.log_weights is not None:
        assert not result.log_weights.requires_grad
    again = run(estimator, problem, seed=11)
    assert again.value == result.value  # same seed, same number
    if result.kind != "approximation":  # deterministic approximations: any seed, one value
        assert run(estimator, problem, seed=12).value != result.value
    assert estimator.name in repr(result)
    assert estimator.label.startswith(estimator.name)
    assert repr(estimator).startswith(type(estimator).__name__ + "(")


@pytest.mark.parametrize(
    "estimator",
    [e for e in ESTIMATORS if isinstance(e, ParticleObjective) and e.requires_guide],
    ids=[e.label for e in ESTIMATORS if isinstance(e, ParticleObjective) and e.requires_guide],
)
def test_contract_as_svi_loss(estimator):
    problem = LocalGaussian.example()
    svi = pyro.infer.SVI(problem.model, problem.guide, pyro.optim.Adam({"lr": 0.01}), estimator)
    before = pyro.param("z_loc", torch.zeros_like(problem.data)).detach().clone()
    loss = svi.step()
    assert math.isfinite(loss)
    assert not torch.equal(pyro.param("z_loc").detach(), before)


def test_seeded_estimate_leaves_global_random_state_alone():
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    problem = LocalGaussian.example()
    IWAE(5, seed=3).estimate(problem.model, problem.exact_guide)
    assert torch.equal(torch.rand(1), expected)


def test_labels_and_reprs_identify_the_estimator():
    """Labels name every option that changes the estimator; reprs hold no Pyro internals."""
    assert varinf.ELBO(10, sampler="rqmc").label == "elbo(K=10, sampler=rqmc)"
    assert varinf.ELBO(10).label == "elbo(K=10)"
    assert varinf.SUMO().label == "sumo(K=1)"
    assert varinf.SUMO(min_terms=10).label == "sumo(K=1, min_terms=10)"
    assert varinf.SUMO(num_particles=5).num_particles == 5
    assert IWAE(4, gradient="vimco").label == "iwae(K=4, gradient=vimco)"
    assert varinf.VIMCO(4).label == "vimco(K=4)"
    assert varinf.RQMCELBO(32).label == "rqmc-elbo(K=32)"
    expected = "IWAE(num_particles=4, gradient='dreg', seed=1)"
    assert repr(IWAE(4, gradient="dreg", seed=1)) == expected
    assert "jit" not in repr(varinf.SUMO()) and "retain_graph" not in repr(varinf.ELBO())
    # options left at their defaults stay out of the label, even when stored normalised
    assert varinf.VBIS().label == "vbis(K=10000)"
    assert varinf.GLIS().label == "glis(K=10000)"
    assert varinf.AnnealedImportanceSampling().label == "ais(K=256)"
    assert varinf.BatchedNestedSampling().label == "nested-batched"
    assert varinf.VBIS(guide="flow", fit={"num_steps": 3}).label == (
        "vbis(K=10000, guide=flow, fit={'num_steps': 3})"
    )


def test_estimate_leaves_gradients_to_the_estimator():
    """`Estimator.estimate` no longer runs under no_grad: an estimator may differentiate."""

    class GradientNorm(Estimator):
        name, kind, requires_guide = "grad-norm", "approximation", False

        def _estimate(self, model, guide, args, kwargs):
            x = torch.tensor(2.0, requires_grad=True)
            (grad,) = torch.autograd.grad(x**2, x)
            return varinf.estimate.make_estimate(grad, 0.0, num_evaluations=1)

    assert GradientNorm().estimate(lambda: None).value == 4.0
