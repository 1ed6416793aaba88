"""Effective samples per second of batched HMC against Pyro's NUTS on DS1's top topology.

The model: DS1 (27 taxa, 934 site patterns), JC69, i.i.d. Exp(10) branch lengths, on the most
probable topology of the golden runs (first line of ``JC_no_gamma_credible_set_ds1``): 51
unconstrained dimensions (log branch lengths). Both samplers run on the same
`varinf.potential.Potential`:

- ``varinf``: `varinf.mcmc.MCMC`, ``--chains`` chains (default 64) in one batched potential
  call per leapfrog step;
- ``pyro-nuts``: the same `MCMC` with ``kernel="nuts"``, Pyro's NUTS, one chain at a time
  (``--nuts-chains``, each a single-point potential call per gradient).

Printed per sampler: wall time (warm-up included, and the sampling phase alone), potential
evaluations, bulk ESS (ArviZ; minimum and median over the 51 dimensions), ESS per second of
total wall time and of the sampling phase, the largest R-hat, mean leapfrog steps per
iteration; for ``varinf`` also the cost of one batched step (one ``value_and_grad`` call for
all chains) against one single-chain call. Then the ratio of ESS/s (minimum-ESS based). Both use
the same numbers of warm-up iterations and draws per chain (150 and 500 by default). One
intra-op thread. Run: ``python benchmarks/mcmc.py [--chains 64] [--warmup 150] [--draws 500]
[--nuts-chains 2] [--nuts-warmup 150] [--nuts-draws 500]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # measure this checkout

from models.phylo import datasets, phylo_model, read_alignment, read_trees  # noqa: E402
from varinf.mcmc import MCMC  # noqa: E402
from varinf.potential import Potential  # noqa: E402


def ds1_potential() -> Potential:
    alignment = read_alignment(datasets.path("DS1"))
    tree = read_trees(datasets.path("DS1-credible"), alignment.taxa)[0]  # the top topology
    return Potential(phylo_model(alignment, tree))


def call_cost(potential: Potential, num_chains: int, repeats: int = 10) -> float:
    """Seconds per ``value_and_grad`` call on ``num_chains`` prior draws (best of 3 rounds)."""
    z = potential.initial_points(num_chains)
    potential.value_and_grad(z)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            potential.value_and_grad(z)
        best = min(best, (time.perf_counter() - start) / repeats)
    return best


def summarise(name: str, run, wall: float, sampling: float) -> dict:
    ess = run.ess()[0]
    row = {
        "sampler": name,
        "chains": run.num_chains,
        "draws": run.num_draws,
        "wall_s": wall,
        "sampling_s": sampling,
        "evaluations": run.num_evaluations,
        "ess_min": float(ess.min()),
        "ess_median": float(ess.median()),
        "ess_per_s": float(ess.min()) / wall,
        "ess_per_s_sampling": float(ess.min()) / sampling,
        "rhat_max": float(run.rhat().max()),
        "divergences": int(run.divergences.sum()),
    }
    if "n_steps" in run.diagnostics:
        row["steps_per_iteration"] = float(run.diagnostics["n_steps"].float().mean())
    return row


def run_varinf(potential, args) -> dict:
    mcmc = MCMC(potential, num_chains=args.chains, num_warmup=args.warmup, num_draws=args.draws,
                seed=args.seed, progress=args.progress)  # fmt: skip
    start = time.perf_counter()
    run = mcmc.run()
    wall = time.perf_counter() - start
    # the sampling phase: its share of the potential evaluations (warm-up steps cost the same)
    steps = run.diagnostics["n_steps"].sum()
    sampling = wall * float(steps) / max(run.num_evaluations, 1)
    return summarise("varinf", run, wall, sampling)


def run_pyro(potential, args) -> dict:
    mcmc = MCMC(potential, num_chains=args.nuts_chains, num_warmup=args.nuts_warmup,
                num_draws=args.nuts_draws, kernel="nuts", seed=args.seed,
                progress=args.progress)  # fmt: skip
    start = time.perf_counter()
    run = mcmc.run()
    wall = time.perf_counter() - start
    fraction = args.nuts_draws / (args.nuts_draws + args.nuts_warmup)  # NUTS reports no split
    return summarise("pyro-nuts", run, wall, wall * fraction)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=150)
    parser.add_argument("--draws", type=int, default=500)
    parser.add_argument("--nuts-chains", type=int, default=2)
    parser.add_argument("--nuts-warmup", type=int, default=150)
    parser.add_argument("--nuts-draws", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    potential = ds1_potential()
    print(f"DS1 top topology, JC69, Exp(10) branch lengths: {potential.dim} dimensions")
    batched, single = call_cost(potential, args.chains), call_cost(potential, 1)
    print(
        f"one batched step ({args.chains} chains): {1e3 * batched:.1f} ms "
        f"({1e3 * batched / args.chains:.2f} ms per chain); one single-chain call: "
        f"{1e3 * single:.1f} ms; batching speed-up per chain {single * args.chains / batched:.1f}x"
    )
    rows = [run_varinf(potential, args), run_pyro(potential, args)]
    keys = list(rows[0])
    print(" | ".join(keys))
    for row in rows:
        print(" | ".join(f"{row.get(k, float('nan')):.4g}" if not isinstance(row.get(k), str)
                         else row[k] for k in keys))  # fmt: skip
    ours, theirs = rows
    print(
        f"ESS/s ratio varinf / pyro-nuts: {ours['ess_per_s'] / theirs['ess_per_s']:.1f}x "
        f"(total wall), {ours['ess_per_s_sampling'] / theirs['ess_per_s_sampling']:.1f}x "
        f"(sampling phase); target >= 10x; R-hat max {ours['rhat_max']:.4f} (< 1.01 expected)"
    )


if __name__ == "__main__":
    main()
