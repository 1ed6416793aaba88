"""Guides built from varinf's distributions: normalizing-flow guides and the VBPI guide."""

from varinf.guides.flows import flow_guide
from varinf.guides.vbpi import VBPIGuide
from varinf.guides.vbpi_training import AnnealedVIMCO, VBPIHistory, VBPITrainer, tree_kl

__all__ = ["flow_guide", "VBPIGuide", "AnnealedVIMCO", "VBPIHistory", "VBPITrainer", "tree_kl"]
