r"""The unordered set estimator: score-function gradients from samples without replacement.

Kool, van Hoof and Welling (2020), "Estimating gradients for discrete random variables by
sampling without replacement". Draw a set $S$ of $k$ distinct joint states by
Gumbel-top-$k$ (the $k$ largest of $\log q(s) + G_s$); its probability
$q(S)$ sums the Plackett-Luce probabilities of all $k!$ orders. Then

$$
\hat g = \sum_{s \in S} \nabla q(s)\, R(S, s)\, \big(f(s) - b_s\big), \qquad
R(S, s) = \frac{q^{D\setminus s}(S \setminus s)}{q(S)},
$$

where $q^{D\setminus s}$ samples from $q$ with $s$ removed. The *built-in
baseline*

$$
b_s = \sum_{s' \in S} q(s')\, R^{D\setminus s}(S, s') f(s'), \qquad
R^{D\setminus s}(S, s') = \frac{q^{D\setminus\{s, s'\}}(S\setminus\{s,s'\})}
    {q^{D\setminus s}(S\setminus s)}, \quad R^{D\setminus s}(S, s) = 1,
$$

is $q(s)f(s)$ plus the unordered set estimate of $\sum_{x\neq s} q(x) f(x)$ from
the other $k-1$ samples, so its expectation is $\mathbb{E}_q[f]$ whatever $s$
and the estimator stays unbiased (needs $k \geq 2$).

Set probabilities come from the Gumbel construction: with $a = q(D \setminus S)$,
$r_s = q(s)/a$ and $u = e^{-e^x}$,

$$
q(S) = \int_0^1 \prod_{s\in S}\big(1 - u^{r_s}\big)\,du
     = \int_{-\infty}^{\infty} e^{x - e^x} \prod_{s \in S}\big(1 - e^{-r_s e^x}\big)\,dx,
$$

and every leave-one-out and leave-two-out probability is the same integral with factors
removed (the ratios $q(s')/a$ do not change when $q$ is renormalised without
$s$). The integrand is smooth on the real line, so a trapezoid rule in log space over a
range set by the largest $r_s$ is accurate to near machine precision (tested against the
sum over orders). Torch has no sampler without replacement with set probabilities, so this is
written here.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from varinf.gradients.base import (
    MAX_JOINT_STATES,
    CategoricalView,
    GradientEstimator,
    Surrogate,
    gumbel_like,
    score_term,
)

#: Half-width (in $x$) beyond the largest factor's switch point where the integrand is cut.
_TAIL = 15.0


def log_factors(log_r: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    r"""$\log(1 - e^{-r e^x})$ for ``log_r`` ``(..., k)`` and grid ``x`` ``(..., N)``:
    ``(..., k, N)``, accurate when $r e^x$ is tiny or huge."""
    log_y = log_r.unsqueeze(-1) + x.unsqueeze(-2)
    y = log_y.exp()
    small = log_y < -20  # 1 - e^{-y} = y (1 - y/2 + ...)
    mid = torch.log(-torch.expm1(-y.clamp(min=1e-300)))
    large = torch.log1p(-torch.exp(-y))
    return torch.where(small, log_y - y / 2, torch.where(y < math.log(2), mid, large))


def log_set_integrals(
    log_q: torch.Tensor, log_rest: torch.Tensor, num_points: int = 300
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Log probabilities of a set and its leave-one-out and leave-two-out subsets.

    Args:
        log_q: $\log q(s)$ of the $k$ set members, ``(..., k)``.
        log_rest: $\log q(D\setminus S)$, ``(...)`` (``-inf`` when $S = D$).
        num_points: Trapezoid points.

    Returns:
        ``(log_all, log_one_out, log_two_out)`` of shapes ``(...)``, ``(..., k)`` and
        ``(..., k, k)``: $\log \int \prod_{s \in T}(\cdot)$ for $T = S$,
        $S\setminus s$ and $S \setminus\{s, s'\}$ (diagonal: $-\infty$, unused).
        The first is $\log q(S)$; ratios of them give every $R$.
    """
    log_q, log_rest = log_q.double(), log_rest.double()
    k = log_q.shape[-1]
    log_r = (log_q - log_rest.unsqueeze(-1)).clamp(max=60.0)
    top = math.log(50.0 + 3.0 * k)
    bottom = -log_r.amax(-1).clamp(min=0.0) - _TAIL
    grid = torch.linspace(0.0, 1.0, num_points, dtype=log_q.dtype, device=log_q.device)
    x = bottom.unsqueeze(-1) + (top - bottom).unsqueeze(-1) * grid  # (..., N)
    log_dx = torch.log((top - bottom) / (num_points - 1))
    log_trapezoid = torch.zeros_like(grid)
    log_trapezoid[[0, -1]] = -math.log(2.0)
    base = x - x.exp() + log_trapezoid  # (..., N)
    factors = log_factors(log_r, x)  # (..., k, N)
    total = base + factors.sum(-2)

    def integrate(integrand: torch.Tensor) -> torch.Tensor:
        extra = integrand.dim() - 1 - log_dx.dim()
        return integrand.logsumexp(-1) + log_dx.reshape(log_dx.shape + (1,) * extra)

    log_all = integrate(total)
    one_out = total.unsqueeze(-2) - factors  # (..., k, N)
    log_one_out = integrate(one_out)
    # one member at a time keeps memory at (..., k, N) rather than (..., k, k, N)
    log_two_out = torch.stack([integrate(one_out[..., s, None, :] - factors) for s in range(k)], -2)
    eye = torch.eye(k, dtype=torch.bool, device=log_q.device)
    log_two_out = log_two_out.masked_fill(eye, float("-inf"))
    return log_all, log_one_out, log_two_out


def gumbel_top_k(log_q: torch.Tensor, k: int, generator) -> torch.Tensor:
    """``k`` distinct states (last dim of ``log_q``) sampled without replacement, ``(..., k)``."""
    perturbed = log_q.detach() + gumbel_like(log_q, generator)
    return perturbed.topk(k, dim=-1).indices


def stochastic_beam_search(
    log_probs: torch.Tensor, k: int, generator: torch.Generator | None
) -> torch.Tensor:
    r"""$k$ distinct states of a product of independent categoricals, without replacement.

    Stochastic beam search (Kool, van Hoof and Welling 2019, "Stochastic beams and where to
    find them"): factor by factor, every kept prefix $p$ with perturbed log-probability $G_p$
    extends to its children $c$ with $\tilde G_{pc} = \log q(pc) + g_{pc}$, conditioned on their
    maximum being $G_p$,

    $$
    G_{pc} = -\log\big(e^{-G_p} - e^{-Z_p} + e^{-\tilde G_{pc}}\big), \qquad
    Z_p = \max_c \tilde G_{pc},
    $$

    and the $k$ largest are kept. The leaves' perturbed values are then distributed as
    independent Gumbels of the joint log-probabilities, so the result has the law of
    Gumbel-top-$k$ over all $n^m$ states, at cost $O(m k n)$.

    Args:
        log_probs: Normalised per-factor log-probabilities ``(*batch, m, n)``.
        k: Number of states (at most $n^m$).

    Returns:
        Per-factor indices ``(*batch, k, m)``.
    """
    batch, (m, n) = log_probs.shape[:-2], log_probs.shape[-2:]
    log_probs = log_probs.detach()
    prefixes = log_probs.new_zeros((*batch, 1, 0), dtype=torch.long)
    phi = log_probs.new_zeros((*batch, 1))  # log q(prefix)
    perturbed = log_probs.new_zeros((*batch, 1))  # G_prefix; the root's value is immaterial
    for j in range(m):
        child_phi = phi.unsqueeze(-1) + log_probs[..., j, None, :]  # (*batch, beam, n)
        untruncated = child_phi + gumbel_like(child_phi, generator)
        child = _truncated_gumbel(perturbed.unsqueeze(-1), untruncated)
        beam = min(k, child.shape[-2] * n)
        keep = child.flatten(-2).topk(beam, dim=-1).indices
        parent, category = torch.div(keep, n, rounding_mode="floor"), keep % n
        parent_prefix = prefixes.gather(-2, parent.unsqueeze(-1).expand(*parent.shape, j))
        prefixes = torch.cat([parent_prefix, category.unsqueeze(-1)], -1)
        phi = child_phi.flatten(-2).gather(-1, keep)
        perturbed = child.flatten(-2).gather(-1, keep)
    return prefixes


def _truncated_gumbel(top: torch.Tensor, untruncated: torch.Tensor) -> torch.Tensor:
    """Gumbels ``untruncated`` shifted so that their maximum is ``top``, in a stable form."""
    maximum = untruncated.amax(-1, keepdim=True)
    gap = untruncated - maximum  # <= 0; log(1 - e^gap) is -inf at the maximum
    log1m = torch.where(
        gap > -math.log(2), torch.log(-torch.expm1(gap)), torch.log1p(-torch.exp(gap))
    )
    v = top - untruncated + log1m
    return top - v.clamp(min=0) - torch.log1p(torch.exp(-v.abs()))


class UnorderedSet(GradientEstimator):
    r"""The unordered set estimator, with the built-in baseline by default.

    Args:
        baseline: Use the built-in baseline (then ``num_particles`` $\geq 2$).
        num_points: Trapezoid points for the set-probability integrals.

    The $k$ evaluations are distinct states, so with $k$ equal to the support size
    the estimator is exact. With ``method="enumerate"`` the joint states are enumerated (see
    `joint_log_probs`); with ``"beam"`` they are drawn by `stochastic_beam_search`, factor by
    factor, which works for any number of factors; ``"auto"`` enumerates up to
    ``MAX_JOINT_STATES`` states.

    Examples:
        >>> import torch
        >>> from torch.distributions import Categorical
        >>> logits = torch.tensor([2.0, 1.0, 0.0, -1.0], requires_grad=True)
        >>> out = UnorderedSet().surrogate(Categorical(logits=logits), lambda z: z.float(), 4)
        >>> round(out.value.item(), 4)  # the whole support: exact E[z]
        0.5073
    """

    name = "unordered-set"

    def __init__(
        self, baseline: bool = True, *, method: str = "auto", num_points: int = 300
    ) -> None:
        if num_points < 10:
            raise ValueError(f"num_points must be at least 10, got {num_points}")
        if method not in ("auto", "enumerate", "beam"):
            raise ValueError(f"method must be 'auto', 'enumerate' or 'beam', got {method!r}")
        self.method = method
        self.baseline = bool(baseline)
        self.num_points = num_points
        self.min_particles = 2 if self.baseline else 1
        self.name = "unordered-set" if self.baseline else "unordered-set-no-baseline"

    def _surrogate(
        self, view: CategoricalView, f: Callable, num_particles: int, generator
    ) -> Surrogate:
        num_states = view.num_categories**view.num_factors
        k = min(num_particles, num_states)
        enumerate_ = self.method == "enumerate" or (
            self.method == "auto" and num_states <= MAX_JOINT_STATES
        )
        if enumerate_:
            joint = view.joint_log_probs()
            states = gumbel_top_k(joint, k, generator)  # (*B, k)
            indices = view.joint_to_indices(states.movedim(-1, 0))  # (k, *B, m)
            log_rest = joint.detach().scatter(-1, states, float("-inf")).logsumexp(-1)
        else:
            indices = stochastic_beam_search(view.log_probs, k, generator).movedim(-2, 0)
        log_q = view.log_prob(indices).movedim(0, -1)  # (*B, k)
        if not enumerate_:  # 1 - q(S); -inf when S is the whole support
            log_rest = _log1mexp(log_q.detach().double().logsumexp(-1)).to(log_q.dtype)
        values = f(view.decode(indices)).movedim(0, -1)
        weights, baselines = self._weights(log_rest, log_q.detach(), values.detach())
        signal = weights * (values.detach() - baselines)
        surrogate = (weights * values).sum(-1) + score_term(signal, log_q).sum(-1)
        return Surrogate((weights * values.detach()).sum(-1), surrogate, k)

    def _weights(self, log_rest, log_q, values) -> tuple[torch.Tensor, torch.Tensor]:
        r"""$q(s) R(S, s)$ and the baselines $b_s$ (zero without baseline)."""
        log_all, log_one_out, log_two_out = log_set_integrals(log_q, log_rest, self.num_points)
        log_q64 = log_q.double()
        weights = (log_q64 + log_one_out - log_all.unsqueeze(-1)).exp()
        if not self.baseline or log_q.shape[-1] < 2:
            return weights.to(values.dtype), torch.zeros_like(values)
        # [s, s'] = q(s') R^{D\s}(S, s'), with R^{D\s}(S, s) = 1 on the diagonal
        inner = (log_q64.unsqueeze(-2) + log_two_out - log_one_out.unsqueeze(-1)).exp()
        inner = torch.diagonal_scatter(inner, log_q64.exp(), dim1=-2, dim2=-1)
        baselines = (inner * values.double().unsqueeze(-2)).sum(-1)
        return weights.to(values.dtype), baselines.to(values.dtype)


def _log1mexp(log_x: torch.Tensor) -> torch.Tensor:
    """$\\log(1 - x)$ from $\\log x \\le 0$."""
    log_x = log_x.clamp(max=0.0)
    return torch.where(
        log_x > -math.log(2), torch.log(-torch.expm1(log_x)), torch.log1p(-torch.exp(log_x))
    )
