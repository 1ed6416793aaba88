"""Shared test problems: models with known log evidence and guides near but not at the truth."""

import pyro
import pyro.distributions as dist

from models.conjugate import ConjugateGaussian, LocalGaussian


def perturbed_conjugate():
    """Conjugate Gaussian with a guide 1.5x wider than the posterior and offset by half a sd."""
    problem = ConjugateGaussian.example(num_data=10, dim=2)
    loc, scale = problem.posterior

    def guide():
        pyro.sample("mean", dist.Normal(loc + 0.5 * scale, 1.5 * scale).to_event(1))

    return problem, guide


def perturbed_local():
    """Per-datum latents with a guide 1.3x wider than each posterior."""
    problem = LocalGaussian.example(num_data=8)
    shrink = 1 / (1 + problem.noise_scale**2)

    def guide():
        with pyro.plate("data", len(problem.data)):
            scale = 1.3 * shrink**0.5 * problem.noise_scale
            pyro.sample("z", dist.Normal(shrink * problem.data + 0.2, scale))

    return problem, guide
