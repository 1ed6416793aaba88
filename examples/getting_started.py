r"""
# Getting started: five estimators of one log evidence

A model whose log evidence is known in closed form, and a guide that is *not* its posterior:
the estimators then disagree, and the table and figure show how. The model is the unknown mean
of a Gaussian, $\mu \sim \mathcal N(0, 1)$, $x_i \mid \mu \sim \mathcal N(\mu, 1)$, with three
data points; the exact posterior is $\mathcal N(0.25, 0.5^2)$ and the guide is
$q(\mu) = \mathcal N(0.6, 0.25^2)$, shifted and too narrow, as a trained guide often is.

    python examples/getting_started.py            # about 20 s
"""

# %%
# ## The model, the guide and the truth
#
# Any Pyro model and guide work; the data are shared by closure. Marginally
# $x \sim \mathcal N(0, I + \mathbf 1 \mathbf 1^\top)$, which gives $\log p(x)$ exactly.

import pyro
import pyro.distributions as dist
import torch

from varinf import ELBO, IWAE, SUMO, NaiveMonteCarlo, compare

torch.set_num_threads(1)
data = torch.tensor([0.3, -0.1, 0.8])


def model():
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(data)):
        pyro.sample("x", dist.Normal(mu, 1.0), obs=data)


def guide():
    pyro.sample("mu", dist.Normal(0.6, 0.25))


truth = dist.MultivariateNormal(torch.zeros(3), torch.eye(3) + 1.0).log_prob(data).item()
print(f"log p(x) = {truth:.4f}")

# %%
# ## One estimate
#
# Every estimator answers `estimate(model, guide)` with an `Estimate`: the value, its Monte Carlo
# standard error, its kind, its cost in model evaluations and diagnostics.

estimate = IWAE(num_particles=1000, seed=0).estimate(model, guide)
print(estimate)
print({name: round(float(value), 3) for name, value in estimate.diagnostics.items()})

# %%
# Read the diagnostics before the value: a Pareto $\hat k$ above 0.7 (here about 1) says the
# importance weights are heavy-tailed, because the guide is narrower than the posterior, so
# the standard error understates the error and the estimate sits below the truth.

# %%
# ## Side by side over 300 repeats
#
# `compare` runs each estimator `repeats` times with independent seeds and tabulates the mean,
# the spread, the bias and RMSE against the truth, and the cost.

result = compare(
    [ELBO(5), IWAE(5), IWAE(50), SUMO(), NaiveMonteCarlo(50)],
    model,
    guide,
    repeats=300,
    truth=truth,
    seed=0,
)
result.table.round(3)

# %%
# How to read it:
#
# - **ELBO** is a lower bound: its bias, about $-\mathrm{KL}(q \,\|\, p(\mu \mid x))$, does not
#   shrink with more particles, only its spread does.
# - **IWAE** is a lower bound too, but consistent: the bias shrinks as $K$ grows (compare
#   $K = 5$ and $K = 50$), at $K$ times the cost.
# - **SUMO** is unbiased for $\log p(x)$: its mean sits on the truth within its standard error
#   (`sem`), but its distribution is heavy-tailed, so its RMSE is the largest. Use it where
#   unbiasedness matters (inside another expectation, or to train a guide), not for one number.
# - **Naive Monte Carlo** averages the likelihood over prior draws. With one latent dimension
#   the prior covers the posterior well and it wins here; its error grows exponentially with
#   the dimension, so it is a baseline, not a method.

# %%
# ## The figure
#
# Left: the distribution of the 300 estimates per estimator (violin), the mean with two standard
# errors, and the truth (dashed). Right: the RMSE against the cost in model evaluations; lower
# left is better.

figure = result.plot()
