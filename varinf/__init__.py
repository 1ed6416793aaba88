"""varinf: variational and Monte Carlo estimators for Pyro models."""

__version__ = "0.1.0"
