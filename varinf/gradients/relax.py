r"""RELAX: score-function gradients with a learned, reparameterised control variate.

Grathwohl, Choi, Wu, Roeder and Duvenaud (2018), "Backpropagation through the void". With
relaxed pre-activations $z = \log q + g$ (Gumbel $g$), the discrete sample
$b = \arg\max z$, and $\tilde z \sim p(z \mid b)$ drawn by conditional
re-sampling, for any differentiable control variate $c_\phi$

$$
\hat g = \big(f(b) - c_\phi(\tilde z)\big)\nabla_\theta \log q_\theta(b)
    + \nabla_\theta c_\phi(z) - \nabla_\theta c_\phi(\tilde z)
$$

is unbiased for $\nabla_\theta\mathbb{E}_q[f(b)]$. Its parameters $\phi$ are trained
to minimise the variance, by the gradient $\partial\,\mathbb{E}[\hat g^2]/\partial\phi$
(the mean does not depend on $\phi$), which needs $\hat g$ as a differentiable
function of $\phi$: call `RELAX.backward` rather than ``surrogate.backward()``.

Conditional re-sampling (Tucker et al. 2017, "REBAR", appendix): with $v \sim U(0,1)^n$
and normalised $q$,

$$
\tilde z_b = -\log(-\log v_b), \qquad
\tilde z_i = -\log\Big(-\frac{\log v_i}{q_i} - \log v_b\Big) \quad (i \neq b).
$$

The default control variate is REBAR's, $c(z) = \eta\, f(\mathrm{softmax}(z/\tau))$, with
learned scale $\eta$ and temperature $\tau$, plus an optional network
$r_\rho(z)$ (see `mlp_control_variate`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn.functional import one_hot

from varinf.gradients.base import (
    CategoricalView,
    GradientEstimator,
    Surrogate,
    uniform_like,
)


def conditional_gumbel(
    log_probs: torch.Tensor, hard: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    r"""$\tilde z \sim p(\log q + g \mid \arg\max = b)$, reparameterised in ``log_probs``.

    Args:
        log_probs: Normalised log-probabilities broadcastable to ``hard.shape + (n,)``.
        hard: Category indices $b$.
    """
    mask = one_hot(hard, log_probs.shape[-1]).to(torch.bool)
    log_probs = log_probs.expand(mask.shape)
    neg_log_v = -torch.log(uniform_like(log_probs, generator))  # Exp(1) noise
    top = (neg_log_v * mask).sum(-1, keepdim=True)
    others = -torch.log(neg_log_v * torch.exp(-log_probs) + top)
    return torch.where(mask, -torch.log(top), others)


class _MLP(nn.Module):
    def __init__(self, num_inputs: int, hidden: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(num_inputs, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.layers(z.flatten(-2).to(self.layers[0].weight.dtype)).squeeze(-1).to(z.dtype)


def mlp_control_variate(num_factors: int, num_categories: int, hidden: int = 32) -> nn.Module:
    """A one-hidden-layer network $r_\\rho(z)$ from ``(..., m, n)`` to ``(...)``."""
    return _MLP(num_factors * num_categories, hidden)


class RELAX(nn.Module, GradientEstimator):
    r"""The RELAX estimator (see the module docstring).

    Args:
        temperature: Initial temperature $\tau$ of the REBAR term.
        scale: Initial scale $\eta$ of the REBAR term; ``None`` to leave it out (then
            ``net`` is required and ``f`` need not accept relaxed samples).
        net: Optional module $r_\rho$ from pre-activations ``(k, *batch, m, n)`` to
            ``(k, *batch)``, added to the control variate.

    Its parameters ($\log\tau$, $\eta$, $\rho$) are ``self.parameters()``;
    give them an optimiser and call `backward` on every step.

    Examples:
        >>> import torch
        >>> from torch.distributions import Bernoulli, Independent
        >>> eta = torch.zeros(3, requires_grad=True)
        >>> relax = RELAX()
        >>> out = relax.surrogate(Independent(Bernoulli(logits=eta), 1), lambda b: b.sum(-1), 2)
        >>> relax.backward(out.surrogate, [eta])
        >>> eta.grad.shape, relax.log_temperature.grad is not None
        (torch.Size([3]), True)
    """

    name = "relax"

    def __init__(
        self, temperature: float = 0.5, scale: float | None = 1.0, net: nn.Module | None = None
    ) -> None:
        nn.Module.__init__(self)
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature!r}")
        if scale is None and net is None:
            raise ValueError("give a scale (REBAR term), a net, or both: the control variate")
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)))
        self.scale = None if scale is None else nn.Parameter(torch.tensor(float(scale)))
        self.net = net

    def control_variate(self, view: CategoricalView, f: Callable, z: torch.Tensor) -> torch.Tensor:
        r"""$c_\phi(z)$ for pre-activations ``z`` ``(k, *batch, m, n)``."""
        value = torch.zeros(z.shape[:-2], dtype=z.dtype, device=z.device)
        if self.scale is not None:
            temperature = self.log_temperature.to(z.dtype).exp()
            relaxed = torch.softmax(z / temperature, -1)
            value = value + self.scale.to(z.dtype) * f(view.decode_relaxed(relaxed))
        if self.net is not None:
            value = value + self.net(z)
        return value

    def _surrogate(
        self, view: CategoricalView, f: Callable, num_particles: int, generator
    ) -> Surrogate:
        z = view.log_probs + view.gumbel(num_particles, generator)
        hard = z.detach().argmax(-1)
        z_tilde = conditional_gumbel(view.log_probs, hard, generator)
        values = f(view.decode(hard))
        c_z, c_tilde = self.control_variate(view, f, z), self.control_variate(view, f, z_tilde)
        difference = c_z - c_tilde
        # The signal multiplies only the score: constant in theta, but kept a function of phi
        # so that the variance gradient in `backward` reaches the control variate.
        signal = values.detach() - self.control_variate(view, f, z_tilde.detach())
        log_q = view.log_prob(hard)
        surrogate = values + signal * (log_q - log_q.detach()) + (difference - difference.detach())
        return Surrogate(values.mean(0).detach(), surrogate.mean(0), num_particles)

    def backward(self, surrogate: torch.Tensor, params: Sequence[torch.Tensor]) -> None:
        r"""Accumulate $\hat g$ (the gradient of ``surrogate.sum()``) into ``params``'
        ``.grad`` and $\partial \sum \hat g^2 / \partial\phi$ into the control variate's.

        Args:
            surrogate: ``Surrogate.surrogate`` of this estimator (or a loss built from it).
            params: The parameters of the distribution to estimate gradients for.
        """
        params = list(params)
        grads = torch.autograd.grad(surrogate.sum(), params, create_graph=True)
        variance = sum((g**2).sum() for g in grads)
        own = [p for p in self.parameters() if p.requires_grad]
        cv_grads = torch.autograd.grad(variance, own, allow_unused=True)
        for param, grad in zip(params, grads, strict=True):
            grad = grad.detach()
            param.grad = grad if param.grad is None else param.grad + grad
        for param, grad in zip(own, cv_grads, strict=True):
            if grad is not None:
                param.grad = grad if param.grad is None else param.grad + grad

    def __repr__(self) -> str:
        return nn.Module.__repr__(self)
