"""Guides built from varinf's distributions: the VBPI guide (SBN x log-normal branch lengths)."""

from varinf.guides.vbpi import VBPIGuide
from varinf.guides.vbpi_training import AnnealedVIMCO, VBPIHistory, VBPITrainer, tree_kl

__all__ = ["VBPIGuide", "AnnealedVIMCO", "VBPIHistory", "VBPITrainer", "tree_kl"]
