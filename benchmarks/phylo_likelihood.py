"""Speed of the phylogenetic likelihood on DS1 (27 taxa, 934 site patterns), JC69, float64.

Prints milliseconds per call and per tree for the log-likelihood alone and with its gradient
with respect to the branch lengths, side by side with torchtree (``pip install -c
constraints.txt torchtree``) when it is installed, and our speed-up over torchtree's faster
variant. Cases: 1, 10 and 100 particles (branch-length vectors) on one topology; 10 different
topologies at once, the same ten credible-set trees at every call; 10 drawn at every call
from the 40 credible-set trees (a variational guide's batches: a fixed support, batches that
change); 10 random topologies at every call (nothing recurs, the worst case for site
repeats). torchtree has no batching over topologies (its rows there are a Python loop).
``torchtree`` is its rescaled pruning, ``tt-noscale`` the unscaled one that torchtree's
likelihood runs first (underflows beyond ~100 taxa); ``varinf`` is our default (an unscaled
pass, over clade site repeats where they pay, kept unless a pattern likelihood falls below
1e-290, else the rescaled pass), ``varinf-rs`` always rescales (``optimistic=False``).

``--before PATH`` adds ``before``, the default path of another checkout of this repository
(e.g. ``git worktree add /tmp/phylo_before 678938c``), imported side by side under another
name, and the speed-up of this checkout over it. ``beagle`` is BEAGLE (``libhmsbeagle-dev``,
CPU, double, SSE, one thread) on the one-tree case, through a small C driver
(``benchmarks/beagle_driver.c``) built at benchmark time: transition matrices from the
eigen-decomposition, partials, root log-likelihood, without rescaling (``beagle``) and
rescaling every node (``beagle-rs``); skipped when the library or a C compiler is absent.

Timings interleave the implementations round by round (the machine is shared): the table
shows each one's best round, the speed-ups the median over rounds of the ratio within a
round. Run with ``python benchmarks/phylo_likelihood.py [--device cuda]
[--repeats 20] [--rounds 7] [--before PATH]``; one intra-op thread. The checkout's own
``models`` package is imported (not an installed copy elsewhere).
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # measure this checkout, not whatever `models` is installed

from models.phylo import (  # noqa: E402
    JC69,
    LikelihoodCache,
    pruning_log_likelihood,
    random_topologies,
    read_alignment,
    read_trees,
    stack_trees,
)

DATA = ROOT / "models" / "phylo" / "data" / "bito_ds1"  # shipped: models.phylo.datasets


def timed_rounds(fns, repeats: int, rounds: int, device: torch.device) -> list[list[float]]:
    """Mean milliseconds per call of each function in each round; a round runs every
    function ``repeats`` times in turn, so within a round they meet the same load."""
    for fn in fns:
        fn()
    times = []
    for _ in range(rounds):
        times.append([])
        for fn in fns:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(repeats):
                fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[-1].append((time.perf_counter() - start) / repeats * 1e3)
    return times


def speedup(times: list[list[float]], names: list[str], theirs: list[str]) -> float | None:
    """Median over rounds of the fastest of ``theirs``' time over ours (paired by round)."""
    cols = [names.index(t) for t in theirs if t in names]
    if not cols:
        return None
    return statistics.median(min(row[c] for c in cols) / row[0] for row in times)


_CACHES: dict = {}  # one LikelihoodCache per alignment, as phylo_model keeps


def ours(tips, weights, children, lengths, optimistic=True):
    trans = JC69().transition_matrices({}, lengths)[..., None, :, :]
    freqs = torch.full((4,), 0.25, dtype=lengths.dtype, device=lengths.device)
    cache = _CACHES.get(id(tips))
    if cache is None:
        cache = _CACHES[id(tips)] = LikelihoodCache(tips)
    return pruning_log_likelihood(tips, weights, children, trans, freqs, optimistic=optimistic,
                                  cache=cache)  # fmt: skip


def ours_rescaled(tips, weights, children, lengths):
    return ours(tips, weights, children, lengths, optimistic=False)


def before_fn(path: str | None):
    """The default path of another checkout's `models.phylo`, imported as `models_before`."""
    if path is None:
        return None
    init = Path(path) / "models" / "__init__.py"
    spec = importlib.util.spec_from_file_location(
        "models_before", init, submodule_search_locations=[str(init.parent)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["models_before"] = module
    spec.loader.exec_module(module)
    old = importlib.import_module("models_before.phylo")
    caches: dict = {}  # one cache per alignment, as `ours` keeps (where it has caches)

    def run(tips, weights, children, lengths):
        trans = old.JC69().transition_matrices({}, lengths)[..., None, :, :]
        freqs = torch.full((4,), 0.25, dtype=lengths.dtype, device=lengths.device)
        kw = {}
        if hasattr(old, "LikelihoodCache"):
            kw["cache"] = caches.setdefault(id(tips), old.LikelihoodCache(tips))
        return old.pruning_log_likelihood(tips, weights, children, trans, freqs, **kw)

    return run


def beagle_runner(tips, weights, children, lengths, repeats: int):
    """A function timing BEAGLE on one tree (ms per call), or None without BEAGLE."""
    header = Path("/usr/include/libhmsbeagle-1/libhmsbeagle/beagle.h")
    compiler = shutil.which("cc") or shutil.which("gcc")
    if not header.exists() or compiler is None:
        return None
    work = Path(tempfile.mkdtemp(prefix="beagle-"))
    exe = work / "beagle_driver"
    build = [compiler, "-O2", "-o", str(exe), str(ROOT / "benchmarks" / "beagle_driver.c"),
             f"-I{header.parents[1]}", "-lhmsbeagle"]  # fmt: skip
    if subprocess.run(build, capture_output=True).returncode != 0:
        return None
    n, p = tips.shape[0], tips.shape[-1]
    q = np.full((4, 4), 1 / 3) - np.eye(4) * (1 + 1 / 3)  # JC69, one substitution per unit
    lam, u = np.linalg.eigh(q)
    edges = np.concatenate([lengths.cpu().numpy(), [0.0]])  # the zero edge above 2n-3

    def run(rescale: bool) -> tuple[float, float]:
        data = work / f"input{int(rescale)}.bin"
        with open(data, "wb") as out:
            np.array([n, p, repeats, int(rescale)], dtype=np.int32).tofile(out)
            tips.cpu().numpy().transpose(0, 2, 1).astype(np.float64).tofile(out)
            weights.cpu().numpy().astype(np.float64).tofile(out)
            for block in (np.full(4, 0.25), u, u.T, lam, edges):
                np.ascontiguousarray(block, dtype=np.float64).tofile(out)
            children.cpu().numpy().astype(np.int32).tofile(out)
        res = subprocess.run([str(exe), str(data)], capture_output=True, text=True, check=True)
        logl, ms = map(float, res.stdout.split())
        return logl, ms

    return run


def torchtree_fn(rescale: bool = True):
    try:
        from torchtree.evolution.tree_likelihood import (
            calculate_treelikelihood_discrete,
            calculate_treelikelihood_discrete_rescaled,
        )
    except ImportError:
        return None
    pruning = (
        calculate_treelikelihood_discrete_rescaled if rescale else calculate_treelikelihood_discrete
    )

    def run(tips, weights, children, lengths):
        n = tips.shape[0]
        eye = torch.eye(4, dtype=lengths.dtype, device=lengths.device)
        mats = JC69().transition_matrices({}, lengths)
        mats = torch.cat([mats, eye.expand(*mats.shape[:-3], 1, 4, 4)], -3)[..., None, :, :]
        freqs = torch.full((1, 4), 0.25, dtype=lengths.dtype, device=lengths.device)
        props = torch.ones(1, 1, 1, dtype=lengths.dtype, device=lengths.device)
        out = []
        for b in range(children.shape[0] if children.dim() == 3 else 1):
            rows = (children[b] if children.dim() == 3 else children).tolist()
            post = [(n + j, a, c) for j, (a, c) in enumerate(rows)]
            partials = list(tips) + [None] * (n - 1)
            m = mats[b] if children.dim() == 3 else mats
            out.append(pruning(partials, weights, post, m, freqs, props))
        return torch.stack(out)

    return run


def cycling(batches):
    """A function returning the next ``(children, lengths)`` of ``batches`` at each call."""
    state = {"i": -1}

    def next_batch():
        state["i"] = (state["i"] + 1) % len(batches)
        return batches[state["i"]]

    return next_batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--before", default=None, help="another checkout, timed side by side")
    parser.add_argument("--cases", nargs="*", default=None, help="only these cases (names)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    device = torch.device(args.device)
    aln = read_alignment(DATA / "ds1.fasta")
    trees = read_trees(DATA / "ds1.credible.with-branches.nwk", taxa=aln.taxa)
    tips = aln.partials(device=device).mT.contiguous()
    weights = aln.weights.to(device)
    one, lengths1 = trees[0].children.to(device), trees[0].lengths.to(device)
    gen = torch.Generator().manual_seed(0)
    cases = [("1 particle", [(one, lengths1[None])])]
    for k in (10, 100):
        noise = torch.rand(k, 51, generator=gen, dtype=torch.float64).to(device)
        cases.append((f"{k} particles", [(one, lengths1 * (0.5 + noise))]))
    cases.append(("10 topologies", [tuple(x.to(device) for x in stack_trees(trees[:10]))]))
    # enough batches that none comes back within one implementation's forward rounds, and
    # as many again for its gradient rounds (random topologies then never recur)
    calls = 2 * (args.repeats * (args.rounds + 1) + 1)
    drawn = [stack_trees([trees[i] for i in torch.randperm(40, generator=gen)[:10].tolist()])
             for _ in range(calls)]  # fmt: skip
    cases.append(("10 of 40", [tuple(x.to(device) for x in batch) for batch in drawn]))
    random = [random_topologies(27, 10, gen).to(device) for _ in range(calls)]
    cases.append(("10 random", [(c, lengths1.expand(10, -1)) for c in random]))
    if args.cases:
        cases = [case for case in cases if case[0] in args.cases]
    impls = [("varinf", ours), ("varinf-rs", ours_rescaled)]
    tt = torchtree_fn()
    if tt is not None:
        impls += [("torchtree", tt), ("tt-noscale", torchtree_fn(rescale=False))]
    before = before_fn(args.before)
    if before is not None:
        impls.append(("before", before))
    names = [name for name, _ in impls]
    beagle = None
    if device.type == "cpu":
        beagle = beagle_runner(tips, weights, one, lengths1, 20 * args.repeats)
    print(f"DS1, JC69, float64, {device}, 1 thread; ms per call (ms per tree)")
    print(f"{'case':<15}{'impl':<11}{'loglik':>20}{'loglik+grad':>22}")
    summary = []
    for name, batches in cases:
        children, lengths = batches[0]
        with torch.no_grad():
            values = [fn(tips, weights, children, lengths).flatten() for _, fn in impls]
        for other in values[1:]:
            assert torch.allclose(values[0], other, atol=1e-8), "implementations disagree"
        fwd, grad = [], []
        half = len(batches) // 2  # forward rounds see the first half, gradient the second
        for _, fn in impls:
            # every implementation sees the same sequences
            batch, grad_batch = cycling(batches[: max(half, 1)]), cycling(batches[half:])

            def forward(fn=fn, batch=batch):
                children, lengths = batch()
                with torch.no_grad():
                    fn(tips, weights, children, lengths)

            def gradient(fn=fn, batch=grad_batch):
                children, lengths = batch()
                x = lengths.clone().requires_grad_()
                fn(tips, weights, children, x).sum().backward()

            fwd.append(forward)
            grad.append(gradient)
        f_rounds = timed_rounds(fwd, args.repeats, args.rounds, device)
        g_rounds = timed_rounds(grad, args.repeats, args.rounds, device)
        f, g = (list(map(min, zip(*rounds, strict=True))) for rounds in (f_rounds, g_rounds))
        k = len(lengths)
        for impl, fi, gi in zip(names, f, g, strict=True):
            print(f"{name:<15}{impl:<11}{fi:>10.3f} ({fi / k:>6.3f}){gi:>12.3f} ({gi / k:>6.3f})")
        beagle_ratio = None
        if beagle is not None and name == "1 particle":
            ratios = []
            for _ in range(args.rounds):  # BEAGLE between our rounds, under the same load
                ours_ms = timed_rounds(fwd[:1], args.repeats, 1, device)[0][0]
                (logl, plain), (_, scaled) = beagle(False), beagle(True)
                ratios.append((ours_ms / plain, plain, scaled))
            assert abs(logl - values[0].item()) < 1e-6, "BEAGLE disagrees"
            beagle_ratio = statistics.median(r[0] for r in ratios)
            plain, scaled = (min(r[i] for r in ratios) for i in (1, 2))
            print(f"{name:<15}{'beagle':<11}{plain:>10.3f} ({plain:>6.3f})")
            print(f"{name:<15}{'beagle-rs':<11}{scaled:>10.3f} ({scaled:>6.3f})")
        summary.append((name, [speedup(r, names, ["tt-noscale", "torchtree"]) for r in
                               (f_rounds, g_rounds)],
                        [speedup(r, names, ["before"]) for r in (f_rounds, g_rounds)],
                        beagle_ratio))  # fmt: skip
    print("\nspeed-ups (their time / ours, median over rounds of the paired ratio)")
    print(f"{'case':<15}{'vs torchtree':>22}{'vs before':>22}{'ours/BEAGLE':>14}")
    print(f"{'':<15}{'loglik':>11}{'+grad':>11}{'loglik':>11}{'+grad':>11}{'loglik':>14}")

    def fmt(x):
        return f"{x:>10.2f}x" if x is not None else f"{'-':>11}"

    for name, tt_ratio, before_ratio, b in summary:
        cells = "".join(fmt(x) for x in (*tt_ratio, *before_ratio))
        print(f"{name:<15}{cells}{fmt(b):>14}")
    if tt is None:
        print("torchtree not installed: pip install -c constraints.txt torchtree")
    if beagle is None and device.type == "cpu":
        print("BEAGLE not found (apt install libhmsbeagle-dev, and a C compiler)")


if __name__ == "__main__":
    main()
