r"""Where the particle and datum dimensions sit in the log densities of finished traces.

`varinf.weights` traces the model and guide; this module only reads the traces it returns:
which plate the weights split over (the *datum plate*), which plates are subsampled outside it,
and how each site's right-aligned log density is summed to ``(K, *datum_shape)`` in float64.
"""

from __future__ import annotations

import pyro.poutine as poutine
import torch

PARTICLE_PLATE = "varinf_particles"


def subsampled_plates(trace: poutine.Trace, datum_frame) -> tuple[str, ...]:
    """Plates subsampled (``size < full_size``) other than the datum plate: their $N/B$ scale
    sits inside every particle's log weight."""
    names = {
        frame.name
        for site in trace.nodes.values()
        if site["type"] == "sample"
        for frame in site["cond_indep_stack"]
        if frame.full_size is not None and frame.size < frame.full_size
    }
    if datum_frame is not None:
        names.discard(datum_frame.name)
    return tuple(sorted(names))


def datum_frame(model_trace: poutine.Trace, guide_trace: poutine.Trace):
    """The plate that holds every sample site of model and guide, if there is one.

    Only such a plate makes the log weights factorise over its elements: a site outside it
    (a global latent, or an observation depending on all data) couples the data.
    """
    sites = [
        site
        for trace in (model_trace, guide_trace)
        for site in trace.nodes.values()
        if site["type"] == "sample"
    ]
    common = None
    for site in sites:
        frames = {f for f in site["cond_indep_stack"] if f.vectorized and f.name != PARTICLE_PLATE}
        common = frames if common is None else common & frames
    if not common:
        return None
    return max(common, key=lambda f: f.dim)  # outermost plate when several qualify


class Layout:
    """Where the particle and datum dimensions sit in a site's (right-aligned) log density."""

    def __init__(self, num_particles: int, rank: int, frame, device: torch.device) -> None:
        self.rank = rank
        self.datum_dim = None if frame is None else rank + frame.dim
        self.datum_scale = 1.0 if frame is None else (frame.full_size or frame.size) / frame.size
        self.shape = (num_particles,) + (() if frame is None else (frame.size,))
        self.device = device

    def terms(self, model_trace, guide_trace, stopped_trace) -> dict[str, torch.Tensor | None]:
        """Every per-particle term of one run, shape ``self.shape``."""
        log_likelihood, log_prior = self.sum_model_sites(model_trace)
        log_q, log_q_score = self.sum_sites(guide_trace)
        log_q_stopped = None
        if stopped_trace is not None:  # log q at detached samples: the direct dependence on phi
            direct = self.sum_sites(stopped_trace)[0]
            log_q_stopped = log_q - direct + direct.detach()
        return {
            "log_likelihood": log_likelihood,
            "log_prior": log_prior,
            "log_q": log_q,
            "log_q_score": log_q_score,
            "log_q_stopped": log_q_stopped,
        }

    def sum_sites(self, trace: poutine.Trace) -> tuple[torch.Tensor, torch.Tensor]:
        """Total log density of the trace and its non-reparameterised part, shape ``self.shape``,
        accumulated in float64 (a float32 sum over many data drowns the differences between
        particles in rounding error)."""
        total = score = torch.zeros(self.shape, dtype=torch.float64, device=self.device)
        for site in trace.nodes.values():
            if site["type"] != "sample":
                continue
            log_prob = self._reduce(site)
            total = total + log_prob
            if not site["is_observed"] and not site["fn"].has_rsample:
                score = score + log_prob
        return total, score

    def sum_model_sites(self, trace: poutine.Trace) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's log-likelihood (observed sites, ``pyro.factor`` included) and log prior
        (latent sites), each of shape ``self.shape``, accumulated in float64."""
        likelihood = prior = torch.zeros(self.shape, dtype=torch.float64, device=self.device)
        for site in trace.nodes.values():
            if site["type"] != "sample":
                continue
            if site["is_observed"]:
                likelihood = likelihood + self._reduce(site)
            else:
                prior = prior + self._reduce(site)
        return likelihood, prior

    def _reduce(self, site: dict) -> torch.Tensor:
        # Per-datum terms are left unscaled by subsampling: bounds apply it after averaging.
        scale = site["scale"] / self.datum_scale
        log_prob = site["unscaled_log_prob"].double() * scale
        mask = site["mask"]
        if isinstance(mask, bool):  # poutine.mask(mask=True/False)
            log_prob = log_prob if mask else torch.zeros_like(log_prob)
        elif mask is not None:
            log_prob = torch.where(mask, log_prob, log_prob.new_zeros(()))
        log_prob = log_prob.reshape((1,) * (self.rank - log_prob.dim()) + log_prob.shape)
        summed = [d for d in range(self.rank) if d not in (0, self.datum_dim)]
        return log_prob.sum(summed) if summed else log_prob  # sum([]) would sum everything


def trace_device(trace: poutine.Trace) -> torch.device:
    for site in trace.nodes.values():
        if site["type"] == "sample" and torch.is_tensor(site["value"]):
            return site["value"].device
    return torch.device("cpu")
