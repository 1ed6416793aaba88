r"""ELBO, beta-VAE and GECO side by side on the bundled digits.

The three losses train the same VAE (`models.vae.DigitsVAE`, 8 Gaussian latents, Bernoulli
decoder on the 1797 binarised 8x8 digits, minibatches of 128) for the same number of steps:

- the ELBO, $\mathbb{E}_q[\log p(x \mid z)] - \mathrm{KL}$;
- a $\beta$-VAE with $\beta = 4$, which weighs the KL four times: `GECO` with its multiplier
  fixed at $\lambda = 1/\beta$ (``rate=0``) is exactly that loss up to a constant;
- GECO (Rezende and Viola 2018) with the constraint "reconstruction error at most
  $\kappa = 10$ nats per image", its multiplier $\lambda$ adapted from the constraint's moving
  average.

It prints each one's final KL and reconstruction error, and plots the reconstruction error and
GECO's $\lambda$ against the step: $\lambda$ rises while the constraint is violated, then falls
back until the constraint just holds, where the ELBO ends above $\kappa$ and the $\beta$-VAE
further above it.

    python examples/geco_vae.py                      # 800 steps each, about a minute
    python examples/geco_vae.py --steps 3000 --plot geco.png
"""

from __future__ import annotations

import argparse
import time

import pyro
import torch

from models.vae import DigitsVAE, load_digits_images
from varinf import ELBO, GECO


def train(name: str, loss, x: torch.Tensor, steps: int, seed: int) -> dict:
    """Fit a fresh VAE with ``loss``; record the reconstruction error (and GECO's state)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    vae = DigitsVAE(latent_dim=8, hidden=64)
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), loss)
    history = {"step": [], "reconstruction": [], "multiplier": [], "constraint_ma": []}
    start = time.perf_counter()
    for step in range(steps):
        svi.step(x, subsample_size=128)
        if step % 10 == 0 or step == steps - 1:
            history["step"].append(step)
            history["reconstruction"].append(reconstruction_error(vae, x))
            if isinstance(loss, GECO):
                history["multiplier"].append(loss.multiplier)
                history["constraint_ma"].append(loss.constraint_ma)
    # the ELBO and its terms on all images, with 16 particles, for the table
    final = GECO(num_particles=16).estimate(vae.model, vae.guide, x).diagnostics
    return {
        "name": name,
        "history": history,
        "kl": final["kl"],
        "reconstruction": final["reconstruction"],
        "elbo": -(final["kl"] + final["reconstruction"]),
        "seconds": time.perf_counter() - start,
        "loss": loss,
    }


def reconstruction_error(vae: DigitsVAE, x: torch.Tensor) -> float:
    r"""$\mathbb{E}_q[-\log p(x \mid z)]$ per image, with $z$ drawn from the guide: the
    quantity GECO constrains."""
    return GECO(num_particles=2).estimate(vae.model, vae.guide, x).diagnostics["reconstruction"]


def plot(results: list[dict], tolerance: float, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
    for result in results:
        h = result["history"]
        left.plot(h["step"], h["reconstruction"], label=result["name"])
    left.axhline(tolerance, color="k", ls=":", lw=1, label=r"GECO's $\kappa$")
    left.set(xlabel="step", ylabel=r"$\mathbb{E}_q[-\log p(x \mid z)]$ (nats / image)")
    left.set_ylim(0, 40)
    left.legend()
    geco = next(r for r in results if r["name"] == "GECO")["history"]
    right.plot(geco["step"], geco["multiplier"], color="C2")
    right.axhline(1.0, color="k", ls=":", lw=1)
    right.set(xlabel="step", ylabel=r"GECO's multiplier $\lambda$ ($\lambda = 1$: the ELBO)")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--tolerance", type=float, default=10.0, help="GECO's kappa")
    parser.add_argument("--beta", type=float, default=4.0)
    parser.add_argument("--plot", default="geco_vae.png")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    x = load_digits_images()
    losses = [
        ("ELBO", ELBO(num_particles=1)),
        (f"beta-VAE (beta={args.beta:g})", GECO(multiplier=1 / args.beta, rate=0.0)),
        ("GECO", GECO(tolerance=args.tolerance, warmup=100)),
    ]
    results = [train(name, loss, x, args.steps, args.seed) for name, loss in losses]
    print(f"{'loss':<22}{'KL':>8}{'reconstruction':>16}{'ELBO':>10}{'seconds':>9}")
    for r in results:
        print(
            f"{r['name']:<22}{r['kl']:>8.2f}{r['reconstruction']:>16.2f}{r['elbo']:>10.2f}"
            f"{r['seconds']:>9.1f}"
        )
    geco = results[-1]["loss"]
    print(
        f"GECO: final lambda = {geco.multiplier:.3g}, moving-average constraint = "
        f"{geco.constraint_ma:+.3f} nats (kappa = {args.tolerance:g})"
    )
    plot(results, args.tolerance, args.plot)
    print(f"plot: {args.plot}")
    return results


if __name__ == "__main__":
    main()
