r"""A normalizing flow fitted to the posterior of the unconstrained latents (for `varinf.VBIS`).

$$z = \mu + L\, f(\varepsilon), \qquad \varepsilon \sim N(0, I_D), \qquad
\log q(z) = \log N(\varepsilon; 0, I_D) - \log\lvert\det \partial f/\partial\varepsilon\rvert
- \sum_i \log L_{ii},$$

over the coordinates $z$ of `varinf.potential.Potential`, with $f$ a flow of
`varinf.distributions.build_flow` (RealNVP by default) and $(\mu, L)$ a full-rank affine map.
It starts at the Laplace fit: $\mu = \hat z$, $L L^\top = (-H)^{-1}$, and each layer's output
network zeroed so that $f$ starts as the identity (up to the fixed permutations, which leave
$N(0, I)$ unchanged); the flow then only has to learn what the Gaussian misses (skew, curved
ridges, heavy tails). Every parameter is fitted by Adam on the reparameterised ELBO
$\mathbb E_q[\log\pi(z) - \log q(z)]$, all particles of a step in one batched potential
call, the learning rate decayed linearly to 0 so that the final iterate (the proposal) is not
a noisy one (Rezende and Mohamed 2015, "Variational inference with normalizing flows").
"""

from __future__ import annotations

from typing import Any

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch

from varinf.distributions.flows import build_flow
from varinf.estimators.laplace import Laplace
from varinf.potential import Potential
from varinf.weights import check_num_particles

__all__ = ["fit_flow"]


def fit_flow(
    potential: Potential,
    *,
    flow: str = "realnvp",
    depth: int = 4,
    hidden: int | list[int] = 32,
    num_steps: int = 500,
    num_particles: int = 32,
    lr: float = 2e-3,
    laplace: dict | None = None,
) -> tuple[dist.TransformedDistribution, dict[str, Any]]:
    r"""Fit the flow proposal by Adam on the reparameterised ELBO; return it and a fit report.

    Args:
        potential: the `varinf.potential.Potential` (its dimension $D \ge 2$).
        flow: a name of `varinf.distributions.flows.FLOWS` (``"realnvp"``, ``"iaf"``, ...).
        depth: flow layers.
        hidden: hidden width (or widths) of each layer's network.
        num_steps: Adam steps.
        num_particles: draws per step (one batched call).
        lr: Adam's initial learning rate, decayed linearly to 0 over the run (the last
            iterates, which become the proposal, then move little).
        laplace: options of the `varinf.Laplace` fit that starts it (``hessian``, ...).

    Returns:
        The proposal over $z$ (event shape ``(D,)``, ``float64``), and ``{"elbo_trace":
        [...]}``: the ELBO estimate every tenth of the run.

    Examples:
        >>> from models.conjugate import ConjugateGaussian
        >>> problem = ConjugateGaussian.example()
        >>> q, report = fit_flow(Potential(problem.model), num_steps=50)
        >>> q.sample((3,)).shape
        torch.Size([3, 2])
        >>> abs(report["elbo_trace"][-1] - problem.log_evidence) < 0.5
        True
    """
    check_num_particles(num_steps, "num_steps")
    check_num_particles(num_particles)
    mode, hess, _ = Laplace(**(laplace or {})).gaussian(potential)
    covariance = torch.linalg.inv(-hess)
    scale_tril = torch.linalg.cholesky((covariance + covariance.T) / 2)
    layers = build_flow(potential.dim, flow, depth, hidden).to(mode.z.dtype)
    start_at_identity(layers)
    loc = mode.z.detach().clone().requires_grad_(True)
    off_diagonal = scale_tril.tril(-1).detach().clone().requires_grad_(True)
    log_diagonal = scale_tril.diagonal().log().detach().clone().requires_grad_(True)
    base = dist.Normal(torch.zeros_like(loc), torch.ones_like(loc)).to_event(1)

    def proposal() -> dist.TransformedDistribution:
        tril = off_diagonal.tril(-1) + torch.diag(log_diagonal.exp())
        return dist.TransformedDistribution(base, [layers, T.LowerCholeskyAffine(loc, tril)])

    parameters = [loc, off_diagonal, log_diagonal, *layers.parameters()]
    optimizer = torch.optim.Adam(parameters, lr=lr)
    decay = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / num_steps)
    trace, every = [], max(1, num_steps // 10)
    with torch.enable_grad():
        for step in range(num_steps):
            q = proposal()
            z = q.rsample((num_particles,))
            elbo = (potential.log_density(z) - q.log_prob(z)).mean()
            if not torch.isfinite(elbo):
                raise FloatingPointError(
                    f"fit_flow: the ELBO is not finite at step {step}; lower lr (now {lr})"
                )
            optimizer.zero_grad()
            (-elbo).backward()
            optimizer.step()
            decay.step()
            if step % every == 0 or step == num_steps - 1:
                trace.append(elbo.item())
    for parameter in parameters:
        parameter.requires_grad_(False)
    return proposal(), {"elbo_trace": trace, "fit": f"{flow} flow, depth {depth}"}


def start_at_identity(layers: torch.nn.Module) -> None:
    """Zero the output layer of every layer's network (affine couplings and autoregressive
    layers then start as the identity); other layers are left as built."""
    for module in layers.modules():
        network = getattr(module, "nn", None) or getattr(module, "arn", None)
        stack = getattr(network, "layers", None)
        if stack is not None and len(stack) > 0 and hasattr(stack[-1], "weight"):
            with torch.no_grad():
                stack[-1].weight.zero_()
                if stack[-1].bias is not None:
                    stack[-1].bias.zero_()
