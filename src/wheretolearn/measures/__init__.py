"""Probability measures and distances between them (SPEC §2).

Gaussian measures, mixtures, uniform boxes, Gaussian random fields (KLE), log-normal
fields, the NtD boundary-data measure, empirical measures; W2 distances and
Wasserstein barycenters.
"""

from .base import Measure
from .boundary import NtDInputMeasure
from .distances import BarycenterResult, barycenter, sqrtm_psd, wasserstein2, wasserstein2_squared
from .empirical import Empirical
from .fields import FourierBasis1D, GaussianRandomField, KLEBasis, SineBasis1D, SineBasis2D
from .gaussian import DIAG_CLAMP, Gaussian, clamp_scale_tril, empirical_gaussians
from .lognormal import LogNormalField
from .particle_fields import FieldParticles, emd_w2_squared
from .mixture import (GaussianMixture, Mixture, gaussian_mixture_sample,
                      gaussian_mixture_score, kmeans, kmeans_mixture)
from .uniform import Uniform

__all__ = [
    "Measure",
    "Gaussian",
    "DIAG_CLAMP",
    "clamp_scale_tril",
    "empirical_gaussians",
    "Mixture",
    "GaussianMixture",
    "gaussian_mixture_sample",
    "gaussian_mixture_score",
    "kmeans",
    "kmeans_mixture",
    "Uniform",
    "Empirical",
    "wasserstein2",
    "wasserstein2_squared",
    "sqrtm_psd",
    "barycenter",
    "BarycenterResult",
    "GaussianRandomField",
    "KLEBasis",
    "SineBasis1D",
    "SineBasis2D",
    "FourierBasis1D",
    "LogNormalField",
    "FieldParticles",
    "emd_w2_squared",
    "NtDInputMeasure",
]
