"""`MCMCRun`: the draws of a run, their diagnostics, and ArviZ views."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class MCMCRun:
    r"""Draws from (power) posteriors, one row per chain.

    Attributes:
        z: unconstrained draws ``(C, S, D)``.
        log_likelihood: $\log p(x \mid z)$ per draw ``(C, S)`` (untempered).
        log_prior: $\log p(z)$ per draw, with the transforms' log-Jacobians, ``(C, S)``.
        beta: each chain's inverse temperature ``(C,)``.
        acceptance: mean acceptance probability per chain over the draws ``(C,)``.
        step_size: the adapted leapfrog step size per chain ``(C,)``.
        divergences: divergent transitions per chain among the draws ``(C,)``.
        num_evaluations: potential evaluations spent (one per chain per batched call, warm-up
            included).
        potential: the potential the draws come from (for `samples`).
        grad: $\nabla_z \log \pi_\beta(z)$ at each draw ``(C, S, D)``, which the leapfrog
            integrator computed anyway (the zero-variance control variates of
            `varinf.estimators.control_variates` need it), or ``None`` (Pyro's NUTS kernel).
        diagnostics: everything else: ``inv_metric`` ``(C, D)``, ``trajectory_length``
            ``(C,)``, per draw ``(C, S)`` the leapfrog steps ``n_steps``, ``acceptance_rate``
            and ``diverging``, ``warmup_divergences`` ``(C,)``, ``elapsed`` seconds,
            ``interrupted`` and a list of ``warnings``.
    """

    z: torch.Tensor
    log_likelihood: torch.Tensor
    log_prior: torch.Tensor
    beta: torch.Tensor
    acceptance: torch.Tensor
    step_size: torch.Tensor
    divergences: torch.Tensor
    num_evaluations: int
    potential: Any = field(repr=False)
    diagnostics: dict = field(default_factory=dict, repr=False)
    grad: torch.Tensor | None = field(default=None, repr=False)

    @property
    def num_chains(self) -> int:
        return self.z.shape[0]

    @property
    def num_draws(self) -> int:
        return self.z.shape[1]

    @property
    def log_density(self) -> torch.Tensor:
        r"""$\beta \log p(x \mid z) + \log p(z)$ per draw ``(C, S)`` (zero likelihood weight at
        $\beta = 0$)."""
        beta = self.beta[:, None]
        tempered = torch.where(beta == 0, 0.0, beta * self.log_likelihood)
        return self.log_prior + tempered

    @property
    def samples(self) -> dict[str, torch.Tensor]:
        """Constrained draws: site name -> ``(C, S, *site_shape)``."""
        flat = self.potential.constrain(self.z.reshape(-1, self.z.shape[-1]))
        return {
            k: v.reshape(self.num_chains, self.num_draws, *v.shape[1:]) for k, v in flat.items()
        }

    @property
    def temperatures(self) -> torch.Tensor:
        """The distinct inverse temperatures, increasing ``(G,)``; see `rhat` and `ess`."""
        return torch.unique(self.beta)

    def _by_temperature(self, statistic, values: torch.Tensor | None, **kwargs) -> torch.Tensor:
        import arviz as az

        values = self.z if values is None else values
        if values.shape[:2] != self.z.shape[:2]:
            raise ValueError(
                f"values must have shape (chains, draws, ...) = {tuple(self.z.shape[:2])} + ..., "
                f"got {tuple(values.shape)}"
            )
        rows = []
        for beta in self.temperatures:
            chains = values[self.beta == beta].detach().cpu().numpy()
            flat = chains.reshape(*chains.shape[:2], -1)
            with warnings.catch_warnings():  # ArviZ warns about few draws; the caller judges
                warnings.simplefilter("ignore")
                result = statistic(az.convert_to_dataset(flat), **kwargs)["x"].values
            rows.append(np.asarray(result, dtype=np.float64).reshape(values.shape[2:]))
        return torch.as_tensor(np.stack(rows))

    def rhat(self, values: torch.Tensor | None = None) -> torch.Tensor:
        r"""Rank-normalised split $\hat R$ (ArviZ; Vehtari et al. 2021) over the chains of each
        temperature.

        Args:
            values: ``(C, S, ...)`` draws of any function of the state; default `z`.

        Returns:
            ``(G, ...)``, one row per entry of `temperatures`.
        """
        import arviz as az

        return self._by_temperature(az.rhat, values)

    def ess(self, values: torch.Tensor | None = None, method: str = "bulk") -> torch.Tensor:
        """Effective sample size (ArviZ) over the chains of each temperature, ``(G, ...)``; see
        `rhat`. ``method`` is ArviZ's (``"bulk"``, ``"tail"``, ``"mean"``, ...)."""
        import arviz as az

        return self._by_temperature(az.ess, values, method=method)

    def mcse(self, values: torch.Tensor | None = None) -> torch.Tensor:
        """Monte Carlo standard error of the mean (ArviZ) per temperature, ``(G, ...)``."""
        import arviz as az

        return self._by_temperature(az.mcse, values)

    def to_arviz(self):
        """An `arviz.InferenceData`: constrained draws in ``posterior``; log density,
        log-likelihood, log prior, divergences, acceptance and leapfrog steps per draw in
        ``sample_stats``; ``beta`` in the attributes."""
        import arviz as az

        posterior = {k: v.detach().cpu().numpy() for k, v in self.samples.items()}
        stats = {
            "lp": self.log_density,
            "log_likelihood": self.log_likelihood,
            "log_prior": self.log_prior,
        }
        for name in ("diverging", "acceptance_rate", "n_steps"):
            if name in self.diagnostics:
                stats[name] = self.diagnostics[name]
        stats = {k: v.detach().cpu().numpy() for k, v in stats.items()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return az.from_dict(
                posterior=posterior,
                sample_stats=stats,
                attrs={"beta": self.beta.tolist()},
            )
