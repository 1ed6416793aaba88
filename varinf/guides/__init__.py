"""Guides built from varinf's distributions: normalizing-flow guides (and the VBPI guide)."""

from varinf.guides.flows import flow_guide

__all__ = ["flow_guide"]
