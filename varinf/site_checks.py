r"""Checks that a (model, guide) pair means what the log weights of `varinf.weights` assume.

Each check reads finished Pyro traces (it runs nothing) and raises a `ValueError` that names the
site, what was found and the fix. The rules follow Pyro's own: guide sites marked
``infer={"is_auxiliary": True}`` (the ``_unconstrained`` and ``_latent`` sites of every
autoguide) are part of $q$ but not matched against the model; a guide proposes latent sites
only; a point mass has no density.
"""

from __future__ import annotations

import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.distributions import constraints


def is_latent(site: dict) -> bool:
    """A sample site that is neither observed nor a plate's subsample indices."""
    return site["type"] == "sample" and not site["is_observed"]


def is_auxiliary(site: dict) -> bool:
    return bool(site.get("infer", {}).get("is_auxiliary", False))


def latent_sites(trace: poutine.Trace, auxiliary: bool = False) -> dict[str, dict]:
    """Latent sample sites of a trace, without the auxiliary ones unless asked."""
    return {
        name: site
        for name, site in trace.nodes.items()
        if is_latent(site) and (auxiliary or not is_auxiliary(site))
    }


def check_guide_matches_model(model_trace: poutine.Trace, guide_trace: poutine.Trace) -> None:
    """The guide proposes exactly the model's latent sites, each with a matching support."""
    _check_no_observed_guide_sites(guide_trace)
    model_latents = latent_sites(model_trace)
    guide_latents = latent_sites(guide_trace)
    missing = sorted(set(model_latents) - set(guide_latents))
    enumerated = [n for n in missing if model_latents[n]["infer"].get("enumerate")]
    if enumerated:
        raise ValueError(
            f"the model enumerates the discrete site(s) {enumerated} (config_enumerate / "
            "infer={'enumerate': ...}), which varinf's estimators do not support: they draw "
            "every latent site from the guide. Sample those sites in the guide (and train it "
            "with IWAE(gradient='vimco') or ELBO(gradient='score')), or sum them out in the "
            "model by hand"
        )
    if missing:
        raise ValueError(
            f"the guide does not sample the model's latent site(s) {missing}; add them to the "
            "guide (or observe them in the model)"
        )
    extra = sorted(set(guide_latents) - set(model_trace.nodes))
    if extra:
        raise ValueError(
            f"the guide samples site(s) {extra} that the model does not have; mark helper "
            "sites with infer={'is_auxiliary': True} (as Pyro's autoguides do), or remove them"
        )
    observed = sorted(set(guide_latents) - set(model_latents))
    if observed:
        raise ValueError(
            f"the guide samples site(s) {observed} that the model observes; remove them from "
            "the guide (the model's observed value would silently replace the guide's sample)"
        )
    for name, site in guide_latents.items():
        _check_same_kind(name, model_latents[name], site)
    _check_no_point_masses(guide_trace)


def _check_no_observed_guide_sites(guide_trace: poutine.Trace) -> None:
    observed = [
        name
        for name, site in guide_trace.nodes.items()
        if site["type"] == "sample"
        and site["is_observed"]
        and not isinstance(site["fn"], dist.Unit)  # pyro.factor in a guide is Pyro's idiom
    ]
    if observed:
        raise ValueError(
            f"the guide observes site(s) {observed}: a guide proposes latent sites only. Did "
            "you swap model and guide? The call is estimate(model, guide, *args)"
        )


def _check_same_kind(name: str, model_site: dict, guide_site: dict) -> None:
    model_fn, guide_fn = model_site["fn"], guide_site["fn"]
    model_support, guide_support = model_fn.support, guide_fn.support
    if model_support.is_discrete != guide_support.is_discrete:
        kinds = {True: "discrete", False: "continuous"}
        raise ValueError(
            f"site {name!r} is {kinds[model_support.is_discrete]} in the model "
            f"({type(model_fn).__name__}, support {model_support}) but "
            f"{kinds[guide_support.is_discrete]} in the guide ({type(guide_fn).__name__}, "
            f"support {guide_support}); the guide must propose values of the model's kind"
        )
    model_event, guide_event = tuple(model_fn.event_shape), tuple(guide_fn.event_shape)
    if model_event != guide_event:
        raise ValueError(
            f"site {name!r} has event shape {model_event} in the model but {guide_event} in the "
            "guide; make them agree (.to_event(...) on one side, or a plate on both)"
        )


def _check_no_point_masses(guide_trace: poutine.Trace) -> None:
    """A Delta site is a point mass (``AutoDelta``, ``AutoLaplaceApproximation``'s latent) unless
    it is the image of an auxiliary site with a density drawn before it (``AutoNormal``'s)."""
    seen_density = False
    for name, site in guide_trace.nodes.items():
        if not is_latent(site):
            continue
        delta = _is_delta(site["fn"])
        if is_auxiliary(site) and not delta:
            seen_density = True
        elif delta and (is_auxiliary(site) or not seen_density):
            raise ValueError(
                f"the guide's site {name!r} is a point mass (Delta, as AutoDelta proposes): it "
                "has no density, so log weights, bounds and evidence estimates mean nothing. Use "
                "a guide with a density (e.g. AutoNormal), or train the MAP point with Pyro's "
                "Trace_ELBO"
            )


def _is_delta(fn) -> bool:
    while isinstance(fn, (dist.Independent, dist.MaskedDistribution, dist.ExpandedDistribution)):
        fn = fn.base_dist
    return isinstance(fn, dist.Delta)


def check_values_in_support(model_trace: poutine.Trace) -> None:
    """The guide's samples must lie in the support of the model's sites (checked always: with
    Pyro's validation off, many log densities return finite nonsense outside the support)."""
    for name, site in model_trace.nodes.items():
        if not is_latent(site):
            continue
        support = site["fn"].support
        if (
            support is constraints.real
            or isinstance(support, constraints.independent)
            and (support.base_constraint is constraints.real)
        ):
            continue
        inside = support.check(site["value"])
        mask = site["mask"]
        if mask is not None:  # masked-out elements do not count, as in Pyro
            inside = inside | ~torch.as_tensor(mask, device=inside.device)
        if not bool(inside.all()):
            raise ValueError(
                f"the guide proposes values outside the support ({support}) of the model's "
                f"site {name!r}; transform the guide's samples into that support"
            )


def check_finite(log_p: torch.Tensor, log_q: torch.Tensor) -> None:
    r"""NaN anywhere, $+\infty$ in the model, or a non-finite guide density is an error.

    $\log p = -\infty$ is a zero weight (a particle the model rules out), which importance
    sampling handles: it is allowed.
    """
    bad_p = torch.isnan(log_p) | (log_p == float("inf"))
    bad_q = ~torch.isfinite(log_q)
    for bad, which, total in ((bad_p, "model", log_p), (bad_q, "guide", log_q)):
        if bad.any():
            raise FloatingPointError(
                f"the {which} log density is NaN or +inf for {int(bad.sum())} of {total.numel()} "
                f"particle terms; check the {which}'s distributions, supports and parameters"
            )
