r"""``varinf phylo evidence`` over a credible set: shipped inputs, batched fast methods, the
posterior over the topologies and its scores against golden runs.

- ``--alignment DS1`` (or DS2–DS4) reads the shipped alignment (`models.phylo.datasets`);
  ``--trees credible-set`` then reads that data set's 95 % credible set of "19 dubious ways"
  (Fourment et al. 2020; 42 trees for DS1). Any other value is a file path (or a shipped name
  such as ``DS1-credible``).
- The fast methods (`models.phylo.credible.FAST_METHODS`: Laplace, the Laplus fits, IS, GLIS,
  VBIS) run on every tree at once, batched through the pruning likelihood
  (`models.phylo.credible.credible_set_rows`); the other methods run tree by tree.
- With more than one tree each method's log evidences, times a uniform topology prior, are
  normalised into a posterior over the trees, $p(\tau_b \mid D) \propto p(D \mid \tau_b)$.
- Golden runs (``--golden PATH...``, MrBayes ``.trprobs`` files pooled; by default the shipped
  golden runs of a shipped data set) give each method's KL divergence to the golden
  frequencies renormalised over the set and the RMSD of split probabilities
  (`models.phylo.credible.compare_with_golden`), and the plot shows estimated against golden
  posterior probabilities.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from . import datasets
from .credible import (
    FAST_METHODS,
    compare_with_golden,
    credible_set_rows,
    golden_frequencies,
    posterior_over_topologies,
    topology_key,
)
from .trees import Tree

__all__ = [
    "CREDIBLE_SET",
    "add_posterior",
    "fast_rows",
    "golden_scores",
    "load_golden",
    "plot_posterior",
    "print_scores",
    "resolve_alignment",
    "resolve_golden",
    "resolve_trees",
]

#: The ``--trees`` value that means the shipped credible set of the alignment's data set.
CREDIBLE_SET = "credible-set"
_DATA_SETS = ("DS1", "DS2", "DS3", "DS4")


def resolve_alignment(text: str) -> tuple[Path, str | None]:
    """The alignment file and, for a shipped data set (``DS1`` ... ``DS4``), its name."""
    if text in _DATA_SETS:
        return datasets.path(text), text
    path = Path(text)
    for name in _DATA_SETS:
        if path.exists() and path.resolve() == datasets.path(name).resolve():
            return path, name
    return path, None


def resolve_trees(text: str, data_set: str | None) -> Path:
    """The trees file: ``credible-set`` (needs a shipped data set), a shipped name, or a path."""
    if text == CREDIBLE_SET:
        if data_set is None:
            raise ValueError(
                f"--trees {CREDIBLE_SET}: the shipped credible sets belong to --alignment "
                f"{' / '.join(_DATA_SETS)}; for another alignment pass the trees file"
            )
        return datasets.path(f"{data_set}-credible")
    if not Path(text).exists() and text in datasets.names():
        return datasets.path(text)
    return Path(text)


def resolve_golden(paths: Sequence[Path] | None, data_set: str | None) -> list[Path]:
    """``--golden`` files, else the shipped golden runs of a shipped data set, else none."""
    if paths:
        return list(paths)
    return datasets.runs(data_set, "golden") if data_set is not None else []


def fast_rows(alignment, trees: Sequence[Tree], names: Sequence[str], substitution, prior,
              num_particles: int) -> list[dict]:  # fmt: skip
    """Rows of the fast methods ``names`` for every tree, all trees in one batched run."""
    unknown = [name for name in names if name not in FAST_METHODS]
    if unknown:
        raise ValueError(f"--methods: {unknown} are not batched over trees")
    return credible_set_rows(alignment, trees, list(names), branch_prior=prior,
                             substitution=substitution, num_particles=num_particles)  # fmt: skip


def add_posterior(rows: list[dict], num_trees: int) -> list[str]:
    """Put each method's posterior over the trees in its rows (``posterior``); return the
    methods left without one (a tree whose estimate is not finite)."""
    skipped = []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: int(r["tree"]))
        values = torch.tensor([float(r["estimate"]) for r in mine], dtype=torch.float64)
        if len(mine) != num_trees or not torch.isfinite(values).all():
            skipped.append(method)
            for r in mine:
                r["posterior"] = math.nan
            continue
        for r, p in zip(mine, posterior_over_topologies(values).tolist(), strict=True):
            r["posterior"] = p
    return skipped


def load_golden(paths: Sequence[Path], trees: Sequence[Tree], taxa) -> tuple | None:
    """Pooled golden frequencies ``(golden trees, probabilities)``, or ``None`` without files.

    Raises:
        ValueError: when none of ``trees`` appears in the golden runs.
    """
    if not paths:
        return None
    golden_trees, golden_probs = golden_frequencies(paths, taxa)
    known = {topology_key(t) for t in golden_trees}
    if not any(topology_key(t) in known for t in trees):
        raise ValueError(f"--golden: none of the {len(trees)} trees appears in the golden runs")
    return golden_trees, golden_probs


def golden_scores(rows: list[dict], trees: Sequence[Tree], golden: tuple) -> dict:
    """Per-method KL and split RMSD against the pooled golden frequencies ``golden``; each row
    gains ``golden`` (the golden frequency renormalised over the set)."""
    golden_trees, golden_probs = golden
    by_key = dict(zip((topology_key(t) for t in golden_trees), golden_probs, strict=True))
    inside = [by_key.get(topology_key(t), 0.0) for t in trees]
    for r in rows:
        r["golden"] = inside[int(r["tree"]) - 1] / sum(inside)
    scores = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: int(r["tree"]))
        probs = torch.tensor([float(r["posterior"]) for r in mine], dtype=torch.float64)
        if torch.isfinite(probs).all():
            scores[method] = compare_with_golden(trees, probs, golden_trees, golden_probs)
    return scores


def print_scores(rows: list[dict], scores: dict, skipped: Sequence[str]) -> None:
    """The posterior table (per tree, each method's posterior) and the per-method scores."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cell = {(int(r["tree"]), r["method"]): r for r in rows}
    trees = sorted({int(r["tree"]) for r in rows})
    has_golden = any("golden" in r for r in rows)
    header = f"{'tree':>4}  " + "".join(f"{m[:12]:>13}" for m in methods)
    print("\nposterior over the trees (uniform topology prior)")
    print(header + (f"{'golden':>13}" if has_golden else ""))
    for t in trees:
        line = f"{t:>4}  " + "".join(f"{float(cell[t, m]['posterior']):>13.4f}" for m in methods)
        golden = cell[t, methods[0]].get("golden") if has_golden else None
        print(line + (f"{golden:>13.4f}" if golden is not None else ""))
    for method in skipped:
        print(f"{method}: no posterior (a tree's estimate is not finite)")
    if not scores:
        return
    any_score = next(iter(scores.values()))
    print(f"\nagainst the golden runs (golden mass inside the set {any_score['golden_mass']:.3f}; "
          f"split RMSD floor of the set {any_score['split_rmsd_floor']:.4f})")  # fmt: skip
    print(f"{'method':<20} {'KL(golden||est)':>16} {'split RMSD':>11}")
    for method, score in scores.items():
        print(f"{method:<20} {score['kl']:>16.4f} {score['split_rmsd']:>11.4f}")


def plot_posterior(path: Path, rows: list[dict]) -> None:
    """Estimated against golden posterior probabilities, one colour per method (log axes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    shown = [r for r in rows if math.isfinite(float(r["posterior"]))]
    values = [float(r[k]) for r in shown for k in ("golden", "posterior") if float(r[k]) > 0]
    low = max(min(values, default=1e-6) / 2, 1e-6)
    for method in dict.fromkeys(r["method"] for r in shown):
        mine = [r for r in shown if r["method"] == method]
        ax.scatter([max(float(r["golden"]), low) for r in mine],
                   [max(float(r["posterior"]), low) for r in mine], s=14, alpha=0.8,
                   label=method)  # fmt: skip
    ax.plot([low, 1], [low, 1], color="gray", lw=0.8)
    ax.set(xscale="log", yscale="log", xlim=(low, 1), ylim=(low, 1),
           xlabel="golden-run posterior (renormalised over the set)",
           ylabel="posterior from the estimated evidences")  # fmt: skip
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def say(message: str) -> None:
    """Progress on standard error."""
    print(message, file=sys.stderr, flush=True)
