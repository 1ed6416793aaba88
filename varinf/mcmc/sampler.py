"""`MCMC`: the driver (initialisation, warm-up schedule, draws, interruption, checkpoints)."""

from __future__ import annotations

import time
import warnings
from typing import Any

import torch

from varinf.mcmc.adaptation import DualAveraging, PrincipalScale, WelfordVariance, warmup_windows
from varinf.mcmc.leapfrog import Points, evaluate, leapfrog_trajectory, reasonable_step_size
from varinf.mcmc.result import MCMCRun
from varinf.mcmc.state import DRAW_FIELDS, RunState, empty_draws

KERNELS = ("hmc", "nuts")
INITIAL_MAX_STEPS = 8  # trajectory cap until the first metric (see `MCMC`)
_CONFIG = (
    "num_chains", "num_warmup", "num_draws", "kernel", "target_accept", "max_steps",
    "pooled_metric",
)  # fmt: skip


class MCMC:
    r"""Hamiltonian Monte Carlo on many chains at once, through one batched potential.

    See the `varinf.mcmc` module docstring for the algorithm. Every leapfrog step of every chain
    is one call of ``potential.value_and_grad(z, beta)`` with ``z`` of shape ``(C, D)``.

    Args:
        potential: a `varinf.potential.Potential` (anything with ``value_and_grad(z, beta) ->
            (log density (C,), gradient (C, D), terms)``, ``dim``, ``initial_points`` and
            ``constrain``).
        num_chains: $C$.
        num_warmup: adaptation iterations (discarded).
        num_draws: $S$, draws kept per chain.
        beta: inverse temperature, a float or a ``(C,)`` tensor in $[0, 1]$ (power posteriors
            $\pi_\beta \propto p(x \mid z)^\beta p(z)$; e.g. temperatures repeated over
            replicate chains).
        kernel: ``"hmc"`` (batched, adaptive, this module) or ``"nuts"`` (Pyro's NUTS, one
            chain after another, for models that do not vectorise over chains).
        target_accept: $\delta$, the mean acceptance probability the step size aims at.
        seed: seeds the sampler's own `torch.Generator` (the global RNG is left alone, except
            that prior draws for initial points are made under a forked, seeded global RNG).
        progress: show a progress bar.
        max_steps: the most leapfrog steps of one trajectory. Until the first metric the cap is
            ``min(max_steps, 8)``: chains started from prior draws are still falling towards
            the typical set, their spread says nothing about the posterior's slowest scale,
            and an integration time estimated from it would make every transient iteration
            run to the cap. The integration-time estimate starts afresh with the first metric.
        max_energy_error: energy error beyond which a transition counts as divergent.
        pooled_metric: adapt across the chains that share a $\beta$: their metric from all
            their draws (a sample $C_\beta$ times larger, from 25-iteration windows) and one
            step size from their mean acceptance statistic (cross-chain adaptation, as
            TFP's and NumPyro's vectorised samplers do), so that they all take the same number
            of leapfrog steps and every batched call carries all of them; ``False`` for Stan's
            chain-by-chain adaptation.

    Examples:
        >>> import pyro.distributions as dist
        >>> class Gaussian:  # a potential: log N(z; 1, 0.5^2 I)
        ...     dim = 2
        ...     def value_and_grad(self, z, beta=1.0):
        ...         log_p = dist.Normal(1.0, 0.5).log_prob(z).sum(-1)
        ...         return log_p, -(z - 1.0) / 0.25, Terms(log_p, torch.zeros_like(log_p))
        ...     def initial_points(self, num_chains, init=None):
        ...         return torch.zeros(num_chains, self.dim, dtype=torch.float64)
        ...     def constrain(self, z):
        ...         return {"z": z}
        >>> from collections import namedtuple
        >>> Terms = namedtuple("Terms", "log_prior log_likelihood")
        >>> run = MCMC(Gaussian(), num_chains=8, num_warmup=200, num_draws=200, seed=0,
        ...            progress=False).run()
        >>> run.z.shape
        torch.Size([8, 200, 2])
        >>> bool((run.z.mean((0, 1)) - 1.0).abs().max() < 0.1), bool(run.rhat().max() < 1.05)
        (True, True)
    """

    def __init__(
        self,
        potential: Any,
        num_chains: int = 4,
        num_warmup: int = 500,
        num_draws: int = 500,
        beta: float | torch.Tensor = 1.0,
        kernel: str = "hmc",
        target_accept: float = 0.8,
        seed: int | None = None,
        progress: bool = True,
        max_steps: int = 1000,
        max_energy_error: float = 1000.0,
        pooled_metric: bool = True,
    ) -> None:
        _check_counts(num_chains, num_warmup, num_draws, max_steps)
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        if not 0.0 < target_accept < 1.0:
            raise ValueError(f"target_accept must be in (0, 1), got {target_accept}")
        self.potential = potential
        self.num_chains, self.num_warmup, self.num_draws = num_chains, num_warmup, num_draws
        self.beta = _check_beta(beta, num_chains)
        self.kernel, self.target_accept = kernel, target_accept
        self.progress, self.max_steps, self.max_energy_error = progress, max_steps, max_energy_error
        self.pooled_metric = pooled_metric
        self.generator = torch.Generator()
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(int(seed))
        self._state: RunState | None = None
        self._snapshot = self.generator.get_state()  # the generator at the current iteration

    # ---- public API -------------------------------------------------------------------------

    def run(self, init: dict | torch.Tensor | None = None) -> MCMCRun:
        r"""Warm up and draw; continue a loaded or interrupted run where it stopped.

        Args:
            init: initial values: ``None`` for prior draws, a dict of constrained site values
                (passed to ``potential.initial_points``), or unconstrained points ``(C, D)``.

        Returns:
            An `MCMCRun`. On ``KeyboardInterrupt`` the draws finished so far are returned
            (``diagnostics["interrupted"]``, with a `RuntimeWarning`), and `state_dict` holds
            the state to resume from; an interrupt before the first iteration is re-raised.
        """
        if self.kernel == "nuts":
            from varinf.mcmc.pyro_nuts import run_pyro_nuts

            return run_pyro_nuts(self, init)
        total = self.num_warmup + self.num_draws
        interrupted = False
        self._snapshot = self.generator.get_state()
        try:
            if self._state is None or self._state.iteration >= total:
                self._state = None
                self._state = self._initialise(init)
            self._loop(total)
        except KeyboardInterrupt:
            self.generator.set_state(self._snapshot)
            if self._state is None:
                raise
            interrupted = True
            message = "MCMC interrupted: returning the draws finished so far; resume with run()"
            warnings.warn(message, RuntimeWarning, stacklevel=2)
        return self._result(interrupted)

    def state_dict(self) -> dict:
        """A checkpoint: the settings, the generator's state and the run's state (if any)."""
        config = {name: getattr(self, name) for name in _CONFIG}
        config["beta"] = self.beta.clone()
        state = None if self._state is None else self._state.state_dict()
        return {"config": config, "generator": self.generator.get_state(), "run": state}

    def load_state_dict(self, state: dict) -> None:
        """Restore a checkpoint from `state_dict`; the next `run` continues it exactly."""
        config = state["config"]
        for name in _CONFIG:
            if config[name] != getattr(self, name):
                raise ValueError(
                    f"checkpoint has {name}={config[name]!r} but this MCMC has "
                    f"{name}={getattr(self, name)!r}; construct MCMC with the checkpoint's settings"
                )
        if not torch.equal(config["beta"], self.beta.to(config["beta"])):
            raise ValueError("checkpoint's beta differs from this MCMC's beta")
        self.generator.set_state(state["generator"])
        self._state = None if state["run"] is None else RunState.from_state_dict(state["run"])

    # ---- initialisation ---------------------------------------------------------------------

    def _initial_points(self, init) -> torch.Tensor:
        if torch.is_tensor(init):
            if init.shape != (self.num_chains, self.potential.dim):
                raise ValueError(
                    f"init must have shape (num_chains, dim) = ({self.num_chains}, "
                    f"{self.potential.dim}), got {tuple(init.shape)}"
                )
            return init.detach().clone()
        seed = int(torch.randint(0, 2**62, (), generator=self.generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.potential.initial_points(self.num_chains, init=init).detach()

    def _initialise(self, init) -> RunState:
        z = self._initial_points(init)
        beta = self.beta.to(z)
        points = evaluate(self.potential, z, beta)
        evaluations = self.num_chains
        bad = (~points.is_finite()).nonzero().squeeze(-1).tolist()
        if bad:
            raise ValueError(
                f"the potential is not finite (log density or gradient) at the initial points of "
                f"chains {bad[:10]}; pass init= (a dict of constrained values, or (C, D) points) "
                "inside the support where the model's log density is finite"
            )
        inv_metric = torch.ones_like(z)
        _, group = torch.unique(beta, return_inverse=True)
        step_size, spent = reasonable_step_size(
            self.potential, points, torch.ones_like(beta), inv_metric, beta, self.generator
        )
        step_size = self._pool(step_size.log(), group).exp()
        trajectory = PrincipalScale(group, z.shape[-1], z)
        trajectory.reset(z)
        trajectory.update(z)
        return RunState(
            iteration=0,
            points=points,
            beta=beta,
            group=group,
            inv_metric=inv_metric,
            step_size=step_size,
            dual=DualAveraging(step_size, self.target_accept),
            welford=WelfordVariance(self.num_chains, z.shape[-1], z),
            trajectory=trajectory,
            draws=empty_draws(self.num_chains, self.num_draws, z),
            warmup_divergences=torch.zeros(self.num_chains, dtype=torch.long),
            num_evaluations=evaluations + spent,
        )

    # ---- iterations -------------------------------------------------------------------------

    def _loop(self, total: int) -> None:
        from tqdm.auto import tqdm

        state = self._state
        bar = tqdm(total=total, initial=state.iteration, disable=not self.progress, desc="MCMC")
        recent = None
        with bar:
            while state.iteration < total:
                self._snapshot = self.generator.get_state()
                started = time.perf_counter()
                accept_prob = self._iterate(state)
                state.elapsed += time.perf_counter() - started
                mean = float(accept_prob.mean())
                recent = mean if recent is None else 0.9 * recent + 0.1 * mean
                bar.update(1)
                if state.iteration % 10 == 0 or state.iteration == total:
                    phase = "warm-up" if state.iteration <= self.num_warmup else "sampling"
                    bar.set_postfix(phase=phase, accept=f"{recent:.2f}")

    def _iterate(self, state: RunState) -> torch.Tensor:
        """One transition of every chain (plus adaptation during warm-up); returns the
        acceptance probabilities ``(C,)``. State changes happen only after the trajectory."""
        g, dtype = self.generator, state.points.z.dtype
        device = state.points.z.device
        noise = torch.randn(state.points.z.shape, generator=g, dtype=dtype).to(device)
        momentum = noise / state.inv_metric.sqrt()
        jitter = torch.rand((), generator=g, dtype=dtype).to(device)
        length = state.trajectory.integration_time() / state.step_size
        steps = torch.ceil(jitter * length)
        cap = self.max_steps
        if state.iteration < self._first_metric:
            cap = min(cap, INITIAL_MAX_STEPS)
        num_steps = steps.clamp(1, cap).long()
        path = leapfrog_trajectory(
            self.potential, state.points, momentum, state.step_size, state.inv_metric,
            num_steps, state.beta, self.max_energy_error,
        )  # fmt: skip
        accept_prob = path.energy_change.clamp(max=0.0).exp()
        uniform = torch.rand(self.num_chains, generator=g, dtype=dtype).to(device)
        accepted = uniform.log() < path.energy_change
        state.num_evaluations += path.num_evaluations
        previous, state.points = state.points, state.points.where(accepted, path.proposal)
        i = state.iteration
        if i < self.num_warmup:
            state.warmup_divergences += path.divergent.cpu().long()
            self._adapt(state, previous, path, num_steps, accept_prob)
        else:
            self._record(state, i - self.num_warmup, accept_prob, path.divergent, num_steps)
        state.iteration += 1
        return accept_prob

    def _adapt(self, state, previous: Points, path, num_steps, accept_prob) -> None:
        i = state.iteration
        slow_start, ends = warmup_windows(self.num_warmup)
        step_size = state.dual.update(self._pool(accept_prob, state.group))
        state.trajectory.update(state.points.z / state.inv_metric.sqrt())
        if slow_start <= i < (ends[-1] if ends else -1):
            state.welford.update(state.points.z)
        if i + 1 in ends:
            step_size = self._new_metric(state, step_size)
        if i + 1 == self._first_metric:  # forget the transient: T from settled chains only
            state.trajectory.reset(state.points.z / state.inv_metric.sqrt())
        if i + 1 == (self.num_warmup + (ends[-1] if ends else 0)) // 2:
            state.dual.restart_average()  # the second half of the final window
        if i + 1 == self.num_warmup:
            step_size = state.dual.averaged
        state.step_size = step_size

    def _new_metric(self, state: RunState, step_size: torch.Tensor) -> torch.Tensor:
        """End of a slow window: new metric, new step sizes, dual averaging restarted."""
        old = state.inv_metric
        state.inv_metric = state.welford.variance(state.group if self.pooled_metric else None)
        state.trajectory.rescale((old / state.inv_metric).sqrt())
        state.welford = WelfordVariance(self.num_chains, state.inv_metric.shape[-1], step_size)
        fresh, spent = reasonable_step_size(
            self.potential, state.points, step_size, state.inv_metric, state.beta, self.generator
        )
        state.num_evaluations += spent
        fresh = self._pool(fresh.log(), state.group).exp()
        state.dual.restart(fresh)
        return fresh

    def _record(self, state, index: int, accept_prob, divergent, num_steps) -> None:
        draws, points = state.draws, state.points
        draws["z"][:, index] = points.z
        if "grad" in draws:  # a checkpoint from before scores were recorded has none
            draws["grad"][:, index] = points.grad
        draws["log_likelihood"][:, index] = points.log_likelihood
        draws["log_prior"][:, index] = points.log_prior
        draws["acceptance_rate"][:, index] = accept_prob
        draws["diverging"][:, index] = divergent
        draws["n_steps"][:, index] = num_steps

    @property
    def _first_metric(self) -> int:
        """The iteration that brings the first metric (the end of warm-up if none)."""
        slow_start, ends = warmup_windows(self.num_warmup)
        return ends[0] if ends else slow_start

    def _pool(self, x: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
        return _group_mean(x, group) if self.pooled_metric else x

    # ---- results ----------------------------------------------------------------------------

    def _result(self, interrupted: bool) -> MCMCRun:
        state = self._state
        done = max(0, min(state.iteration - self.num_warmup, self.num_draws))
        draws = {k: state.draws[k][:, :done] for k in DRAW_FIELDS if k in state.draws}
        divergences = draws["diverging"].sum(1)
        notes = list(state.warnings)
        if int(divergences.sum()):
            notes.append(
                f"{int(divergences.sum())} divergent transitions after warm-up (chains "
                f"{divergences.nonzero().squeeze(-1).tolist()[:10]}...): the draws may be biased; "
                "raise target_accept or reparameterise the model"
            )
        if interrupted:
            notes.append(f"interrupted after {state.iteration} iterations ({done} draws)")
        diagnostics = {
            "inv_metric": state.inv_metric.clone(),
            "trajectory_length": state.trajectory.integration_time(),
            "warmup_divergences": state.warmup_divergences.clone(),
            "elapsed": state.elapsed,
            "interrupted": interrupted,
            "warnings": notes,
            **{k: draws[k] for k in ("acceptance_rate", "diverging", "n_steps")},
        }
        return MCMCRun(
            z=draws["z"],
            grad=draws.get("grad"),
            log_likelihood=draws["log_likelihood"],
            log_prior=draws["log_prior"],
            beta=state.beta.clone(),
            acceptance=draws["acceptance_rate"].mean(1),
            step_size=state.step_size.clone(),
            divergences=divergences,
            num_evaluations=state.num_evaluations,
            potential=self.potential,
            diagnostics=diagnostics,
        )


def _group_mean(x: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """Each entry of ``x (C,)`` replaced by the mean over the chains of its group."""
    num_groups = int(group.max()) + 1
    sums = x.new_zeros(num_groups).index_add_(0, group, x)
    return (sums / torch.bincount(group, minlength=num_groups).to(x))[group]


def _check_counts(num_chains, num_warmup, num_draws, max_steps) -> None:
    for name, value, low in (
        ("num_chains", num_chains, 1),
        ("num_warmup", num_warmup, 0),
        ("num_draws", num_draws, 1),
        ("max_steps", max_steps, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _check_beta(beta, num_chains: int) -> torch.Tensor:
    tensor = torch.as_tensor(beta, dtype=torch.float64).detach().cpu()
    if tensor.dim() == 0:
        tensor = tensor.expand(num_chains).clone()
    if tensor.shape != (num_chains,):
        raise ValueError(
            f"beta must be a float or a tensor of shape (num_chains,) = ({num_chains},), "
            f"got shape {tuple(tensor.shape)}"
        )
    if not bool(((tensor >= 0) & (tensor <= 1)).all()):
        raise ValueError(f"beta must lie in [0, 1] (inverse temperatures), got {tensor.tolist()}")
    return tensor
