r"""From (model, guide, args) to per-particle log weights: the one module that traces Pyro.

For $K$ particles $z_k \sim q(z \mid x)$ drawn in one vectorised guide run, the model
is replayed against the guide and every site's log density is summed into

$$\log w_k = \log p(x, z_k) - \log q(z_k \mid x), \qquad k = 1, \dots, K,$$

with the model's part kept in two terms, $\log p(x, z_k) = \log p(x \mid z_k) + \log p(z_k)$:
the log-likelihood (observed sites, ``pyro.factor`` included) and the log prior (latent sites),
as tempering and the evidence estimators built on it need.

When every sample site of the model and guide lies inside one plate (the *datum plate*, e.g.
``pyro.plate("data", N)`` around a VAE's local latents and observations), the weights factorise
over the plate and are returned per datum, shape ``(K, N)``; multi-sample bounds then average the
particles of each datum separately, as in Burda et al. (2016). Otherwise the shape is ``(K,)``.

Non-reparameterised guide sites (discrete latents) contribute ``log_q_score``, the log density to
which a score-function surrogate attaches, so estimators can build unbiased gradients.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.util import prune_subsample_sites
from pyro.util import check_site_shape

from varinf.handlers import QuasiMonteCarloMessenger, count_dimensions
from varinf.site_checks import (
    check_finite,
    check_guide_matches_model,
    check_values_in_support,
)
from varinf.weights_layout import (
    PARTICLE_PLATE,
    Layout,
    datum_frame,
    subsampled_plates,
    trace_device,
)


@dataclass(frozen=True)
class LogWeights:
    r"""Per-particle log densities from one vectorised (guide, model) run.

    Attributes:
        log_p: $\log p(x, z_k)$, shape ``(K, *datum_shape)``; equal to
            ``log_likelihood + log_prior``.
        log_q: $\log q(z_k \mid x)$, same shape.
        log_likelihood: $\log p(x \mid z_k)$, the model's observed sample sites (including
            ``pyro.factor``, which Pyro records as an observed site), same shape.
        log_prior: $\log p(z_k)$, the model's latent sample sites, same shape. Like ``log_p``,
            both are left unscaled by the datum plate's subsampling (``datum_scale``).
        log_q_score: The part of ``log_q`` from non-reparameterised sites, same shape.
        model_trace, guide_trace: The Pyro traces (particle dimension included).
        datum_plate: Name of the plate the weights are split over, or ``None``.
        datum_scale: Subsampling scale of the datum plate (``size / subsample_size``), to be
            applied to per-datum bounds after the particles are averaged.
        log_q_stopped: With ``stop_guide_params``: ``log_q`` in value, with a gradient w.r.t. the
            guide's parameters through the samples only (DReG).
        subsampled_plates: Subsampled plates other than the datum plate; their scale sits
            inside each particle's weight, so only estimators linear in $\log w$ (the ELBO)
            stay honest.
    """

    log_p: torch.Tensor
    log_q: torch.Tensor
    log_q_score: torch.Tensor
    log_likelihood: torch.Tensor
    log_prior: torch.Tensor
    model_trace: poutine.Trace
    guide_trace: poutine.Trace
    datum_plate: str | None
    datum_scale: float
    log_q_stopped: torch.Tensor | None = None
    subsampled_plates: tuple[str, ...] = ()

    @property
    def log_weights(self) -> torch.Tensor:
        r"""$\log w_k = \\log p(x, z_k) - \\log q(z_k \\mid x)$."""
        return self.log_p - self.log_q

    @property
    def num_particles(self) -> int:
        return self.log_p.shape[0]

    @property
    def guide_param_names(self) -> set[str]:
        """Names of the ``pyro.param`` sites the guide read."""
        return {name for name, site in self.guide_trace.nodes.items() if site["type"] == "param"}

    @property
    def has_score_terms(self) -> bool:
        """Whether some guide site is not reparameterised (needs a score-function term)."""
        return any(
            site["type"] == "sample" and not site["is_observed"] and not site["fn"].has_rsample
            for site in self.guide_trace.nodes.values()
        )


def guess_max_plate_nesting(
    model: Callable, guide: Callable | None, args: tuple, kwargs: dict
) -> int:
    """Run guide and model once (unvectorised) and return the deepest plate dimension used.

    The run uses its own random stream, so guessing (or not) never changes later samples.
    """
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices), poutine.block():
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs) if guide else None
        model_fn = poutine.replay(model, trace=guide_trace) if guide else model
        model_trace = poutine.trace(model_fn).get_trace(*args, **kwargs)
    dims = [
        frame.dim
        for trace in (model_trace, guide_trace)
        if trace is not None
        for site in trace.nodes.values()
        if site["type"] == "sample"
        for frame in site["cond_indep_stack"]
        if frame.vectorized
    ]
    return -min(dims) if dims else 0


def vectorize(fn: Callable, num_particles: int, max_plate_nesting: int) -> Callable:
    """Wrap ``fn`` in an outermost plate of ``num_particles`` left of all the model's plates."""
    return pyro.plate(PARTICLE_PLATE, num_particles, dim=-(max_plate_nesting + 1))(fn)


def trace_log_weights(
    model: Callable,
    guide: Callable | None,
    args: tuple,
    kwargs: dict,
    *,
    num_particles: int,
    max_plate_nesting: int | None = None,
    per_datum: bool = True,
    stop_guide_params: bool = False,
    sampler: str = "iid",
    vectorize_particles: bool = True,
) -> LogWeights:
    r"""Draw ``num_particles`` particles from ``guide`` (the prior if ``guide`` is None) in one
    vectorised run and return their log weights under ``model``.

    Guide sites marked ``infer={"is_auxiliary": True}`` (every Pyro autoguide's
    ``_unconstrained`` or ``_latent`` site) count in $\log q$ and are not matched against the
    model, as in Pyro. Subsampled plates (``pyro.plate(..., subsample_size=B)``) draw one
    minibatch per call, shared by all particles (and by the model, and DReG's second guide pass).

    Args:
        model: A Pyro model.
        guide: Its guide, or ``None`` to sample the model's prior.
        args: Positional arguments for model and guide.
        kwargs: Keyword arguments for model and guide.
        num_particles: $K \geq 1$.
        max_plate_nesting: Deepest plate dimension used by model and guide; guessed by one
            unvectorised run when ``None``.
        per_datum: Split the weights over the datum plate when the model allows it.
        stop_guide_params: Also compute ``log_q_stopped``, the guide density of the same
            samples whose gradient w.r.t. the guide's parameters flows only through the samples
            (as doubly reparameterised gradients need), for ``pyro.param``, ``pyro.module`` and
            ``PyroModule`` guides alike.
        sampler: ``"iid"`` draws independent particles; ``"rqmc"`` draws them from one
            scrambled Sobol point set through inverse CDFs (see `varinf.handlers`).
        vectorize_particles: ``False`` runs guide and model once per particle, as Pyro's
            default does, for models whose code does not broadcast over a particle dimension.

    Raises:
        ValueError: ``num_particles < 1``, or a guide that does not match the model (see
            `varinf.site_checks`).
        FloatingPointError: a NaN or $+\infty$ log density ($-\infty$ in the model is a zero
            weight, allowed).
        RuntimeError: the model's or guide's code failed on the vectorised run (the message
            suggests ``vectorize_particles=False``).
    """
    check_num_particles(num_particles)
    check_sampler(sampler)
    if sampler == "rqmc" and not vectorize_particles:
        raise ValueError("sampler='rqmc' draws one joint point set: it needs vectorize_particles")
    if max_plate_nesting is None:
        max_plate_nesting = guess_max_plate_nesting(model, guide, args, kwargs)
    run = _Run(model, guide, args, kwargs, max_plate_nesting, stop_guide_params)
    if vectorize_particles:
        runs = [run.traces(num_particles, sampler)]
    else:
        runs = [run.traces(None, sampler)]
        minibatch = run.minibatch  # the later particles reuse the first one's minibatch
        runs += [run.traces(None, sampler, minibatch) for _ in range(num_particles - 1)]
    model_trace, guide_trace, _ = runs[0]
    frame = datum_frame(model_trace, guide_trace) if per_datum else None
    size = num_particles if vectorize_particles else 1
    layout = Layout(size, max_plate_nesting + 1, frame, trace_device(model_trace))
    terms = [layout.terms(*traces) for traces in runs]
    terms = {
        key: torch.cat([t[key] for t in terms]) if terms[0][key] is not None else None
        for key in terms[0]
    }
    log_p = terms["log_likelihood"] + terms["log_prior"]
    if not torch.isfinite(log_p - terms["log_q"]).all():  # one device sync in the common case
        check_finite(log_p, terms["log_q"])
    return LogWeights(
        log_p=log_p,
        log_q=terms["log_q"],
        log_q_score=terms["log_q_score"],
        log_likelihood=terms["log_likelihood"],
        log_prior=terms["log_prior"],
        model_trace=model_trace,
        guide_trace=guide_trace,
        datum_plate=frame.name if frame is not None else None,
        datum_scale=layout.datum_scale,
        log_q_stopped=terms["log_q_stopped"],
        subsampled_plates=subsampled_plates(model_trace, frame),
    )


class _Run:
    """One (guide, model) run: traces with log densities, checked."""

    def __init__(self, model, guide, args, kwargs, max_plate_nesting, stop_guide_params):
        self.model, self.guide, self.args, self.kwargs = model, guide, args, kwargs
        self.max_plate_nesting = max_plate_nesting
        self.stop_guide_params = stop_guide_params and guide is not None

    def _wrap(self, fn, num_particles):
        return fn if num_particles is None else vectorize(fn, num_particles, self.max_plate_nesting)

    def _trace(self, fn, vectorised: bool):
        if not vectorised:
            return poutine.trace(fn).get_trace(*self.args, **self.kwargs)
        try:
            return poutine.trace(fn).get_trace(*self.args, **self.kwargs)
        except (RuntimeError, IndexError) as error:
            raise RuntimeError(
                f"the model or guide failed on a run vectorised over particles ({error}); if "
                "its code does not broadcast over a leftmost particle dimension, pass "
                "vectorize_particles=False"
            ) from error

    def traces(self, num_particles, sampler, minibatch=None):
        guide_trace = stopped = None
        model, vectorised = self.model, num_particles is not None
        if self.guide is not None:
            guide = self.guide if minibatch is None else poutine.replay(self.guide, trace=minibatch)
            guide = self._wrap(guide, num_particles)
            if sampler == "rqmc":
                guide = _quasi_monte_carlo(guide, num_particles, self.args, self.kwargs)
            guide_trace = self._trace(guide, vectorised)
            model = poutine.replay(model, trace=guide_trace)
            if self.stop_guide_params:
                replayed = poutine.replay(self.guide, trace=_detached(guide_trace))
                stopped = self._trace(self._wrap(replayed, num_particles), vectorised)
                stopped = prune_subsample_sites(stopped)
        elif minibatch is not None:
            model = poutine.replay(model, trace=minibatch)
        model_trace = self._trace(self._wrap(model, num_particles), vectorised)
        self.minibatch = _subsample_subtrace(model_trace)  # guide's indices, replayed
        model_trace = prune_subsample_sites(model_trace)
        if guide_trace is None:  # prior sampling: the proposal is the model's own latent sites
            guide_trace = _latent_subtrace(model_trace)
        else:
            guide_trace = prune_subsample_sites(guide_trace)
            check_guide_matches_model(model_trace, guide_trace)
            check_values_in_support(model_trace)
        rank = self.max_plate_nesting + (0 if num_particles is None else 1)
        for trace in (model_trace, guide_trace) + ((stopped,) if stopped else ()):
            _compute_log_prob(trace, rank)
        return model_trace, guide_trace, stopped


def _compute_log_prob(trace: poutine.Trace, rank: int) -> None:
    """Log densities, with Pyro's shape check and ours: no batch dimensions left of the plates
    (Pyro ignores those, and they would broadcast into the particle sums)."""
    trace.compute_log_prob()
    for name, site in trace.nodes.items():
        if site["type"] != "sample":
            continue
        check_site_shape(site, rank)
        shape = tuple(site["log_prob"].shape)
        if len(shape) > rank:
            raise ValueError(
                f"site {name!r} has log-density shape {shape}: {len(shape) - rank} batch "
                f"dimension(s) more than its plates allow (at most {rank}, particles and plates "
                "included); put them in a pyro.plate, or .to_event(...) them"
            )


def _detached(trace: poutine.Trace) -> poutine.Trace:
    """A copy of ``trace`` whose sample values are detached (replaying it evaluates the guide's
    densities at fixed points, so their gradient is the direct dependence on the parameters)."""
    copy = trace.copy()
    for name, site in copy.nodes.items():
        if site["type"] == "sample" and torch.is_tensor(site["value"]):
            copy.nodes[name] = {**site, "value": site["value"].detach()}  # the original's intact
    return copy


def _subsample_subtrace(trace: poutine.Trace) -> poutine.Trace:
    """Only the plates' subsample sites of ``trace``, to replay the same minibatch."""
    pruned = set(prune_subsample_sites(trace).nodes)
    subtrace = trace.copy()
    for name in list(subtrace.nodes):
        if name in pruned:
            subtrace.remove_node(name)
    return subtrace


SAMPLERS = ("iid", "rqmc")


def check_sampler(sampler: str) -> None:
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")


def _quasi_monte_carlo(vectorized_guide, num_particles, args, kwargs):
    """Wrap the vectorised guide so its particles come from one RQMC point set."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices), poutine.block():  # a dry run to count dims
        trace = poutine.trace(vectorized_guide).get_trace(*args, **kwargs)
    dimension = count_dimensions(prune_subsample_sites(trace), num_particles)
    return QuasiMonteCarloMessenger(num_particles, dimension)(vectorized_guide)


def check_num_particles(num_particles: int, name: str = "num_particles") -> int:
    """``num_particles`` as an int (NumPy integers accepted), or a ValueError naming it."""
    try:
        value = operator.index(num_particles) if not isinstance(num_particles, bool) else 0
    except TypeError:
        value = 0
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {num_particles!r}")
    return value


def _latent_subtrace(trace: poutine.Trace) -> poutine.Trace:
    prior = trace.copy()
    for name in list(prior.nodes):
        site = prior.nodes[name]
        if site["type"] == "sample" and site["is_observed"]:
            prior.remove_node(name)
    return prior


@contextlib.contextmanager
def capture_params() -> Iterator[dict[str, torch.Tensor]]:
    """Collect the unconstrained tensors of every ``pyro.param`` read inside the block.

    The yielded dict is filled, in order of first use, when the block exits.

    Examples:
        >>> import pyro, torch
        >>> from torch.distributions import constraints
        >>> pyro.clear_param_store()
        >>> with capture_params() as params:
        ...     _ = pyro.param("scale", torch.ones(2), constraint=constraints.positive)
        >>> list(params), params["scale"]  # unconstrained: log 1 = 0
        (['scale'], tensor([0., 0.], requires_grad=True))
    """
    params: dict[str, torch.Tensor] = {}
    with poutine.trace(param_only=True) as capture:
        yield params
    for name, site in capture.trace.nodes.items():
        if site["type"] == "param" and name not in params:
            params[name] = site["value"].unconstrained()
