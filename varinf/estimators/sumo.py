r"""SUMO: stochastically unbiased marginalisation objective (Luo et al. 2020).

Luo, Beatson, Norouzi, Zhu, Duvenaud, Adams and Chen (2020), "SUMO: Unbiased Estimation of Log
Marginal Probability for Latent Variable Models", ICLR. With $\mathrm{IWAE}_k$ the importance
weighted bound of the first $k$ samples of one sequence $z_1, z_2, \dots \sim q$ and
$\Delta_k = \mathrm{IWAE}_{k+1} - \mathrm{IWAE}_k$, the Russian-roulette estimator

$$\mathrm{SUMO} = \mathrm{IWAE}_m + \sum_{j=1}^{J} \frac{\Delta_{m+j-1}}{P(\mathcal J \ge j)},
\qquad J \sim \mathcal J,$$

uses $m + J$ samples and has $\mathbb{E}[\mathrm{SUMO}] = \lim_{k\to\infty}
\mathbb{E}[\mathrm{IWAE}_k] = \log p(x)$. We take $P(\mathcal J \ge j) = 1/j$ for $j \le c$
(the paper's choice) and a geometric tail $P(\mathcal J \ge j) = \rho^{\,j-c}/c$ beyond the
cut-off $c$, which makes the expected cost finite, $m + H_c + \rho/(c(1-\rho))$.

The price is heavy tails: the variance contains
$\sum_j \mathbb{E}[\Delta_j^2] / P(\mathcal J \ge j)$ with $\mathbb{E}[\Delta_j^2] = O(j^{-2})$,
which grows like $\log c$ over the head and diverges over the geometric tail. Rare long
sequences produce very large estimates, so sample standard errors are unreliable: prefer many
draws, and compare with the median of `varinf.compare` repeats.

Written from the formula: all $\mathrm{IWAE}_k$ of a sequence come from one cumulative
log-sum-exp, and many sequences of different lengths are drawn in one vectorised guide run.
"""

from __future__ import annotations

import math

import torch

from varinf.estimators.objective import Objective, ParticleObjective
from varinf.gradients.base import score_term
from varinf.weights import LogWeights, check_num_particles


def survival(j: torch.Tensor, cutoff: int, tail: float) -> torch.Tensor:
    r"""$P(\mathcal J \ge j)$ for integers $j \ge 1$."""
    j = j.double()
    head = 1.0 / j
    beyond = (tail ** (j - cutoff)) / cutoff
    return torch.where(j <= cutoff, head, beyond)


def sample_num_terms(num_sequences: int, cutoff: int, tail: float) -> torch.Tensor:
    r"""Draw ``num_sequences`` lengths $J \ge 1$ by inversion,
    $J = \max\{j : P(\mathcal J \ge j) \ge u\}$, with $u \sim U(0, 1]$.
    """
    u = 1.0 - torch.rand(num_sequences, dtype=torch.float64)  # in (0, 1]
    head = torch.floor(1.0 / u)
    beyond = cutoff + torch.floor(torch.log(u * cutoff) / math.log(tail))
    return torch.where(u > 1.0 / cutoff, head, beyond).long().clamp(min=1)


def expected_num_terms(cutoff: int, tail: float) -> float:
    r"""$\mathbb{E}[J] = \sum_{j \ge 1} P(\mathcal J \ge j) = H_c + \rho / (c (1-\rho))$."""
    return sum(1.0 / j for j in range(1, cutoff + 1)) + tail / (cutoff * (1 - tail))


def sumo(
    log_weights: torch.Tensor, lengths: torch.Tensor, min_terms: int, cutoff: int, tail: float
) -> torch.Tensor:
    r"""SUMO for sequences of log weights laid end to end.

    Args:
        log_weights: ``(sum(lengths), *datum_shape)``: draw $r$ owns the next ``lengths[r]``
            rows; ``lengths[r] = min_terms + J_r``.
        lengths: ``(R,)`` sequence lengths.

    Returns:
        ``(R, *datum_shape)``: one SUMO estimate per draw (and datum).
    """
    device = log_weights.device
    lengths = lengths.to(device)
    num_sequences, longest = len(lengths), int(lengths.max())
    rows = torch.repeat_interleave(torch.arange(num_sequences, device=device), lengths)
    starts = torch.repeat_interleave(lengths.cumsum(0) - lengths, lengths)
    cols = torch.arange(len(rows), device=device) - starts
    padded = log_weights.new_zeros((num_sequences, longest) + log_weights.shape[1:])
    padded = padded.index_put((rows, cols), log_weights)
    counts = torch.arange(1, longest + 1, dtype=log_weights.dtype, device=log_weights.device)
    counts = counts.reshape((1, longest) + (1,) * (log_weights.dim() - 1))
    iwae_k = padded.logcumsumexp(1) - counts.log()  # IWAE_k, k = 1..longest
    deltas = iwae_k[:, min_terms:] - iwae_k[:, min_terms - 1 : -1]  # Δ_{m+j-1}, j = 1..
    j = torch.arange(1, longest - min_terms + 1, device=device)
    inverse_survival = (1.0 / survival(j, cutoff, tail)).to(log_weights)
    inverse_survival = inverse_survival.reshape((1, -1) + (1,) * (log_weights.dim() - 1))
    used = j.unsqueeze(0) <= (lengths - min_terms).unsqueeze(1)
    used = used.reshape(used.shape + (1,) * (log_weights.dim() - 1))
    corrections = torch.where(used, deltas * inverse_survival, deltas.new_zeros(()))
    return iwae_k[:, min_terms - 1] + corrections.sum(1)


WARNING = (
    "SUMO's standard error is unreliable (heavy tails): few draws can look precise and be far "
    "off; check against an IWAE bound and the median of repeats"
)


class SUMO(ParticleObjective):
    r"""Unbiased estimator of $\log p(x)$ by Russian roulette over IWAE bounds (Luo et al. 2020).

    Args:
        num_particles: $R$, independent SUMO draws (roulette sequences of $m + J_r$ particles
            each) averaged per estimate; ``SVI`` uses one per step, as in the paper.
            ``estimate()`` reports their standard error (see the warning below).
        min_terms: $m \ge 1$, samples always used (variance falls as $m$ grows).
        cutoff: $c$, where $P(\mathcal J \ge j) = 1/j$ turns into a geometric tail.
        tail: $\rho \in (0, 1)$, the geometric tail's ratio.
        guide_objective: ``"variance"`` (default) trains the guide to minimise the estimator's
            variance, $\nabla_\phi \mathbb{E}[\mathrm{SUMO}^2]$, as the paper does for the
            encoder: $\mathbb{E}[\mathrm{SUMO}] = \log p(x)$ does not depend on $\phi$, so
            ``"value"`` (the guide ascends SUMO itself) has zero expected guide gradient and
            only makes the guide drift. The split gradient is applied by ``loss_and_grads``.
        warmup_steps: Training steps (``loss_and_grads`` calls) that ascend the ELBO of the
            drawn particles before SUMO's gradients take over. SUMO's variance-minimising guide
            gradient only makes sense near a good guide: in a reported run from a cold start,
            it made a regression guide worse (ELBO $-55.7$, $\hat k$ 1.48). Warm up for a few
            hundred steps, or train with `ELBO`/`IWAE` first.
        **options: ``sampler``, ``vectorize_particles``, ``max_plate_nesting`` and ``seed``,
            see `ParticleObjective`.

    The cost per draw is $m + J$ model evaluations, $m + 5.08$ on average with the defaults.

    Roulette lengths are shared across data points: when the weights split over a datum plate,
    draw $r$ uses the same $J_r$ (and the same $m + J_r$ particles) for every datum of the
    batch, so one draw costs $m + J_r$ model runs whatever the batch size; each datum's estimate
    stays unbiased, and the data's estimates within one draw are dependent through $J_r$.

    Warning: the standard error is unreliable. The estimator's distribution is heavy-tailed
    (rare long sequences give large corrections), so a few draws usually miss the tail and
    look precise while being far off: in a reported run, SUMO(20) on 1797 digits gave
    $-27495 \pm 102$, below IWAE(2000)'s lower bound of $-26829$. Every estimate carries this
    warning in ``diagnostics["warning"]`` and its repr. Compare with an IWAE bound, and prefer
    the median of `varinf.compare` repeats.

    Examples:
        >>> from models.energies import SumoMixture
        >>> toy = SumoMixture()  # log Z = log 2 pi
        >>> est = SUMO(num_particles=20000, seed=1).estimate(toy.model, toy.guide)
        >>> abs(est.value - toy.log_evidence) < 4 * est.stderr
        True
    """

    name = "sumo"
    kind = "unbiased-log"

    def __init__(
        self,
        num_particles: int = 1,
        *,
        min_terms: int = 1,
        cutoff: int = 80,
        tail: float = 0.9,
        guide_objective: str = "variance",
        warmup_steps: int = 0,
        **options,
    ) -> None:
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(f"warmup_steps must be a non-negative int, got {warmup_steps!r}")
        min_terms = check_num_particles(min_terms, "min_terms")
        cutoff = check_num_particles(cutoff, "cutoff")
        if not 0.0 < tail < 1.0:
            raise ValueError(f"tail must lie in (0, 1), got {tail!r}")
        if guide_objective not in ("value", "variance"):
            raise ValueError(
                f"guide_objective must be 'value' or 'variance', got {guide_objective!r}"
            )
        super().__init__(num_particles, **options)
        self.min_terms, self.cutoff, self.tail = min_terms, cutoff, tail
        self.guide_objective = guide_objective
        self.warmup_steps = warmup_steps
        self._steps_taken = 0
        self._warming_up = False
        self._lengths = None
        self._moving_average = None

    def particles_per_evaluation(self) -> int:
        # Drawn afresh for every evaluation; objective() reads the same lengths back.
        terms = sample_num_terms(self.num_particles, self.cutoff, self.tail)
        self._lengths = self.min_terms + terms
        return int(self._lengths.sum())

    def _draws(self, weights: LogWeights) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = self._lengths.to(weights.log_weights.device)
        estimates = sumo(weights.log_weights, lengths, self.min_terms, self.cutoff, self.tail)
        scores = torch.zeros((len(lengths),) + weights.log_q_score.shape[1:]).to(
            weights.log_q_score
        )
        scores = scores.index_add(
            0,
            torch.repeat_interleave(torch.arange(len(lengths), device=lengths.device), lengths),
            weights.log_q_score,
        )
        return estimates, scores

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        self._warming_up = self._steps_taken < self.warmup_steps
        self._steps_taken += 1
        try:
            return super().loss_and_grads(model, guide, *args, **kwargs)
        finally:
            self._warming_up = False

    def objective(self, weights: LogWeights) -> Objective:
        if self._warming_up:
            return self._warmup_objective(weights)
        estimates, scores = self._draws(weights)
        scale = weights.datum_scale
        value = scale * estimates.mean(0).sum()
        surrogate = value + scale * score_term(estimates, scores).mean(0).sum()
        if self.guide_objective == "value":
            return Objective(value=value, surrogate=surrogate)
        squared = (estimates - self._baseline(estimates)).pow(2)
        variance = squared.mean(0).sum() + score_term(squared, scores).mean(0).sum()
        return Objective(value=value, surrogate=surrogate, guide_surrogate=-scale * variance)

    def _warmup_objective(self, weights: LogWeights) -> Objective:
        """The ELBO of all drawn particles, value and gradient (score terms as Trace_ELBO)."""
        log_w = weights.log_weights
        value = weights.datum_scale * log_w.mean(0).sum()
        score = score_term(log_w, weights.log_q_score).mean(0).sum()
        return Objective(value=value, surrogate=value + weights.datum_scale * score)

    def _baseline(self, estimates: torch.Tensor) -> torch.Tensor:
        r"""A constant $c$ for $\nabla_\phi \mathbb{E}[(\mathrm{SUMO} - c)^2] = \nabla_\phi
        \mathbb{E}[\mathrm{SUMO}^2]$ (true for any $c$ independent of the draw, because
        $\mathbb{E}[\mathrm{SUMO}]$ does not depend on $\phi$).

        Without it the gradient carries the noise term $2 \log p(x) \nabla \mathrm{SUMO}$, huge
        when $|\log p(x)|$ is. We use the leave-one-out mean of the other draws, or with one
        draw a moving average of past steps (a scalar: the mean SUMO per datum).
        """
        estimates = estimates.detach()
        num_sequences = len(estimates)
        if num_sequences > 1:
            return (estimates.sum(0, keepdim=True) - estimates) / (num_sequences - 1)
        # One number, the mean per datum: minibatches change size and order between steps.
        previous = self._moving_average
        current = estimates.mean().item()
        self._moving_average = current if previous is None else 0.9 * previous + 0.1 * current
        return estimates.new_tensor(0.0 if previous is None else previous)

    def summarize(self, weights):
        estimates, _ = self._draws(weights)
        per_draw = weights.datum_scale * estimates.reshape(len(estimates), -1).sum(1)
        diagnostics = {
            "num_particles": len(per_draw),
            "mean_length": float(self._lengths.double().mean()),
            "warning": WARNING,
        }
        if len(per_draw) < 2:
            diagnostics["stderr"] = "one draw: use num_particles >= 2 for a standard error"
            return per_draw.item(), math.nan, diagnostics
        stderr = per_draw.std() / math.sqrt(len(per_draw))
        return per_draw.mean().item(), stderr.item(), diagnostics

    def datum_values(self, weights: LogWeights) -> torch.Tensor:
        return self._draws(weights)[0].mean(0)
