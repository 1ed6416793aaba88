r"""The mode of a log density over unconstrained latents, and its Hessian there.

Shared by the Laplace family (`varinf.estimators.laplace`, `varinf.estimators.laplus`) and the
importance samplers whose proposals are fitted at the mode (`varinf.estimators.importance`).

`find_mode` maximises a batched log density $f(z)$, $z \in \mathbb R^D$, by SciPy's L-BFGS from
several starts and keeps the best, with a convergence report (the gradient norm at the end,
each start's value). `hessian` gives $\nabla^2 f$ by autograd where the model is twice
differentiable (checked against a finite difference of the gradient along a random
direction), else by central differences of the exact gradient, all $2D$ points in one batched
call. Three objectives on a `varinf.potential.Potential`, all over its unconstrained $z$:

- ``"density"``: $\log p(x, T(z)) + \log\lvert J_T(z)\rvert$, maximised at the mode of the
  density of $z$ (Laplace);
- ``"posterior"``: $\log p(x, T(z))$, maximised at the constrained MAP $T^{-1}(\hat\theta)$;
- ``"likelihood"``: $\log p(x \mid T(z))$, maximised at the maximum-likelihood point.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import minimize

OBJECTIVES = ("density", "posterior", "likelihood")


class ConvergenceWarning(RuntimeWarning):
    """The mode finder stopped before its gradient vanished (see ``Mode.report``)."""


@dataclass(frozen=True)
class Mode:
    r"""Where `find_mode` stopped.

    Attributes:
        z: ``(D,)`` the best point found.
        value: $f(z)$ there.
        grad_norm: $\lVert \nabla f(z) \rVert_\infty$ there.
        converged: whether SciPy reported success for the best start.
        message: SciPy's message for the best start.
        start_values: $f$ at the end of every start (a spread means several local optima).
    """

    z: torch.Tensor
    value: float
    grad_norm: float
    converged: bool
    message: str
    start_values: list[float] = field(default_factory=list)

    @property
    def report(self) -> dict:
        """The diagnostics estimators record."""
        return {
            "mode_value": self.value,
            "grad_norm": self.grad_norm,
            "converged": self.converged,
            "optimizer_message": self.message,
            "start_values": self.start_values,
        }


def objective_function(potential, objective: str = "density") -> Callable:
    r"""$f(z)$ of shape ``(C,)`` for ``z`` of shape ``(C, D)``, differentiable, on ``potential``.

    Raises:
        ValueError: for an unknown ``objective``.
    """
    if objective == "density":
        return potential.log_density
    if objective == "posterior":
        return lambda z: potential.log_density(z) - log_abs_det_jacobian(potential, z)
    if objective == "likelihood":
        return potential.log_likelihood
    raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")


def log_abs_det_jacobian(potential, z: torch.Tensor) -> torch.Tensor:
    r"""$\log\lvert J_T(z)\rvert$ of the map to the constrained sites, shape ``(C,)``."""
    total = z.new_zeros(z.shape[0])
    for _, shape, transform, where in potential.sites:
        u = z[:, where].reshape(z.shape[0], *shape)
        log_jac = transform.log_abs_det_jacobian(u, transform(u))
        total = total + log_jac.reshape(z.shape[0], -1).sum(1)
    return total


def value_and_grad(fn: Callable, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``fn(z)`` of shape ``(C,)`` and its gradient ``(C, D)``, by autograd."""
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        value = fn(z)
        (grad,) = torch.autograd.grad(value.sum(), z)
    return value.detach(), grad.detach()


def find_mode(
    fn: Callable,
    starts: torch.Tensor,
    *,
    max_iter: int = 2000,
    gtol: float = 1e-5,
    warn: bool = True,
) -> Mode:
    r"""Maximise ``fn`` by L-BFGS (SciPy) from each row of ``starts`` and keep the best.

    Args:
        fn: batched log density, ``(C, D) -> (C,)``, differentiable.
        starts: ``(S, D)`` starting points.
        max_iter: L-BFGS iterations per start.
        gtol: stop when every gradient component is below this.
        warn: emit a `ConvergenceWarning` when the best start did not converge.

    Returns:
        The best `Mode`.

    Raises:
        FloatingPointError: when ``fn`` is not finite at any start.

    Examples:
        >>> fn = lambda z: -((z - 3.0) ** 2).sum(-1)
        >>> mode = find_mode(fn, torch.zeros(2, 1, dtype=torch.float64))
        >>> round(mode.z.item(), 6), mode.converged
        (3.0, True)
    """
    dtype, device = starts.dtype, starts.device

    def negative(x: np.ndarray) -> tuple[float, np.ndarray]:
        z = torch.as_tensor(x, dtype=dtype, device=device)[None]
        value, grad = value_and_grad(fn, z)
        if not torch.isfinite(value).all():
            return math.inf, np.zeros_like(x)
        return -value.item(), -grad[0].cpu().numpy()

    results = []
    for start in starts:
        first, _ = negative(start.cpu().numpy())
        if not math.isfinite(first):
            continue
        options = {"maxiter": max_iter, "gtol": gtol, "ftol": 1e-14}
        results.append(minimize(negative, start.cpu().numpy(), jac=True, method="L-BFGS-B",
                                options=options))  # fmt: skip
    if not results:
        raise FloatingPointError(
            "the log density is not finite at any starting point; pass init= with a point "
            "inside the model's support"
        )
    best = min(results, key=lambda r: r.fun)
    z = torch.as_tensor(best.x, dtype=dtype, device=device)
    grad_norm = float(np.abs(best.jac).max())
    mode = Mode(z, -float(best.fun), grad_norm, bool(best.success), str(best.message),
                [-float(r.fun) for r in results])  # fmt: skip
    if warn and not mode.converged:
        warnings.warn(
            f"the mode finder did not converge ({mode.message}); gradient norm "
            f"{grad_norm:.3g} at the best point: raise max_iter, or pass init= near the mode",
            ConvergenceWarning,
            stacklevel=3,
        )
    return mode


def hessian(
    fn: Callable, z: torch.Tensor, method: str | Callable = "auto"
) -> tuple[torch.Tensor, str]:
    r"""$\nabla^2 f(z)$, shape ``(D, D)``, and how it was computed.

    Args:
        fn: batched log density ``(C, D) -> (C,)``.
        z: ``(D,)`` the point.
        method: ``"autograd"`` (exact; needs a twice-differentiable model),
            ``"finite-difference"`` (central differences of the exact gradient, error
            $O(h^2)$ with $h = \epsilon^{1/3} \max(1, \lvert z_i\rvert)$; one batched call of
            $2D$ points), ``"auto"`` (autograd, checked against a finite difference along a
            random direction; finite differences where they disagree, e.g. a custom autograd
            ``Function`` whose backward is not itself differentiable), or a callable
            ``z -> (D, D)`` giving the exact Hessian.

    Examples:
        >>> fn = lambda z: -(z**2 * torch.tensor([1.0, 4.0], dtype=z.dtype)).sum(-1)
        >>> H, how = hessian(fn, torch.ones(2, dtype=torch.float64))
        >>> torch.diag(H).tolist(), how
        ([-2.0, -8.0], 'autograd')
    """
    if callable(method):
        return torch.as_tensor(method(z), dtype=z.dtype, device=z.device), "given"
    if method == "finite-difference":
        return finite_difference_hessian(fn, z), "finite-difference"
    if method not in ("auto", "autograd"):
        raise ValueError(
            f"hessian must be 'auto', 'autograd', 'finite-difference' or a callable, got {method!r}"
        )
    with torch.enable_grad():
        exact = torch.autograd.functional.hessian(lambda x: fn(x[None])[0], z.detach())
    if method == "autograd":
        return exact, "autograd"
    if _agrees_with_finite_difference(fn, z, exact):
        return exact, "autograd"
    return finite_difference_hessian(fn, z), "finite-difference (autograd disagreed)"


def finite_difference_hessian(fn: Callable, z: torch.Tensor) -> torch.Tensor:
    """Central differences of the gradient, symmetrised; all ``2D`` points in one call."""
    dim = z.shape[0]
    step = torch.finfo(z.dtype).eps ** (1 / 3) * z.abs().clamp(min=1.0)
    offsets = torch.diag(step)
    points = torch.cat([z + offsets, z - offsets])
    _, grads = value_and_grad(fn, points)
    matrix = (grads[:dim] - grads[dim:]) / (2 * step[:, None])
    return (matrix + matrix.T) / 2


def _agrees_with_finite_difference(fn, z, exact, rtol: float = 1e-4) -> bool:
    generator = torch.Generator(device="cpu").manual_seed(0)
    direction = torch.randn(z.shape[0], generator=generator, dtype=z.dtype).to(z.device)
    direction = direction / direction.norm()
    step = torch.finfo(z.dtype).eps ** (1 / 3) * max(1.0, z.abs().max().item())
    _, grads = value_and_grad(fn, torch.stack([z + step * direction, z - step * direction]))
    numeric = (grads[0] - grads[1]) / (2 * step)
    analytic = exact @ direction
    scale = numeric.norm() + analytic.norm() + 1e-12
    return bool((numeric - analytic).norm() <= rtol * scale)
