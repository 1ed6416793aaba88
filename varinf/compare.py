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
import pyro
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
        failed: ``{estimator label: number of repeats without a result}`` (the table's
            ``failed`` column; the repeats of an estimator not retried after failing on its
            first repeat all count).
    """

    estimates: dict[str, list[Estimate]]
    truth: float | None = None
    interrupted: bool = False
    failures: dict[str, str] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)

    @property
    def table(self) -> pd.DataFrame:
        """One row per estimator: repeats, failed repeats, kind, mean, std, sem, bias, rmse,
        cost, seconds, work-normalised variance. An estimator whose every repeat failed keeps
        its row, with ``nan`` statistics and its ``failed`` count."""
        rows = [self._row(label, estimates) for label, estimates in self.estimates.items()]
        return pd.DataFrame(rows).set_index("estimator")

    def _row(self, label: str, estimates: list[Estimate]) -> dict[str, Any]:
        values = np.array([e.value for e in estimates], dtype=float)
        n = len(values)
        std = float(values.std(ddof=1)) if n > 1 else math.nan
        cost = float(np.mean([e.num_evaluations for e in estimates])) if n else math.nan
        row = {
            "estimator": label,
            "kind": estimates[0].kind if n else "",
            "repeats": n,
            "failed": self.failed.get(label, 0),
            "mean": float(values.mean()) if n else math.nan,
            "std": std,
            "sem": std / math.sqrt(n) if n else math.nan,
            "cost": cost,
            "seconds": float(np.mean([e.elapsed for e in estimates])) if n else math.nan,
            "work_variance": std**2 * cost,
        }
        if self.truth is not None:
            row["bias"] = row["mean"] - self.truth
            row["rmse"] = float(np.sqrt(np.mean((values - self.truth) ** 2))) if n else math.nan
        return row

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

    def __str__(self) -> str:
        """The whole table, every column shown (pandas would elide columns to fit a width)."""
        status = " (interrupted)" if self.interrupted else ""
        text = f"Comparison{status}\n{format_table(self.table)}"
        for label, reason in self.failures.items():
            text += f"\n{label} failed on {self.failed.get(label, 1)} repeat(s): {reason}"
        return text

    __repr__ = __str__


def format_table(table: pd.DataFrame) -> str:
    """A table as text with every row and column, 4 significant digits."""
    return table.to_string(float_format=lambda x: f"{x:.4g}", max_cols=None, max_rows=None)


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
    _check_executor(executor)
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
        reasons = set(comparison.failures.values())
        if len(reasons) == 1:
            raise ValueError(f"every estimator failed with the same error: {reasons.pop()}")
        listed = "; ".join(f"{label}: {why}" for label, why in comparison.failures.items())
        raise ValueError(f"every estimator failed: {listed}")
    for label, reason in comparison.failures.items():
        warnings.warn(
            f"compare: {label} failed on {comparison.failed[label]} of {repeats} repeats "
            f"(first error: {reason}); the table's 'failed' column counts them",
            RuntimeWarning,
            stacklevel=2,
        )
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
    """Add one repeat, or record why it failed and go on: a failure keeps the rest.

    Any exception from the model, guide or estimator is a failed repeat (a user's model may
    raise anything); only ``KeyboardInterrupt`` and ``SystemExit`` stop the run.
    """
    if label in comparison.failures and not comparison.estimates[label]:
        # failed on its first repeat: a set-up problem; don't repeat it, count it failed
        comparison.failed[label] += 1
        return
    try:
        comparison.estimates[label].append(fn())
    except Exception as error:
        comparison.failures.setdefault(label, f"{type(error).__name__}: {error}")
        comparison.failed[label] = comparison.failed.get(label, 0) + 1


def _check_executor(executor) -> None:
    if executor is not None and not isinstance(executor, Executor):
        raise TypeError(
            f"executor must be a concurrent.futures.Executor (a process pool, or Dask's "
            f"client.get_executor()), got {type(executor).__name__}"
        )
    if isinstance(executor, ThreadPoolExecutor):
        raise ValueError(
            "executor: Pyro's effect handlers are global to the process, so repeats cannot run "
            "in threads; use a ProcessPoolExecutor (or Dask/Ray processes)"
        )


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
    """Unique labels that identify each estimator.

    An estimator's ``name`` when no other shares it; otherwise its ``label``, which names the
    constructor options that set it apart (``elbo(K=10)`` and ``elbo(K=10, sampler=rqmc)``,
    ``sumo(K=1)`` and ``sumo(K=1, min_terms=10)``); an index is the last resort (two identical
    estimators).
    """
    names = [e.name for e in estimators]
    labels = []
    for i, estimator in enumerate(estimators):
        label = estimator.name
        if names.count(label) > 1:
            label = getattr(estimator, "label", None) or f"{label}#{i}"
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

    def __str__(self) -> str:
        """The summary table, not the gradient tensors."""
        repeats = {g.shape[0] for grads in self.gradients.values() for g in grads.values()}
        status = " (interrupted)" if self.interrupted else ""
        head = f"GradientVariance{status}: {len(self.gradients)} losses, repeats {sorted(repeats)}"
        return f"{head}\n{format_table(self.table)}" if self.gradients else head

    __repr__ = __str__


def gradient_variance(
    losses: Sequence,
    model: Callable,
    guide: Callable,
    *args: Any,
    repeats: int = 100,
    seed: int = 0,
    executor: Executor | None = None,
    progress: bool = True,
    **kwargs: Any,
) -> GradientVariance:
    r"""Variance of each loss's gradient estimator w.r.t. the parameters, at the current
    parameter values.

    Each loss is anything with Pyro's ``loss_and_grads(model, guide, *args, **kwargs)``
    (varinf estimators, ``pyro.infer.Trace_ELBO``, ...). Parameters are those the model and
    guide touch in the param store; they are not changed (gradients are zeroed after each call).

    Args:
        losses: Pyro losses.
        model: A Pyro model, as for `pyro.infer.SVI`.
        guide: Its guide.
        *args: Passed to model and guide.
        repeats: Gradient draws per loss (at least 2).
        seed: Draw ``r`` of loss ``i`` uses seed ``seed + i * 1000003 + r``, as in `compare`,
            so a pooled run gives the same draws as a serial one.
        executor: A `concurrent.futures.Executor` running processes (a process pool, Dask,
            Ray); the param store's state is shipped with every job, and losses, model and
            guide must be picklable. ``None`` runs in this process.
        progress: Show a progress bar.
    """
    if not losses:
        raise ValueError("losses must be a non-empty list of Pyro losses")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 2:
        raise ValueError(f"repeats must be an integer >= 2 for a variance, got {repeats!r}")
    _check_executor(executor)
    labels = (
        _labels(losses)
        if all(isinstance(x, Estimator) for x in losses)
        else [getattr(loss, "name", type(loss).__name__) + f"#{i}" for i, loss in enumerate(losses)]
    )
    params = None if executor is None else pyro.get_param_store().get_state()
    jobs = [
        (label, loss, seed + i * SEED_STRIDE + r)
        for i, (label, loss) in enumerate(zip(labels, losses, strict=True))
        for r in range(repeats)
    ]
    draws: dict[str, list] = {label: [] for label in labels}
    bar = tqdm(
        total=len(jobs), disable=None if progress else True, desc="gradients", leave=False,
        mininterval=0.5,
    )  # fmt: skip
    interrupted = False
    try:
        if executor is None:
            for label, loss, job_seed in jobs:
                draws[label].append(_gradient_job(loss, job_seed, model, guide, args, kwargs))
                bar.update()
        else:
            futures = [
                (label, executor.submit(_gradient_job, loss, s, model, guide, args, kwargs, params))
                for label, loss, s in jobs
            ]
            for label, future in futures:
                draws[label].append(future.result())
                bar.update()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
    gradients, costs = {}, {}
    for label, loss in zip(labels, losses, strict=True):
        if len(draws[label]) >= 2:  # keep what finished, even when interrupted
            grads = [g for g, _ in draws[label]]
            gradients[label] = {n: torch.stack([g[n] for g in grads]) for n in grads[0]}
            known = [c for _, c in draws[label] if c is not None]
            fallback = float(getattr(loss, "num_particles", 1))
            costs[label] = float(sum(known) / len(known)) if known else fallback
    return GradientVariance(gradients, costs, interrupted=interrupted)


def _gradient_job(loss, seed, model, guide, args, kwargs, params=None):
    """One gradient draw and what it cost; ``params`` restores the caller's param store in a
    worker process."""
    if params is not None:
        pyro.get_param_store().set_state(params)
    with seeded(seed):
        grads = _one_gradient(loss, model, guide, args, kwargs)
    # varinf losses record what they spent (SUMO's count is random)
    return grads, getattr(loss, "last_num_evaluations", None)


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
