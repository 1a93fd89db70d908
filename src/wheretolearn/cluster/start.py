"""Where the online engine's simulations run: a local Dask cluster, an HPC batch system
(Slurm, PBS, SGE through dask-jobqueue) or an existing Dask scheduler.

The study asks :func:`open_cluster` for as many Dask workers as ``[executor] workers``
says; the returned :class:`ClusterHandle` carries the ``distributed.Client``, keeps the
number of batch jobs at that target (a job that ends early -- ``scancel``, walltime
reached, node failure -- is replaced, up to ``max_replacement_jobs`` times) and reports
``{"kind", "jobs_submitted", "workers_seen"}`` for ``summary.json``.

Work lost with a job is rescheduled by Dask itself (the executor's retry policy decides
what happens to a simulation whose worker died); this module only brings capacity back.

Every cluster started here is secured as :mod:`.security` decides: TLS with temporary
credentials and, for local clusters, every listener on 127.0.0.1.

This module holds the context managers that start a cluster; the rest lives by concern:
:mod:`.config` (the ``[cluster]`` table), :mod:`.security` (credentials), :mod:`.jobs`
(job keyword arguments and scripts), :mod:`.reach` (scheduler reachability),
:mod:`.job_watch` (:class:`ClusterHandle`, the job watchdog) and :mod:`.dask_private`
(every use of private dask API).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .config import ClusterConfig
from .dask_private import add_jobs, close_credential_files, drop_unsubmitted, submit_jobs
from .job_watch import ClusterHandle
from .jobs import _job_kwargs, _jobqueue_classes, _submit_error
from .reach import check_scheduler_reachable
from .security import (INSECURE_MESSAGE, InsecureClusterWarning, forget_scheduler,
                       register_scheduler, temporary_security)

__all__ = ["local_cluster", "open_cluster"]


@contextmanager
def open_cluster(
    cfg: ClusterConfig,
    *,
    n_workers: int,
    threads_per_worker: int = 1,
    log_directory: str | None = None,
    connect_timeout: float = 10.0,
    shared_temp_directory: str | os.PathLike | None = None,
) -> Iterator[ClusterHandle]:
    """Start (or connect to) the cluster described by ``cfg`` and close it on exit.

    Parameters
    ----------
    cfg : ClusterConfig
    n_workers : int
        Workers the study wants (``[executor] workers``). ``local``: that many worker
        processes; batch kinds: ``cfg.jobs`` or ``ceil(n_workers / cfg.processes)`` jobs;
        ``address``: ignored (the scheduler's workers are used as they are).
    threads_per_worker : int
        Threads per local worker (batch kinds use ``cores // processes``).
    log_directory : str, optional
        Job stdout/stderr directory, overriding ``cfg.log_directory``.
    connect_timeout : float
        Seconds allowed to reach a scheduler given by address.
    shared_temp_directory : path, optional
        Batch kinds with TLS: the folder, owned by this run, for the workers' copy of the
        temporary credentials (created with mode 0700, removed on exit). A
        ``cfg.shared_temp_directory`` wins when set (created if missing, kept; only the
        credential files are deleted). Default: a hidden temporary folder in the current
        directory, removed on exit.

    Yields
    ------
    ClusterHandle
        On exit the client is closed and, for ``local`` and batch kinds, all workers
        and jobs are released (scale down); an ``address`` scheduler is left running.
    """
    from wheretolearn._validation import check_positive_int

    check_positive_int(n_workers, "n_workers")
    check_positive_int(threads_per_worker, "threads_per_worker")
    if cfg.kind == "address":
        with _address_cluster(cfg, connect_timeout) as handle:
            yield handle
    elif cfg.kind == "local":
        with _local_cluster(cfg, n_workers, threads_per_worker) as handle:
            yield handle
    else:
        with _batch_cluster(cfg, n_workers, log_directory, shared_temp_directory) as handle:
            yield handle


def _client_or_close(client_cls: Any, cluster: Any) -> Any:
    """A client of ``cluster``; if it cannot be made, close the cluster (its workers) first."""
    try:
        return client_cls(cluster)
    except BaseException:
        cluster.close()
        raise


@contextmanager
def _address_cluster(cfg: ClusterConfig, timeout: float) -> Iterator[ClusterHandle]:
    from distributed import Client

    check_scheduler_reachable(cfg.address, timeout=timeout)
    try:
        # tls:// addresses: the client's certificates come from the Dask configuration
        # (distributed.comm.tls.*), checked above.
        client = Client(cfg.address, timeout=timeout)
    except (OSError, TimeoutError) as exc:
        raise ValueError(
            f"scheduler at {cfg.address} refused the connection within {timeout:g} s "
            f"({exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "a tls:// scheduler needs certificates it trusts, a tcp:// one no TLS"
        ) from None
    handle = ClusterHandle("address", client, None, target_jobs=0, max_replacements=0)
    try:
        handle._poll()
        yield handle
    finally:
        client.close()


@contextmanager
def local_cluster(
    n_workers: int,
    *,
    threads_per_worker: int = 1,
    tls: bool = True,
    local_directory: str | None = None,
    quiet: bool = False,
) -> Iterator[Any]:
    """A ``distributed.LocalCluster`` of ``n_workers`` processes on this machine, closed on
    exit: the one way the package starts local Dask clusters.

    Every listener (scheduler, workers, nannies, HTTP endpoints) is on 127.0.0.1, and with
    ``tls`` (default) the cluster talks TLS with mutual authentication using temporary
    credentials, so another user of the machine cannot connect to it or run anything on it.
    ``Client(cluster)`` picks the credentials up; code handed only the scheduler address
    finds them too (:func:`~.security.register_scheduler`) while the cluster runs.
    ``tls=False`` warns (:class:`~.security.InsecureClusterWarning`).
    """
    import logging

    from distributed import LocalCluster

    kwargs: dict[str, Any] = {}
    if local_directory:
        kwargs["local_directory"] = local_directory
    if tls:
        kwargs.update(security=temporary_security(), protocol="tls://")
    else:
        warnings.warn(INSECURE_MESSAGE, InsecureClusterWarning, stacklevel=3)
    if quiet:
        kwargs["silence_logs"] = logging.ERROR
    cluster = LocalCluster(
        n_workers=n_workers,
        threads_per_worker=threads_per_worker,
        processes=True,
        host="127.0.0.1",
        # the scheduler's HTTP endpoints on a free loopback port, no dashboard (bokeh is
        # not a dependency); the workers serve none
        dashboard_address="127.0.0.1:0",
        scheduler_kwargs={"dashboard": False},
        worker_dashboard_address=None,
        **kwargs,
    )
    address = ""
    try:
        address = str(cluster.scheduler_address)
        if tls:
            register_scheduler(address, cluster.security)
        yield cluster
    finally:
        forget_scheduler(address)
        cluster.close()


@contextmanager
def _local_cluster(cfg: ClusterConfig, n_workers: int, threads: int) -> Iterator[ClusterHandle]:
    from distributed import Client

    with local_cluster(n_workers, threads_per_worker=threads, tls=cfg.tls,
                       local_directory=cfg.local_directory) as cluster:
        client = Client(cluster)
        handle = ClusterHandle("local", client, cluster, target_jobs=n_workers,
                               max_replacements=0)
        try:
            handle._install_plugin()
            handle._poll()
            yield handle
        finally:
            client.close()


@contextmanager
def _credentials_folder(cfg: ClusterConfig, default: str | os.PathLike | None) -> Iterator[str | None]:
    """The shared folder for the workers' TLS credentials (``None`` without TLS).

    A folder this function creates is removed on exit; the credential files themselves
    are removed by dask-jobqueue when the cluster object goes away.
    """
    if not cfg.tls:
        yield None
        return
    chosen = cfg.shared_temp_directory or default
    created = None
    if chosen is None:
        created = chosen = tempfile.mkdtemp(prefix=".wheretolearn-tls-", dir=os.getcwd())
    else:
        folder = Path(chosen).expanduser()
        if not folder.exists():
            folder.mkdir(mode=0o700, parents=True)
        if not cfg.shared_temp_directory:
            # The run's own folder: removed on exit even if a crashed session left it.
            created = str(folder)
    try:
        yield str(chosen)
    finally:
        if created:
            shutil.rmtree(created, ignore_errors=True)


def _tls_options(cfg: ClusterConfig, shared: str | None) -> dict[str, Any]:
    """dask-jobqueue keywords for TLS with temporary credentials (none without TLS)."""
    if not cfg.tls:
        return {}
    return {"security": temporary_security(), "shared_temp_directory": shared}


def _batch_cluster_kwargs(
    cfg: ClusterConfig, log_directory: str | None, shared: str | None
) -> dict[str, Any]:
    """Keyword arguments of the dask-jobqueue cluster class for ``cfg``; warns
    (:class:`InsecureClusterWarning`) when ``cfg.tls`` is false."""
    tls = _tls_options(cfg, shared)
    if not cfg.tls:
        warnings.warn(INSECURE_MESSAGE, InsecureClusterWarning, stacklevel=5)
    return dict(
        # A random port for the scheduler's HTTP endpoints, on loopback only: no clash
        # with another scheduler on this host, nothing served to the network, and no
        # dashboard (bokeh is not a dependency).
        scheduler_options={"dashboard_address": "127.0.0.1:0", "dashboard": False},
        **_job_kwargs(cfg, log_directory=log_directory),
        **tls,
    )


@contextmanager
def _batch_cluster(
    cfg: ClusterConfig, n_workers: int, log_directory: str | None, shared: str | os.PathLike | None
) -> Iterator[ClusterHandle]:
    with _credentials_folder(cfg, shared) as folder:
        with _batch_cluster_in(cfg, n_workers, log_directory, folder) as handle:
            yield handle


@contextmanager
def _batch_cluster_in(
    cfg: ClusterConfig, n_workers: int, log_directory: str | None, shared: str | None
) -> Iterator[ClusterHandle]:
    from distributed import Client

    cluster_cls, job_cls = _jobqueue_classes(cfg.kind)
    submit = job_cls.submit_command.split()[0]
    if shutil.which(submit) is None:
        raise ValueError(
            f"cluster kind {cfg.kind!r} needs the batch command {submit!r}, which is not on PATH "
            "(for a local test Slurm run scripts/local-slurm.sh as root)"
        )
    logs = log_directory or cfg.log_directory
    tmp_logs = None
    if logs is None:
        tmp_logs = tempfile.mkdtemp(prefix="wheretolearn-joblogs-")
        logs = tmp_logs
    cluster = cluster_cls(**_batch_cluster_kwargs(cfg, str(logs), shared))
    client = _client_or_close(Client, cluster)
    address = str(cluster.scheduler_address)
    if cfg.tls:
        register_scheduler(address, cluster.security)
    target = cfg.n_jobs(n_workers)
    handle = ClusterHandle(
        cfg.kind, client, cluster, target_jobs=target, max_replacements=cfg.max_replacement_jobs
    )
    try:
        handle._install_plugin()
        add_jobs(cluster, target)
        try:
            # Wait for the submissions themselves (not for the jobs to start): a refused
            # sbatch (unknown partition, account, QOS) is an error now, not a silent hang.
            submit_jobs(cluster)
        except RuntimeError as exc:
            drop_unsubmitted(cluster)
            raise ValueError(
                f"cluster kind {cfg.kind!r}: submitting the worker jobs failed: {_submit_error(exc)}"
            ) from None
        handle._start_watcher()
        yield handle
    finally:
        handle._poll()
        handle._stop_watcher()
        client.close()
        cluster.close()
        close_credential_files(cluster)
        forget_scheduler(address)
        if tmp_logs:
            shutil.rmtree(tmp_logs, ignore_errors=True)
