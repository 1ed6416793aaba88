r"""Posterior and power-posterior draws that several evidence estimators share.

One power-posterior run (every temperature and replicate chain in one batched `varinf.mcmc.MCMC`,
$\beta$ a ``(C,)`` tensor) feeds `SteppingStone`, `PathSampling` and `ModifiedPathSampling`;
one posterior run feeds `BridgeSampling`, the harmonic means, `CPO`,
`PointwisePredictiveDensity` and the reference of `GeneralizedSteppingStone`. Pass a finished
run to each estimator (``run=``) and they all use the same draws, so a comparison at equal cost
is one sampling run.

Examples:
    >>> from models.conjugate import ConjugateGaussian
    >>> problem = ConjugateGaussian.example()
    >>> run = PowerPosteriorRun.sample(problem.model, temperatures=[0.0, 0.5, 1.0],
    ...     num_replicates=2, num_warmup=20, num_draws=20, seed=0)
    >>> run.log_likelihood.shape, run.rhat.shape
    (torch.Size([3, 2, 20]), torch.Size([3]))
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from varinf.estimators.draws import mean_ess, rhat
from varinf.estimators.temperatures import beta_quantile_temperatures, check_temperatures

RHAT_THRESHOLD = 1.05

#: Leapfrog steps per trajectory of a power-posterior run (``max_steps`` of `varinf.mcmc.MCMC`).
#: Its estimators average functions of the log-likelihood only. That statistic moves with the
#: energy level, which each momentum refresh resamples whatever the trajectory's length, so
#: trajectories longer than it takes to trade kinetic for potential energy buy it nothing. On
#: DS1 (50 temperatures x 4 chains x 200 draws) the posterior-tuned trajectories of 40-58
#: steps at beta > 0.3 gave the same log-likelihood ESS as 12 (about 300), and the whole run
#: reached the same stepping-stone error (0.225 against 0.220) with 1.6x fewer evaluations
#: (785k against 483k); a cap of 6 lost a third of the ESS at high beta.
POWER_MAX_STEPS = 12


@dataclass
class PowerPosteriorRun:
    r"""Draws of the log-likelihood at each temperature, from replicate chains.

    Attributes:
        temperatures: ``(T,)`` increasing.
        log_likelihood: ``(T, R, S)``: ``R`` independent chains of ``S`` draws at each.
        num_evaluations: likelihood evaluations the run spent (warm-up included).
        rhat: ``(T,)`` split $\hat R$ of the log-likelihood across the replicates (ArviZ).
        ess: ``(T,)`` its effective sample size.
        mcmc: the `varinf.mcmc.MCMCRun` the draws come from (``None`` if built from arrays).
        warnings: problems found (high $\hat R$, divergences), also copied into every
            estimate's diagnostics.
        z, grad: ``(T, R, S, D)`` unconstrained draws and the score $\nabla_z \log
            \pi_\beta(z)$ of their power posterior, for control variates (``None`` when the
            sampler did not record them).
    """

    temperatures: torch.Tensor
    log_likelihood: torch.Tensor
    num_evaluations: int
    rhat: torch.Tensor
    ess: torch.Tensor
    mcmc: Any = field(default=None, repr=False)
    warnings: list = field(default_factory=list)
    z: torch.Tensor | None = field(default=None, repr=False)
    grad: torch.Tensor | None = field(default=None, repr=False)

    @classmethod
    def from_mcmc(cls, run: Any, rhat_threshold: float = RHAT_THRESHOLD) -> PowerPosteriorRun:
        """Group the chains of an `MCMCRun` by their ``beta`` (each temperature needs the same
        number of chains)."""
        temperatures = torch.unique(run.beta)

        def by_temperature(values: torch.Tensor) -> torch.Tensor:
            return torch.stack([values[run.beta == beta] for beta in temperatures])

        groups = [run.log_likelihood[run.beta == beta] for beta in temperatures]
        if len({len(g) for g in groups}) != 1:
            raise ValueError(
                "run: every temperature needs the same number of replicate chains, got "
                f"{[len(g) for g in groups]} chains at temperatures {temperatures.tolist()}"
            )
        ell = by_temperature(run.log_likelihood).to(torch.float64)
        made = cls.from_log_likelihoods(temperatures, ell, run.num_evaluations, run, rhat_threshold)
        if getattr(run, "grad", None) is not None:
            made.z, made.grad = by_temperature(run.z), by_temperature(run.grad)
        return made

    @classmethod
    def from_log_likelihoods(
        cls, temperatures, log_likelihood, num_evaluations=0, mcmc=None, rhat_threshold=1.05
    ) -> PowerPosteriorRun:
        """From draws ``(T, R, S)`` made elsewhere (e.g. by another sampler)."""
        temperatures = check_temperatures(temperatures, needs_zero=False, needs_one=False)
        ell = torch.as_tensor(log_likelihood, dtype=torch.float64)
        if ell.dim() != 3 or ell.shape[0] != len(temperatures):
            raise ValueError(
                f"log_likelihood must be (temperatures, replicates, draws) with "
                f"{len(temperatures)} temperatures, got shape {tuple(ell.shape)}"
            )
        _check_finite(ell, temperatures)
        hats = rhat(ell)
        warnings = _rhat_warnings(hats, temperatures, rhat_threshold)
        if mcmc is not None and int(mcmc.divergences.sum()) > 0:
            warnings.append(f"{int(mcmc.divergences.sum())} divergent transitions among the draws")
        return cls(temperatures, ell, int(num_evaluations), hats, mean_ess(ell), mcmc, warnings)

    @classmethod
    def sample(
        cls,
        model: Callable,
        args: tuple = (),
        kwargs: dict | None = None,
        *,
        temperatures=None,
        num_replicates: int = 2,
        num_warmup: int = 200,
        num_draws: int = 200,
        seed: int | None = None,
        progress: bool = False,
        potential: Any = None,
        rhat_threshold: float = RHAT_THRESHOLD,
        **mcmc_options: Any,
    ) -> PowerPosteriorRun:
        r"""One batched MCMC run over all temperatures $\times$ ``num_replicates`` chains.

        Args:
            temperatures: default `beta_quantile_temperatures` (50 steps, $\alpha = 0.3$).
            potential: a `varinf.potential.Potential` (or any object with its methods) to sample
                instead of the model's own, e.g. a reference path for the generalized
                stepping stone.
            **mcmc_options: passed to `varinf.mcmc.MCMC` (``target_accept``, ``kernel``,
                ``max_steps``: `POWER_MAX_STEPS` unless given, ...).
        """
        from varinf.potential import Potential

        _check_count(num_replicates, "num_replicates", 1)
        _check_count(num_draws, "num_draws", 4)
        if potential is None:
            potential = Potential(model, args, kwargs)
        sampler = cls.sampler(
            potential, temperatures=temperatures, num_replicates=num_replicates,
            num_warmup=num_warmup, num_draws=num_draws, seed=seed, progress=progress,
            **mcmc_options,
        )  # fmt: skip
        return cls.from_mcmc(sampler.run(), rhat_threshold)

    @staticmethod
    def sampler(
        potential: Any,
        *,
        temperatures=None,
        num_replicates: int = 2,
        num_warmup: int = 200,
        num_draws: int = 200,
        seed: int | None = None,
        progress: bool = False,
        **mcmc_options: Any,
    ):
        """The `varinf.mcmc.MCMC` that `sample` runs (for checkpoints: its ``state_dict``);
        chains are the temperatures repeated ``num_replicates`` times each."""
        from varinf.mcmc import MCMC

        mcmc_options.setdefault("max_steps", POWER_MAX_STEPS)
        if temperatures is None:
            temperatures = beta_quantile_temperatures()
        betas = check_temperatures(temperatures, needs_zero=False, needs_one=False)
        _check_count(num_replicates, "num_replicates", 1)
        _check_count(num_draws, "num_draws", 4)
        return MCMC(
            potential,
            num_chains=len(betas) * num_replicates,
            num_warmup=num_warmup,
            num_draws=num_draws,
            beta=betas.repeat_interleave(num_replicates).to(potential.dtype),
            seed=_seed(seed),
            progress=progress,
            **mcmc_options,
        )


@dataclass
class PosteriorRun:
    r"""Posterior draws with their log densities, per datum where the model allows.

    Attributes:
        z: ``(C, S, D)`` unconstrained draws.
        log_likelihood, log_prior: ``(C, S)``.
        log_likelihood_per_datum: ``(C, S, N)`` per single datum (a site pattern's term divided
            by its count), or ``None`` when the model has no data plate.
        weights: ``(N,)`` counts of each datum (the model's ``site_weights``), or ``None``.
        potential: the `varinf.potential.Potential` the draws come from.
        num_evaluations: likelihood evaluations (warm-up and per-datum pass included).
        rhat: largest split $\hat R$ over the unconstrained coordinates.
        mcmc: the `varinf.mcmc.MCMCRun`; ``warnings``: problems found.
    """

    z: torch.Tensor
    log_likelihood: torch.Tensor
    log_prior: torch.Tensor
    log_likelihood_per_datum: torch.Tensor | None
    weights: torch.Tensor | None
    potential: Any
    num_evaluations: int
    rhat: float
    mcmc: Any = field(default=None, repr=False)
    warnings: list = field(default_factory=list)

    @classmethod
    def from_mcmc(cls, run: Any, rhat_threshold: float = RHAT_THRESHOLD) -> PosteriorRun:
        """Wrap an `MCMCRun` at $\\beta = 1$ and add per-datum log-likelihoods."""
        if not bool((run.beta == 1).all()):
            raise ValueError(
                "run: a posterior run needs every chain at beta = 1; for power posteriors use "
                "PowerPosteriorRun"
            )
        potential = run.potential
        before = potential.num_evaluations
        per_datum, weights = _per_datum(potential, run.z)
        extra = potential.num_evaluations - before
        ell = run.log_likelihood.to(torch.float64)
        _check_finite(ell[None], torch.ones(1))
        worst = float(rhat(run.z.movedim(-1, 0).to(torch.float64)).nan_to_num(1.0).max())
        warnings = _rhat_warnings(torch.tensor([worst]), torch.ones(1), rhat_threshold)
        if int(run.divergences.sum()) > 0:
            warnings.append(f"{int(run.divergences.sum())} divergent transitions among the draws")
        return cls(
            run.z, ell, run.log_prior.to(torch.float64), per_datum, weights, potential,
            run.num_evaluations + extra, worst, run, warnings,
        )  # fmt: skip

    @classmethod
    def sample(
        cls,
        model: Callable,
        args: tuple = (),
        kwargs: dict | None = None,
        *,
        num_chains: int = 4,
        num_warmup: int = 500,
        num_draws: int = 500,
        seed: int | None = None,
        progress: bool = False,
        rhat_threshold: float = RHAT_THRESHOLD,
        **mcmc_options: Any,
    ) -> PosteriorRun:
        """One batched MCMC run of ``num_chains`` chains at $\\beta = 1$."""
        from varinf.potential import Potential

        _check_count(num_draws, "num_draws", 4)
        sampler = cls.sampler(
            Potential(model, args, kwargs), num_chains=num_chains, num_warmup=num_warmup,
            num_draws=num_draws, seed=seed, progress=progress, **mcmc_options,
        )  # fmt: skip
        return cls.from_mcmc(sampler.run(), rhat_threshold)

    @staticmethod
    def sampler(
        potential: Any,
        *,
        num_chains: int = 4,
        num_warmup: int = 500,
        num_draws: int = 500,
        seed: int | None = None,
        progress: bool = False,
        **mcmc_options: Any,
    ):
        """The `varinf.mcmc.MCMC` that `sample` runs (for checkpoints)."""
        from varinf.mcmc import MCMC

        _check_count(num_draws, "num_draws", 4)
        return MCMC(
            potential, num_chains=num_chains, num_warmup=num_warmup, num_draws=num_draws,
            seed=_seed(seed), progress=progress, **mcmc_options,
        )  # fmt: skip


def _per_datum(potential, z: torch.Tensor, chunk: int = 4096):
    """Per-datum log-likelihoods ``(C, S, N)`` (divided by the model's ``site_weights`` when it
    has them) and those weights, or ``(None, None)`` without a data plate."""
    if getattr(potential, "num_data", None) is None:
        return None, None
    flat = z.reshape(-1, z.shape[-1])
    with torch.no_grad():
        rows = [potential.log_likelihood(part, per_datum=True) for part in flat.split(chunk)]
    per_datum = torch.cat(rows).reshape(*z.shape[:2], -1).to(torch.float64)
    weights = getattr(potential.model, "site_weights", None)
    if weights is not None:
        weights = torch.as_tensor(weights, dtype=torch.float64).to(per_datum.device)
        per_datum = per_datum / weights.clamp(min=1e-300)
    return per_datum, weights


def _check_finite(ell: torch.Tensor, temperatures: torch.Tensor) -> None:
    bad = ~torch.isfinite(ell)
    if bad.any():
        where = sorted({round(float(temperatures[i]), 6) for i in bad.nonzero()[:, 0].tolist()})
        raise FloatingPointError(
            f"{int(bad.sum())} draw(s) have a non-finite log-likelihood (at temperature(s) "
            f"{where}); the model's likelihood is NaN or infinite where the sampler went: "
            "check the model, its priors' supports and the run's divergences"
        )


def _rhat_warnings(hats: torch.Tensor, temperatures: torch.Tensor, threshold: float) -> list:
    high = [(float(b), float(h)) for b, h in zip(temperatures, hats, strict=True) if h > threshold]
    if not high:
        return []
    worst = max(high, key=lambda pair: pair[1])
    return [
        f"R-hat above {threshold} at {len(high)} temperature(s) (worst {worst[1]:.3f} at beta "
        f"{worst[0]:.4g}): the chains disagree; raise num_warmup / num_draws"
    ]


def _check_count(value: int, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _seed(seed: int | None) -> int:
    """The sampler's seed: ``seed``, or one drawn from torch's global RNG (so `compare`'s
    seeded repeats and `Estimator`'s ``seed`` reach the sampler)."""
    if seed is not None:
        return int(seed)
    return int(torch.randint(0, 2**62, (), dtype=torch.int64))


def log_mean_exp_over_groups(values: torch.Tensor) -> tuple[float, float]:
    r"""$\log$ of the mean of $e^{v_g}$ over independent groups and its delta-method standard
    error $\mathrm{sd}(e^{v_g - \bar v}) / \sqrt{G}$."""
    count = len(values)
    log_mean = values.logsumexp(0) - math.log(count)
    relative = torch.exp(values - log_mean)
    stderr = float(relative.std() / math.sqrt(count)) if count > 1 else math.nan
    return float(log_mean), stderr
