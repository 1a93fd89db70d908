"""Batch jobs of an online study: the keyword arguments of a dask-jobqueue job and the
script it submits (Slurm, PBS, SGE), without needing a batch system."""

from __future__ import annotations

import sys
from typing import Any

from .config import BATCH_KINDS, ClusterConfig

__all__ = ["job_script"]


def _jobqueue_classes(kind: str) -> tuple[type, type]:
    import dask_jobqueue as djq

    return {
        "slurm": (djq.SLURMCluster, djq.slurm.SLURMJob),
        "pbs": (djq.PBSCluster, djq.pbs.PBSJob),
        "sge": (djq.SGECluster, djq.sge.SGEJob),
    }[kind]


def _job_kwargs(cfg: ClusterConfig, *, log_directory: str | None) -> dict[str, Any]:
    kwargs: dict[str, Any] = dict(
        queue=cfg.queue,
        cores=cfg.cores,
        processes=cfg.processes,
        memory=cfg.memory,
        walltime=cfg.walltime,
        job_extra_directives=list(cfg.job_extra_directives),
        python=cfg.python or sys.executable,
        log_directory=log_directory,
        job_name="wheretolearn",
        # A worker whose scheduler has gone (study finished or crashed) exits instead of
        # holding its allocation until the walltime.
        death_timeout=60,
    )
    lifetime = _worker_lifetime_s(cfg.walltime)
    if lifetime is not None:
        # Retire the worker gracefully before the batch system kills it at the walltime;
        # the handle then submits a replacement job (dask-jobqueue docs, "How to handle
        # job queueing system walltime killing workers").
        kwargs["worker_extra_args"] = ["--lifetime", f"{lifetime}s", "--lifetime-stagger", "60s"]
    if cfg.account:
        # SGE calls it a project (-P); Slurm and PBS an account (-A).
        kwargs["project" if cfg.kind == "sge" else "account"] = cfg.account
    if cfg.local_directory:
        kwargs["local_directory"] = cfg.local_directory
    if cfg.interface:
        kwargs["interface"] = cfg.interface
    return kwargs


def _preview_security(cfg: ClusterConfig) -> Any:
    """The worker credentials a TLS job script names, as placeholders (the real files are
    written, readable by the user only, when the cluster starts)."""
    from distributed.security import Security

    folder = cfg.shared_temp_directory or "<run-folder>/.dask-tls"
    return Security(
        require_encryption=True,
        tls_ca_file=f"{folder}/.dask-jobqueue.worker.ca_file.<random>",
        tls_worker_cert=f"{folder}/.dask-jobqueue.worker.cert.<random>",
        tls_worker_key=f"{folder}/.dask-jobqueue.worker.key.<random>",
    )


def _submit_error(exc: BaseException) -> str:
    """The batch system's own complaint from dask-jobqueue's submission error."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    complaints = [ln for ln in lines if "error" in ln.lower() and not ln.startswith("Command")]
    return "; ".join(complaints[-2:]) if complaints else (lines[0] if lines else type(exc).__name__)


def _worker_lifetime_s(walltime: str) -> int | None:
    """Worker lifetime: walltime minus 5 minutes; ``None`` for walltimes under 15 minutes."""
    h, m, sec = (int(x) for x in walltime.split(":"))
    total = 3600 * h + 60 * m + sec
    return total - 300 if total >= 900 else None


def job_script(cfg: ClusterConfig, *, n_workers: int = 1) -> str:
    """The batch script one job of this configuration would submit (no batch system needed).

    Parameters
    ----------
    cfg : ClusterConfig
        A ``slurm``, ``pbs`` or ``sge`` configuration.
    n_workers : int
        Concurrency limit of the study; sets how many copies of the script are submitted
        (noted in a trailing comment).

    Returns
    -------
    str
        The script; the scheduler address (``tls://`` unless ``cfg.tls`` is false) and
        the credential file names are placeholders until the cluster starts.
    """
    from wheretolearn._validation import check_positive_int

    check_positive_int(n_workers, "n_workers")
    if cfg.kind not in BATCH_KINDS:
        raise ValueError(
            f"cluster kind {cfg.kind!r} submits no batch job; --print-job-script needs "
            f"one of {', '.join(BATCH_KINDS)}"
        )
    _, job_cls = _jobqueue_classes(cfg.kind)
    tls = {"protocol": "tls://", "security": _preview_security(cfg)} if cfg.tls else {}
    job = job_cls(
        scheduler=("tls" if cfg.tls else "tcp") + "://<scheduler-address>:<port>",
        name="wheretolearn-worker",
        **_job_kwargs(cfg, log_directory=cfg.log_directory),
        **tls,
    )
    n_jobs = cfg.n_jobs(n_workers)
    return (
        job.job_script().rstrip("\n")
        + f"\n# wheretolearn submits {n_jobs} such job(s) ({cfg.processes} worker(s) each)\n"
    )
