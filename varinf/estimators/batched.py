r"""Fast evidence for many independent problems at once (e.g. every tree of a credible set).

$B$ problems share one batched log density ``log_density(z) -> (C, B)`` for ``z`` of shape
``(C, B, D)``: problem $b$'s density of its own unconstrained latents $z_{\cdot b}$, all $C \times
B$ evaluations in one call (for trees, one pass of the batched pruning likelihood over every
topology and particle). Because the problems are independent, everything the single-problem
estimators do (`varinf.Laplace`, `varinf.GammaLaplus`, `varinf.ImportanceSampling`,
`varinf.GLIS`, `varinf.VBIS`) batches over $b$:

- the modes maximise $\sum_b f_b(z_b)$ (separable, so each $z_b$ is problem $b$'s mode);
- the Hessians come from $2D$ points, point $j^\pm$ moving coordinate $j$ of every problem at
  once, so one batched call gives all $B$ Hessians (finite differences of the exact gradient);
- the proposals are the same families with a batch dimension $B$, and importance weights come
  as ``(K, B)``.

Written by hand: Pyro's potentials and the estimators above see one problem at a time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pyro.distributions as dist
import torch
from torch.distributions import ExpTransform, Gamma, Independent, TransformedDistribution

from varinf.diagnostics import effective_sample_size, pareto_khat
from varinf.estimators.laplus import log_q_at_mode
from varinf.estimators.mode import find_mode, value_and_grad


@dataclass
class BatchedProblems:
    r"""$B$ independent problems with positive latents only (e.g. branch lengths).

    Attributes:
        log_prior_and_likelihood: ``theta (C, B, D) -> (C, B)``, $\log p_b(x, \theta_b)$ in the
            constrained space (all coordinates positive).
        num_problems: $B$.
        dim: $D$.
        hessian: optional exact Hessians ``z (B, D) -> (B, D, D)`` of $\log p_b(x, e^{z_b})$ in
            $z = \log\theta$ (also those of `log_density`: the Jacobian term is linear);
            finite differences of the gradient when ``None``.
        num_evaluations: likelihood evaluations per problem so far ($C$ per call of ``C``
            points; an exact Hessian counts as one).
    """

    log_prior_and_likelihood: Callable[[torch.Tensor], torch.Tensor]
    num_problems: int
    dim: int
    hessian: Callable[[torch.Tensor], torch.Tensor] | None = None
    num_evaluations: int = field(default=0, init=False)

    def hessians(self, fn: Callable, z: torch.Tensor) -> torch.Tensor:
        """Exact Hessians where given, else `batched_hessians` of ``fn``."""
        if self.hessian is None:
            return batched_hessians(fn, z)
        self.num_evaluations += 1
        return self.hessian(z)

    def log_density(self, z: torch.Tensor) -> torch.Tensor:
        r"""$\log\pi_b(z_b) = \log p_b(x, e^{z_b}) + \sum_i z_{bi}$, shape ``(C, B)``."""
        return self.log_posterior(z) + z.sum(-1)

    def log_posterior(self, z: torch.Tensor) -> torch.Tensor:
        r"""$\log p_b(x, e^{z_b})$ (no Jacobian: maximised at the constrained mode)."""
        self.num_evaluations += z.shape[:-2].numel()
        return self.log_prior_and_likelihood(z.exp())


def batched_mode(fn: Callable, start: torch.Tensor, **options) -> tuple[torch.Tensor, dict]:
    """Modes ``(B, D)`` of ``fn: (C, B, D) -> (C, B)``, by L-BFGS on the separable sum."""
    shape = start.shape

    def total(flat: torch.Tensor) -> torch.Tensor:
        return fn(flat.reshape(flat.shape[0], *shape)).sum(-1)

    mode = find_mode(total, start.reshape(1, -1), **options)
    return mode.z.reshape(shape), mode.report


def batched_hessians(fn: Callable, z: torch.Tensor) -> torch.Tensor:
    """``(B, D, D)`` Hessians of ``fn`` at ``z`` ``(B, D)``: central differences of the
    gradient, one batched call of ``2D`` points."""
    num, dim = z.shape
    step = torch.finfo(z.dtype).eps ** (1 / 3) * z.abs().clamp(min=1.0)  # (B, D)
    eye = torch.eye(dim, dtype=z.dtype, device=z.device)
    offsets = step.T[:, :, None] * eye[:, None, :]  # (D, B, D): j moves coordinate j of all b
    points = torch.cat([z + offsets, z - offsets])  # (2D, B, D)
    _, grads = value_and_grad(lambda p: fn(p).sum(-1), points)
    rows = (grads[:dim] - grads[dim:]) / (2 * step.T[..., None])  # (D, B, D): row j of H_b
    hess = rows.transpose(0, 1)
    return (hess + hess.mT) / 2


def batched_importance(
    log_density: Callable, proposal, num_particles: int, batch_size: int
) -> torch.Tensor:
    """Log weights ``(K, B)`` from a proposal with batch shape ``(B,)``."""
    chunks = []
    for start in range(0, num_particles, batch_size):
        z = proposal.sample((min(batch_size, num_particles - start),))
        with torch.no_grad():
            log_w = log_density(z) - proposal.log_prob(z)
        if torch.isnan(log_w).any():
            raise FloatingPointError("NaN importance weights: check the model's log density")
        chunks.append(log_w)
    return torch.cat(chunks)


def summarize_weights(log_weights: torch.Tensor) -> dict[str, torch.Tensor | list]:
    """Per-problem ``value``, delta-method ``stderr``, ``ess`` and PSIS ``khat``."""
    num = log_weights.shape[0]
    value = log_weights.logsumexp(0) - math.log(num)
    relative = torch.exp(log_weights - log_weights.logsumexp(0)) * num
    stderr = (relative.var(0) / num).sqrt()
    khat = [pareto_khat(log_weights[:, b]) for b in range(log_weights.shape[1])]
    return {"value": value, "stderr": stderr, "ess": effective_sample_size(log_weights),
            "khat": khat}  # fmt: skip


def fast_evidences(
    problems: BatchedProblems,
    start: torch.Tensor,
    *,
    methods: tuple[str, ...] = ("gamma-laplus", "laplace", "is", "glis", "vbis"),
    num_particles: int = 2000,
    batch_size: int = 200,
    df: float = 5.0,
    vbis_steps: int = 200,
) -> dict[str, dict]:
    r"""Per-problem log evidences by the fast methods, all problems batched.

    Args:
        problems: the `BatchedProblems`.
        start: ``(B, D)`` unconstrained starting point of the mode search.
        methods: any of ``"gamma-laplus"``, ``"lognormal-laplus"``, ``"betaprime-laplus"``,
            ``"laplace"``, ``"is"`` (Laplace Student-t), ``"glis"``, ``"vbis"``.
        num_particles: importance draws per problem.
        batch_size: draws per batched call (each evaluates all $B$ problems).
        df: Student-t degrees of freedom of ``"is"``.
        vbis_steps: SVI steps of the mean-field fit of ``"vbis"``.

    Returns:
        ``{method: {"value": (B,), "stderr": (B,), "seconds": float, "num_evaluations": int,
        ...}}``; deterministic methods have ``stderr`` nan. ``seconds`` and
        ``num_evaluations`` (likelihood evaluations per problem) count the shared fit (the mode
        and Hessians of the Laplus group or of the Laplace group) in every method that uses it.

    Examples:
        >>> rates = torch.tensor([[2.0], [5.0]], dtype=torch.float64)
        >>> def log_joint(theta):  # Gamma(3, rates) kernels: log Z = log Gamma(3) - 3 log rate
        ...     return (2 * theta.log() - rates.T[..., None] * theta).sum(-1)
        >>> problems = BatchedProblems(log_joint, num_problems=2, dim=1)
        >>> out = fast_evidences(problems, torch.zeros(2, 1, dtype=torch.float64),
        ...                      methods=("gamma-laplus",))
        >>> exact = math.lgamma(3) - 3 * rates.flatten().log()
        >>> torch.allclose(out["gamma-laplus"]["value"], exact)
        True
    """
    results: dict[str, dict] = {}
    nan = torch.full((problems.num_problems,), math.nan, dtype=start.dtype)
    laplus = [m for m in methods if m.endswith("laplus") or m == "glis"]
    if laplus:
        began, counted = time.perf_counter(), problems.num_evaluations
        z_c, report = batched_mode(problems.log_posterior, start)
        c = -torch.diagonal(problems.hessians(problems.log_posterior, z_c), dim1=-2, dim2=-1)
        if not (c > 0).all():
            raise ValueError("Laplus: the log posterior is not concave at some problem's mode")
        value_at_mode = problems.log_posterior(z_c[None])[0]
        fitted, fit_evaluations = time.perf_counter() - began, problems.num_evaluations - counted
        for method in laplus:
            began, counted = time.perf_counter(), problems.num_evaluations
            if method == "glis":
                gamma = Gamma(1 + c, c / z_c.exp())
                proposal = Independent(TransformedDistribution(gamma, [ExpTransform().inv]), 1)
                log_w = batched_importance(problems.log_density, proposal, num_particles,
                                           batch_size)  # fmt: skip
                results[method] = summarize_weights(log_w)
            else:
                family = method.removesuffix("-laplus")
                log_q = log_q_at_mode(family, z_c.exp(), c).sum(-1)
                results[method] = {"value": value_at_mode - log_q, "stderr": nan, **report}
            results[method]["seconds"] = fitted + time.perf_counter() - began
            results[method]["num_evaluations"] = (
                fit_evaluations + problems.num_evaluations - counted
            )
    gaussian = [m for m in methods if m in ("laplace", "is", "vbis")]
    if gaussian:
        began, counted = time.perf_counter(), problems.num_evaluations
        z_hat, report = batched_mode(problems.log_density, start)
        hess = problems.hessians(problems.log_density, z_hat)
        precision = -hess
        chol, info = torch.linalg.cholesky_ex(precision)
        if (info != 0).any():
            raise ValueError("Laplace: the Hessian is not negative definite for some problem")
        at_mode = problems.log_density(z_hat[None])[0]
        fitted, sampled = time.perf_counter() - began, time.perf_counter()
        fit_evaluations = problems.num_evaluations - counted
        counted = problems.num_evaluations
        if "laplace" in methods:
            logdet = 2 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
            value = at_mode + 0.5 * problems.dim * math.log(2 * math.pi) - 0.5 * logdet
            results["laplace"] = {"value": value, "stderr": nan, **report}
            results["laplace"]["seconds"], sampled = fitted, time.perf_counter()
            results["laplace"]["num_evaluations"] = fit_evaluations
        if "is" in methods:
            scale_tril = torch.linalg.cholesky(torch.cholesky_inverse(chol))
            proposal = dist.MultivariateStudentT(torch.tensor(df, dtype=z_hat.dtype), z_hat,
                                                 scale_tril)  # fmt: skip
            log_w = batched_importance(problems.log_density, proposal, num_particles, batch_size)
            results["is"] = summarize_weights(log_w)
            results["is"]["seconds"] = fitted + time.perf_counter() - sampled
            results["is"]["num_evaluations"] = fit_evaluations + num_particles
            sampled, counted = time.perf_counter(), problems.num_evaluations
        if "vbis" in methods:
            proposal = _batched_mean_field(problems, z_hat, precision, vbis_steps)
            log_w = batched_importance(problems.log_density, proposal, num_particles, batch_size)
            results["vbis"] = summarize_weights(log_w)
            results["vbis"]["seconds"] = fitted + time.perf_counter() - sampled
            results["vbis"]["num_evaluations"] = (
                fit_evaluations + problems.num_evaluations - counted
            )
    unknown = set(methods) - set(results)
    if unknown:
        raise ValueError(f"methods: unknown fast methods {sorted(unknown)}")
    return results


def _batched_mean_field(problems, loc, precision, num_steps, num_particles=8, lr=0.02):
    """`varinf.estimators.meanfield.fit_mean_field`, every problem at once."""
    loc = loc.detach().clone().requires_grad_(True)
    log_scale = (-0.5 * torch.diagonal(precision, dim1=-2, dim2=-1).log()).detach()
    log_scale.requires_grad_(True)
    optimizer = torch.optim.Adam([loc, log_scale], lr=lr)
    total = [torch.zeros_like(loc), torch.zeros_like(loc)]
    with torch.enable_grad():
        for step in range(num_steps):
            z = loc + log_scale.exp() * torch.randn(num_particles, *loc.shape, dtype=loc.dtype)
            elbo = problems.log_density(z).mean(0).sum() + log_scale.sum()
            optimizer.zero_grad()
            (-elbo).backward()
            optimizer.step()
            if 2 * step >= num_steps:
                total[0] += loc.detach()
                total[1] += log_scale.detach()
    count = num_steps - (num_steps + 1) // 2
    return dist.Normal(total[0] / count, (total[1] / count).exp()).to_event(1)
