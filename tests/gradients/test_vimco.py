"""VIMCO and the leave-one-out score ELBO: unbiased for the gradients of their multi-sample
objectives (exact by enumerating every K-tuple of states), as functions and as Pyro losses, and
SVI with them recovers the exact posterior of a discrete latent."""

import math

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch
from pyro.infer import SVI

from varinf import VIMCO, ScoreELBO
from varinf.gradients import VIMCOEstimator
from varinf.gradients.base import enumerate_tuples
from varinf.gradients.toy import P0, toy_dist
from varinf.gradients.vimco import vimco_signal


def log_weight_fn(q):
    """A log weight that depends on the distribution's parameter (as log p - log q does)."""
    return lambda b: -2.0 * ((b - P0) ** 2).sum(-1) - q.log_prob(b)


def exact_multi_sample_gradient(eta: float, k: int) -> float:
    r"""d/dη E[log (1/k) Σ_i w(z_i)] by enumerating all 8^k tuples."""
    eta = torch.tensor(eta, dtype=torch.float64, requires_grad=True)
    q = toy_dist(eta)
    states = torch.tensor([[(s >> j) & 1 for j in (2, 1, 0)] for s in range(8)]).double()
    log_w, log_q = log_weight_fn(q)(states), q.log_prob(states)
    tuples = enumerate_tuples(8, k)
    bound = log_w[tuples].logsumexp(0) - math.log(k)
    (grad,) = torch.autograd.grad((log_q[tuples].sum(0).exp() * bound).sum(), eta)
    return grad.item()


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("eta", [0.0, -4.0])
def test_vimco_estimator_unbiased(eta, k):
    repeats = 20000
    etas = torch.full((repeats,), eta, dtype=torch.float64, requires_grad=True)
    q = toy_dist(etas)
    generator = torch.Generator().manual_seed(k)
    out = VIMCOEstimator().surrogate(q, log_weight_fn(q), k, generator)
    (grads,) = torch.autograd.grad(out.surrogate.sum(), etas)
    stderr = grads.std().item() / math.sqrt(repeats)
    truth = exact_multi_sample_gradient(eta, k)
    assert abs(grads.mean().item() - truth) < 3 * stderr, (grads.mean().item(), truth, stderr)


def test_vimco_signal_by_hand():
    log_w = torch.tensor([0.0, 1.0, 3.0], dtype=torch.float64)
    full = torch.logsumexp(log_w, 0) - math.log(3)
    # sample 0 replaced by the geometric mean of the others, exp((1 + 3) / 2)
    without_0 = math.log((math.exp(2.0) + math.e + math.e**3) / 3)
    assert vimco_signal(log_w)[0].item() == pytest.approx(full.item() - without_0, rel=1e-12)
    assert vimco_signal(torch.zeros(4, 2)).abs().max() == 0  # equal weights: no signal


# -- Pyro losses --------------------------------------------------------------------------
MEANS = torch.tensor([-1.0, 0.5, 2.0], dtype=torch.float64)
PRIOR = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
DATA = torch.tensor([0.2, 0.9, 0.4], dtype=torch.float64)


def model(data):
    z = pyro.sample("z", dist.Categorical(probs=PRIOR))
    with pyro.plate("data", len(data)):
        pyro.sample("x", dist.Normal(MEANS[z], 1.0), obs=data)


def guide(data):
    logits = pyro.param("logits", torch.zeros(3, dtype=torch.float64))
    pyro.sample("z", dist.Categorical(logits=logits))


def log_joint() -> torch.Tensor:
    likelihood = dist.Normal(MEANS[:, None], 1.0).log_prob(DATA).sum(-1)
    return PRIOR.log() + likelihood


def exact_objective_gradient(logits: torch.Tensor, k: int, multi_sample: bool) -> torch.Tensor:
    """Gradient of -E[IWAE_k] (or -ELBO) w.r.t. the guide logits, by enumerating 3^k tuples."""
    logits = logits.detach().clone().requires_grad_(True)
    log_q = logits - logits.logsumexp(0)
    log_w = log_joint() - log_q
    tuples = enumerate_tuples(3, k)
    per_tuple = log_w[tuples].logsumexp(0) - math.log(k) if multi_sample else log_w[tuples].mean(0)
    (grad,) = torch.autograd.grad(-(log_q[tuples].sum(0).exp() * per_tuple).sum(), logits)
    return grad


@pytest.mark.slow
@pytest.mark.parametrize("loss", [VIMCO(num_particles=3), ScoreELBO(num_particles=3)])
def test_pyro_loss_gradient_unbiased(loss):
    start = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
    pyro.param("logits", start.clone())
    param = pyro.param("logits").unconstrained()
    pyro.set_rng_seed(0)
    grads = []
    # 2000 draws from seed 0 put one component of the ScoreELBO gradient at z = -3.2 (a 0.3%
    # event; 20000 draws: |z| < 0.8 for both losses), so this test uses 4000
    for _ in range(4000):
        loss.loss_and_grads(model, guide, DATA)
        grads.append(param.grad.clone())
        param.grad = None
    grads = torch.stack(grads)
    truth = exact_objective_gradient(start, 3, multi_sample=isinstance(loss, VIMCO))
    stderr = grads.std(0) / math.sqrt(len(grads))
    assert ((grads.mean(0) - truth).abs() < 3 * stderr).all(), (grads.mean(0), truth, stderr)


def test_pyro_loss_value_is_the_bound():
    posterior = torch.softmax(log_joint(), 0)
    pyro.param("logits", posterior.log())
    evidence = log_joint().logsumexp(0).item()
    # at the exact posterior every weight equals p(x): the bounds are exact
    for loss in (VIMCO(num_particles=4), ScoreELBO(num_particles=4)):
        assert -loss.loss(model, guide, DATA) == pytest.approx(evidence, abs=1e-10)
        assert loss.estimate(model, guide, DATA).value == pytest.approx(evidence, abs=1e-10)


@pytest.mark.slow
@pytest.mark.parametrize("loss", [VIMCO(num_particles=5), ScoreELBO(num_particles=5)])
def test_svi_recovers_exact_posterior(loss):
    pyro.set_rng_seed(1)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), loss=loss)
    averaged = torch.zeros(3, dtype=torch.float64)
    for step in range(1500):
        svi.step(DATA)
        if step >= 1000:  # Polyak averaging of the last iterates removes most SGD noise
            averaged += torch.softmax(pyro.param("logits").detach(), 0) / 500
    posterior = torch.softmax(log_joint(), 0)
    assert (averaged - posterior).abs().max() < 0.02, (averaged, posterior)


def test_bad_num_particles():
    with pytest.raises(ValueError, match="num_particles"):
        VIMCO(num_particles=1)
    with pytest.raises(ValueError, match="num_particles"):
        ScoreELBO(num_particles=1)


# -- local discrete latents: the weights (and VIMCO's signals) are per datum ------------------
LOCAL_DATA = torch.tensor([0.2, 1.7], dtype=torch.float64)


def local_model(data):
    with pyro.plate("data", len(data)):
        z = pyro.sample("z", dist.Categorical(probs=PRIOR))
        pyro.sample("x", dist.Normal(MEANS[z], 1.0), obs=data)


def local_guide(data):
    logits = pyro.param("local_logits", torch.zeros(len(data), 3, dtype=torch.float64))
    with pyro.plate("data", len(data)):
        pyro.sample("z", dist.Categorical(logits=logits))


@pytest.mark.slow
@pytest.mark.parametrize("loss", [VIMCO(num_particles=3), ScoreELBO(num_particles=3)])
def test_pyro_loss_local_latents_unbiased(loss):
    start = torch.tensor([[0.3, -0.2, 0.1], [-0.5, 0.0, 0.4]], dtype=torch.float64)
    pyro.param("local_logits", start.clone())
    param = pyro.param("local_logits").unconstrained()
    pyro.set_rng_seed(0)
    grads = []
    for _ in range(2000):
        loss.loss_and_grads(local_model, local_guide, LOCAL_DATA)
        grads.append(param.grad.clone())
        param.grad = None
    grads = torch.stack(grads)
    truth = torch.stack(
        [
            exact_local_gradient(start[i], LOCAL_DATA[i], 3, isinstance(loss, VIMCO))
            for i in range(len(LOCAL_DATA))
        ]
    )
    stderr = grads.std(0) / math.sqrt(len(grads))
    assert ((grads.mean(0) - truth).abs() < 3 * stderr).all(), (grads.mean(0), truth, stderr)


def exact_local_gradient(logits, datum, k, multi_sample):
    """One datum's gradient of -E[bound] by enumerating its 3^k tuples of local states."""
    logits = logits.detach().clone().requires_grad_(True)
    log_q = logits - logits.logsumexp(0)
    log_w = PRIOR.log() + dist.Normal(MEANS, 1.0).log_prob(datum) - log_q
    tuples = enumerate_tuples(3, k)
    per_tuple = log_w[tuples].logsumexp(0) - math.log(k) if multi_sample else log_w[tuples].mean(0)
    (grad,) = torch.autograd.grad(-(log_q[tuples].sum(0).exp() * per_tuple).sum(), logits)
    return grad
