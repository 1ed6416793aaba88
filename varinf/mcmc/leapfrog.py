r"""Batched leapfrog trajectories: every chain's gradient in one potential call per step.

Hamiltonian $H(z, p) = -\log \pi_\beta(z) + \tfrac12 p^\top M^{-1} p$ with a diagonal
$M^{-1}$ per chain; one leapfrog step of size $\epsilon$ (Neal 2011, "MCMC using Hamiltonian
dynamics", eq. (5.18)-(5.20)) is

$$p_{1/2} = p + \tfrac\epsilon2 \nabla\log\pi(z),\quad z' = z + \epsilon M^{-1} p_{1/2},\quad
p' = p_{1/2} + \tfrac\epsilon2 \nabla\log\pi(z').$$

Chain $c$ takes its own number of steps $L_c$; a step evaluates the potential only at the chains
still moving (one batched call on that subset), so chains that finish early cost nothing more.
A chain whose energy error exceeds ``max_energy_error`` or turns non-finite is *divergent*: it
stops where it was and its proposal is rejected.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Points:
    """Positions ``z (C, D)`` with their log density, its gradient and the two terms, ``(C,)``."""

    z: torch.Tensor
    log_density: torch.Tensor
    grad: torch.Tensor
    log_prior: torch.Tensor
    log_likelihood: torch.Tensor

    def take(self, index: torch.Tensor) -> Points:
        return Points(*(getattr(self, f)[index] for f in _FIELDS))

    def put(self, index: torch.Tensor, other: Points) -> None:
        for name in _FIELDS:
            getattr(self, name)[index] = getattr(other, name)

    def where(self, keep_other: torch.Tensor, other: Points) -> Points:
        """Rows of ``other`` where ``keep_other`` ``(C,)`` is true, else rows of ``self``."""
        picked = []
        for name in _FIELDS:
            mine, theirs = getattr(self, name), getattr(other, name)
            mask = keep_other.view(-1, *[1] * (mine.dim() - 1))
            picked.append(torch.where(mask, theirs, mine))
        return Points(*picked)

    def clone(self) -> Points:
        return Points(*(getattr(self, f).clone() for f in _FIELDS))

    def is_finite(self) -> torch.Tensor:
        return self.log_density.isfinite() & self.grad.isfinite().all(-1)


_FIELDS = ("z", "log_density", "grad", "log_prior", "log_likelihood")


def evaluate(potential, z: torch.Tensor, beta: torch.Tensor) -> Points:
    """One batched `value_and_grad` call at ``z (C, D)`` with inverse temperatures ``(C,)``."""
    value, grad, terms = potential.value_and_grad(z, beta)
    return Points(
        z.detach(),
        value.detach(),
        grad.detach(),
        terms.log_prior.detach(),
        terms.log_likelihood.detach(),
    )


def kinetic_energy(momentum: torch.Tensor, inv_metric: torch.Tensor) -> torch.Tensor:
    r"""$\tfrac12 p^\top M^{-1} p$ per chain."""
    return 0.5 * (momentum.square() * inv_metric).sum(-1)


@dataclass
class Trajectory:
    """The end of each chain's trajectory: its proposal, momentum and energy change."""

    proposal: Points
    momentum: torch.Tensor
    energy_change: torch.Tensor  # H(start) - H(end); -inf where divergent
    divergent: torch.Tensor
    num_evaluations: int


def leapfrog_trajectory(
    potential,
    start: Points,
    momentum: torch.Tensor,
    step_size: torch.Tensor,
    inv_metric: torch.Tensor,
    num_steps: torch.Tensor,
    beta: torch.Tensor,
    max_energy_error: float = 1000.0,
) -> Trajectory:
    r"""Run chain $c$ for ``num_steps[c]`` leapfrog steps of size ``step_size[c]``."""
    end, p = start.clone(), momentum.clone()
    start_energy = -start.log_density + kinetic_energy(momentum, inv_metric)
    divergent = torch.zeros_like(num_steps, dtype=torch.bool)
    evaluations = 0
    for step in range(int(num_steps.max())):
        index = ((num_steps > step) & ~divergent).nonzero().squeeze(-1)
        if index.numel() == 0:
            break
        eps = step_size[index, None]
        half = p[index] + 0.5 * eps * end.grad[index]
        moved = evaluate(potential, end.z[index] + eps * inv_metric[index] * half, beta[index])
        evaluations += index.numel()
        full = half + 0.5 * eps * moved.grad
        energy = -moved.log_density + kinetic_energy(full, inv_metric[index])
        error = energy - start_energy[index]
        bad = ~(moved.is_finite() & energy.isfinite()) | (error > max_energy_error)
        divergent[index[bad]] = True
        good = ~bad
        end.put(index[good], moved.take(good))
        p[index[good]] = full[good]
    end_energy = -end.log_density + kinetic_energy(p, inv_metric)
    change = torch.where(divergent, -torch.inf, start_energy - end_energy)
    change = torch.where(change.isnan(), -torch.inf, change)
    return Trajectory(end, p, change, divergent, evaluations)


def reasonable_step_size(
    potential,
    points: Points,
    step_size: torch.Tensor,
    inv_metric: torch.Tensor,
    beta: torch.Tensor,
    generator: torch.Generator,
    max_rounds: int = 40,
) -> tuple[torch.Tensor, int]:
    r"""Stan's step-size heuristic, per chain: double (or halve) $\epsilon$ until one leapfrog
    step's acceptance probability crosses 0.8 (Hoffman & Gelman 2014, Algorithm 4).

    Returns the step sizes ``(C,)`` and the number of chain evaluations spent.
    """
    step_size = step_size.clone()
    noise = torch.randn(points.z.shape, generator=generator, dtype=points.z.dtype)
    momentum = noise.to(points.z.device) / inv_metric.sqrt()
    one = torch.ones_like(step_size, dtype=torch.long)
    direction = None
    active = torch.ones_like(one, dtype=torch.bool)
    evaluations = 0
    for _ in range(max_rounds):
        index = active.nonzero().squeeze(-1)
        if index.numel() == 0:
            break
        sub = points.take(index)
        out = leapfrog_trajectory(
            potential, sub, momentum[index], step_size[index], inv_metric[index], one[index],
            beta[index],
        )  # fmt: skip
        evaluations += out.num_evaluations
        above = out.energy_change > torch.log(torch.tensor(0.8, dtype=sub.z.dtype))
        if direction is None:
            direction = torch.where(above, 1.0, -1.0).to(step_size)
        crossed = above != (direction[index] > 0)
        keep = ~crossed
        step_size[index[keep]] = step_size[index[keep]] * 2.0 ** direction[index[keep]]
        active[index[crossed]] = False
    return step_size, evaluations
