r"""Nested sampling with batched replacements, for likelihoods that are cheap only in batches.

Skilling (2006), "Nested sampling for general Bayesian computation": $p(x) = \int_0^1 L(X)\,dX$
with $X(\lambda)$ the prior mass where the likelihood exceeds $\lambda$. Each iteration removes
the $K$ lowest of $n$ live points at once (Handley, Hobson and Lasenby 2015, "PolyChord"): the
$i$-th removed point ($i = 0 \dots K-1$) shrinks the volume by $t_i \sim \mathrm{Beta}(n-i, 1)$,
so $\log X$ falls by $1/(n-i)$ on average, its weight is $L_i (X_{i-1} - X_i)$, and after the
last iteration the live points share the remaining $X$. The $K$ replacements are drawn from the
prior restricted to $L > L^*$ ($L^* = L_{K-1}$) by $K$ Metropolis walks over the unconstrained
latents $z$ of `varinf.potential.Potential`, started from random surviving live points and run
in lockstep: each step is one batched call of $K$ points, accepted when $L(z') > L^*$ and
$\log U < \log\pi_0(z') - \log\pi_0(z)$ ($\pi_0$ the prior density of $z$, Jacobian included).
Steps are Gaussian with the live points' covariance, their scale adapted towards an acceptance
of 0.3 (the ``rwalk`` of dynesty, Speagle 2020, in $z$ rather than the unit cube: on DS1's
branch lengths, walks in the unit cube met its boundary at short branches and mixed so slowly
that the estimate was 14 to 24 nats high). The initial live points are prior draws, so
hierarchical priors need no unit-cube transform.

The standard error comes from the volumes: the run is re-weighted with 200 sets of simulated
shrinkages $t_i \sim \mathrm{Beta}(n_i, 1)$ and the spread of $\log\hat Z$ is reported (about
Skilling's $\sqrt{H/n}$, $H$ the information). Like every nested sampler's, it ignores the
correlation of walks that mix too little; ``walks`` sets their length.

Written by hand because dynesty proposes one point per sampler call (its ``rwalk`` and
``slice`` walks call the likelihood sequentially, and its ``pool`` maps whole walks to
processes), so on DS1 (2 ms per single-point call, 0.2 ms per point in batches of 50 to 100)
it could not finish in 23 minutes; here every likelihood call is a batch.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from varinf.estimate import Estimate, Estimator, make_estimate
from varinf.potential import Potential

__all__ = ["BatchedNestedSampling", "nested_log_evidence"]


def nested_log_evidence(
    log_likelihoods: torch.Tensor, num_live: torch.Tensor, log_shrink: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""$\log\hat Z$ and the information $H$ from dead points, with the final live points last.

    Args:
        log_likelihoods: ``(M,)`` dead points in removal order, then the final live points.
        num_live: ``(M,)`` live points when each was removed (the final ones: ``0``, they share
            the remaining volume equally).
        log_shrink: ``(R, M)`` simulated $\log t$; default the expectation $-1/n_i$.

    Returns:
        ``(R,)`` (or scalar) $\log\hat Z$ and $H$.

    Examples:
        >>> # L = 1 everywhere: Z = 1 whatever the shrinkage.
        >>> log_z, info = nested_log_evidence(torch.zeros(6), torch.tensor([3, 3, 3, 0, 0, 0]))
        >>> round(log_z.item(), 12)
        0.0
    """
    dead = num_live > 0
    if log_shrink is None:
        log_shrink = torch.where(dead, -1.0 / num_live.clamp(min=1), torch.zeros(()))
    log_x = torch.cumsum(torch.where(dead, log_shrink, torch.zeros(())), -1)  # X after each
    log_x_before = torch.cat([torch.zeros_like(log_x[..., :1]), log_x[..., :-1]], -1)
    # Dead point i: X_{i-1} - X_i; each of the m final live points: X_final / m.
    log_width_dead = log_x_before + torch.log(-torch.expm1(log_shrink.clamp(max=-1e-300)))
    log_final = log_x[..., -1:] - math.log(max(int((~dead).sum()), 1))
    log_width = torch.where(dead, log_width_dead, log_final.expand_as(log_x))
    log_weight = log_likelihoods + log_width
    log_z = log_weight.logsumexp(-1)
    posterior = (log_weight - log_z[..., None]).exp()
    information = (posterior * log_likelihoods).sum(-1) - log_z
    return log_z, information


class BatchedNestedSampling(Estimator):
    r"""Nested sampling whose likelihood calls are all batched (see the module docstring).

    Args:
        num_live: live points $n$.
        num_replace: points $K$ removed and replaced per iteration (default $n/2$); each
            replacement walk is one of $K$ points of every batched likelihood call.
        walks: constrained random-walk steps per replacement (default $\max(25, 3D)$: on DS1,
            $D = 51$, 51 steps left the estimate 3 nats high, 153 steps did not).
        dlogz: stop when the most the live points can add, $\log(1 + L_{max} X / \hat Z)$,
            is below this (dynesty's rule).
        max_iterations: cap on iterations (a warning in the diagnostics if reached).
        seed: see `varinf.Estimator`.

    Diagnostics: ``information`` ($H$), ``iterations``, ``acceptance`` (mean of the walks),
    ``stuck`` (fraction of replacements whose walk never moved), ``warnings``.

    Examples:
        >>> from models.conjugate import ConjugateGaussian
        >>> problem = ConjugateGaussian.example()
        >>> result = BatchedNestedSampling(num_live=200, seed=0).estimate(problem.model)
        >>> abs(result.value - problem.log_evidence) < 5 * result.stderr
        True
    """

    name = "nested-batched"
    kind: ClassVar[str] = "consistent"
    requires_guide: ClassVar[bool] = False

    def __init__(
        self,
        num_live: int = 500,
        *,
        num_replace: int | None = None,
        walks: int | None = None,
        dlogz: float = 0.1,
        max_iterations: int = 100_000,
        seed: int | None = None,
    ) -> None:
        super().__init__(seed=seed)
        if not isinstance(num_live, int) or num_live < 4:
            raise ValueError(f"num_live must be an int of at least 4, got {num_live!r}")
        num_replace = max(1, num_live // 2) if num_replace is None else num_replace
        if not 1 <= num_replace < num_live:
            raise ValueError(f"num_replace must be in [1, num_live), got {num_replace!r}")
        if walks is not None and walks < 1:
            raise ValueError(f"walks must be at least 1, got {walks!r}")
        if not dlogz > 0:
            raise ValueError(f"dlogz must be positive, got {dlogz!r}")
        self.num_live, self.num_replace, self.walks = num_live, num_replace, walks
        self.dlogz, self.max_iterations = dlogz, max_iterations

    @property
    def label_defaults(self) -> dict:
        return {"num_replace": max(1, self.num_live // 2)}  # the default n/2 stays unlabelled

    def _estimate(self, model, guide, args, kwargs) -> Estimate:
        potential = Potential(model, args, kwargs)

        def terms(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            with torch.no_grad():
                out = potential.terms(z)
            return out.log_prior.detach(), out.log_likelihood.detach()

        run = _Run(terms, potential.initial_points(self.num_live), self)
        run.sample()
        log_l = torch.cat([torch.cat(run.dead_log_l), run.live_log_l.sort().values])
        num_live = torch.cat([torch.cat(run.dead_n), torch.zeros(self.num_live)])
        log_z, information = nested_log_evidence(log_l, num_live)
        simulated = _simulated_log_shrink(num_live, 200)
        stderr = nested_log_evidence(log_l, num_live, simulated)[0].std().item()
        diagnostics = {
            "information": information.item(),
            "iterations": run.iterations,
            "acceptance": run.accepted / max(run.proposed, 1),
            "stuck": run.stuck / max(run.replaced, 1),
        }
        if run.warnings:
            diagnostics["warnings"] = run.warnings
        if guide is not None:
            diagnostics["guide"] = "ignored: nested sampling samples the prior"
        return make_estimate(log_z.item(), stderr, num_evaluations=potential.num_evaluations,
                             diagnostics=diagnostics)  # fmt: skip


def _simulated_log_shrink(num_live: torch.Tensor, repeats: int) -> torch.Tensor:
    r"""$\log t_i$, $t_i \sim \mathrm{Beta}(n_i, 1)$, i.e. $\log U / n_i$; 0 for live points."""
    dead = num_live > 0
    uniform = torch.rand(repeats, len(num_live), dtype=torch.float64).clamp(min=1e-300)
    return torch.where(dead, uniform.log() / num_live.clamp(min=1), torch.zeros(()))


class _Run:
    """The state of one run: live points, dead points, walk statistics."""

    def __init__(self, terms, live_z: torch.Tensor, options: BatchedNestedSampling) -> None:
        self.terms, self.options = terms, options
        self.dim = live_z.shape[1]
        self.walks = options.walks or max(25, 3 * self.dim)
        self.scale = 2.38 / math.sqrt(self.dim)
        self.live_z = live_z
        self.live_log_prior, self.live_log_l = terms(live_z)
        if not torch.isfinite(self.live_log_l).all():
            raise FloatingPointError("the log-likelihood is not finite at some prior draws")
        self.dead_log_l, self.dead_n, self.warnings = [], [], []
        self.iterations = self.accepted = self.proposed = self.stuck = self.replaced = 0

    def sample(self) -> None:
        n, k = self.options.num_live, self.options.num_replace
        log_x, log_z = 0.0, -math.inf
        while self.iterations < self.options.max_iterations:
            order = self.live_log_l.argsort()
            removed, kept = order[:k], order[k:]
            shrink = torch.arange(n, n - k, -1, dtype=torch.float64)
            self.dead_log_l.append(self.live_log_l[removed])
            self.dead_n.append(shrink)
            # The expected volumes, for the stopping rule only (the estimate is recomputed).
            log_x_after = log_x - torch.cumsum(1.0 / shrink, 0)
            log_width = log_x_after + 1.0 / shrink + torch.log(-torch.expm1(-1.0 / shrink))
            terms = torch.cat([torch.tensor([log_z]), self.live_log_l[removed] + log_width])
            log_z, log_x = terms.logsumexp(0).item(), log_x_after[-1].item()
            bound = self.live_log_l[removed[-1]]
            chol = self.proposal_scale(self.live_z)
            start = kept[torch.randint(len(kept), (k,))]
            new = self.replace(start, bound, chol)
            self.live_z = torch.cat([self.live_z[kept], new[0]])
            self.live_log_prior = torch.cat([self.live_log_prior[kept], new[1]])
            self.live_log_l = torch.cat([self.live_log_l[kept], new[2]])
            self.iterations += 1
            remaining = self.live_log_l.max().item() + log_x  # at most this much is left
            if math.log1p(math.exp(min(remaining - log_z, 700.0))) < self.options.dlogz:
                return
        self.warnings.append(
            f"stopped at max_iterations={self.options.max_iterations} before dlogz was reached"
        )

    @staticmethod
    def proposal_scale(live: torch.Tensor) -> torch.Tensor:
        r"""Cholesky factor of the live points' covariance, shrunk by 10 % towards its diagonal:
        with fewer live points than dimensions the sample covariance is singular, and walks
        along it alone would never leave the live points' affine hull."""
        centred = live - live.mean(0)
        covariance = centred.T @ centred / max(len(live) - 1, 1)
        shrunk = 0.9 * covariance + 0.1 * torch.diag(covariance.diagonal().clamp(min=1e-300))
        return torch.linalg.cholesky(shrunk)

    def replace(self, start: torch.Tensor, bound, chol: torch.Tensor):
        r"""``K`` Metropolis walks on the prior restricted to $L > L^*$, from the live points
        ``start``, all in lockstep (one batched call per step)."""
        k = len(start)
        z = self.live_z[start].clone()
        log_prior, log_l = self.live_log_prior[start].clone(), self.live_log_l[start].clone()
        moved = torch.zeros(k, dtype=torch.bool)
        accepted = 0
        for _ in range(self.walks):
            proposal = z + self.scale * torch.randn(k, self.dim, dtype=z.dtype) @ chol.T
            new_prior, new_l = self.terms(proposal)
            uniform = torch.rand(k, dtype=z.dtype).clamp(min=1e-300)
            accept = (new_l > bound) & (uniform.log() < new_prior - log_prior)
            z[accept], log_prior[accept], log_l[accept] = (
                proposal[accept],
                new_prior[accept],
                new_l[accept],
            )
            moved |= accept
            accepted += int(accept.sum())
        rate = accepted / (k * self.walks)
        self.scale *= math.exp(rate - 0.3)  # towards an acceptance of 0.3
        self.accepted, self.proposed = self.accepted + accepted, self.proposed + k * self.walks
        self.stuck, self.replaced = self.stuck + int((~moved).sum()), self.replaced + k
        return z, log_prior, log_l  # a walk that never moved keeps its start (``stuck``)
