"""wheretolearn.online (see the package docstring of :mod:`wheretolearn`)."""

from wheretolearn.online.cluster import (
    ClusterConfig,
    ClusterHandle,
    check_scheduler_reachable,
    job_script,
    open_cluster,
)

from wheretolearn.online.buffers import (
    BUFFERS,
    Buffer,
    FIFOBuffer,
    FIROBuffer,
    ReservoirBuffer,
    Sample,
    make_buffer,
    stack_samples,
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
    "BUFFERS",
    "Buffer",
    "FIFOBuffer",
    "FIROBuffer",
    "ReservoirBuffer",
    "Sample",
    "make_buffer",
    "stack_samples",
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
