r"""The pieces of a tempered SMC sampler: adaptive temperatures, resampling and an HMC move.

Written by hand because no maintained PyTorch library runs a tempered SMC sampler with batched
HMC moves over a Pyro model's potential. Particles are ``(G, N, D)``: ``G`` independent
populations of ``N`` particles, each with its own temperature, flattened to ``(G N, D)`` for
the potential so every particle of every population goes through one batched call.
"""

from __future__ import annotations

import math

import torch


def next_temperature(
    log_weights: torch.Tensor,
    log_likelihoods: torch.Tensor,
    beta: torch.Tensor,
    target_cess: float,
    *,
    iterations: int = 60,
) -> torch.Tensor:
    r"""The next temperature $\beta' \in (\beta, 1]$ of each population, where the conditional
    effective sample size (Zhou, Johansen and Aston 2016, "Toward automatic model comparison: an
    adaptive sequential Monte Carlo approach", JCGS)

    $$\mathrm{CESS}(\beta') = \frac{N \big(\sum_i W_i w_i\big)^2}{\sum_i W_i w_i^2},
    \qquad w_i = e^{(\beta' - \beta)\ell_i},$$

    falls to ``target_cess`` $\cdot N$; $\beta' = 1$ if it never does. Bisection, vectorised over
    the populations.

    Args:
        log_weights: ``(G, N)`` normalised log weights $\log W$.
        log_likelihoods: ``(G, N)`` $\ell_i$ at the current particles.
        beta: ``(G,)`` current temperatures.
        target_cess: fraction $\rho \in (0, 1)$.

    Examples:
        >>> ell = torch.tensor([[0.0, -10.0]])
        >>> log_w = torch.log(torch.tensor([[0.5, 0.5]]))
        >>> float(next_temperature(log_w, ell, torch.tensor([0.0]), 0.5))
        1.0
        >>> round(float(next_temperature(log_w, ell, torch.tensor([0.0]), 0.9)), 4)
        0.0693
    """

    def log_fraction(delta: torch.Tensor) -> torch.Tensor:  # log(CESS / N)
        scaled = delta[:, None] * log_likelihoods
        return 2 * (log_weights + scaled).logsumexp(-1) - (log_weights + 2 * scaled).logsumexp(-1)

    log_target = math.log(target_cess)
    low, high = torch.zeros_like(beta), 1.0 - beta
    done = log_fraction(high) >= log_target
    for _ in range(iterations):
        middle = (low + high) / 2
        above = log_fraction(middle) >= log_target
        low = torch.where(above, middle, low)
        high = torch.where(above, high, middle)
    return torch.where(done, torch.ones_like(beta), beta + low)


def effective_sample_fraction(log_weights: torch.Tensor) -> torch.Tensor:
    r"""$\mathrm{ESS}/N = 1 / (N \sum_i W_i^2)$ of normalised log weights ``(G, N)``."""
    return torch.exp(-(2 * log_weights).logsumexp(-1)) / log_weights.shape[-1]


def systematic_resample(log_weights: torch.Tensor, generator=None) -> torch.Tensor:
    r"""Systematic resampling (Kitagawa 1996): ancestor indices ``(G, N)`` with one uniform per
    population, each particle drawn $\lfloor N W_i \rfloor$ or $\lceil N W_i \rceil$ times."""
    groups, n = log_weights.shape
    u = torch.rand(groups, 1, generator=generator, dtype=log_weights.dtype)
    u = u.to(log_weights.device)
    points = (u + torch.arange(n, device=log_weights.device, dtype=log_weights.dtype)) / n
    cumulative = torch.exp(log_weights).cumsum(-1)
    cumulative[:, -1] = 1.0  # guard rounding
    return torch.searchsorted(cumulative, points).clamp(max=n - 1)


def hmc_move(
    log_density_and_grad,
    z: torch.Tensor,
    state: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    step_size: torch.Tensor,
    inverse_mass: torch.Tensor,
    num_leapfrog: int,
    generator=None,
):
    r"""One Hamiltonian Monte Carlo transition for every particle at once (Neal 2011).

    Args:
        log_density_and_grad: ``z (C, D) -> (log density (C,), grad (C, D), extra (C,))``, with
            ``extra`` any per-particle statistic to carry along (SMC's log-likelihoods).
        z: ``(C, D)`` positions; ``state``: their ``(log density, grad, extra)``.
        step_size: ``(C,)`` leapfrog step sizes; ``inverse_mass``: ``(C, D)`` diagonal
            $M^{-1}$ (the particle variances, so the move is scale-free).
        num_leapfrog: leapfrog steps.

    Returns:
        ``(z, state, accepted)``: the new positions and their state, and ``(C,)`` booleans.
        Non-finite proposals are rejected.
    """
    value, grad, extra = state
    noise = torch.randn(z.shape, generator=generator, dtype=z.dtype).to(z.device)
    momentum = noise / inverse_mass.sqrt()
    eps = step_size[:, None]
    energy = -value + 0.5 * (momentum.square() * inverse_mass).sum(-1)
    position, p = z, momentum + 0.5 * eps * grad
    for step in range(num_leapfrog):
        position = position + eps * inverse_mass * p
        new_value, new_grad, new_extra = log_density_and_grad(position)
        p = p + (eps if step < num_leapfrog - 1 else 0.5 * eps) * new_grad
    new_energy = -new_value + 0.5 * (p.square() * inverse_mass).sum(-1)
    log_accept = (energy - new_energy).nan_to_num(nan=-math.inf)
    u = torch.rand(len(z), generator=generator, dtype=z.dtype).to(z.device)
    accepted = torch.isfinite(new_energy) & (torch.log(u) < log_accept)
    keep = accepted[:, None]
    z = torch.where(keep, position, z)
    value = torch.where(accepted, new_value, value)
    grad = torch.where(keep, new_grad, grad)
    extra = torch.where(accepted, new_extra, extra)
    return z, (value, grad, extra), accepted
