"""A small stand-in for `varinf.potential.Potential`, used until the real one lands.

Same methods and shapes as INTERFACES.md (`value_and_grad`, `terms`, `log_density`, `dim`,
`constrain`, `initial_points`, `num_evaluations`), for models whose latent sites have no batch
shape of their own and a real or positive support (the conjugate models and the phylogenetic
model with a fixed topology).
"""

from __future__ import annotations

from typing import NamedTuple

import pyro
import pyro.poutine as poutine
import torch
from torch.distributions import biject_to


class Terms(NamedTuple):
    log_prior: torch.Tensor
    log_likelihood: torch.Tensor
    log_likelihood_per_datum: torch.Tensor | None = None


class StandInPotential:
    def __init__(self, model, args=(), kwargs=None, *, dtype=torch.float64) -> None:
        self.model, self.args, self.kwargs = model, args, kwargs or {}
        self.dtype = dtype
        trace = poutine.trace(model).get_trace(*args, **self.kwargs)
        self.nesting = 0
        self.sites = []
        offset = 0
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or _is_subsample(site):
                continue
            self.nesting = max(self.nesting, len(site["cond_indep_stack"]))
            if site["is_observed"]:
                continue
            shape = site["fn"].event_shape
            size = shape.numel()
            transform = biject_to(site["fn"].support)
            self.sites.append((name, shape, transform, slice(offset, offset + size)))
            offset += size
        self.dim = offset
        self.num_evaluations = 0

    def _trace(self, values: dict, num_chains: int):
        conditioned = poutine.condition(self.model, data=values) if values else self.model
        with pyro.plate("chains", num_chains, dim=-(self.nesting + 1)):
            return poutine.trace(conditioned).get_trace(*self.args, **self.kwargs)

    def _batched(self, value: torch.Tensor, shape) -> torch.Tensor:
        return value.reshape(value.shape[0], *([1] * self.nesting), *shape)

    def _terms(self, z: torch.Tensor) -> Terms:
        num_chains = z.shape[0]
        values, log_det = {}, z.new_zeros(num_chains)
        for name, shape, transform, where in self.sites:
            u = z[:, where].reshape(num_chains, *shape)
            x = transform(u)
            jacobian = transform.log_abs_det_jacobian(u, x).reshape(num_chains, -1).sum(-1)
            log_det = log_det + jacobian
            values[name] = self._batched(x, shape)
        trace = self._trace(values, num_chains)
        log_prior, log_lik = log_det, z.new_zeros(num_chains)
        for site in trace.nodes.values():
            if site["type"] != "sample" or _is_subsample(site):
                continue
            term = site["fn"].log_prob(site["value"]).reshape(num_chains, -1).sum(-1)
            if site["name"] not in values:  # conditioned latents count as observed in Pyro
                log_lik = log_lik + term
            else:
                log_prior = log_prior + term
        self.num_evaluations += num_chains
        return Terms(log_prior, log_lik)

    def terms(self, z: torch.Tensor) -> Terms:
        with torch.no_grad():
            return self._terms(z)

    def log_density(self, z: torch.Tensor, beta=1.0) -> torch.Tensor:
        terms = self._terms(z)
        return _combine(terms, beta)

    def value_and_grad(self, z: torch.Tensor, beta=1.0):
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            terms = self._terms(z)
            value = _combine(terms, beta)
            (grad,) = torch.autograd.grad(value.sum(), z)
        detached = Terms(terms.log_prior.detach(), terms.log_likelihood.detach())
        return value.detach(), grad, detached

    def constrain(self, z: torch.Tensor) -> dict:
        return {
            name: transform(z[:, where].reshape(z.shape[0], *shape))
            for name, shape, transform, where in self.sites
        }

    def unconstrain(self, values: dict) -> torch.Tensor:
        parts = []
        for name, shape, transform, _ in self.sites:
            value = torch.as_tensor(values[name], dtype=self.dtype)
            parts.append(transform.inv(value).reshape(-1, shape.numel()))
        return torch.cat(parts, -1)

    def initial_points(self, num_chains: int, init: dict | None = None) -> torch.Tensor:
        if init is not None:
            return self.unconstrain(init).expand(num_chains, self.dim).clone()
        with torch.no_grad():
            trace = self._trace({}, num_chains)
        values = {
            name: trace.nodes[name]["value"].reshape(num_chains, *shape)
            for name, shape, _, _ in self.sites
        }
        return self.unconstrain(values)


def _is_subsample(site) -> bool:
    return type(site["fn"]).__name__ == "_Subsample"


def _combine(terms: Terms, beta) -> torch.Tensor:
    beta = torch.as_tensor(beta, dtype=terms.log_likelihood.dtype)
    tempered = torch.where(
        beta == 0, torch.zeros_like(terms.log_likelihood), beta * terms.log_likelihood
    )
    return terms.log_prior + tempered
