r"""
# Permutations: Birkhoff-polytope posteriors on a matching problem

Two variational families on the Birkhoff polytope against the exact posterior over
permutations, on the synthetic matching problem of Linderman et al. (2018, §5).

The problem: $N = 6$ cluster centres
$\mu_m \sim \mathcal N(0, I_2)$, a hidden permutation $\pi$ and observations
$y_n = \mu_{\pi(n)} + \sigma\varepsilon_n$. The exact posterior over the $6! = 720$
permutations is known by enumeration. Two variational families with exact densities on the
Birkhoff polytope, `StickBreakingBirkhoff` and `RoundingBirkhoff`, are fitted by the relaxed
ELBO, and the law of the Hungarian rounding of their samples is compared with the exact
posterior by the Bhattacharyya distance $\sqrt{1 - \sum_\pi \sqrt{p(\pi)\,q(\pi)}}$ (0 is a
perfect fit, 1 disjoint supports), next to the values of the paper's table. The fitting code is
`benchmarks/birkhoff_matching.py`, run here on 3 problems per noise level instead of 10.

    python examples/permutation_matching.py        # about two minutes
"""

# %%
# ## Fit both families at four noise levels

import importlib.util
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

import varinf

torch.set_num_threads(1)
ROOT = Path(varinf.__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location(
    "birkhoff_matching", ROOT / "benchmarks" / "birkhoff_matching.py"
)
benchmark = importlib.util.module_from_spec(spec)
spec.loader.exec_module(benchmark)

results = benchmark.main(["--problems", "3"])

# %%
# ## The figure
#
# The distance grows with the noise $\sigma$ for both families, as the posterior spreads over
# more permutations. Points are means over the problems with one standard error; crosses are
# the paper's values (10 problems each, its own hyperparameter search).

sigmas = np.array(benchmark.SIGMAS)
figure, axis = plt.subplots(figsize=(6.5, 4))
for i, (family, values) in enumerate(results.items()):
    mean, se = np.array(values).T
    axis.errorbar(sigmas, mean, yerr=se, marker="o", capsize=3, color=f"C{i}", label=family)
    axis.plot(sigmas, benchmark.PAPER[family], "x--", color=f"C{i}", label=f"{family} (paper)")
axis.set(xlabel="observation noise $\\sigma$", ylabel="Bhattacharyya distance to the posterior")
axis.set_ylim(0, 1)
axis.legend(fontsize=8)
figure.tight_layout()
