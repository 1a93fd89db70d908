"""The ``[cluster]`` table of an online study: where its simulations run (local Dask
cluster, Slurm / PBS / SGE through dask-jobqueue, or an existing scheduler)."""

from __future__ import annotations

import math
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["BATCH_KINDS", "CLUSTER_KINDS", "ClusterConfig"]

CLUSTER_KINDS = ("local", "slurm", "pbs", "sge", "address")
BATCH_KINDS = ("slurm", "pbs", "sge")
_WALLTIME = re.compile(r"^\d{1,4}:[0-5]\d:[0-5]\d$")


class ClusterConfig(BaseModel):
    """The ``[cluster]`` table of an online study.

    Parameters
    ----------
    kind : {"local", "slurm", "pbs", "sge", "address"}
        ``local``: a ``LocalCluster`` on this machine (default). ``slurm``/``pbs``/``sge``:
        one batch job per ``processes`` workers, submitted through dask-jobqueue.
        ``address``: connect to a running Dask scheduler at ``address``.
    address : str, optional
        Scheduler address ``tcp://host:port`` or ``tls://host:port`` (required for
        ``kind="address"``); a ``tls://`` scheduler is reached with the certificates of
        the Dask configuration (``distributed.comm.tls.*``).
    queue : str, optional
        Partition (Slurm) or queue (PBS, SGE); required for the batch kinds.
    cores, processes : int
        Cores per job and Dask worker processes per job (``processes <= cores``;
        each worker gets ``cores // processes`` threads).
    memory : str
        Memory per job, e.g. ``"2GB"``.
    walltime : str
        ``HH:MM:SS``.
    jobs : int, optional
        Number of jobs; default ``ceil(n_workers / processes)`` from ``[executor] workers``.
    job_extra_directives : list of str
        Extra header lines, e.g. ``["--qos=short"]`` (Slurm) or ``["-l select=1"]`` (PBS).
    account : str, optional
        Account charged for the jobs (``#SBATCH -A``, ``#PBS -A``).
    python : str, optional
        Interpreter the workers run; default the current one (``sys.executable``),
        which must be reachable from the compute nodes (shared filesystem).
    local_directory : str, optional
        Worker scratch directory on the compute node.
    log_directory : str, optional
        Where the batch system writes the jobs' stdout/stderr; default a temporary
        directory removed when the cluster closes.
    interface : str, optional
        Network interface the scheduler and workers use (e.g. ``"ib0"``).
    max_replacement_jobs : int
        How many jobs that ended early may be replaced in one run.
    tls : bool
        The scheduler, its workers and the study's client talk TLS with mutual
        authentication, using temporary credentials made for this run (default ``True``),
        for local clusters (which also listen on 127.0.0.1 only) and batch kinds alike.
        ``False`` opens a plain ``tcp://`` scheduler that anyone who can reach its port
        can use to run code as you: a warning is printed and ``summary.json`` records it.
        ``address``: the scheme of ``address`` decides.
    shared_temp_directory : str, optional
        Where the workers' copy of the temporary credentials is written (key files
        readable by you only, removed when the cluster closes); it must be on a
        filesystem the compute nodes see. Default: a hidden folder ``.dask-tls`` inside
        the run folder.
    """

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    kind: Literal["local", "slurm", "pbs", "sge", "address"] = "local"
    address: str | None = None
    queue: str | None = None
    cores: int = Field(1, ge=1)
    processes: int = Field(1, ge=1)
    memory: str = "2GB"
    walltime: str = "00:30:00"
    jobs: int | None = Field(None, ge=1)
    job_extra_directives: list[str] = Field(default_factory=list)
    account: str | None = None
    python: str | None = None
    local_directory: str | None = None
    log_directory: str | None = None
    interface: str | None = None
    max_replacement_jobs: int = Field(10, ge=0)
    tls: bool = True
    shared_temp_directory: str | None = None

    @field_validator("walltime")
    @classmethod
    def _check_walltime(cls, value: str) -> str:
        if not _WALLTIME.match(value):
            raise ValueError(f"walltime must be HH:MM:SS (e.g. '01:30:00'), got {value!r}")
        return value

    @field_validator("memory")
    @classmethod
    def _check_memory(cls, value: str) -> str:
        from dask.utils import parse_bytes

        try:
            n = parse_bytes(value)
        except (ValueError, TypeError):
            n = 0
        if not isinstance(value, str) or n <= 0:
            raise ValueError(f"memory must be a positive size like '2GB' or '500MiB', got {value!r}")
        return value

    @model_validator(mode="after")
    def _check_kind(self) -> "ClusterConfig":
        if self.kind in BATCH_KINDS and not self.queue:
            raise ValueError(
                f"cluster kind {self.kind!r} needs queue (the partition/queue the jobs go to)"
            )
        if self.kind == "address" and not self.address:
            raise ValueError("cluster kind 'address' needs address (e.g. 'tls://host:8786')")
        if self.address and "://" in self.address and not self.address.startswith(("tcp://", "tls://")):
            raise ValueError(
                f"address {self.address!r} must start with 'tcp://' or 'tls://' (e.g. 'tls://host:8786')"
            )
        if self.processes > self.cores:
            raise ValueError(
                f"processes ({self.processes}) must not exceed cores ({self.cores}): "
                "each worker process needs at least one core"
            )
        return self

    def with_kind(self, kind: str) -> "ClusterConfig":
        """A copy with ``kind`` replaced and re-validated (for ``--cluster KIND``)."""
        if kind not in CLUSTER_KINDS:
            raise ValueError(f"unknown cluster kind {kind!r}; allowed: {', '.join(CLUSTER_KINDS)}")
        return ClusterConfig.model_validate({**self.model_dump(), "kind": kind})

    def n_jobs(self, n_workers: int) -> int:
        """Jobs needed for ``n_workers`` workers: ``jobs`` or ``ceil(n_workers / processes)``."""
        return self.jobs if self.jobs is not None else max(1, math.ceil(n_workers / self.processes))
