"""VBPI on DS1 (27 taxa): time per iteration against the reference code, KL and bounds.

Setting (Zhang & Matsen 2019): JC69, Exp(10) branch lengths, uniform topology prior; the SBN
support is the union over the 10 UFBoot replicates in ``shared/data/phylo/ufboot_regenerated``
of each replicate's 95% credible set of topologies (as the reference's ``summary_raw``, which
cuts each set just before the tree crossing 95%; we keep that tree); K = 10 VIMCO particles,
Adam 1e-3 decayed by 0.75 every 20000 steps, likelihood annealed from 0.001 to 1 over 100000
steps, split + PSP branch-length embeddings.

Prints, every ``--eval-every`` steps: iteration, wall seconds, the mean K=10 lower bound since
the last record, KL(golden || q) against the pooled golden runs; at the end the ELBO and the
1000-particle importance-sampling marginal likelihood (published: -7108.42 +- 0.10, ELBO about
-7110.3 ... -7111.3, KL about 0.074 after 200k steps). The run checkpoints to ``--checkpoint``
and resumes from it, so a 200k-step run can be spread over several invocations; ``--plot DIR``
writes the bound and KL against iterations and the top topologies against the golden runs.

``--peer DIR`` also times the reference implementation (``zcrabbit/vbpi-torch``, its
``unrooted/`` folder; needs ``ete3`` and ``bitarray``) for ``--peer-iterations`` steps on the
same data, in the same process and thread settings, and prints our time per step as a ratio
to it. Run: ``python benchmarks/vbpi_ds1.py --iterations 2000 [--peer /tmp/vbpi-ref/unrooted]``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.phylo import datasets, phylo_model, read_alignment, read_trees  # noqa: E402
from models.phylo.vbpi_cli import plot_run, read_golden  # noqa: E402
from varinf.distributions.sbn import SBNSupport  # noqa: E402
from varinf.guides import VBPIGuide, VBPITrainer, tree_kl  # noqa: E402

PUBLISHED = {"marginal_likelihood": -7108.42, "elbo": (-7111.3, -7110.3), "kl": 0.074}
REFERENCE_MS = 100.0  # the reference code's time per step on this machine (issue)


def credible_set(tables: torch.Tensor, level: float) -> torch.Tensor:
    """The most frequent topologies up to and including the one crossing ``level``."""
    uniq, counts = torch.unique(tables, dim=0, return_counts=True)
    order = counts.argsort(descending=True)
    cum = counts[order].cumsum(0).double() / counts.sum()
    keep = int((cum < level).sum()) + 1
    return uniq[order[:keep]]


def ufboot_support(data: Path, taxa, level: float, cache: Path) -> SBNSupport:
    if cache.exists():
        tables = torch.load(cache)
    else:
        sets = []
        for rep in range(1, 11):
            trees = read_trees(data / "ufboot_regenerated/DS1" / f"DS1_ufboot_rep_{rep}.gz", taxa)
            sets.append(credible_set(torch.stack([t.children for t in trees]), level))
            print(
                f"ufboot rep {rep}: {len(sets[-1])} topologies in the {level:.0%} set", flush=True
            )
        tables = torch.unique(torch.cat(sets), dim=0)
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(tables, cache)
    return SBNSupport.from_trees(tables, taxa=taxa)


def time_peer(peer: Path, data: Path, iterations: int, work: Path) -> float:
    """Milliseconds per step of the reference VBPI (its own support from 2 UFBoot reps)."""
    sys.path.insert(0, str(peer))
    import numpy as np
    from dataManipulation import loadData  # the reference code
    from utils import get_support_from_mcmc, summary_raw
    from vbpi import VBPI

    folder = work / "ufboot" / "DS1"
    folder.mkdir(parents=True, exist_ok=True)
    for rep in (1, 2):
        target = folder / f"DS1_ufboot_rep_{rep}"
        if not target.exists():
            src = data / "ufboot_regenerated/DS1" / f"DS1_ufboot_rep_{rep}.gz"
            target.write_bytes(gzip.decompress(src.read_bytes()))
    trees, names = summary_raw("DS1", str(work / "ufboot") + "/", n_rep=2)
    seqs, taxa = loadData(str(data / "alignments_fasta/DS1.fasta"), "fasta")
    root, sub = get_support_from_mcmc(taxa, trees, names)
    model = VBPI(taxa, root, sub, seqs, pden=np.ones(4) / 4.0, subModel=("JC", 1.0), psp=True)
    model.learn(0.001, maxiter=5, test_freq=10**9, lb_test_freq=10**9)  # warm up
    start = time.perf_counter()
    model.learn(0.001, maxiter=iterations, test_freq=10**9, lb_test_freq=10**9)
    return (time.perf_counter() - start) / iterations * 1000


def time_ours(trainer: VBPITrainer, iterations: int) -> float:
    start, done = trainer.elapsed, trainer.iteration
    trainer.run(done + iterations)
    return (trainer.elapsed - start) / iterations * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/work/shared/data/phylo"))
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--checkpoint", type=Path, default=Path("benchmarks/out/vbpi_ds1.pt"))
    parser.add_argument("--is-particles", type=int, default=1000)
    parser.add_argument("--peer", type=Path, default=None)
    parser.add_argument("--peer-iterations", type=int, default=50)
    parser.add_argument("--timing-iterations", type=int, default=50)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--plot", type=Path, default=None, help="folder for vbpi.png")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = args.data if args.data.exists() else datasets.root()
    aln = read_alignment(data / "alignments_fasta/DS1.fasta")
    cache = args.checkpoint.with_name("ds1_ufboot_support.pt")
    support = ufboot_support(data, aln.taxa, 0.95, cache)
    golden = read_golden(
        sorted((data / "golden_runs_trprobs/DS1").glob("rep_*/DS1.trprobs")), aln.taxa
    )
    print(f"support: {support.num_root_splits} splits, {support.num_entries} PCSPs; "
          f"golden: {len(golden[1])} topologies", flush=True)  # fmt: skip
    guide = VBPIGuide(support, taxa=aln.taxa)
    trainer = VBPITrainer(
        phylo_model(aln), guide, golden=golden, eval_every=args.eval_every,
        checkpoint=args.checkpoint, checkpoint_every=args.eval_every, progress=False, seed=0,
    )  # fmt: skip
    if args.checkpoint.exists():
        trainer.load(args.checkpoint)
        print(f"resumed at step {trainer.iteration}", flush=True)
    results = {}
    if args.peer is not None:
        ours = time_ours(trainer, args.timing_iterations)
        peer = time_peer(args.peer, data, args.peer_iterations, args.checkpoint.parent)
        ours_after = time_ours(trainer, args.timing_iterations)
        mean_ours = (ours + ours_after) / 2
        results.update(ours_ms=mean_ours, peer_ms=peer, speedup=peer / mean_ours)
        print(f"time per step: ours {mean_ours:.1f} ms (before/after the peer: {ours:.1f}/"
              f"{ours_after:.1f}), reference {peer:.1f} ms: {peer / mean_ours:.2f}x")  # fmt: skip
    print("step  train_s  lower_bound(K=10)  KL(golden||q)", flush=True)
    start = len(trainer.history.iteration)
    while trainer.iteration < args.iterations:
        trainer.run(min(args.iterations, trainer.iteration + args.eval_every))
        h = trainer.history
        for i in range(start, len(h.iteration)):
            print(f"{h.iteration[i]:6d} {h.wall_time[i]:8.1f} {h.lower_bound[i]:12.2f} "
                  f"{h.kl[i]:10.4f}", flush=True)  # fmt: skip
        start = len(h.iteration)
    ms = trainer.elapsed / max(trainer.iteration, 1) * 1000
    evidence = trainer.evidence(args.is_particles)
    results.update(
        iterations=trainer.iteration, train_seconds=trainer.elapsed, ms_per_step=ms,
        ratio_to_reference_100ms=REFERENCE_MS / ms, kl=tree_kl(guide, *golden), **evidence,
    )  # fmt: skip
    print(json.dumps(results, indent=1))
    print(f"published: marginal likelihood {PUBLISHED['marginal_likelihood']} +- 0.10, ELBO "
          f"{PUBLISHED['elbo']}, KL {PUBLISHED['kl']} after 200000 steps")  # fmt: skip
    if math.isfinite(ms):
        print(f"{ms:.1f} ms per step, {REFERENCE_MS / ms:.1f}x the reference's ~100 ms")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if args.plot:
        plot_run(trainer, golden, args.plot)


if __name__ == "__main__":
    main()
