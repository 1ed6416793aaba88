r"""
# Discrete gradients: variance against the number of evaluations

Gradient estimators for discrete latents trade evaluations of the objective for variance. On
the toy of Kool, van Hoof and Welling (2020), three Bernoullis sharing a logit $\eta$ and
$f(b) = \sum_i (b_i - p_{0,i})^2$ with $p_0 = (0.6, 0.51, 0.48)$, the exact gradient of
$\mathbb E_{q_\eta}[f(b)]$ is known by enumeration, and each estimator spends $k$ evaluations
of $f$ per gradient. The variances come from `varinf.gradient_variance` over the Pyro losses of
`benchmarks/discrete_gradients.py` (which prints the full table for nine estimators).

    python examples/discrete_gradient_variance.py        # about a minute
"""

# %%
# ## Variance of the gradient by estimator and k, at eta = 0

import importlib.util
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

import varinf
from varinf.gradients.toy import exact_gradient

torch.set_num_threads(1)
ROOT = Path(varinf.__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location(
    "discrete_gradients", ROOT / "benchmarks" / "discrete_gradients.py"
)
benchmark = importlib.util.module_from_spec(spec)
spec.loader.exec_module(benchmark)

ETA, REPEATS = 0.0, 500
names = [
    "score",
    "score + leave-one-out",
    "sum-and-sample",
    "unordered set + built-in baseline",
    "Gumbel-softmax tau=0.5 (biased)",
]
variance, mean = benchmark.toy_tables(ETA, REPEATS, names)
print(f"exact gradient at eta = {ETA:g}: {exact_gradient(ETA):.4f}; {REPEATS} repeats per cell")
variance.map(lambda v: f"{v:.2e}")

# %%
# ## The figure
#
# Unbiased estimators (solid) fall at least as $1/k$; sum-and-sample and the unordered set
# estimator fall faster, since they sum exactly over the most probable states. With 8 states in
# all, both are exact at $k = 8$ (variance zero, marked at the bottom). The relaxed
# Gumbel-softmax (dashed) has a small variance but is biased: the right panel shows each mean
# with two standard errors, against the exact gradient.

EXACT = 1e-12  # below this a variance is rounding error: the estimator is exact
figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
ks = variance.columns.to_numpy(dtype=float)
floor = 0.5 * variance[variance > EXACT].min().min()
for i, (name, row) in enumerate(variance.iterrows()):
    style = "--" if "biased" in name else "-"
    k, v = row.index.to_numpy(dtype=float), row.to_numpy()
    left.plot(k[v > EXACT], v[v > EXACT], style, marker="o", color=f"C{i}", label=name)
    left.plot(k[v <= EXACT], np.full((v <= EXACT).sum(), floor), "v", color=f"C{i}", ms=9)
    se = 2 * np.sqrt(v / REPEATS)
    right.errorbar(k + 0.06 * (i - 2), mean.loc[name].to_numpy(), yerr=se, fmt="o",
                   linestyle=style, color=f"C{i}", capsize=2, label=name)  # fmt: skip
left.plot(ks, variance.loc["score"].iloc[0] / ks, ":", color="grey", label="$1/k$ from k = 1")
left.set_yscale("log")
left.set(xlabel="evaluations k", ylabel="variance of the gradient", title=f"eta = {ETA:g}")
left.text(8, floor, "exact  ", ha="right", va="center", fontsize=8)
right.axhline(exact_gradient(ETA), color="black", linestyle=":", label="exact gradient")
right.set(xlabel="evaluations k", ylabel="mean of the gradient (± 2 se)", title="bias")
for axis in (left, right):
    axis.set_xticks(range(1, 9))
left.legend(fontsize=8)
figure.tight_layout()
