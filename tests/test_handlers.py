"""The tempering handler: beta scales the likelihood sites (observations and factors) only."""

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch

from varinf.handlers import tempered

DATA = torch.tensor([0.3, -1.2, 2.0, 0.7])


def model(data=DATA):
    mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
    scale = pyro.sample("scale", dist.LogNormal(0.0, 0.5))
    with pyro.plate("data", len(data), dim=-1):
        pyro.sample("x", dist.Normal(mu, scale), obs=data)
    pyro.factor("penalty", -0.5 * mu**2)
    pyro.deterministic("mu_squared", mu**2)


def by_hand(mu, scale, beta):
    """beta * log-likelihood + log prior, from the distributions themselves."""
    prior = dist.Normal(0.0, 2.0).log_prob(mu) + dist.LogNormal(0.0, 0.5).log_prob(scale)
    loglik = dist.Normal(mu[..., None], scale[..., None]).log_prob(DATA).sum(-1) - 0.5 * mu**2
    return beta * loglik + prior


def per_chain_log_density(trace, rank):
    trace.compute_log_prob()
    total = 0.0
    for site in trace.nodes.values():
        if site["type"] == "sample":
            log_prob = site["log_prob"]
            log_prob = log_prob.reshape((1,) * (rank - log_prob.dim()) + log_prob.shape)
            total = total + log_prob.sum(list(range(1, rank)))
    return total


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_tempered_log_density_is_beta_loglik_plus_prior(beta):
    pyro.set_rng_seed(0)
    with tempered(beta):
        trace = poutine.trace(model).get_trace()
    mu, scale = trace.nodes["mu"]["value"], trace.nodes["scale"]["value"]
    torch.testing.assert_close(trace.log_prob_sum(), by_hand(mu, scale, beta))
    trace.compute_log_prob()
    for latent in ("mu", "scale"):  # latent sites untouched
        assert trace.nodes[latent]["scale"] == 1.0


def test_batched_beta_equals_a_loop_over_beta():
    betas = torch.tensor([0.0, 0.1, 0.3, 0.7, 1.0])
    pyro.set_rng_seed(1)
    with pyro.plate("chains", len(betas), dim=-2), tempered(betas, dim=-2):
        trace = poutine.trace(model).get_trace()
    batched = per_chain_log_density(trace, rank=2)
    mu, scale = trace.nodes["mu"]["value"], trace.nodes["scale"]["value"]
    assert mu.shape == (5, 1)
    looped = []
    for i, beta in enumerate(betas.tolist()):
        fixed = {"mu": mu[i, 0], "scale": scale[i, 0]}
        # tempered inside the condition: it sees mu and scale before they become observed
        one = poutine.trace(poutine.condition(tempered(beta)(model), fixed)).get_trace()
        one.compute_log_prob()
        looped.append(sum(s["log_prob"].sum() for s in one.nodes.values() if s["type"] == "sample"))
    torch.testing.assert_close(batched, torch.stack(looped))
    torch.testing.assert_close(batched, by_hand(mu[:, 0], scale[:, 0], betas))


def test_beta_tensor_with_one_element_is_a_number():
    pyro.set_rng_seed(2)
    with tempered(torch.tensor([0.3])):
        trace = poutine.trace(model).get_trace()
    mu, scale = trace.nodes["mu"]["value"], trace.nodes["scale"]["value"]
    torch.testing.assert_close(trace.log_prob_sum(), by_hand(mu, scale, 0.3))


def test_conditioned_data_are_tempered_when_the_condition_is_inside():
    def unobserved():
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(mu, 1.0))

    conditioned = poutine.condition(unobserved, {"y": torch.tensor(0.4)})
    with tempered(0.25):
        trace = poutine.trace(conditioned).get_trace()
    assert trace.nodes["y"]["scale"] == 0.25 and trace.nodes["mu"]["scale"] == 1.0


@pytest.mark.parametrize(
    "beta, dim, match",
    [
        (-0.1, None, "non-negative"),
        (float("nan"), None, "finite"),
        (torch.tensor([0.5, -1.0]), -1, "non-negative"),
        (torch.tensor([0.5, 1.0]), None, "negative dim"),
        (torch.ones(2, 3), -1, "shape"),
    ],
)
def test_bad_beta(beta, dim, match):
    with pytest.raises(ValueError, match=match):
        tempered(beta, dim=dim)
