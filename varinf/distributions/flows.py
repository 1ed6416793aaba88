r"""Normalizing flows on $\mathbb{R}^D$, built from Pyro's transforms.

A flow pushes a base density through an invertible map $f = f_L \circ \dots \circ f_1$,

$$\log q(y) = \log p_0(x) - \sum_{l=1}^{L} \log\left|\det \frac{\partial f_l}{\partial x_{l-1}}
\right|, \qquad y = f(x),\ x \sim p_0,$$

so each layer must be cheap to invert or to take the Jacobian determinant of. `build_flow`
stacks, between fixed random permutations of the coordinates:

- ``"realnvp"``: affine coupling (Pyro's `AffineCoupling`; Dinh, Sohl-Dickstein and Bengio
  2017);
- ``"nice"``: additive coupling (`AdditiveCoupling`, here) and one diagonal scaling at the end
  (Dinh, Krueger and Bengio 2015);
- ``"glow"``: `ActNorm`, an invertible 1x1 convolution (Pyro's `GeneralizedChannelPermute` on a
  $D \times 1 \times 1$ view) and an affine coupling (Kingma and Dhariwal 2018);
- ``"iaf"``: affine autoregressive (Pyro's `AffineAutoregressive`): parallel sampling, and the
  density of its own samples (Kingma et al. 2016), what a guide needs;
- ``"maf"``: the inverse of an affine autoregressive layer: the density of any point in
  parallel, sequential sampling (Papamakarios, Pavlakou and Murray 2017);
- ``"spline"``: rational-quadratic spline coupling (Pyro's `SplineCoupling`; Durkan et al.
  2019).

Written here: only what Pyro lacks, NICE's volume-preserving `AdditiveCoupling` and Glow's
`ActNorm` with data-dependent initialisation, and two helpers: `InverseTransformModule`, which
keeps an inverted layer's parameters registered, and `Permutation`, a permutation saved with the
flow's state.
"""

from __future__ import annotations

import torch
from pyro.distributions import constraints
from pyro.distributions import transforms as T
from pyro.distributions.torch_transform import TransformModule
from pyro.nn import DenseNN
from torch import nn

FLOWS = ("realnvp", "nice", "glow", "iaf", "maf", "spline")


class AdditiveCoupling(TransformModule):
    r"""NICE's additive coupling: $y_{1:d} = x_{1:d}$, $y_{d+1:D} = x_{d+1:D} + t(x_{1:d})$,
    volume preserving ($\log|\det J| = 0$), with $t$ an MLP.

    Args:
        input_dim: $D \ge 2$.
        hidden_dims: Hidden widths of $t$.
        split_dim: $d$ (default $D/2$).

    Examples:
        >>> layer = AdditiveCoupling(4, [8])
        >>> x = torch.randn(3, 4)
        >>> bool(torch.allclose(layer.inv(layer(x)), x, atol=1e-6))
        True
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, input_dim: int, hidden_dims: list[int], split_dim: int | None = None):
        super().__init__(cache_size=1)
        self.split_dim = input_dim // 2 if split_dim is None else split_dim
        if input_dim < 2 or not 0 < self.split_dim < input_dim:
            raise ValueError(
                f"coupling needs input_dim >= 2 and 0 < split_dim < input_dim, got "
                f"input_dim={input_dim}, split_dim={self.split_dim}"
            )
        self.shift = DenseNN(self.split_dim, hidden_dims, param_dims=[input_dim - self.split_dim])

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x[..., : self.split_dim], x[..., self.split_dim :]
        return torch.cat([x1, x2 + self.shift(x1)], dim=-1)

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        y1, y2 = y[..., : self.split_dim], y[..., self.split_dim :]
        return torch.cat([y1, y2 - self.shift(y1)], dim=-1)

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[:-1])


class ActNorm(TransformModule):
    r"""Glow's activation normalisation, $y = e^{s} \odot x + b$, $\log|\det J| = \sum_j s_j$.

    With ``data_init=True`` (the default) the first batch through the layer sets $s$ and $b$
    so that its outputs have zero mean and unit variance per coordinate (Kingma and Dhariwal
    2018); after that both are ordinary parameters. Whether it has been initialised is a buffer,
    so a loaded ``state_dict`` is not re-initialised.

    Examples:
        >>> layer = ActNorm(2)
        >>> y = layer(3.0 + 2.0 * torch.randn(1000, 2))
        >>> bool(torch.allclose(y.mean(0), torch.zeros(2), atol=1e-5))
        True
        >>> bool(torch.allclose(y.std(0), torch.ones(2), atol=1e-5))
        True
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, input_dim: int, data_init: bool = True) -> None:
        super().__init__(cache_size=1)
        self.log_scale = nn.Parameter(torch.zeros(input_dim))
        self.bias = nn.Parameter(torch.zeros(input_dim))
        self.register_buffer("initialized", torch.tensor(not data_init))

    def _initialize(self, x: torch.Tensor) -> None:
        flat = x.detach().reshape(-1, x.shape[-1])
        if flat.shape[0] < 2:
            return  # one point has no spread: wait for a batch
        with torch.no_grad():
            log_scale = -flat.std(0).clamp_min(1e-6).log()
            self.log_scale.copy_(log_scale)
            self.bias.copy_(-flat.mean(0) * log_scale.exp())
            self.initialized.fill_(True)

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.initialized):
            self._initialize(x)
        return x * self.log_scale.exp() + self.bias

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.bias) * torch.exp(-self.log_scale)

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.log_scale.sum().expand(x.shape[:-1])


class InverseTransformModule(TransformModule):
    """The inverse of a `TransformModule` whose parameters stay registered (``.inv`` of a
    module is a plain transform, invisible to ``pyro.module`` and optimisers)."""

    bijective = True

    def __init__(self, base: TransformModule) -> None:
        super().__init__(cache_size=1)
        self.base = base
        self.domain, self.codomain = base.codomain, base.domain

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        return self.base._inverse(x)

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        return self.base(y)

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -self.base.log_abs_det_jacobian(y, x)


class Permutation(TransformModule):
    """A fixed permutation of the coordinates, kept as a buffer so that it is saved and loaded
    with the flow's ``state_dict`` (Pyro's `Permute` is not a module)."""

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True
    volume_preserving = True

    def __init__(self, permutation: torch.Tensor) -> None:
        super().__init__(cache_size=1)
        self.register_buffer("permutation", permutation.clone())
        self.register_buffer("inverse_permutation", torch.argsort(permutation))

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., self.permutation]

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y[..., self.inverse_permutation]

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[:-1])


def invertible_linear(input_dim: int) -> T.ComposeTransformModule:
    """Glow's invertible 1x1 convolution on a vector: a learned, LU-parameterised
    $D \\times D$ map (Pyro's `GeneralizedChannelPermute` on a $D \\times 1 \\times 1$ view)."""
    to_image = T.ReshapeTransform((input_dim,), (input_dim, 1, 1))
    return T.ComposeTransformModule(
        [to_image, T.GeneralizedChannelPermute(input_dim), to_image.inv]
    )


def build_flow(
    input_dim: int, flow: str = "realnvp", depth: int = 4, hidden: int | list[int] = 32
) -> T.ComposeTransformModule:
    r"""``depth`` layers of ``flow`` on $\mathbb{R}^{D}$, with fixed random permutations between
    them (drawn from the torch random state, so seeding fixes them).

    Args:
        input_dim: $D$ (at least 2 except for ``"spline"``, elementwise in one dimension).
        flow: One of ``"realnvp"``, ``"nice"``, ``"glow"``, ``"iaf"``, ``"maf"``, ``"spline"``.
        depth: Number of layers.
        hidden: Hidden width (or list of widths) of each layer's network.

    Examples:
        >>> flow = build_flow(3, "realnvp", depth=2, hidden=8)
        >>> x = torch.randn(5, 3)
        >>> bool(torch.allclose(flow.inv(flow(x)), x, atol=1e-5))
        True
    """
    if flow not in FLOWS:
        raise ValueError(f"flow must be one of {FLOWS}, got {flow!r}")
    if input_dim < 1 or (input_dim < 2 and flow != "spline"):
        raise ValueError(
            f"flow={flow!r} needs input_dim >= 2 (couplings and autoregressive layers split "
            f"the coordinates), got {input_dim}; use flow='spline' for one dimension"
        )
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    hidden_dims = [hidden] if isinstance(hidden, int) else list(hidden)
    layers: list = []
    for index in range(depth):
        if index > 0 and input_dim > 1:
            layers.append(Permutation(torch.randperm(input_dim)))
        layers.extend(_layer(input_dim, flow, hidden_dims))
    if flow == "nice":
        layers.append(ActNorm(input_dim, data_init=False))  # NICE's diagonal scaling layer
    return T.ComposeTransformModule(layers)


def _layer(input_dim: int, flow: str, hidden_dims: list[int]) -> list:
    if flow == "realnvp":
        return [T.affine_coupling(input_dim, hidden_dims=hidden_dims)]
    if flow == "nice":
        return [AdditiveCoupling(input_dim, hidden_dims)]
    if flow == "glow":
        coupling = T.affine_coupling(input_dim, hidden_dims=hidden_dims)
        return [ActNorm(input_dim), invertible_linear(input_dim), coupling]
    if flow == "spline" and input_dim == 1:
        return [T.spline(1)]  # elementwise: nothing to couple
    if flow == "spline":
        return [T.spline_coupling(input_dim, hidden_dims=hidden_dims)]
    autoregressive = T.affine_autoregressive(
        input_dim, hidden_dims=_made_widths(input_dim, hidden_dims)
    )
    return [autoregressive if flow == "iaf" else InverseTransformModule(autoregressive)]


def _made_widths(input_dim: int, hidden_dims: list[int]) -> list[int]:
    # MADE needs every hidden layer at least as wide as the input to keep all connections
    return [max(width, input_dim) for width in hidden_dims]
