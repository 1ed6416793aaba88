"""VBPI step time on DS1, ours against the reference code, run alternately on one support.

Both train VBPI with K = 10, JC69 and split + PSP embeddings on the support of the 100 DS1
topologies shipped with the package (``models.phylo.datasets``, "DS1-topologies"), one thread,
from the start of training. Ours runs in a fresh subprocess each round, like the reference,
and both report process CPU time per step; rounds alternate so that both see the same load.
The reference is ``zcrabbit/vbpi-torch`` (its ``unrooted/`` folder, which needs ``ete3``):

    python benchmarks/vbpi_speed.py --peer ~/vbpi-torch/unrooted --peer-python ~/venv/bin/python

Prints each round's times, then the medians and the median of the paired ratios.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

OURS = """
import sys, time, torch
sys.path.insert(0, {root!r})
torch.set_num_threads(1)
from models.phylo import datasets, phylo_model, read_alignment, read_trees
from varinf.distributions import SBNSupport
from varinf.guides.vbpi import VBPIGuide
from varinf.guides.vbpi_training import VBPITrainer
aln = read_alignment(datasets.path("DS1"))
trees = read_trees(datasets.path("DS1-topologies"), taxa=aln.taxa)
support = SBNSupport.from_trees(torch.stack([t.children for t in trees]), taxa=aln.taxa)
trainer = VBPITrainer(phylo_model(aln), VBPIGuide(support, taxa=aln.taxa), progress=False, seed=0)
trainer.run(20)
start = time.process_time()
trainer.run(20 + {steps})
print("ms", (time.process_time() - start) / {steps} * 1000)
"""

PEER = """
import sys, time, numpy as np, torch
sys.path.insert(0, {peer!r})
torch.set_num_threads(1)
from ete3 import Tree
from utils import get_support_from_mcmc
from dataManipulation import loadData
from vbpi import VBPI
sys.path.insert(0, {root!r})
from models.phylo import datasets
lines = [l.strip() for l in open(datasets.path("DS1-topologies")) if l.strip()]
trees = {{f"t{{i}}": Tree(l) for i, l in enumerate(lines)}}
for tree in trees.values():
    tree.unroot()
seqs, taxa = loadData(str(datasets.path("DS1")), "fasta")
root, sub = get_support_from_mcmc(taxa, trees, list(trees))
model = VBPI(taxa, root, sub, seqs, pden=np.ones(4) / 4.0, subModel=("JC", 1.0), psp=True)
model.learn(0.001, maxiter=5, test_freq=10**9, lb_test_freq=10**9)
start = time.process_time()
model.learn(0.001, maxiter={steps}, test_freq=10**9, lb_test_freq=10**9)
print("ms", (time.process_time() - start) / {steps} * 1000)
"""


def milliseconds(python: str, code: str) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True, env=env)
    return float(re.findall(r"^ms ([\d.]+)$", out.stdout, re.M)[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer", type=Path, required=True, help="vbpi-torch's unrooted/")
    parser.add_argument("--peer-python", default=sys.executable)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=200, help="our steps a round")
    parser.add_argument("--peer-steps", type=int, default=40)
    args = parser.parse_args()
    ours, theirs = [], []
    for r in range(args.rounds):
        ours.append(milliseconds(sys.executable, OURS.format(root=str(ROOT), steps=args.steps)))
        code = PEER.format(peer=str(args.peer), root=str(ROOT), steps=args.peer_steps)
        theirs.append(milliseconds(args.peer_python, code))
        print(f"round {r}: ours {ours[-1]:.1f} ms, reference {theirs[-1]:.1f} ms", flush=True)
    ratios = [t / o for o, t in zip(ours, theirs, strict=True)]
    print(f"median: ours {statistics.median(ours):.1f} ms, reference "
          f"{statistics.median(theirs):.1f} ms; median paired ratio "
          f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
