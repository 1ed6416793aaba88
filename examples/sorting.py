r"""Learning to sort N uniform numbers with Gumbel-Sinkhorn networks (Mena et al. 2018, §5.1).

A network learns to sort numbers through relaxed permutations, never shown a sorted order.

A small network maps each number $x_i$ (independently, weights shared) to a row of scores
$\log\alpha_{i\cdot} \in \mathbb R^N$: the score of putting element $i$ at position $j$.
Training draws a relaxed permutation $P \sim \mathrm{GumbelSinkhorn}(\log\alpha, \tau)$ and
minimises $\|P^\top x - \mathrm{sort}(x)\|^2$; no permutation is ever supervised.  At test time
the matching is the Hungarian assignment of $\log\alpha$ (the $\tau \to 0$ limit) and we report
the proportion of wrongly placed elements and of sequences with any error (random guessing:
$1 - 1/N$ and $1 - 1/N!$).

    python examples/sorting.py                       # N = 5, quick
    python examples/sorting.py --n 5 10 20 50 100 --steps 3000
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import Tensor, nn

from varinf.distributions import GumbelSinkhorn, hungarian


def make_network(n: int, hidden: int = 64) -> nn.Module:
    """Per-element scorer $\\mathbb R \\to \\mathbb R^N$, applied to each number separately."""
    return nn.Sequential(nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, n))


def scores(net: nn.Module, x: Tensor) -> Tensor:
    """``(B, N)`` numbers to ``(B, N, N)`` scores (rows: elements, columns: positions)."""
    return net(x.unsqueeze(-1))


def train(
    n: int,
    steps: int,
    batch: int = 64,
    temperature: float = 1.0,
    n_iters: int = 20,
    lr: float = 3e-3,
    seed: int = 0,
    device: str = "cpu",
) -> nn.Module:
    """Fit the scorer by Adam on the sorting loss with Gumbel-Sinkhorn relaxed permutations."""
    generator = torch.Generator(device).manual_seed(seed)
    torch.manual_seed(seed)
    net = make_network(n).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    for _ in range(steps):
        x = torch.rand(batch, n, generator=generator, device=device)
        # Mena et al. train with a fixed number of sweeps (no early stopping)
        perm = GumbelSinkhorn(scores(net, x), temperature, n_iters=n_iters, tol=None).rsample()
        sorted_hat = (perm.transpose(-1, -2) @ x.unsqueeze(-1)).squeeze(-1)
        loss = (sorted_hat - x.sort(-1).values).pow(2).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net


@torch.no_grad()
def evaluate(net: nn.Module, n: int, num: int = 1000, seed: int = 1, device: str = "cpu"):
    """Proportions of wrongly placed elements and of sequences with at least one error."""
    generator = torch.Generator(device).manual_seed(seed)
    x = torch.rand(num, n, generator=generator, device=device)
    perm = hungarian(scores(net, x))
    predicted = (perm.transpose(-1, -2) @ x.unsqueeze(-1)).squeeze(-1)
    wrong = predicted != x.sort(-1).values
    return wrong.float().mean().item(), wrong.any(-1).float().mean().item()


def main(argv: list[str] | None = None) -> list[tuple[int, float, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[5], help="sequence lengths")
    parser.add_argument("--steps", type=int, default=1500, help="Adam steps per N")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--n-iters", type=int, default=20, help="Sinkhorn sweeps in training")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    print(f"{'N':>4} {'wrong elements':>15} {'wrong sequences':>16} {'random':>8} {'time':>7}")
    for n in args.n:
        start = time.perf_counter()
        net = train(n, args.steps, args.batch, args.temperature, args.n_iters, seed=args.seed,
                    device=args.device)  # fmt: skip
        elements, sequences = evaluate(net, n, device=args.device)
        rows.append((n, elements, sequences))
        elapsed = time.perf_counter() - start
        print(f"{n:>4} {elements:>15.4f} {sequences:>16.4f} {1 - 1 / n:>8.3f} {elapsed:>6.1f}s")
    return rows


if __name__ == "__main__":
    main()
