r"""A variational autoencoder on scikit-learn's bundled digits (no download).

Model and guide (Kingma and Welling 2014, "Auto-Encoding Variational Bayes"), for images
$x_i \in [0, 1]^{64}$ (the 1797 8x8 images of `sklearn.datasets.load_digits`, scaled by 1/16):

$$z_i \sim N(0, I_d), \qquad x_i \mid z_i \sim \prod_{j=1}^{64} p(x_{ij} \mid f_\theta(z_i)_j),
\qquad q_\phi(z_i \mid x_i) = N(\mu_\phi(x_i), \mathrm{diag}\,\sigma^2_\phi(x_i)),$$

with $p(\cdot \mid f)$ a Bernoulli with logits $f$ (on images binarised at half intensity) or
a Gaussian with mean $f$ and a learned per-pixel scale. Both networks are registered with
``pyro.module``, the way Pyro's tutorials write amortised encoders, and both functions take
``subsample_size`` so that the same model trains on minibatches through a subsampled
``pyro.plate("data", ...)``.

The sample sites are ``"z"`` (latent) and ``"x"`` (observed), so the log weights split into the
reconstruction term $\log p(x \mid z)$ (the likelihood) and the prior: what GECO constrains
(Rezende and Viola 2018, "Taming VAEs").
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn

DECODERS = ("bernoulli", "gaussian")


def load_digits_images(binarize: bool = True, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The 1797 digits as a ``(1797, 64)`` tensor in [0, 1] (binarised at 0.5 if asked)."""
    from sklearn.datasets import load_digits

    images = torch.tensor(load_digits().data, dtype=dtype) / 16.0
    return (images > 0.5).to(dtype) if binarize else images


class Encoder(nn.Module):
    r"""$x \mapsto (\mu_\phi(x), \sigma_\phi(x))$, an MLP with a softplus scale."""

    def __init__(self, latent_dim: int, hidden: int, data_dim: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(data_dim, hidden), nn.Tanh())
        self.loc = nn.Linear(hidden, latent_dim)
        self.scale = nn.Linear(hidden, latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.loc(h), nn.functional.softplus(self.scale(h)) + 1e-4


class Decoder(nn.Module):
    r"""$z \mapsto f_\theta(z)$: logits (Bernoulli) or means (Gaussian) of the 64 pixels,
    and the Gaussian decoder's learned log-scale per pixel."""

    def __init__(self, latent_dim: int, hidden: int, data_dim: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(latent_dim, hidden), nn.Tanh(), nn.Linear(hidden, data_dim)
        )
        self.log_scale = nn.Parameter(torch.full((data_dim,), -1.0))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class DigitsVAE(nn.Module):
    r"""The digits VAE: ``model(x, subsample_size=None)`` and ``guide(x, subsample_size=None)``.

    Args:
        latent_dim: $d$.
        hidden: Width of the encoder's and decoder's hidden layer.
        decoder: ``"bernoulli"`` (binarised images) or ``"gaussian"`` (grey levels, with a
            learned log-scale per pixel).

    Examples:
        >>> from varinf import ELBO
        >>> vae = DigitsVAE(latent_dim=2)
        >>> x = load_digits_images()[:100]
        >>> estimate = ELBO(num_particles=4).estimate(vae.model, vae.guide, x)
        >>> estimate.value < 0
        True
    """

    def __init__(self, latent_dim: int = 8, hidden: int = 128, decoder: str = "bernoulli"):
        super().__init__()
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        if latent_dim < 1 or hidden < 1:
            raise ValueError(f"latent_dim and hidden must be >= 1, got {latent_dim}, {hidden}")
        self.latent_dim, self.decoder_kind = latent_dim, decoder
        self.encoder = Encoder(latent_dim, hidden)
        self.decoder = Decoder(latent_dim, hidden)

    def model(self, x: torch.Tensor, subsample_size: int | None = None) -> None:
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0], subsample_size=subsample_size) as index:
            prior = dist.Normal(x.new_zeros(self.latent_dim), 1.0).to_event(1)
            z = pyro.sample("z", prior)
            pyro.sample("x", self.likelihood(z), obs=x[index])

    def guide(self, x: torch.Tensor, subsample_size: int | None = None) -> None:
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0], subsample_size=subsample_size) as index:
            loc, scale = self.encoder(x[index])
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def likelihood(self, z: torch.Tensor) -> dist.TorchDistribution:
        r"""$p(x \mid z)$, an ``Independent`` distribution over the 64 pixels."""
        out = self.decoder(z)
        if self.decoder_kind == "bernoulli":
            return dist.Bernoulli(logits=out).to_event(1)
        return dist.Normal(out, self.decoder.log_scale.exp()).to_event(1)
