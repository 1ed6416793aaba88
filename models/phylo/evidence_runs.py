r"""The work behind ``varinf phylo evidence``: parse its options, share runs between methods.

For one tree, `evaluate_tree` makes at most two sampling runs and hands them to every method
that can use them: a power-posterior run (`varinf.estimators.runs.PowerPosteriorRun`) for the
`SteppingStone` family, a posterior run (`PosteriorRun`) for `PosteriorDrawEstimator`s and the
generalized stepping stone's reference. Methods that sample on their own (SMC, Laplace, ...)
run with their defaults. A sampler interrupted by Ctrl-C saves its state (``--checkpoint``),
and the next call resumes it.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import pyro.distributions as dist
import torch

from .alignment import Alignment
from .model import phylo_model
from .substitution import GTR, HKY, JC69, K80
from .trees import Tree

__all__ = ["branch_prior", "estimator_classes", "evaluate_tree", "substitution"]


def estimator_classes(names: list[str]) -> list[type]:
    """The `varinf` estimator classes called ``names`` (by ``Estimator.name``), in order."""
    import varinf

    known = {}
    for export in varinf.__all__:
        obj = getattr(varinf, export)
        if (
            isinstance(obj, type)
            and issubclass(obj, varinf.Estimator)
            and obj is not varinf.Estimator
        ):
            known.setdefault(obj.name, obj)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"--methods: unknown estimator(s) {unknown}; choose from {sorted(known)}")
    guided = [n for n in names if known[n].requires_guide]
    if guided:
        raise ValueError(f"--methods: {guided} need a guide, which this command has no way to give")
    return [known[n] for n in dict.fromkeys(names)]


def branch_prior(text: str):
    """``exp:RATE``, ``gamma:SHAPE,RATE`` or ``lognormal:LOC,SCALE`` as a distribution."""
    makers = {"exp": (dist.Exponential, 1), "gamma": (dist.Gamma, 2),
              "lognormal": (dist.LogNormal, 2)}  # fmt: skip
    kind, _, values = text.partition(":")
    if kind not in makers:
        raise ValueError(f"--branch-prior: {text!r} is not exp:RATE, gamma:A,B or lognormal:M,S")
    maker, count = makers[kind]
    try:
        numbers = [float(v) for v in values.split(",")]
    except ValueError:
        numbers = []
    if len(numbers) != count or not all(math.isfinite(v) for v in numbers):
        raise ValueError(f"--branch-prior {text!r}: {kind} needs {count} number(s) after ':'")
    params = [torch.tensor(v, dtype=torch.float64) for v in numbers]
    try:
        return maker(*params, validate_args=True)
    except ValueError as err:
        raise ValueError(f"--branch-prior {text!r}: {err}") from err


def substitution(args: argparse.Namespace, aln: Alignment):
    """The substitution model the options describe (fixed parameters)."""
    freqs = args.freqs if args.freqs is not None else aln.empirical_frequencies()
    freqs = torch.as_tensor(freqs, dtype=torch.float64)
    if (freqs <= 0).any():
        raise ValueError("--freqs must all be positive")
    freqs = freqs / freqs.sum()
    return {
        "JC69": lambda: JC69(),
        "K80": lambda: K80(args.kappa),
        "HKY": lambda: HKY(args.kappa, freqs),
        "GTR": lambda: GTR(args.rates or [1.0] * 6, freqs),
    }[args.model]()


def evaluate_tree(aln: Alignment, tree: Tree, model_sub, prior, classes, args, index: int):
    """Yield one result row per estimator class for ``tree``."""
    from varinf.estimators.generalized import GeneralizedSteppingStone
    from varinf.estimators.posterior_draws import PosteriorDrawEstimator
    from varinf.estimators.runs import PosteriorRun, PowerPosteriorRun
    from varinf.estimators.temperatures import beta_quantile_temperatures
    from varinf.estimators.thermodynamic import SteppingStone
    from varinf.potential import Potential

    model = _model(aln, tree, model_sub, prior)
    torch.manual_seed(args.seed + 1000 * index)
    thermo = [c for c in classes if issubclass(c, SteppingStone)]
    plain = [c for c in thermo if not issubclass(c, GeneralizedSteppingStone)]
    needs_posterior = [c for c in classes if issubclass(c, PosteriorDrawEstimator)]
    needs_posterior += [c for c in thermo if c not in plain]
    temperatures = beta_quantile_temperatures(args.num_steps, args.alpha)
    shared = {"num_warmup": args.warmup, "num_draws": args.draws, "progress": args.progress}
    power = posterior = None
    spent = {}
    if plain:
        started = time.perf_counter()
        sampler = PowerPosteriorRun.sampler(
            Potential(model), temperatures=temperatures, num_replicates=args.replicates,
            seed=args.seed + index, **shared,
        )  # fmt: skip
        power = PowerPosteriorRun.from_mcmc(_run(sampler, args.checkpoint, f"power_{index}"))
        spent["power"] = time.perf_counter() - started
    if needs_posterior:
        started = time.perf_counter()
        sampler = PosteriorRun.sampler(
            Potential(model), num_chains=args.chains, seed=args.seed + 7 * index, **shared
        )
        posterior = PosteriorRun.from_mcmc(_run(sampler, args.checkpoint, f"posterior_{index}"))
        spent["posterior"] = time.perf_counter() - started
    control = getattr(args, "control_variates", None)
    control = {} if control is None else {"control_variates": {"none": None}.get(control, control)}
    for cls in classes:
        started = time.perf_counter()
        if cls in plain:
            estimator, extra = cls(temperatures, run=power, **control), spent["power"]
        elif issubclass(cls, GeneralizedSteppingStone):
            estimator = cls(temperatures, posterior_run=posterior, num_replicates=args.replicates,
                            **shared, **control)  # fmt: skip
            extra = spent["posterior"]
        elif issubclass(cls, PosteriorDrawEstimator):
            estimator, extra = cls(run=posterior), spent["posterior"]
        else:
            estimator, extra = cls(), 0.0
        result = estimator.estimate(model)
        yield {
            "method": cls.name,
            "estimate": result.value,
            "stderr": result.stderr,
            "num_evaluations": result.num_evaluations,
            "seconds": time.perf_counter() - started + extra,
            "warnings": "; ".join(result.diagnostics.get("warnings", [])),
        }


def _model(aln: Alignment, tree: Tree, model_sub, prior):
    try:
        return phylo_model(aln, tree, model_sub, prior, per_site=True)
    except TypeError:  # a phylo_model without per-site terms: CPO and PPD will say so
        return phylo_model(aln, tree, model_sub, prior)


def _run(sampler, folder: Path | None, name: str):
    """Run ``sampler``, resuming from ``folder/name.pt``; save its state there if interrupted."""
    path = None if folder is None else folder / f"{name}.pt"
    if path is not None and path.exists():
        sampler.load_state_dict(torch.load(path, weights_only=False))
    run = sampler.run()
    if run.diagnostics.get("interrupted"):
        if path is not None:
            folder.mkdir(parents=True, exist_ok=True)
            torch.save(sampler.state_dict(), path)
        raise KeyboardInterrupt
    if path is not None and path.exists():
        path.unlink()
    return run
