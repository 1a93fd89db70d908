"""wheretolearn.online (see the package docstring of :mod:`wheretolearn`)."""

from wheretolearn.online.cluster import (
    ClusterConfig,
    ClusterHandle,
    check_scheduler_reachable,
    job_script,
    open_cluster,
)

from wheretolearn.online.samplers import (
    SAMPLERS,
    HaltonSampler,
    LHSSampler,
    ParameterSampler,
    SobolSampler,
    UniformSampler,
    make_sampler,
)

__all__: list[str] = [
    "SAMPLERS",
    "HaltonSampler",
    "LHSSampler",
    "ParameterSampler",
    "SobolSampler",
    "UniformSampler",
    "make_sampler",
    "ClusterConfig",
    "ClusterHandle",
    "check_scheduler_reachable",
    "job_script",
    "open_cluster",
]
