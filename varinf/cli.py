"""The ``varinf`` command: ``varinf demo``, ``varinf compare``, ``varinf phylo``."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
import warnings
from pathlib import Path

import torch

from varinf.compare import format_table

ESTIMATORS = ("elbo", "iwae", "sumo", "naive-mc")


class UsageError(Exception):
    """A bad argument: printed as one line, exit status 2."""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    torch.set_num_threads(args.threads)
    try:
        return args.func(args) or 0
    except UsageError as error:
        print(f"varinf: error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # a user's model or data: one line, the whole with --traceback
        if args.traceback:
            raise
        print(f"varinf: error: {type(error).__name__}: {error}", file=sys.stderr)
        print("varinf: run again with --traceback for the full traceback", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="varinf",
        description="Estimate and compare log marginal likelihoods of Pyro models.",
    )
    parser.add_argument(
        "--threads",
        type=_positive_int,
        default=1,
        help="torch intra-op threads (default 1: fastest and steadiest on small shared machines)",
    )
    parser.add_argument(
        "--traceback",
        action="store_true",
        help="on an error, print the full Python traceback instead of one line",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    demo = commands.add_parser(
        "demo",
        help="compare ELBO, IWAE and SUMO on two bundled models with known evidence",
        description="The SUMO note's toy energy (log Z = log 2π) and a conjugate Gaussian model: "
        "ELBO, IWAE (K=5) and SUMO compared over repeats; prints the tables and writes plots.",
    )
    demo.add_argument("--repeats", type=_positive_int, default=2000, help="repeats (default 2000)")
    demo.add_argument("--out", type=Path, default=Path("."), help="folder for the PNG plots")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=run_demo)

    compare = commands.add_parser(
        "compare",
        help="compare estimators on your own model",
        description="Compare estimators on a Pyro model defined in a Python file.",
        epilog="example: varinf compare models/energies.py:SumoMixture.model "
        "--guide models/energies.py:SumoMixture.guide --estimators elbo iwae sumo --truth 1.8379",
    )
    compare.add_argument(
        "model",
        help="PATH.py:NAME of the model callable (NAME may be dotted; "
        "a class in the path is instantiated with no arguments)",
    )
    compare.add_argument("--guide", help="PATH.py:NAME of the guide (default: none)")
    compare.add_argument(
        "--estimators",
        nargs="+",
        default=["elbo", "iwae", "sumo"],
        choices=ESTIMATORS,
        metavar="NAME",
        help=f"any of {', '.join(ESTIMATORS)} (default: elbo iwae sumo)",
    )
    compare.add_argument(
        "--particles",
        type=_positive_int,
        default=10,
        help="particles per estimate for elbo, iwae and naive-mc (default 10)",
    )
    compare.add_argument("--repeats", type=_positive_int, default=100)
    compare.add_argument("--truth", type=float, help="known log evidence, for bias and RMSE")
    compare.add_argument("--plot", type=Path, help="write the comparison plot (PNG) here")
    compare.add_argument("--seed", type=int, default=0)
    compare.set_defaults(func=run_compare)

    try:
        from models.phylo.cli import add_parser as add_phylo_parser
    except ImportError:  # the phylogenetics package is optional for the core command
        pass
    else:
        add_phylo_parser(commands)
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def run_demo(args: argparse.Namespace) -> int:
    from models.conjugate import ConjugateGaussian
    from models.energies import SumoMixture
    from varinf import ELBO, IWAE, SUMO, compare

    args.out.mkdir(parents=True, exist_ok=True)
    toy, conjugate = SumoMixture(), ConjugateGaussian.example()
    problems = [
        ("SUMO note toy: mixture energy, q = N(0, 5I)", toy, toy.guide, "sumo_toy"),
        (
            "conjugate Gaussian (n=10, d=2), q = a perturbed posterior",
            conjugate,
            _perturbed_conjugate_guide(conjugate),
            "conjugate",
        ),
    ]
    for title, problem, guide, stem in problems:
        start = time.perf_counter()
        estimators = [ELBO(num_particles=5), IWAE(num_particles=5), SUMO()]
        result = compare(
            estimators,
            problem.model,
            guide,
            repeats=args.repeats,
            truth=problem.log_evidence,
            seed=args.seed,
        )
        path = args.out / f"comparison_{stem}.png"
        result.plot(str(path))
        print(
            f"\n{title}\ntruth log Z = {problem.log_evidence:.4f}, {args.repeats} repeats "
            f"({time.perf_counter() - start:.1f} s)"
        )
        print(format_table(result.table))
        print(f"plot: {path}")
    return 0


def _perturbed_conjugate_guide(problem):
    """A guide twice as wide as, and offset by one sd from, the conjugate model's posterior."""
    import pyro
    import pyro.distributions as dist

    loc, scale = problem.posterior

    def guide() -> None:
        pyro.sample("mean", dist.Normal(loc + scale, 2 * scale).to_event(1))

    return guide


def run_compare(args: argparse.Namespace) -> int:
    from varinf import ELBO, IWAE, SUMO, NaiveMonteCarlo, compare

    model = load_callable(args.model, "model")
    guide = load_callable(args.guide, "--guide") if args.guide else None
    factories = {
        "elbo": lambda: ELBO(num_particles=args.particles),
        "iwae": lambda: IWAE(num_particles=args.particles),
        "sumo": lambda: SUMO(),
        "naive-mc": lambda: NaiveMonteCarlo(num_particles=args.particles),
    }
    if args.plot is not None:
        check_writable(args.plot, "--plot")
    estimators = [factories[name]() for name in args.estimators]
    needs_guide = [e.name for e in estimators if e.requires_guide]  # naive-mc ignores the guide
    if guide is None and needs_guide:
        raise UsageError(
            f"{', '.join(needs_guide)} need a guide: pass --guide PATH.py:NAME "
            "or use --estimators naive-mc"
        )
    try:
        with warnings.catch_warnings():  # failures are printed below, once
            warnings.filterwarnings("ignore", message="compare: ", category=RuntimeWarning)
            result = compare(
                estimators, model, guide, repeats=args.repeats, truth=args.truth, seed=args.seed
            )
    except (ValueError, FloatingPointError, TypeError) as error:
        raise UsageError(str(error)) from error
    print(format_table(result.table))
    for label, reason in result.failures.items():
        print(
            f"varinf: {label} failed on {result.failed[label]} of {args.repeats} repeats: {reason}",
            file=sys.stderr,
        )
    if args.plot:
        result.plot(str(args.plot))
        print(f"plot: {args.plot}")
    return 0


def check_writable(path: Path, what: str) -> None:
    """Fail before a long run, not after it, when an output file cannot be written."""
    if path.is_dir():
        raise UsageError(f"{what}: {path} is a directory; give a file name such as {path}/out.png")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"{what}: the folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UsageError(f"{what}: {path} is not writable")


def load_callable(spec: str, what: str):
    """Load ``PATH.py:NAME`` (``NAME`` may be dotted; classes on the way are instantiated with
    no arguments). A file is imported once and a class instantiated once, so a model and its
    guide from the same file share data and state."""
    path_text, sep, name = spec.rpartition(":")
    if not sep or not path_text or not name:
        raise UsageError(f"{what} must look like PATH.py:NAME, got {spec!r}")
    obj = _load_module(Path(path_text), what)
    for part in name.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"{what}: {path_text} has no attribute {part!r}")
        obj = getattr(obj, part)
        if isinstance(obj, type):
            obj = _instance(obj, what)
    if not callable(obj):
        raise UsageError(f"{what}: {spec} is not callable")
    return obj


_MODULES: dict[Path, object] = {}
_INSTANCES: dict[type, object] = {}


def _load_module(path: Path, what: str):
    if not path.is_file():
        raise UsageError(f"{what}: no such file {path}")
    key = path.resolve()
    if key not in _MODULES:
        module_spec = importlib.util.spec_from_file_location(f"_varinf_user_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_spec.name] = module  # dataclasses and pickling look modules up here
        try:
            module_spec.loader.exec_module(module)
        except Exception as error:  # the user's file: report, don't crash with our traceback
            message = f"{what}: importing {path} failed: {type(error).__name__}: {error}"
            raise UsageError(message) from error
        _MODULES[key] = module
    return _MODULES[key]


def _instance(cls: type, what: str):
    if cls not in _INSTANCES:
        try:
            _INSTANCES[cls] = cls()
        except Exception as error:
            raise UsageError(
                f"{what}: {cls.__name__}() failed ({type(error).__name__}: {error}); name a "
                "module-level model or a class that takes no arguments"
            ) from error
    return _INSTANCES[cls]


if __name__ == "__main__":
    sys.exit(main())
