r"""Sequential Monte Carlo over tempered posteriors, and annealed importance sampling.

A population of $N$ particles starts at prior draws and is moved through power posteriors
$p_{\beta_t}(\theta) \propto p(x \mid \theta)^{\beta_t} p(\theta)$, $0 = \beta_0 < \dots < \beta_T
= 1$ (Del Moral, Doucet and Jasra 2006, "Sequential Monte Carlo samplers", JRSS B). At each step
the particles are reweighted by $w_i = p(x \mid \theta_i)^{\beta_t - \beta_{t-1}}$, which gives
the unbiased estimate

$$\hat p(x) = \prod_{t=1}^T \sum_i W^{(t-1)}_i w^{(t)}_i$$

($W$ the normalised weights), resampled when their effective sample size falls below a
threshold, and moved by HMC transitions that leave $p_{\beta_t}$ invariant. The next
temperature is chosen so that the conditional ESS of the reweighting is a fixed fraction of $N$
(Zhou, Johansen and Aston 2016, JCGS), so the schedule adapts to the model. Without resampling
(``resample_threshold=0``) this is annealed importance sampling (Neal 2001).

Standard error: ``num_groups`` independent populations run side by side in the same batched
potential calls; the estimate is $\log$ of the mean of their $\hat p_g(x)$ (still unbiased for
$p(x)$) and its standard error the delta-method spread across them.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, NamedTuple

import torch

from varinf.estimate import Estimate, Estimator, make_estimate
from varinf.estimators.runs import log_mean_exp_over_groups
from varinf.estimators.smc_math import (
    effective_sample_fraction,
    hmc_move,
    next_temperature,
    systematic_resample,
)


class SMCResult(NamedTuple):
    r"""``log_evidence`` ``(G,)`` per population, ``temperatures`` (a list of ``(G,)`` tensors,
    one per step), ``acceptance`` (mean HMC acceptance per step), ``resampled`` (per step,
    how many populations resampled), ``z`` ``(G, N, D)`` final particles."""

    log_evidence: torch.Tensor
    temperatures: list
    acceptance: list
    resampled: list
    z: torch.Tensor


def tempered_smc(
    target: Any,
    num_groups: int,
    num_particles: int,
    *,
    target_cess: float = 0.9,
    resample_threshold: float = 0.5,
    num_moves: int = 2,
    num_leapfrog: int = 10,
    target_accept: float = 0.65,
    max_steps: int = 10_000,
    generator: torch.Generator | None = None,
    progress: Any = None,
) -> SMCResult:
    r"""Run ``num_groups`` tempered SMC populations of ``num_particles`` each.

    Args:
        target: has ``initial_points(C) -> (C, D)`` (prior draws) and
            ``value_and_grad(z, beta) -> (log density (C,), grad (C, D), terms)`` with
            ``terms.log_likelihood`` ``(C,)``, for $\beta$ a ``(C,)`` tensor
            (`varinf.potential.Potential` is one).
        target_cess: conditional-ESS fraction $\rho$ kept at each reweighting; closer to 1
            means more, closer temperatures.
        resample_threshold: resample a population when its ESS is below this fraction of $N$;
            0 never resamples (AIS).
        num_moves, num_leapfrog: HMC transitions per temperature and leapfrog steps in each.
        target_accept: step sizes adapt, per population, towards this acceptance rate.
        progress: optional callable ``progress(step, min_beta)``.
    """
    groups, n = num_groups, num_particles
    z = target.initial_points(groups * n)
    dim = z.shape[-1]
    dtype, device = z.dtype, z.device
    beta = torch.zeros(groups, dtype=dtype, device=device)
    log_w = torch.full((groups, n), -math.log(n), dtype=dtype, device=device)
    log_z = torch.zeros(groups, dtype=dtype, device=device)
    step_size = torch.full((groups,), 0.5 * dim**-0.25, dtype=dtype, device=device)
    state = _evaluate(target, z, beta.repeat_interleave(n))
    history: dict[str, list] = {"temperatures": [], "acceptance": [], "resampled": []}
    for step in range(max_steps):
        if bool((beta >= 1).all()):
            break
        ell = state[2].reshape(groups, n)
        _check_finite(ell, beta)
        new_beta = next_temperature(log_w, ell, beta, target_cess)
        increment = (new_beta - beta)[:, None] * ell
        log_z = log_z + (log_w + increment).logsumexp(-1)
        log_w = log_w + increment
        log_w = log_w - log_w.logsumexp(-1, keepdim=True)
        beta = new_beta
        resample = effective_sample_fraction(log_w) < resample_threshold
        if bool(resample.any()):
            z, state, log_w = _resample(z, state, log_w, resample, generator)
        z, state, step_size, acceptance = _move(
            target, z, state, log_w, beta, step_size, num_moves, num_leapfrog, target_accept,
            generator,
        )  # fmt: skip
        history["temperatures"].append(beta.clone())
        history["acceptance"].append(acceptance)
        history["resampled"].append(int(resample.sum()))
        if progress is not None:
            progress(step, float(beta.min()))
    else:
        raise RuntimeError(
            f"SMC did not reach beta = 1 in {max_steps} steps (lowest beta {float(beta.min()):g}); "
            "lower target_cess or raise max_steps"
        )
    return SMCResult(log_z, z=z.reshape(groups, n, dim), **history)


def _evaluate(target, z, betas):
    """Log density, gradient and log-likelihood at ``z`` from one batched call."""
    value, grad, terms = target.value_and_grad(z, betas)
    return value, grad, terms.log_likelihood


def _check_finite(ell: torch.Tensor, beta: torch.Tensor) -> None:
    if not torch.isfinite(ell).all():
        bad = int((~torch.isfinite(ell)).sum())
        raise FloatingPointError(
            f"SMC: {bad} particle(s) have a non-finite log-likelihood at temperature "
            f"{float(beta.min()):g}; the model's likelihood is NaN or -inf inside the prior's "
            "support: check the model"
        )


def _resample(z, state, log_w, mask, generator):
    groups, n = log_w.shape
    ancestors = systematic_resample(log_w, generator)
    keep = torch.arange(n, device=z.device).expand(groups, n)
    ancestors = torch.where(mask[:, None], ancestors, keep)
    flat = (ancestors + n * torch.arange(groups, device=z.device)[:, None]).flatten()
    value, grad, ell = state
    uniform = torch.full_like(log_w, -math.log(n))
    log_w = torch.where(mask[:, None], uniform, log_w)
    return z[flat], (value[flat], grad[flat], ell[flat]), log_w


def _move(target, z, state, log_w, beta, step_size, num_moves, num_leapfrog, target_accept, gen):
    groups, n = log_w.shape
    weights = torch.exp(log_w)[..., None]
    particles = z.reshape(groups, n, -1)
    mean = (weights * particles).sum(1, keepdim=True)
    variance = (weights * (particles - mean).square()).sum(1).clamp(min=1e-12)  # (G, D)
    inverse_mass = variance.repeat_interleave(n, 0)
    betas = beta.repeat_interleave(n)

    def density(position):
        return _evaluate(target, position, betas)

    state = density(z)  # the density at the new temperature
    rates = []
    for _ in range(num_moves):
        z, state, accepted = hmc_move(
            density, z, state, step_size.repeat_interleave(n), inverse_mass, num_leapfrog, gen
        )
        rate = accepted.to(z.dtype).reshape(groups, n).mean(1)
        step_size = step_size * torch.exp(2.0 * (rate - target_accept))
        rates.append(rate)
    return z, state, step_size, float(torch.stack(rates).mean())


class SequentialMonteCarlo(Estimator):
    r"""Tempered SMC with adaptive temperatures and batched HMC moves (see the module docstring).

    Args:
        num_particles: $N$ per population.
        num_groups: independent populations (for the standard error), all in the same batched
            potential calls; the cost is ``num_groups * num_particles`` per call.
        target_cess, resample_threshold, num_moves, num_leapfrog, target_accept: see
            `tempered_smc`.
        progress: print the temperature reached every few steps.
        seed: see `varinf.Estimator`.

    Diagnostics: ``num_temperatures``, ``group_estimates`` (each population's $\log \hat
    p(x)$), ``acceptance`` (mean HMC acceptance), ``resampling_steps``.

    Examples:
        >>> from models.conjugate import ConjugateGaussian
        >>> problem = ConjugateGaussian.example()
        >>> smc = SequentialMonteCarlo(num_particles=64, num_groups=4, seed=0)
        >>> result = smc.estimate(problem.model)
        >>> bool(abs(result.value - problem.log_evidence) < 5 * result.stderr)
        True
    """

    name = "smc"
    kind = "lower-bound"
    requires_guide = False
    unlabelled = ("seed", "progress")

    def __init__(
        self,
        num_particles: int = 256,
        *,
        num_groups: int = 4,
        target_cess: float = 0.9,
        resample_threshold: float = 0.5,
        num_moves: int = 2,
        num_leapfrog: int = 10,
        target_accept: float = 0.65,
        progress: bool = False,
        seed: int | None = None,
    ) -> None:
        super().__init__(seed=seed)
        counts = {"num_particles": (num_particles, 2), "num_groups": (num_groups, 2),
                  "num_moves": (num_moves, 1), "num_leapfrog": (num_leapfrog, 1)}  # fmt: skip
        for name, (value, low) in counts.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if not 0 < target_cess < 1:
            raise ValueError(f"target_cess must be in (0, 1), got {target_cess!r}")
        if not 0 <= resample_threshold <= 1:
            raise ValueError(f"resample_threshold must be in [0, 1], got {resample_threshold!r}")
        self.num_particles, self.num_groups = num_particles, num_groups
        self.target_cess, self.resample_threshold = target_cess, resample_threshold
        self.num_moves, self.num_leapfrog = num_moves, num_leapfrog
        self.target_accept, self.progress = target_accept, progress

    def _estimate(self, model, guide, args, kwargs) -> Estimate:
        from varinf.potential import Potential

        potential = Potential(model, args, kwargs)
        generator = torch.Generator().manual_seed(int(torch.randint(0, 2**62, ())))
        result = tempered_smc(
            potential, self.num_groups, self.num_particles, target_cess=self.target_cess,
            resample_threshold=self.resample_threshold, num_moves=self.num_moves,
            num_leapfrog=self.num_leapfrog, target_accept=self.target_accept,
            generator=generator, progress=_printer() if self.progress else None,
        )  # fmt: skip
        value, stderr = log_mean_exp_over_groups(result.log_evidence)
        diagnostics = {
            "num_temperatures": len(result.temperatures),
            "group_estimates": result.log_evidence.tolist(),
            "acceptance": sum(result.acceptance) / max(len(result.acceptance), 1),
            "resampling_steps": sum(1 for r in result.resampled if r),
        }
        return make_estimate(
            value, stderr, num_evaluations=potential.num_evaluations, diagnostics=diagnostics
        )


class AnnealedImportanceSampling(SequentialMonteCarlo):
    r"""Annealed importance sampling (Neal 2001): `SequentialMonteCarlo` that never resamples
    (adaptive temperatures kept); arguments as `SequentialMonteCarlo`."""

    name = "ais"

    label_defaults: ClassVar[dict] = {"resample_threshold": 0.0}

    def __init__(self, num_particles: int = 256, **options: Any) -> None:
        if options.get("resample_threshold", 0.0) != 0.0:
            raise ValueError("resample_threshold: AIS never resamples; use SequentialMonteCarlo")
        super().__init__(num_particles, resample_threshold=0.0, **options)


def _printer():
    def report(step: int, beta: float) -> None:
        if step % 10 == 0 or beta >= 1:
            print(f"smc step {step}: beta {beta:.4g}", flush=True)

    return report
