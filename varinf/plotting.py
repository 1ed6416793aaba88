"""The figure behind `varinf.compare.Comparison.plot`."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI; savefig works everywhere

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_comparison(comparison, path: str | None = None):
    """Left: estimates per estimator (violin, mean ± 2 sem, truth dashed). Right: RMSE (or
    std without a truth) against mean cost (log axes where the values span a decade)."""
    labels = [label for label, estimates in comparison.estimates.items() if estimates]
    if not labels:
        raise ValueError("nothing to plot: no estimator finished a repeat")
    values = [np.array([e.value for e in comparison.estimates[label]]) for label in labels]
    table = comparison.table
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    positions = np.arange(len(labels))
    spread = [v for v in values if len(v) > 1 and np.ptp(v) > 0]
    if spread:
        left.violinplot(
            [v for v in values if len(v) > 1 and np.ptp(v) > 0],
            [p for p, v in zip(positions, values, strict=True) if len(v) > 1 and np.ptp(v) > 0],
            showextrema=False,
        )
    for position, label in zip(positions, labels, strict=True):
        row = table.loc[label]
        sem = 0.0 if np.isnan(row["sem"]) else row["sem"]
        left.errorbar(position, row["mean"], yerr=2 * sem, fmt="o", color="black", capsize=4)
    if comparison.truth is not None:
        left.axhline(comparison.truth, linestyle="--", color="tab:red", label="truth")
        left.legend(loc="best")
    left.set_xticks(positions, labels, rotation=20)
    left.set_ylabel("estimate (log evidence)")
    left.set_title("estimates over repeats")
    error = "rmse" if "rmse" in table else "std"
    for label in labels:
        row = table.loc[label]
        right.scatter(row["cost"], row[error], s=40)
        right.annotate(label, (row["cost"], row[error]), textcoords="offset points", xytext=(5, 5))
    # Log axes only where the values span a decade: otherwise the tick labels crowd.
    if table["cost"].max() > 10 * table["cost"].min():
        right.set_xscale("log")
    if (table[error] > 0).all() and table[error].max() > 10 * table[error].min():
        right.set_yscale("log")
    right.set_xlabel("model evaluations per estimate")
    right.set_ylabel(error.upper() if error == "rmse" else "standard deviation")
    right.set_title("cost against error")
    figure.tight_layout()
    if path is not None:
        figure.savefig(path, dpi=120)
        plt.close(figure)
    return figure
