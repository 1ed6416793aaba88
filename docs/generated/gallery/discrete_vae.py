"""A VAE with categorical latents on binarised digits, trained with five gradient estimators.

Data: scikit-learn's ``load_digits`` (1797 images of 8x8 pixels), binarised at half intensity.
Model: ``m`` independent categorical latents with ``n`` classes each and a uniform prior, an MLP
decoder to 64 Bernoulli pixels; guide: an MLP encoder to the latents' logits. Because the latent
space has only ``n**m`` states (512 by default), the test log-likelihood log p(x) and the ELBO
are computed *exactly* by enumeration, so the training curves carry no Monte Carlo noise.

Estimators (all from ``varinf.gradients``, ``k`` evaluations of the decoder per datum):

- ``gumbel-softmax`` and ``straight-through``: relaxed, biased; ELBO with analytic KL; the
  temperature is annealed exponentially from 1 to 0.5 over the first half of training;
- ``vimco``: the IWAE bound with VIMCO gradients for the encoder;
- ``unordered-set``: ELBO (analytic KL), k samples without replacement, built-in baseline;
- ``relax``: ELBO (analytic KL), RELAX with a REBAR term plus a network as control variate,
  whose parameters minimise the variance of the encoder gradient.

The plot (``--out``) shows the exact test log p(x) and the total variance of the encoder
gradient (over ``--variance-repeats`` draws on a fixed batch) during training.

Usage: `python examples/discrete_vae.py [--steps 600] [--num-particles 4] [--out discrete_vae.png]`
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.distributions import Independent, OneHotCategorical  # noqa: E402
from torch.nn.functional import softplus  # noqa: E402

from varinf.distributions.concrete import ExponentialAnnealing  # noqa: E402
from varinf.gradients import (  # noqa: E402
    RELAX,
    GumbelSoftmax,
    StraightThrough,
    UnorderedSet,
    VIMCOEstimator,
    mlp_control_variate,
)

ESTIMATORS = ("gumbel-softmax", "straight-through", "vimco", "unordered-set", "relax")


def load_binary_digits(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    images = torch.tensor(load_digits().data, dtype=torch.float32) / 16.0
    images = (images > 0.5).float()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    images = images[order]
    return images[:1500], images[1500:]


class VAE(nn.Module):
    def __init__(self, num_latents: int, num_classes: int, hidden: int = 128) -> None:
        super().__init__()
        self.m, self.n = num_latents, num_classes
        self.encoder = nn.Sequential(
            nn.Linear(64, hidden), nn.Tanh(), nn.Linear(hidden, num_latents * num_classes)
        )
        self.decoder = nn.Sequential(
            nn.Linear(num_latents * num_classes, hidden), nn.Tanh(), nn.Linear(hidden, 64)
        )

    def guide(self, x: torch.Tensor) -> Independent:
        logits = self.encoder(2 * x - 1).reshape(*x.shape[:-1], self.m, self.n)
        return Independent(OneHotCategorical(logits=logits), 1)

    def log_likelihood(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x | z) for (relaxed) one-hot z of shape (..., m, n)."""
        logits = self.decoder(z.flatten(-2))
        return (x * logits - softplus(logits)).sum(-1)

    def log_prior(self) -> float:
        return -self.m * math.log(self.n)

    def kl(self, q: Independent) -> torch.Tensor:
        """KL(q || uniform prior), analytic."""
        probs = q.base_dist.probs
        return (probs * (q.base_dist.logits + math.log(self.n))).sum((-2, -1))

    @torch.no_grad()
    def exact_metrics(self, x: torch.Tensor) -> tuple[float, float]:
        """Mean exact log p(x) and ELBO per image, by enumerating all n**m latent states."""
        q = self.guide(x)
        states = torch.arange(self.n**self.m)
        digits = torch.stack([(states // self.n**j) % self.n for j in range(self.m)], -1)
        z = torch.nn.functional.one_hot(digits, self.n).float()  # (S, m, n)
        logits = self.decoder(z.flatten(-2))  # (S, 64)
        log_lik = x @ logits.T - softplus(logits).sum(-1)  # (N, S)
        log_joint = log_lik + self.log_prior()
        log_q = q.log_prob(z.unsqueeze(1))  # (S, N)
        elbo = (log_q.T.exp() * (log_joint - log_q.T)).sum(-1)
        return log_joint.logsumexp(-1).mean().item(), elbo.mean().item()


class Trainer:
    """One estimator's training loop: a loss per batch, and the encoder-gradient variance."""

    def __init__(self, name: str, vae: VAE, num_particles: int, lr: float, steps: int) -> None:
        self.name, self.vae, self.k = name, vae, num_particles
        # Jang et al.'s schedule: anneal from 1 to 0.5, here over the first half of training
        self.schedule = ExponentialAnnealing(1.0, rate=2 * math.log(2) / max(steps, 1), minimum=0.5)
        self.estimator = {
            "gumbel-softmax": lambda: GumbelSoftmax(self.schedule),
            "straight-through": lambda: StraightThrough(self.schedule),
            "vimco": VIMCOEstimator,
            "unordered-set": UnorderedSet,
            "relax": lambda: RELAX(net=mlp_control_variate(vae.m, vae.n, 64)),
        }[name]()
        params = list(vae.parameters())
        if isinstance(self.estimator, RELAX):
            params += list(self.estimator.parameters())
        self.optimizer = torch.optim.Adam(params, lr=lr)

    def loss(self, x: torch.Tensor, generator) -> torch.Tensor:
        """Negative objective, averaged over the batch; its gradient is the estimator."""
        q = self.vae.guide(x)
        f: Callable = lambda z: self.vae.log_likelihood(x, z)  # noqa: E731
        if self.name == "vimco":  # the IWAE bound: log weights include prior and guide
            f = lambda z: self.vae.log_likelihood(x, z) + self.vae.log_prior() - q.log_prob(z)  # noqa: E731
            return -self.estimator.surrogate(q, f, self.k, generator).surrogate.mean()
        out = self.estimator.surrogate(q, f, self.k, generator)
        return -(out.surrogate - self.vae.kl(q)).mean()

    def step(self, x: torch.Tensor, generator) -> None:
        self.optimizer.zero_grad()
        loss = self.loss(x, generator)
        if isinstance(self.estimator, RELAX):
            decoder = list(self.vae.decoder.parameters())
            grads = torch.autograd.grad(loss, decoder, retain_graph=True)
            for param, grad in zip(decoder, grads, strict=True):
                param.grad = grad
            self.estimator.backward(loss, list(self.vae.encoder.parameters()))
        else:
            loss.backward()
        self.optimizer.step()
        self.schedule.step()

    def encoder_gradient_variance(self, x: torch.Tensor, repeats: int, seed: int) -> float:
        r"""Total variance $\sum_j \mathrm{Var}(g_j)$ of the encoder gradient on ``x``."""
        generator = torch.Generator().manual_seed(seed)
        params = list(self.vae.encoder.parameters())
        draws = []
        for _ in range(repeats):
            grads = torch.autograd.grad(self.loss(x, generator), params)
            draws.append(torch.cat([g.flatten() for g in grads]))
        return torch.stack(draws).var(0).sum().item()


def train(name: str, args, train_x, test_x) -> dict:
    torch.manual_seed(args.seed)
    vae = VAE(args.latents, args.classes)
    trainer = Trainer(name, vae, args.num_particles, args.lr, args.steps)
    generator = torch.Generator().manual_seed(args.seed)
    fixed_batch = train_x[: args.batch_size]
    history = {"step": [], "log_px": [], "elbo": [], "grad_var_step": [], "grad_var": []}
    start = time.perf_counter()
    for step in range(args.steps + 1):
        if step % args.eval_every == 0:
            log_px, elbo = vae.exact_metrics(test_x)
            history["step"].append(step)
            history["log_px"].append(log_px)
            history["elbo"].append(elbo)
        if step % args.variance_every == 0:
            variance = trainer.encoder_gradient_variance(fixed_batch, args.variance_repeats, step)
            history["grad_var_step"].append(step)
            history["grad_var"].append(variance)
        if step == args.steps:
            break
        batch = train_x[torch.randint(len(train_x), (args.batch_size,), generator=generator)]
        trainer.step(batch, generator)
    history["seconds"] = time.perf_counter() - start
    return history


def plot(histories: dict, path: str):
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (name, history) in enumerate(histories.items()):
        color = f"C{i}"
        left.plot(history["step"], history["log_px"], color=color, label=f"{name}: log p(x)")
        left.plot(history["step"], history["elbo"], color=color, linestyle="--")
        right.semilogy(history["grad_var_step"], history["grad_var"], "o-", color=color, label=name)
    # the first evaluation (untrained, about -44 nats) would flatten the curves
    late = [v for h in histories.values() for v in h["log_px"][1:] + h["elbo"][1:]]
    if late:
        left.set_ylim(min(late) - 0.5, max(late) + 0.5)
    left.set(xlabel="training step", ylabel="exact test log p(x) (solid), ELBO (dashed)")
    right.set(xlabel="training step", ylabel="encoder gradient variance (total)")
    left.legend(fontsize=8)
    right.legend(fontsize=8)
    figure.suptitle("Categorical VAE on binarised digits (exact metrics by enumeration)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return figure  # left open, so the docs gallery shows it


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--estimators", nargs="+", default=list(ESTIMATORS), choices=ESTIMATORS)
    parser.add_argument("--num-particles", type=int, default=4, help="k evaluations per datum")
    parser.add_argument("--latents", type=int, default=3, help="m categorical latents")
    parser.add_argument("--classes", type=int, default=8, help="n classes per latent")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--variance-every", type=int, default=150)
    parser.add_argument("--variance-repeats", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="discrete_vae.png", help="where to save the plot")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(1)
    train_x, test_x = load_binary_digits(args.seed)
    histories = {}
    header = ("estimator", "test log p(x)", "test ELBO", "grad var", "s")
    print("{:18s} {:>14s} {:>10s} {:>10s} {:>6s}".format(*header))
    for name in args.estimators:
        history = histories[name] = train(name, args, train_x, test_x)
        print(
            f"{name:18s} {history['log_px'][-1]:14.2f} {history['elbo'][-1]:10.2f} "
            f"{history['grad_var'][-1]:10.3g} {history['seconds']:6.1f}"
        )
    plot(histories, args.out)
    print(f"plot saved to {args.out}")
    return histories


if __name__ == "__main__":
    main()
