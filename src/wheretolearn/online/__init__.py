"""wheretolearn.online (see the package docstring of :mod:`wheretolearn`)."""

from wheretolearn.cluster import (
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
from wheretolearn.online.checkpoint import load_checkpoint, save_checkpoint
from wheretolearn.online.samplers import (
    HaltonSampler,
    LHSSampler,
    ParameterSampler,
    SobolSampler,
    UniformSampler,
)
from wheretolearn.online.breed import (
    BreedMutation,
    BreedOptions,
    BreedParents,
    BreedResampling,
    BreedSampler,
    BreedSchedule,
)
from wheretolearn.online.sampler_registry import SAMPLERS, make_sampler
from wheretolearn.online.config import OnlineStudyConfig, load_online_config
from wheretolearn.online.executor import (
    EnsembleExecutor,
    EnsemblePlan,
    ExecutorHooks,
    FaultInjection,
    SimulatedCrash,
    Streaming,
)
from wheretolearn.online.ledger import SimulationLedger
from wheretolearn.online.study import OnlineStudy, resume_online_study, run_online_study
from wheretolearn.online.trainer import (
    AdamSchedule,
    BufferDataset,
    OnlineTrainer,
    collate_samples,
    normalised_step_features,
    target_scaling,
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
    "load_checkpoint",
    "save_checkpoint",
    "SAMPLERS",
    "BreedSampler",
    "BreedOptions",
    "BreedMutation",
    "BreedSchedule",
    "BreedResampling",
    "BreedParents",
    "HaltonSampler",
    "LHSSampler",
    "ParameterSampler",
    "SobolSampler",
    "UniformSampler",
    "make_sampler",
    "BufferDataset",
    "OnlineTrainer",
    "AdamSchedule",
    "collate_samples",
    "normalised_step_features",
    "target_scaling",
    "ClusterConfig",
    "ClusterHandle",
    "check_scheduler_reachable",
    "job_script",
    "open_cluster",
    "OnlineStudyConfig",
    "load_online_config",
    "EnsembleExecutor",
    "EnsemblePlan",
    "ExecutorHooks",
    "FaultInjection",
    "Streaming",
    "SimulatedCrash",
    "SimulationLedger",
    "OnlineStudy",
    "run_online_study",
    "resume_online_study",
]
