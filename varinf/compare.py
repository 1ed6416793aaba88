r"""Put estimators side by side: repeated estimates, their bias, variance and cost.

For estimator $e$ with repeats $v_1..v_R$ at mean cost $c$ (model evaluations), the table has the
mean, standard deviation, standard error of the mean, bias and RMSE against a known truth, and
the *work-normalised variance* $\mathrm{Var}(v) \cdot c$ (Glynn and Whitt 1992): the variance
an estimator would have at unit cost, so cheap noisy and expensive precise methods compare fairly.
"""

from __future__ import annotations

import copy
import math
import numbers
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyro.poutine as poutine
import torch
from tqdm.auto import tqdm

from varinf.estimate import Estimate, Estimator, seeded

SEED_STRIDE = 1_000_003  # repeat r of estimator i uses seed + i * SEED_STRIDE + r


@dataclass
class Comparison:
    """Repeated estimates of several estimators on one model.

    Attributes:
        estimates: ``{estimator label: [Estimate, ...]}`` (finished repeats only).
        truth: The known log evidence, if given.
        interrupted: Whether the run was stopped early (the finished repeats are kept).
        failures: ``{estimator label: first error}`` for estimators whose repeats failed; an
            estimator that fails on its first repeat is not retried.
    """

    estimates: dict[str, list[Estimate]]
    truth: float | None = None
    interrupted: bool = False
    failures: dict[str, str] = field(default_factory=dict)

    @property
    def table(self) -> pd.DataFrame:
        """One row per estimator: repeats, kind, mean, std, sem, bias, rmse, cost, seconds,
        work-normalised variance."""
        rows = []
        for label, estimates in self.estimates.items():
            if not estimates:
                continue
            values = np.array([e.value for e in estimates])
            cost = float(np.mean([e.num_evaluations for e in estimates]))
            std = float(values.std(ddof=1)) if len(values) > 1 else math.nan
            row = {
                "estimator": label,
                "kind": estimates[0].kind,
                "repeats": len(values),
                "mean": float(values.mean()),
                "std": std,
                "sem": std / math.sqrt(len(values)),
                "cost": cost,
                "seconds": float(np.mean([e.elapsed for e in estimates])),
                "work_variance": std**2 * cost,
            }
            if self.truth is not None:
                row["bias"] = row["mean"] - self.truth
                row["rmse"] = float(np.sqrt(np.mean((values - self.truth) ** 2)))
            rows.append(row)
        return pd.DataFrame(rows).set_index("estimator")

    def to_xarray(self):
        """``xarray.Dataset`` with ``value``, ``stderr``, ``cost`` and ``seconds`` over
        dimensions ``(estimator, repeat)``; missing repeats are ``nan``."""
        import xarray as xr

        labels = [label for label, e in self.estimates.items() if e]
        repeats = max(len(self.estimates[label]) for label in labels)
        data = {}
        for key, attr in (
            ("value", "value"),
            ("stderr", "stderr"),
            ("cost", "num_evaluations"),
            ("seconds", "elapsed"),
        ):
            array = np.full((len(labels), repeats), np.nan)
            for i, label in enumerate(labels):
                column = [float(getattr(e, attr)) for e in self.estimates[label]]
                array[i, : len(column)] = column
            data[key] = (("estimator", "repeat"), array)
        attrs = {} if self.truth is None else {"truth": self.truth}
        return xr.Dataset(
            data, coords={"estimator": labels, "repeat": np.arange(repeats)}, attrs=attrs
        )

    def to_arviz(self):
        """``arviz.InferenceData`` whose ``posterior`` group holds each estimator's repeats as
        the draws of one chain, so ``arviz.summary`` and ``arviz.plot_posterior`` apply."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            import arviz

        dataset = self.to_xarray()
        values = {
            str(label): dataset["value"].sel(estimator=label).values[None, :]
            for label in dataset.estimator.values
        }
        return arviz.from_dict(posterior=values)

    def plot(self, path: str | None = None):
        """Distribution of the estimates per estimator (truth marked) and |error| against cost.

        Writes a PNG to ``path`` when given; returns the matplotlib figure.
        """
        from varinf.plotting import plot_comparison

        return plot_comparison(self, path)

    def __repr__(self) -> str:
        status = " (interrupted)" if self.interrupted else ""
        text = f"Comparison{status}\n{self.table.to_string(float_format=lambda x: f'{x:.4g}')}"
        for label, reason in self.failures.items():
            text += f"\n{label} failed: {reason}"
        return text


def compare(
    estimators: Sequence[Estimator],
    model: Callable,
    guide: Callable | None = None,
    *args: Any,
    repeats: int = 100,
    truth: float | None = None,
    seed: int = 0,
    executor: Executor | None = None,
    progress: bool = True,
    **kwargs: Any,
) -> Comparison:
    """Run every estimator ``repeats`` times with independent seeds.

    Args:
        estimators: Estimator objects; labels are their ``name`` (made unique with the
            particle count, or an index, when two share a name).
        model: A Pyro model, as for `Estimator.estimate`.
        guide: Its guide (``None`` for estimators that need none).
        *args: Passed to model and guide.
        repeats: Independent repeats per estimator.
        truth: Known log evidence, for bias and RMSE.
        seed: Repeat ``r`` of estimator ``i`` uses seed ``seed + i * 1000003 + r``, so results
            do not depend on the executor or the order of completion.
        executor: A `concurrent.futures.Executor` running processes (a process pool,
            Dask, Ray) for the repeats; model, guide and estimators must then be picklable
            (module-level functions or bound methods, not closures). Thread pools are refused:
            Pyro's effect handlers are global to a process. ``None`` runs in this process.
        progress: Show a progress bar.

    Returns:
        A `Comparison`. On ``KeyboardInterrupt`` the repeats already finished are kept
        and ``interrupted`` is set.
    """
    _check_compare_args(estimators, repeats, truth)
    if isinstance(executor, ThreadPoolExecutor):
        raise ValueError(
            "executor: Pyro's effect handlers are global to the process, so repeats cannot run "
            "in threads; use a ProcessPoolExecutor (or Dask/Ray processes)"
        )
    labels = _labels(estimators)
    comparison = Comparison({label: [] for label in labels}, truth=truth)
    jobs = [
        (label, _unseeded(estimator), seed + i * SEED_STRIDE + r)
        for i, (label, estimator) in enumerate(zip(labels, estimators, strict=True))
        for r in range(repeats)
    ]
    bar = tqdm(
        total=len(jobs),
        disable=None if progress else True,
        desc="compare",
        leave=False,
        mininterval=0.5,
    )
    futures = []
    try:
        for label, estimator, job_seed in jobs:
            job = (estimator, job_seed, model, guide if estimator.requires_guide else None)
            if executor is None:
                bar.set_postfix_str(label)
                _collect(comparison, label, lambda job=job: _run_one(*job, args, kwargs))
                bar.update()
            else:
                futures.append((label, executor.submit(_run_one, *job, args, kwargs)))
        for label, future in futures:
            _collect(comparison, label, future.result)
            bar.update()
    except KeyboardInterrupt:
        comparison.interrupted = True
        for _, future in futures:
            future.cancel()
    finally:
        bar.close()
    if not any(comparison.estimates.values()):
        raise ValueError(f"every estimator failed: {comparison.failures}")
    return comparison


def _unseeded(estimator: Estimator) -> Estimator:
    """A shallow copy without a fixed seed: compare() seeds each repeat itself (a fixed seed
    would make every repeat the same number)."""
    if getattr(estimator, "seed", None) is None:
        return estimator
    estimator = copy.copy(estimator)
    estimator.seed = None
    return estimator


def _run_one(estimator, seed, model, guide, args, kwargs) -> Estimate:
    with seeded(seed):
        return estimator.estimate(model, guide, *args, **kwargs)


def _collect(comparison: Comparison, label: str, fn: Callable[[], Estimate]) -> None:
    """Add one repeat, or record why it failed and go on: a failure keeps the rest."""
    if label in comparison.failures and not comparison.estimates[label]:
        return  # failed on its first repeat: a set-up problem, don't repeat it
    try:
        comparison.estimates[label].append(fn())
    except (FloatingPointError, ValueError, TypeError, RuntimeError) as error:
        comparison.failures.setdefault(label, f"{type(error).__name__}: {error}")


def _check_compare_args(estimators, repeats, truth) -> None:
    if isinstance(estimators, Estimator) or not estimators:
        raise ValueError("estimators must be a non-empty list of Estimator objects")
    for estimator in estimators:
        if not isinstance(estimator, Estimator):
            raise TypeError(f"estimators must be Estimator objects, got {type(estimator).__name__}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
    if truth is not None and (
        isinstance(truth, bool) or not isinstance(truth, numbers.Real) or not math.isfinite(truth)
    ):
        raise TypeError(f"truth must be a finite real number (a log evidence), got {truth!r}")


def _labels(estimators) -> list[str]:
    names = [e.name for e in estimators]
    labels = []
    for i, estimator in enumerate(estimators):
        label = estimator.name
        if names.count(label) > 1:
            k = getattr(estimator, "num_particles", None)
            label = f"{label}(K={k})" if k is not None else f"{label}#{i}"
        if label in labels:
            label = f"{label}#{i}"
        labels.append(label)
    return labels


@dataclass
class GradientVariance:
    """Gradient statistics of training objectives over repeats.

    Attributes:
        gradients: ``{loss label: {param name: (repeats, *shape) tensor}}``.
        costs: ``{loss label: model evaluations per gradient}`` (measured for varinf losses).
        interrupted: Whether the run was stopped early (finished repeats are kept).
    """

    gradients: dict[str, dict[str, torch.Tensor]]
    costs: dict[str, float]
    interrupted: bool = False

    @property
    def per_parameter(self) -> pd.DataFrame:
        """Variance summed over the elements of each parameter, one column per parameter."""
        return pd.DataFrame(
            {
                label: {name: g.var(0).sum().item() for name, g in grads.items()}
                for label, grads in self.gradients.items()
            }
        ).T

    @property
    def table(self) -> pd.DataFrame:
        r"""Per loss: total variance $\sum_j \mathrm{Var}(g_j)$, mean squared norm of the mean
        gradient, signal-to-noise ratio $\|\bar g\| / \sqrt{\sum_j \mathrm{Var}(g_j)}$, cost,
        and work-normalised variance (variance × cost)."""
        rows = []
        for label, grads in self.gradients.items():
            flat = torch.cat([g.reshape(g.shape[0], -1) for g in grads.values()], dim=1)
            variance = flat.var(0).sum().item()
            norm = flat.mean(0).norm().item()
            rows.append(
                {
                    "loss": label,
                    "repeats": flat.shape[0],
                    "total_variance": variance,
                    "mean_grad_norm": norm,
                    "snr": norm / math.sqrt(variance) if variance > 0 else math.inf,
                    "cost": self.costs[label],
                    "work_variance": variance * self.costs[label],
                }
            )
        return pd.DataFrame(rows).set_index("loss")


def gradient_variance(
    losses: Sequence,
    model: Callable,
    guide: Callable,
    *args,
    repeats: int = 100,
    seed: int = 0,
    progress: bool = True,
    **kwargs,
) -> GradientVariance:
    r"""Variance of each loss's gradient estimator w.r.t. the parameters, at the current
    parameter values.

    Each loss is anything with Pyro's ``loss_and_grads(model, guide, *args, **kwargs)``
    (varinf estimators, ``pyro.infer.Trace_ELBO``, ...). Parameters are those the model and
    guide touch in the param store; they are not changed (gradients are zeroed after each call).
    """
    if not losses:
        raise ValueError("losses must be a non-empty list of Pyro losses")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 2:
        raise ValueError(f"repeats must be an integer >= 2 for a variance, got {repeats!r}")
    labels = (
        _labels(losses)
        if all(isinstance(x, Estimator) for x in losses)
        else [getattr(loss, "name", type(loss).__name__) + f"#{i}" for i, loss in enumerate(losses)]
    )
    gradients, costs = {}, {}
    bar = tqdm(
        total=len(losses) * repeats,
        disable=None if progress else True,
        desc="gradients",
        leave=False,
        mininterval=0.5,
    )
    try:
        for i, (label, loss) in enumerate(zip(labels, losses, strict=True)):
            draws, spent = [], []
            try:
                for r in range(repeats):
                    with seeded(seed + i * SEED_STRIDE + r):
                        draws.append(_one_gradient(loss, model, guide, args, kwargs))
                    # varinf losses record what they spent (SUMO's count is random)
                    spent.append(getattr(loss, "last_num_evaluations", None))
                    bar.update()
            finally:
                if len(draws) >= 2:  # keep what finished, even when interrupted
                    gradients[label] = {n: torch.stack([d[n] for d in draws]) for n in draws[0]}
                    known = [c for c in spent if c is not None]
                    fallback = float(getattr(loss, "num_particles", 1))
                    costs[label] = float(sum(known) / len(known)) if known else fallback
    except KeyboardInterrupt:
        interrupted = True
    else:
        interrupted = False
    finally:
        bar.close()
    return GradientVariance(gradients, costs, interrupted=interrupted)


def _one_gradient(loss, model, guide, args, kwargs) -> dict[str, torch.Tensor]:
    with poutine.trace(param_only=True) as capture:
        loss.loss_and_grads(model, guide, *args, **kwargs)
    grads = {}
    for name, site in capture.trace.nodes.items():
        param = site["value"].unconstrained()
        if param.grad is not None and name not in grads:
            grads[name] = param.grad.detach().clone()
            param.grad = None
    if not grads:
        raise ValueError("the loss produced no gradient for any parameter of the model or guide")
    return grads
