"""wheretolearn.online (see the package docstring of :mod:`wheretolearn`)."""

from wheretolearn.online.cluster import (
    ClusterConfig,
    ClusterHandle,
    check_scheduler_reachable,
    job_script,
    open_cluster,
)

__all__: list[str] = [
    "ClusterConfig",
    "ClusterHandle",
    "check_scheduler_reachable",
    "job_script",
    "open_cluster",
]
