import math

import numpy as np
import pytest
import torch
from pyro.distributions.testing.gof import auto_goodness_of_fit, multinomial_goodness_of_fit
from scipy import integrate

from varinf.distributions.concrete import (
    Concrete,
    ConstantTemperature,
    ExpConcrete,
    ExponentialAnnealing,
    as_temperature,
    relaxed_kl,
)

# False-failure rate of each goodness-of-fit test (p-value threshold).
TEST_FAILURE_RATE = 1e-3


def maddison_log_density(x: np.ndarray, log_alpha: np.ndarray, lam: float) -> float:
    """Concrete density written from Maddison et al. (2017), eq. (2), independently of torch."""
    k = len(x)
    log_terms = log_alpha - (lam + 1) * np.log(x)
    norm = np.logaddexp.reduce(log_alpha - lam * np.log(x))
    return math.lgamma(k) + (k - 1) * math.log(lam) + float(np.sum(log_terms)) - k * norm


@pytest.mark.parametrize("lam", [2.0, 0.7, 0.3])
def test_log_prob_matches_closed_form(lam):
    torch.manual_seed(0)
    logits = torch.randn(4, dtype=torch.float64)
    d = Concrete(lam, logits=logits)
    x = d.sample((5,))
    expected = [maddison_log_density(xi.numpy(), logits.numpy(), lam) for xi in x.clone()]
    assert torch.allclose(d.log_prob(x), torch.tensor(expected, dtype=torch.float64), rtol=1e-9)


@pytest.mark.parametrize("lam", [2.0, 1.0, 0.5])
def test_binary_density_integrates_to_one(lam):
    logits = torch.tensor([0.3, -0.8], dtype=torch.float64)
    d = Concrete(lam, logits=logits)

    def density(t):
        return d.log_prob(torch.tensor([t, 1 - t], dtype=torch.float64)).exp().item()

    total, err = integrate.quad(density, 0, 1, points=[0.5], limit=200)
    assert abs(total - 1) < max(1e-6, 10 * err)


@pytest.mark.parametrize("lam", [1.0, 0.5])
def test_gof(lam):
    torch.manual_seed(1)
    d = Concrete(lam, logits=torch.tensor([0.5, -0.2, 0.1], dtype=torch.float64))
    x = d.sample((4000,))
    probs = d.log_prob(x).exp()
    # density is w.r.t. Lebesgue measure on the first K - 1 coordinates
    assert auto_goodness_of_fit(x[:, :-1], probs, dim=2) > TEST_FAILURE_RATE


@pytest.mark.parametrize("lam", [1.0, 0.5, 0.2, 0.1, 0.05])
@pytest.mark.parametrize("hard", [False, True])
def test_low_temperature_is_finite(lam, hard):
    torch.manual_seed(2)
    logits = (4 * torch.randn(3, 6)).requires_grad_()
    d = Concrete(lam, logits=logits, hard=hard)
    x = d.rsample((2000,))
    assert torch.isfinite(x).all()
    assert torch.allclose(x.sum(-1), torch.ones(()), atol=1e-6)
    lp = d.log_prob(x)
    assert torch.isfinite(lp).all()
    # values without the cached log-sample (e.g. replayed from elsewhere) stay finite too
    assert torch.isfinite(d.log_prob(x.detach().clone())).all()
    ld = d.exp_concrete.log_prob(d.exp_concrete.rsample((2000,)))
    assert torch.isfinite(ld).all()
    (lp.mean() + (x * torch.arange(6.0)).sum(-1).mean()).backward()
    assert torch.isfinite(logits.grad).all()


def test_hard_samples_are_gumbel_max_categorical():
    torch.manual_seed(3)
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    d = Concrete(0.7, probs=probs, hard=True)
    x = d.sample((20000,))
    assert set(x.sum(-1).tolist()) == {1.0} and set(x.unique().tolist()) == {0.0, 1.0}
    assert multinomial_goodness_of_fit(probs, x.sum(0)) > TEST_FAILURE_RATE


def test_straight_through_gradient_is_relaxed_gradient():
    logits = torch.randn(5, requires_grad=True)
    weights = torch.randn(5)
    torch.manual_seed(4)
    (Concrete(0.5, logits=logits, hard=True).rsample() * weights).sum().backward()
    hard_grad, logits.grad = logits.grad.clone(), None
    torch.manual_seed(4)
    (Concrete(0.5, logits=logits).rsample() * weights).sum().backward()
    assert torch.allclose(hard_grad, logits.grad)


def test_log_space_relation():
    torch.manual_seed(5)
    d = Concrete(0.4, logits=torch.randn(2, 4, dtype=torch.float64))
    x = d.sample((7,))
    y = x.clone().log()
    assert torch.allclose(d.log_prob(x), d.exp_concrete.log_prob(y) - y.sum(-1))


def test_relaxed_kl_against_quadrature():
    q = Concrete(0.6, logits=torch.tensor([1.0, -0.5], dtype=torch.float64))
    p = Concrete(0.9, logits=torch.tensor([0.0, 0.0], dtype=torch.float64))

    def integrand(t):
        v = torch.tensor([t, 1 - t], dtype=torch.float64)
        lq, lp = q.log_prob(v).item(), p.log_prob(v).item()
        return math.exp(lq) * (lq - lp)

    truth = integrate.quad(integrand, 0, 1, points=[0.5], limit=200)[0]
    torch.manual_seed(6)
    n = 20000
    per_sample = relaxed_kl(q.expand((n,)), p, num_samples=1)
    se = per_sample.std().item() / math.sqrt(n)
    assert abs(per_sample.mean().item() - truth) < 4 * se
    assert relaxed_kl(q, q, num_samples=3).abs().item() < 1e-12


def test_shapes_expand_batching():
    d = Concrete(torch.tensor([0.5]), logits=torch.randn(2, 3, 4))
    assert d.batch_shape == (2, 3) and d.event_shape == (4,)
    x = d.rsample((5,))
    assert x.shape == (5, 2, 3, 4) and d.log_prob(x).shape == (5, 2, 3)
    e = Concrete(0.5, logits=torch.randn(3, 4), hard=True).expand((6, 3))
    assert isinstance(e, Concrete) and e.hard and e.batch_shape == (6, 3)
    assert e.log_prob(e.rsample((2,))).shape == (2, 6, 3)
    ed = ExpConcrete(0.5, logits=torch.randn(3, 4)).expand((2, 3))
    assert isinstance(ed, ExpConcrete) and ed.rsample().shape == (2, 3, 4)
    assert d.to_event(1).log_prob(x).shape == (5, 2)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), "hot", None])
def test_bad_temperature(bad):
    with pytest.raises(ValueError, match="temperature"):
        Concrete(bad, logits=torch.zeros(3))
    with pytest.raises(ValueError, match="temperature"):
        ExpConcrete(bad, logits=torch.zeros(3))


def test_bad_temperature_tensor():
    with pytest.raises(ValueError, match="temperature"):
        as_temperature(torch.tensor([0.5, 0.0]))
    with pytest.raises(ValueError, match="scalar"):
        as_temperature(torch.tensor([0.5, 0.4]))


def test_schedules():
    assert ConstantTemperature(0.3)(10**9) == 0.3
    s = ExponentialAnnealing(1.0, rate=1e-2, minimum=0.2, every=10)
    assert s(0) == 1.0 and s(9) == 1.0
    assert s(10) == pytest.approx(math.exp(-0.1))
    assert s(10**5) == 0.2
    assert s.value == 1.0
    for _ in range(25):
        s.step()
    assert s.value == pytest.approx(math.exp(-0.2))
    d = Concrete(s, logits=torch.zeros(3))
    assert d.temperature.item() == pytest.approx(math.exp(-0.2))
    with pytest.raises(ValueError, match="temperature"):
        ConstantTemperature(0.0)
    with pytest.raises(ValueError, match="minimum"):
        ExponentialAnnealing(0.5, minimum=1.0)
    with pytest.raises(ValueError, match="rate"):
        ExponentialAnnealing(rate=-1.0)
    with pytest.raises(ValueError, match="every"):
        ExponentialAnnealing(every=0)


@pytest.mark.parametrize("family", [Concrete, ExpConcrete])
def test_usable_as_pyro_sites_at_low_temperature(family):
    import pyro
    import pyro.distributions as dist

    pyro.clear_param_store()
    torch.manual_seed(7)
    schedule = ExponentialAnnealing(1.0, rate=0.5, minimum=0.05)

    def model():
        z = pyro.sample("z", family(0.05, logits=torch.zeros(4)))
        x = z if family is Concrete else z.exp()
        pyro.sample("obs", dist.Normal(x, 0.1).to_event(1), obs=torch.tensor([0.0, 1, 0, 0]))

    def guide():
        logits = pyro.param("logits", torch.zeros(4))
        pyro.sample("z", family(schedule, logits=logits))

    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.1}), pyro.infer.Trace_ELBO())
    for _ in range(10):
        assert math.isfinite(svi.step())
        schedule.step()
    assert schedule.value == 0.05
    assert torch.isfinite(pyro.param("logits")).all()
