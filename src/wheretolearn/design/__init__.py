"""wheretolearn.design (see the package docstring of :mod:`wheretolearn`)."""

from .bilevel import AdjointGradient, BilevelResult, adjoint_gradient, bilevel_descent
from .baselines import (BASELINE_NAMES, SOURCE_NAMES, CoresetSource, DistributionSource,
                        TrainingSource, acoreset, make_sources, ncoreset)
from .evaluation import evaluate_sources
from .metatest import MetaTest, make_metatest
from .study import BilevelStudyConfig, resolve_study_config, run_bilevel_study

__all__: list[str] = [
    "AdjointGradient",
    "BilevelResult",
    "MetaTest",
    "adjoint_gradient",
    "bilevel_descent",
    "make_metatest",
    "BASELINE_NAMES",
    "SOURCE_NAMES",
    "TrainingSource",
    "DistributionSource",
    "CoresetSource",
    "ncoreset",
    "acoreset",
    "make_sources",
    "evaluate_sources",
    "BilevelStudyConfig",
    "resolve_study_config",
    "run_bilevel_study",
]
