"""Probability measures and distances between them (SPEC §2).

Gaussian measures, mixtures, uniform boxes, Gaussian random fields (KLE), empirical
measures; W2 distances and Wasserstein barycenters.
"""

from .gaussian import DIAG_CLAMP, Gaussian

__all__ = ["DIAG_CLAMP", "Gaussian"]
