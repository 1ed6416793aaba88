r"""
# Phylogenetics: the speed of the likelihood against torchtree

`benchmarks/phylo_likelihood.py` times the JC69 log-likelihood of DS1 (27 taxa, 934 site
patterns, float64, one thread), with and without its gradient with respect to the branch
lengths, on one tree with 1, 10 and 100 branch-length vectors (particles) and on batches of 10
topologies: the same ten at every call, ten drawn from the 40 credible-set trees, and ten random
ones. The peer is torchtree (`pip install torchtree`), rescaled and unscaled; `varinf-rs` is our
always-rescaled pass. This page runs the benchmark with few rounds (timings from a shared
machine are noisy; the phylogenetics page has a longer run) and draws its table.

    python examples/phylo_speed.py        # about a minute
"""

# %%
# ## Run the benchmark and read its table

import re
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

import varinf

ROOT = Path(varinf.__file__).resolve().parents[1]
run = subprocess.run(
    [sys.executable, str(ROOT / "benchmarks" / "phylo_likelihood.py"), "--rounds", "3"],
    capture_output=True,
    text=True,
    check=True,
)
print(run.stdout)
ROW = re.compile(
    r"^(?P<case>\S.*?)\s+(?P<impl>varinf\S*|torchtree|tt-noscale)"
    r"\s+[\d.]+ \(\s*(?P<loglik>[\d.]+)\)\s+[\d.]+ \(\s*(?P<grad>[\d.]+)\)$"
)
rows = [m.groupdict() for line in run.stdout.splitlines() if (m := ROW.match(line))]
per_tree = pd.DataFrame(rows).astype({"loglik": float, "grad": float})

# %%
# ## Milliseconds per tree (log scale; lower is faster)
#
# Left the log-likelihood alone, right with its gradient. Batching pays: per tree, 100
# particles cost a fraction of one, and batches of topologies run as one pass where torchtree
# loops over them.

cases = list(dict.fromkeys(per_tree["case"]))
impls = list(dict.fromkeys(per_tree["impl"]))
figure, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
width = 0.8 / len(impls)
panels = (("loglik", "log-likelihood"), ("grad", "with gradient"))
for axis, (column, title) in zip(axes, panels, strict=True):
    table = per_tree.pivot(index="case", columns="impl", values=column).loc[cases, impls]
    for i, impl in enumerate(impls):
        axis.bar(np.arange(len(cases)) + i * width, table[impl], width, label=impl)
    axis.set_xticks(np.arange(len(cases)) + width * (len(impls) - 1) / 2, cases, rotation=20)
    axis.set_yscale("log")
    axis.set_title(title)
axes[0].set_ylabel("ms per tree")
axes[0].legend()
figure.tight_layout()
