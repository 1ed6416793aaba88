r"""The result type every estimator returns, and the estimator base class.

Every estimator answers one question, "what is $\log p(x)$ (or the training objective)
for this model?", through `Estimator.estimate`, and every answer is an `Estimate`:
the value, its Monte Carlo standard error, the cost in model evaluations and wall time, the
per-sample log weights where the method has them, and diagnostics.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch

KINDS = ("lower-bound", "unbiased-log", "consistent", "approximation", "objective")


@dataclass(frozen=True)
class Estimate:
    r"""An estimate of a log marginal likelihood (or of a training objective).

    Attributes:
        value: The estimate (log scale for evidence), a Python float.
        stderr: Monte Carlo standard error of ``value``; ``nan`` when the method cannot give
            one, with the reason in ``diagnostics["stderr"]``.
        kind: ``"lower-bound"``, ``"unbiased-log"``, ``"consistent"``, ``"approximation"`` or
            ``"objective"``, copied from the estimator.
        estimator: The estimator's short name, e.g. ``"iwae"``.
        num_evaluations: Model log-density evaluations spent (the unit of cost).
        elapsed: Wall-clock seconds.
        log_weights: Per-sample log weights where the method has them, else ``None``.
        diagnostics: Effective sample size, PSIS $\hat k$, ... as the method allows; a
            ``"warning"`` entry (e.g. SUMO's unreliable standard error) is also shown by the repr.

    Examples:
        >>> Estimate(value=-1.8281, stderr=0.0009, kind="lower-bound", estimator="iwae",
        ...          num_evaluations=1000, elapsed=0.02)
        Estimate(iwae: -1.82810 ± 0.00090, lower-bound, 1000 evals, 0.02 s)
    """

    value: float
    stderr: float
    kind: str
    estimator: str
    num_evaluations: int
    elapsed: float
    log_weights: torch.Tensor | None = None
    diagnostics: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")

    def __repr__(self) -> str:
        digits = _digits_for(self.stderr)
        warning = self.diagnostics.get("warning") if isinstance(self.diagnostics, Mapping) else None
        return (
            f"Estimate({self.estimator}: {self.value:.{digits}f} ± {self.stderr:.{digits}f}, "
            f"{self.kind}, {self.num_evaluations} evals, {self.elapsed:.2f} s"
            + (f"; warning: {warning})" if warning else ")")
        )


def _digits_for(stderr: float) -> int:
    """Decimals that show the first two significant digits of the standard error."""
    if not math.isfinite(stderr) or stderr <= 0:
        return 4
    return int(min(10, max(2, 1 - math.floor(math.log10(stderr)))))


class Estimator:
    """Base class: ``estimate(model, guide, *args, **kwargs) -> Estimate``.

    Subclasses set ``name`` and ``kind`` and implement `_estimate`, which returns the
    value, its standard error and anything else `Estimate` carries; the base class
    handles seeding, timing and the checks every estimator shares (a guide where one is
    needed, finite results).

    Gradients are left on: estimators that need none (the particle objectives) turn them off
    themselves, and those that differentiate the model (Laplace, HMC) need them.

    Args:
        seed: If given, every call to `estimate` starts from this seed, so the same
            seed gives the same number; the global random state is left untouched.

    Attributes:
        label: A short string that identifies the estimator and its options (the
            constructor arguments that differ from their defaults; $K$ always), e.g.
            ``"elbo(K=10, sampler=rqmc)"``; `varinf.compare` uses it.
    """

    name: ClassVar[str] = "estimator"
    kind: ClassVar[str] = "consistent"
    requires_guide: ClassVar[bool] = True

    def __init__(self, *, seed: int | None = None) -> None:
        if seed is not None and not isinstance(seed, int):
            raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
        self.seed = seed

    def estimate(self, model: Callable, guide: Callable | None = None, *args, **kwargs) -> Estimate:
        """Estimate the log marginal likelihood of ``model`` given the data in ``args``/``kwargs``.

        ``model`` and ``guide`` are Pyro callables; ``*args, **kwargs`` go to both, as in
        `pyro.infer.SVI`.
        """
        if not callable(model):
            raise TypeError(f"model must be a callable Pyro model, got {type(model).__name__}")
        if guide is None and self.requires_guide:
            raise ValueError(
                f"{type(self).__name__} needs a guide (a Pyro callable proposing the latent "
                "sites); pass one, or use an estimator that samples the prior, e.g. "
                "NaiveMonteCarlo"
            )
        with seeded(self.seed):
            start = time.perf_counter()
            result = self._estimate(model, guide, args, kwargs)
            elapsed = time.perf_counter() - start
        result = replace(result, elapsed=elapsed, kind=self.kind, estimator=self.name)
        if not math.isfinite(result.value):
            raise FloatingPointError(
                f"{self.name} produced a non-finite estimate ({result.value}); the model or "
                "guide log density is NaN or infinite for some samples"
            )
        return result

    def _estimate(
        self, model: Callable, guide: Callable | None, args: tuple, kwargs: dict
    ) -> Estimate:
        raise NotImplementedError

    #: Options a subclass fixes, so that its label need not repeat them (``RQMCELBO``'s sampler).
    label_defaults: ClassVar[dict] = {}
    #: Options that do not change what is estimated, left out of the label.
    unlabelled: ClassVar[tuple[str, ...]] = ("seed", "max_plate_nesting")

    @property
    def label(self) -> str:
        parts = []
        for option, (value, default) in self._options().items():
            if option == "num_particles":
                parts.append(f"K={value}")
            elif option not in self.unlabelled and _differs(value, default):
                parts.append(f"{option}={value}")
        return f"{self.name}({', '.join(parts)})" if parts else self.name

    def __repr__(self) -> str:
        options = ", ".join(
            f"{option}={value!r}"
            for option, (value, default) in self._options().items()
            if option == "num_particles" or _differs(value, default)
        )
        return f"{type(self).__name__}({options})"

    def _options(self) -> dict[str, tuple[Any, Any]]:
        """``{constructor option: (value, default)}`` over the estimator classes of the MRO."""
        options: dict[str, tuple[Any, Any]] = {}
        for cls in type(self).__mro__:
            init = cls.__dict__.get("__init__")
            if not (isinstance(cls, type) and issubclass(cls, Estimator)) or init is None:
                continue
            for parameter in list(inspect.signature(init).parameters.values())[1:]:
                if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                    continue
                default = self.label_defaults.get(parameter.name, parameter.default)
                if parameter.name not in options and hasattr(self, parameter.name):
                    options[parameter.name] = (getattr(self, parameter.name), default)
        return options


def _differs(value: Any, default: Any) -> bool:
    if default is inspect.Parameter.empty:
        return True
    if default is None and isinstance(value, dict | list | tuple) and not value:
        return False  # ``options=None`` stored as an empty container: nothing was set
    try:
        return bool(value != default)
    except (TypeError, RuntimeError, ValueError):  # tensors, arrays: show them
        return True


def make_estimate(
    value: torch.Tensor | float, stderr: torch.Tensor | float, **fields: Any
) -> Estimate:
    """Build an `Estimate` inside ``_estimate``; ``kind``, ``estimator`` and ``elapsed``
    are filled in by `Estimator.estimate`."""
    fields.setdefault("kind", "objective")
    fields.setdefault("estimator", "")
    fields.setdefault("elapsed", 0.0)
    return Estimate(value=float(value), stderr=float(stderr), **fields)


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Run the block from ``seed`` without disturbing the global random state.

    With ``seed=None`` the block uses (and advances) the global state as usual.
    """
    if seed is None:
        yield
        return
    # Fork every GPU's generator too: one initialised inside the block must not stay seeded.
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
