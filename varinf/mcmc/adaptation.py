r"""Warm-up adaptation for many chains at once: step size, diagonal metric, trajectory length.

Every object holds one row per chain (or per group of chains that share an inverse
temperature $\beta$) and is updated by tensor operations only, so adapting 1,000 chains costs
what adapting one does.

* `warmup_windows`: Stan's schedule (Stan Reference Manual, "HMC algorithm parameters",
  automatic parameter tuning): an initial fast window (step size only), slow windows that
  double in length and each end in a new metric, and a final fast window.
* `DualAveraging`: the step size by Nesterov's dual averaging (Hoffman & Gelman 2014,
  Algorithm 5), one $\log\epsilon$ per chain, so that the mean acceptance statistic reaches
  $\delta$ (``target_accept``).
* `WelfordVariance`: running per-chain variances of the draws in a slow window, shrunk towards
  $10^{-3}$ as Stan does, giving the inverse diagonal mass matrix.
* `PrincipalScale`: the integration time $T$ from the scale of the slowest direction, pooled
  over the chains of each $\beta$ group.
"""

from __future__ import annotations

import torch


class _State:
    """Tensors in `vars(self)` make the state; `state_dict` copies them."""

    def state_dict(self) -> dict:
        return {k: v.clone() if torch.is_tensor(v) else v for k, v in vars(self).items()}

    def load_state_dict(self, state: dict) -> None:
        vars(self).update({k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()})


def warmup_windows(num_warmup: int) -> tuple[int, list[int]]:
    r"""Where the slow windows start, and the iterations after which the metric is re-estimated
    (the last one starts the final fast window).

    With $W \ge 150$ warm-up iterations: a 75-iteration initial window, slow windows of 25, 50,
    100, ... iterations (the last one stretched to the final window), and a 50-iteration final
    window. Shorter warm-ups use 15% / 75% / 10% as Stan does; under 20 iterations the metric is
    not adapted (step size only).

    Examples:
        >>> warmup_windows(500)
        (75, [100, 150, 250, 450])
        >>> warmup_windows(100)
        (15, [90])
    """
    if num_warmup < 20:
        return num_warmup, []
    if num_warmup >= 150:
        first, last, base = 75, 50, 25
    else:
        first, last = int(0.15 * num_warmup), int(0.1 * num_warmup)
        base = num_warmup - first - last
    slow_end = num_warmup - last
    ends, start, size = [], first, base
    while start + size <= slow_end:
        end = start + size
        if end + 2 * size > slow_end:  # the next window would not fit: stretch this one
            end = slow_end
        ends.append(end)
        start, size = end, 2 * size
    return first, ends


class DualAveraging(_State):
    r"""Per-chain step sizes by dual averaging (Hoffman & Gelman 2014, eq. (6)):

    $$\bar H_t = (1 - \tfrac{1}{t + t_0}) \bar H_{t-1} + \tfrac{\delta - \alpha_t}{t + t_0},
    \quad \log \epsilon_t = \mu - \tfrac{\sqrt t}{\gamma} \bar H_t,
    \quad \log \bar\epsilon_t = t^{-\kappa} \log\epsilon_t + (1 - t^{-\kappa})
    \log\bar\epsilon_{t-1},$$

    with $\mu = \log(10\,\epsilon_0)$, $\gamma = 0.05$, $t_0 = 10$, $\kappa = 0.75$ (Stan's
    defaults). Sampling uses $\bar\epsilon$, averaged over the second half of the final window
    (`restart_average`).

    Examples:
        >>> adapt = DualAveraging(torch.tensor([0.1, 1.0]), target_accept=0.8)
        >>> for _ in range(200):
        ...     step = adapt.update(torch.where(adapt.step_size > 0.3, 0.5, 0.95))
        >>> (adapt.averaged - 0.3).abs().max() < 0.15
        tensor(True)
    """

    def __init__(self, step_size: torch.Tensor, target_accept: float) -> None:
        self.target_accept = target_accept
        self.restart(step_size)

    def restart(self, step_size: torch.Tensor) -> None:
        self.mu = torch.log(10 * step_size)
        self.log_step = step_size.log()
        self.log_averaged = torch.zeros_like(step_size)
        self.error = torch.zeros_like(step_size)
        self.count = 0
        self.average_count = 0

    def restart_average(self) -> None:
        """Average only the iterates from now on (the start-up iterates after a restart swing
        low, and a short final window does not wash them out)."""
        self.average_count = 0

    @property
    def step_size(self) -> torch.Tensor:
        return self.log_step.exp()

    @property
    def averaged(self) -> torch.Tensor:
        return self.log_averaged.exp()

    def update(self, accept_stat: torch.Tensor) -> torch.Tensor:
        """Take one iteration's acceptance statistics ``(C,)``; return the next step sizes."""
        self.count += 1
        t = self.count
        weight = 1.0 / (t + 10.0)
        self.error = (1 - weight) * self.error + weight * (self.target_accept - accept_stat)
        self.log_step = self.mu - (t**0.5 / 0.05) * self.error
        self.average_count += 1
        eta = self.average_count**-0.75
        self.log_averaged = eta * self.log_step + (1 - eta) * self.log_averaged
        return self.step_size


class WelfordVariance(_State):
    """Running per-chain mean and variance of ``(C, D)`` draws (Welford's algorithm)."""

    def __init__(self, num_chains: int, dim: int, like: torch.Tensor) -> None:
        self.count = 0
        self.mean = like.new_zeros(num_chains, dim)
        self.sum_squares = like.new_zeros(num_chains, dim)

    def update(self, z: torch.Tensor) -> None:
        self.count += 1
        delta = z - self.mean
        self.mean = self.mean + delta / self.count
        self.sum_squares = self.sum_squares + delta * (z - self.mean)

    def variance(self, group: torch.Tensor | None = None) -> torch.Tensor:
        r"""Stan's regularised estimate $\frac{n}{n+5}\hat\sigma^2 + 10^{-3}\frac{5}{n+5}$.

        With ``group (C,)``, $\hat\sigma^2$ pools the draws of all chains of a group (their
        within-chain and between-chain spread), and every chain gets its group's estimate.
        """
        if group is None:
            n = self.count
            sample = self.sum_squares / max(n - 1, 1)
        else:
            num_groups = int(group.max()) + 1
            sizes = torch.bincount(group, minlength=num_groups).to(self.mean)[:, None]
            centre = _sum_rows(self.mean, group, num_groups) / sizes
            spread = self.sum_squares + self.count * (self.mean - centre[group]).square()
            n = sizes * self.count
            sample = (_sum_rows(spread, group, num_groups) / (n - 1).clamp_min(1))[group]
            n = n[group]
        return (n / (n + 5.0)) * sample + 1e-3 * (5.0 / (n + 5.0))


def _sum_rows(x: torch.Tensor, group: torch.Tensor, num_groups: int) -> torch.Tensor:
    return x.new_zeros(num_groups, *x.shape[1:]).index_add_(0, group, x)


MEMORY = 50  # iterations in PrincipalScale's running averages


class PrincipalScale(_State):
    r"""The standard deviation of the slowest direction, per group of chains sharing a $\beta$.

    The integration time that decorrelates a Gaussian's slowest direction in one jittered
    trajectory ($t = uT$, $u \sim U(0, 1)$, so $\mathbb E[\cos t] = \sin T / T = 0$) is
    $T = \pi \sqrt{\lambda_{\max}}$, with $\lambda_{\max}$ the largest eigenvalue of the
    covariance in coordinates whitened by the metric. $\lambda_{\max}$ and its eigenvector
    $v$ are tracked by a running power iteration on the draws of all chains of the group (their
    spread across chains and over iterations): $w \leftarrow \overline{(x - \bar x)(x - \bar
    x)^\top v}$, $\lambda = \|w\|$, $v = w / \lambda$. This is the direction SNAPER focuses
    on (Sountsov & Hoffman 2022, "Focusing on difficult directions for learning HMC trajectory
    lengths"), with its length set from the estimate rather than by gradient steps.
    """

    def __init__(self, group: torch.Tensor, dim: int, like: torch.Tensor) -> None:
        self.group = group
        self.num_groups = int(group.max()) + 1
        self.sizes = torch.bincount(group, minlength=self.num_groups).to(like)
        self.direction = like.new_ones(self.num_groups, dim) / dim**0.5
        self.reset(like.new_zeros(len(group), dim))

    def reset(self, x: torch.Tensor) -> None:
        """Start from positions ``x (C, D)``."""
        self.count = 0
        self.mean = _sum_rows(x, self.group, self.num_groups) / self.sizes[:, None]
        self.product = torch.zeros_like(self.mean)
        self.variance = x.new_zeros(self.num_groups)

    def rescale(self, factor: torch.Tensor) -> None:
        r"""Move to coordinates multiplied by ``factor (C, D)`` (a new metric): the estimates
        are carried over and then diluted by the new draws (weights $1/2, 1/3, \dots$)."""
        factor = _sum_rows(factor, self.group, self.num_groups) / self.sizes[:, None]
        self.mean = self.mean * factor
        self.product = self.product * factor.square()
        self.variance = self.product.norm(dim=-1)
        self.count = 1

    def update(self, x: torch.Tensor) -> None:
        """Add whitened positions ``x (C, D)``."""
        self.count += 1
        weight = max(1.0 / self.count, 1.0 / MEMORY)
        centre = _sum_rows(x, self.group, self.num_groups) / self.sizes[:, None]
        self.mean = (1 - weight) * self.mean + weight * centre
        d = x - self.mean[self.group]
        projected = (d * self.direction[self.group]).sum(-1, keepdim=True)
        sample = _sum_rows(d * projected, self.group, self.num_groups) / self.sizes[:, None]
        self.product = (1 - weight) * self.product + weight * sample
        norm = self.product.norm(dim=-1)
        ok = norm > 0
        self.direction = torch.where(ok[:, None], self.product / norm.clamp_min(1e-300)[:, None],
                                     self.direction)  # fmt: skip
        self.variance = norm

    def integration_time(self) -> torch.Tensor:
        r"""$T = \pi\sqrt{\lambda_{\max}}$ per chain ``(C,)``, with $\lambda_{\max}$ corrected
        for the upward bias of the top eigenvalue $\ell$ of a sample covariance from $n$ draws
        in $D$ dimensions (the spiked covariance model, Baik & Silverstein 2006): with
        $\gamma = D/n$, $\ell = \lambda + \gamma\lambda/(\lambda - 1)$ above the noise edge
        $(1 + \sqrt\gamma)^2$, inverted for $\lambda$; below it $\lambda = \ell / (1 +
        \sqrt\gamma)^2$. $n$ counts chains times iterations averaged, an upper bound for
        autocorrelated draws, so the correction errs on the long side."""
        n = self.sizes * min(max(self.count, 1), MEMORY)
        gamma = self.direction.shape[-1] / n
        top = self.variance
        edge = (1 + gamma.sqrt()).square()
        b = top + 1 - gamma
        spiked = 0.5 * (b + (b.square() - 4 * top).clamp_min(0).sqrt())
        variance = torch.where(top > edge, spiked, top / edge)
        return (torch.pi * variance.sqrt())[self.group]
