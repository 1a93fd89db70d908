"""wheretolearn.design (see the package docstring of :mod:`wheretolearn`)."""

from .bilevel import (AdjointGradient, BilevelResult, BilevelSchedule, KRRSettings,
                      StepControl, adjoint_gradient, bilevel_descent)
from .bilevel_families import (GaussianFamily, GaussianMixtureFamily, TrainingFamily,
                               available_families, mixture_start, register_family)
from .baselines import (BASELINE_NAMES, SOURCE_NAMES, ACoresetOptions, CoresetSource,
                        DistributionSource,
                        TrainingSource, acoreset, make_sources, ncoreset)
from .evaluation import EvaluationFit, evaluate_sources
from .metatest import MetaTest, make_metatest
from .ama import (AMAConfig, AMAObjective, AMAResult, adam_update, de_update, lbfgsb_update,
                  run_ama)
from .ama_compare import (POOL_BASELINES, ComparisonPlan, available_pool_baselines,
                          comparison_table, run_pool_comparison)
from .ama_bound import (BoundConstants, BoundValue, LipschitzEstimate, LipschitzOptions,
                        ama_bound, estimate_lipschitz)
from .ama_problems import (AMASetup, ama_setup, available_ama_problems, field_setup,
                           fit_fourier_gaussian)
from .ama_study import AMAStudyConfig, resolve_ama_config, run_ama_study
from .labelling import Labeller
from .operator_metatest import (MetaTestDraws, OperatorMetaTest, PoolMetaTest, darcy_family,
                                empirical_operator_metatest, field_family,
                                make_operator_metatest, ntd_family, pool_operator_metatest)
from .bilevel_study import BilevelStudyConfig, resolve_bilevel_config, run_bilevel_study

__all__: list[str] = [
    "AMAConfig",
    "AMAObjective",
    "AMAResult",
    "AMASetup",
    "AMAStudyConfig",
    "BoundConstants",
    "BoundValue",
    "Labeller",
    "LipschitzEstimate",
    "LipschitzOptions",
    "OperatorMetaTest",
    "adam_update",
    "ama_bound",
    "ama_setup",
    "available_ama_problems",
    "darcy_family",
    "de_update",
    "empirical_operator_metatest",
    "estimate_lipschitz",
    "field_family",
    "field_setup",
    "make_operator_metatest",
    "MetaTestDraws",
    "ntd_family",
    "resolve_ama_config",
    "run_ama",
    "run_ama_study",
    "lbfgsb_update",
    "fit_fourier_gaussian",
    "PoolMetaTest",
    "pool_operator_metatest",
    "POOL_BASELINES",
    "available_pool_baselines",
    "comparison_table",
    "run_pool_comparison",
    "ComparisonPlan",
    "AdjointGradient",
    "BilevelResult",
    "MetaTest",
    "adjoint_gradient",
    "bilevel_descent",
    "BilevelSchedule",
    "KRRSettings",
    "StepControl",
    "TrainingFamily",
    "GaussianFamily",
    "GaussianMixtureFamily",
    "available_families",
    "register_family",
    "mixture_start",
    "make_metatest",
    "BASELINE_NAMES",
    "SOURCE_NAMES",
    "TrainingSource",
    "DistributionSource",
    "CoresetSource",
    "ncoreset",
    "acoreset",
    "ACoresetOptions",
    "make_sources",
    "evaluate_sources",
    "EvaluationFit",
    "BilevelStudyConfig",
    "resolve_bilevel_config",
    "run_bilevel_study",
]
