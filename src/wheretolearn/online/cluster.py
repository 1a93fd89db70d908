"""Where the online engine's simulations run: a local Dask cluster, an HPC batch system
(Slurm, PBS, SGE through dask-jobqueue) or an existing Dask scheduler.

The study asks :func:`open_cluster` for as many Dask workers as its concurrency limit
needs; the returned :class:`ClusterHandle` carries the ``distributed.Client``, keeps the
number of batch jobs at that target (a job that ends early -- ``scancel``, walltime
reached, node failure -- is replaced, up to ``max_replacement_jobs`` times) and reports
``{"kind", "jobs_submitted", "workers_seen"}`` for ``summary.json``.

Work lost with a job is rescheduled by Dask itself (the executor's retry policy decides
what happens to a simulation whose worker died); this module only brings capacity back.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

log = logging.getLogger(__name__)

__all__ = [
    "CLUSTER_KINDS",
    "ClusterConfig",
    "ClusterHandle",
    "check_scheduler_reachable",
    "job_script",
    "open_cluster",
]

CLUSTER_KINDS = ("local", "slurm", "pbs", "sge", "address")
_BATCH_KINDS = ("slurm", "pbs", "sge")
_WALLTIME = re.compile(r"^\d{1,4}:[0-5]\d:[0-5]\d$")
# How often the handle checks for jobs that ended early (seconds).
_WATCH_INTERVAL_S = 1.0
# PBS/SGE (no job-state query): a job whose workers stay away this long has ended.
_LOST_GRACE_S = 30.0
# Slurm: how often to ask about jobs whose workers never joined (queued, or failed at start).
_PENDING_CHECK_S = 30.0
_SLURM_ALIVE_STATES = frozenset(
    {"PENDING", "CONFIGURING", "RUNNING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING"}
)


async def _slurm_job_states(job_ids: list[str]) -> dict[str, str] | None:
    """``{job_id: state}`` from one ``squeue`` call; ids Slurm has forgotten are absent.
    ``None`` when squeue cannot be asked (then nothing is declared dead)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            "squeue", "-h", "-t", "all", "-j", ",".join(job_ids), "-o", "%i %T",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout=20)
    except (OSError, asyncio.TimeoutError):
        return None
    if proc.returncode != 0:
        # Every id unknown (purged after MinJobAge) is an error for squeue, not an empty list.
        return {} if b"Invalid job id" in err else None
    states = {}
    for line in out.decode(errors="replace").splitlines():
        parts = line.split()
        if len(parts) >= 2:
            states[parts[0]] = parts[1].rstrip("+")
    return states


class ClusterConfig(BaseModel):
    """The ``[cluster]`` table of an online study.

    Parameters
    ----------
    kind : {"local", "slurm", "pbs", "sge", "address"}
        ``local``: a ``LocalCluster`` on this machine (default). ``slurm``/``pbs``/``sge``:
        one batch job per ``processes`` workers, submitted through dask-jobqueue.
        ``address``: connect to a running Dask scheduler at ``address``.
    address : str, optional
        Scheduler address ``tcp://host:port`` (required for ``kind="address"``).
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
        Number of jobs; default ``ceil(n_workers / processes)`` from the concurrency limit.
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
        if self.kind in _BATCH_KINDS and not self.queue:
            raise ValueError(
                f"cluster kind {self.kind!r} needs queue (the partition/queue the jobs go to)"
            )
        if self.kind == "address" and not self.address:
            raise ValueError("cluster kind 'address' needs address (e.g. 'tcp://host:8786')")
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


def _add_jobs(cluster: Any, n: int) -> None:
    """Add ``n`` job specs to a dask-jobqueue cluster without starting them.

    ``cluster.scale`` would start them in a callback whose errors only reach the log; the
    caller runs ``cluster._correct_state()`` itself and sees a refused submission.
    """
    for _ in range(max(n, 0)):
        cluster.worker_spec.update(cluster.new_worker_spec())


def _drop_unsubmitted(cluster: Any) -> None:
    """Forget jobs whose submission was refused (they have no job id and cannot be closed)."""
    from distributed.core import Status

    for name, job in list(cluster.workers.items()):
        if getattr(job, "job_id", None) is None:
            job.status = Status.failed  # what cluster.close() expects of a job never started
            del cluster.workers[name]
            cluster.worker_spec.pop(name, None)


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
        The script; the scheduler address is a placeholder until the cluster starts.
    """
    from wheretolearn._validation import check_positive_int

    check_positive_int(n_workers, "n_workers")
    if cfg.kind not in _BATCH_KINDS:
        raise ValueError(
            f"cluster kind {cfg.kind!r} submits no batch job; --print-job-script needs "
            f"one of {', '.join(_BATCH_KINDS)}"
        )
    _, job_cls = _jobqueue_classes(cfg.kind)
    job = job_cls(
        scheduler="tcp://<scheduler-address>:<port>",
        name="wheretolearn-worker",
        **_job_kwargs(cfg, log_directory=cfg.log_directory),
    )
    n_jobs = cfg.n_jobs(n_workers)
    return (
        job.job_script().rstrip("\n")
        + f"\n# wheretolearn submits {n_jobs} such job(s) ({cfg.processes} worker(s) each)\n"
    )


def check_scheduler_reachable(address: str, timeout: float = 5.0) -> None:
    """Raise ``ValueError`` unless a TCP connection to the scheduler ``address`` opens
    within ``timeout`` seconds.

    Parameters
    ----------
    address : str
        ``tcp://host:port`` (``tls://`` and ``ws://`` are checked the same way; a bare
        ``host:port`` means ``tcp://``).
    timeout : float
        Seconds to wait for the connection.
    """
    from distributed.comm.addressing import parse_address, parse_host_port

    if not isinstance(address, str) or not address:
        raise ValueError(f"scheduler address must be a string like 'tcp://host:8786', got {address!r}")
    try:
        _, location = parse_address(address)
        host, port = parse_host_port(location)
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"scheduler address {address!r} is not of the form 'tcp://host:port' ({exc})"
        ) from None
    if not port:
        raise ValueError(f"scheduler address {address!r} has no port (e.g. 'tcp://host:8786')")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise ValueError(
            f"scheduler at {address} cannot be reached within {timeout:g} s ({exc.__class__.__name__}: {exc})"
        ) from None


class ClusterHandle:
    """A started cluster: the Dask ``client`` plus job bookkeeping.

    Attributes
    ----------
    client : distributed.Client
    kind : str
    cluster : distributed.deploy.Cluster or None
        ``None`` for ``kind="address"`` (the scheduler is not ours).
    target_jobs : int
        Jobs (batch kinds) or workers (local) the handle keeps running.
    """

    def __init__(self, kind: str, client: Any, cluster: Any, *, target_jobs: int, max_replacements: int):
        self.kind = kind
        self.client = client
        self.cluster = cluster
        self.target_jobs = target_jobs
        self.max_replacements = max_replacements
        self.jobs_replaced = 0
        self._lock = threading.Lock()
        self._job_ids: list[str] = []
        self._workers_seen: list[str] = []
        self._names_alive_once: set[str] = set()
        self._plugin_installed = False
        self._watcher: Any = None
        self._absent_since: dict[Any, float] = {}
        self._last_queue_check: dict[Any, float] = {}
        self._ensuring = False
        self._last_watch_error: str | None = None

    # -- bookkeeping ---------------------------------------------------------------
    def _record_worker(self, name: Any) -> None:
        name = str(name)
        with self._lock:
            self._names_alive_once.add(name)
            if name not in self._workers_seen:
                self._workers_seen.append(name)

    def _record_jobs(self) -> None:
        if self.kind not in _BATCH_KINDS or self.cluster is None:
            return
        try:
            jobs = list(self.cluster.workers.values())
        except RuntimeError:  # changed by the event loop meanwhile; the next poll sees it
            return
        for job in jobs:
            job_id = getattr(job, "job_id", None)
            if job_id is not None:
                with self._lock:
                    if job_id not in self._job_ids:
                        self._job_ids.append(job_id)

    def _current_worker_names(self) -> set[str]:
        scheduler = getattr(self.cluster, "scheduler", None)
        if scheduler is not None and hasattr(scheduler, "workers"):
            return {str(ws.name) for ws in list(scheduler.workers.values())}
        info = self.client.scheduler_info(n_workers=-1)
        return {str(w.get("name")) for w in info.get("workers", {}).values()}

    def _install_plugin(self) -> None:
        """Record every worker that joins, even one that leaves before the next poll."""
        scheduler = getattr(self.cluster, "scheduler", None)
        if scheduler is None or not hasattr(scheduler, "add_plugin"):
            return
        from distributed.diagnostics.plugin import SchedulerPlugin

        handle = self

        class _SeenWorkers(SchedulerPlugin):
            name = "wheretolearn-workers-seen"

            def add_worker(self, scheduler: Any, worker: str) -> None:
                ws = scheduler.workers.get(worker)
                handle._record_worker(ws.name if ws is not None else worker)

        scheduler.add_plugin(_SeenWorkers(), name=_SeenWorkers.name)
        self._plugin_installed = True

    # -- public API ----------------------------------------------------------------
    @property
    def jobs_submitted(self) -> int:
        """Batch jobs submitted so far (0 for ``local`` and ``address``)."""
        self._record_jobs()
        with self._lock:
            return len(self._job_ids)

    @property
    def job_ids(self) -> list[str]:
        """Ids of every batch job submitted so far, in submission order."""
        self._record_jobs()
        with self._lock:
            return list(self._job_ids)

    def info(self) -> dict:
        """``{"kind", "jobs_submitted", "workers_seen": [...]}`` for ``summary.json``."""
        self._poll()
        with self._lock:
            seen = list(self._workers_seen)
        return {"kind": self.kind, "jobs_submitted": self.jobs_submitted, "workers_seen": seen}

    def _poll(self) -> None:
        try:
            for name in self._current_worker_names():
                self._record_worker(name)
        except (OSError, RuntimeError, TimeoutError):  # scheduler gone: keep what was seen
            pass
        self._record_jobs()

    def _job_worker_names(self, name: Any, spec: dict | None) -> list[str]:
        if spec and "group" in spec:
            return [f"{name}{suffix}" for suffix in spec["group"]]
        return [str(name)]

    async def _find_dead_jobs(self) -> list[Any]:
        """Names (worker_spec keys) of jobs that ended while the cluster still wants them.

        A job counts as ended when none of its workers is connected and either the batch
        system no longer runs it (Slurm: ``squeue`` state not pending/running; PBS/SGE:
        its workers stay away longer than ``_LOST_GRACE_S``), or distributed has already
        closed it as lost. Absent workers of a running job (a nanny restarting a worker
        that a simulation crashed) do not count.
        """
        current = self._current_worker_names()
        now = time.monotonic()
        check_ids: dict[str, Any] = {}
        dead = []
        for name, spec in list(self.cluster.worker_spec.items()):
            names = self._job_worker_names(name, spec)
            if any(n in current for n in names):
                self._absent_since.pop(name, None)
                continue
            with self._lock:
                joined = any(n in self._names_alive_once for n in names)
            job = self.cluster.workers.get(name)
            job_id = getattr(job, "job_id", None)
            if job is None:
                if joined:  # distributed closed it after lost-worker-timeout
                    dead.append(name)
                continue
            if job_id is None:  # still being submitted
                continue
            first_absent = self._absent_since.setdefault(name, now)
            if self.kind == "slurm":
                # Jobs that never joined (queued) are asked about rarely, to spare slurmctld.
                if joined or now - self._last_queue_check.get(name, 0.0) > _PENDING_CHECK_S:
                    self._last_queue_check[name] = now
                    check_ids[str(job_id)] = name
            elif joined and now - first_absent > _LOST_GRACE_S:
                dead.append(name)
        if check_ids:
            states = await _slurm_job_states(list(check_ids))
            if states is not None:
                for job_id, name in check_ids.items():
                    if states.get(job_id, "GONE") not in _SLURM_ALIVE_STATES:
                        dead.append(name)
        return dead

    async def _ensure_async(self) -> None:
        # The watcher and ensure_workers() both run this on the cluster's event loop; one
        # at a time, or a dead job could be replaced twice.
        if self._ensuring:
            return
        self._ensuring = True
        try:
            await self._replace_dead_jobs()
        finally:
            self._ensuring = False

    async def _replace_dead_jobs(self) -> None:
        cluster = self.cluster
        self._record_jobs()
        for name in await self._find_dead_jobs():
            spec = cluster.worker_spec.pop(name, None)
            self._absent_since.pop(name, None)
            self._last_queue_check.pop(name, None)
            with self._lock:
                self._names_alive_once.difference_update(self._job_worker_names(name, spec))
            job = cluster.workers.pop(name, None)
            if job is not None:
                # scancel/qdel on a job that is already gone is harmless (errors suppressed).
                await job.close()
        # Jobs that ended, and submissions refused earlier, both leave the plan short.
        n_new = min(self.target_jobs - len(cluster.worker_spec), self.max_replacements - self.jobs_replaced)
        if n_new <= 0:
            return
        self.jobs_replaced += n_new
        # Fresh names, so a replacement is never mistaken for the job it replaces.
        cluster._i = getattr(cluster, "_i", 0) + 1
        _add_jobs(cluster, n_new)
        try:
            await cluster._correct_state()
        except RuntimeError as exc:  # keep watching; the next pass tries again
            log.warning("submitting a replacement job failed: %s", _submit_error(exc))
            _drop_unsubmitted(cluster)
        self._record_jobs()

    def wait_for_workers(self, n: int = 1, *, timeout: float | None = None) -> None:
        """Block until ``n`` workers are connected (batch jobs can wait long in the queue:
        start simulation timeouts after this, not at submission). ``TimeoutError`` after
        ``timeout`` seconds."""
        self.client.wait_for_workers(n, timeout=timeout)
        self._poll()

    def ensure_workers(self) -> None:
        """Request a replacement for each batch job that ended early (cancelled, walltime
        reached, node lost), up to ``max_replacement_jobs`` in total; no-op for ``local``
        and ``address``. Also runs by itself every second while the cluster is open."""
        self._poll()
        if self.kind not in _BATCH_KINDS or self.cluster is None:
            return
        from distributed.utils import sync

        sync(self.cluster.loop, self._ensure_async)

    def scale(self, n_workers: int) -> None:
        """Set the number of workers to keep (``0`` releases all jobs at the end of a run)."""
        if n_workers < 0:
            raise ValueError(f"n_workers must be >= 0, got {n_workers}")
        if self.cluster is None:
            return
        if self.kind in _BATCH_KINDS:
            processes = self.cluster._dummy_job.worker_processes
            self.target_jobs = math.ceil(n_workers / processes)
            self.cluster.scale(jobs=self.target_jobs)
        else:
            self.target_jobs = n_workers
            self.cluster.scale(n_workers)

    def _start_watcher(self) -> None:
        if self.kind not in _BATCH_KINDS:
            return
        from tornado.ioloop import PeriodicCallback

        def start() -> None:
            self._watcher = PeriodicCallback(self._watch_tick, _WATCH_INTERVAL_S * 1000)
            self._watcher.start()

        self.cluster.loop.add_callback(start)

    async def _watch_tick(self) -> None:
        """One pass of the job watcher. A failed pass must not stop the watcher, but it is
        logged (once per distinct error, as the next pass probably fails the same way)."""
        try:
            await self._ensure_async()
        except Exception as exc:  # noqa: BLE001 -- keep watching; the next pass tries again
            message = f"{type(exc).__name__}: {exc}"
            if message != self._last_watch_error:
                log.warning("checking the %s worker jobs failed (watcher goes on): %s",
                            self.kind, message)
            self._last_watch_error = message
        else:
            self._last_watch_error = None

    def _stop_watcher(self) -> None:
        if self._watcher is not None and self.cluster is not None:
            self.cluster.loop.add_callback(self._watcher.stop)


@contextmanager
def open_cluster(
    cfg: ClusterConfig,
    *,
    n_workers: int,
    threads_per_worker: int = 1,
    log_directory: str | None = None,
    connect_timeout: float = 10.0,
) -> Iterator[ClusterHandle]:
    """Start (or connect to) the cluster described by ``cfg`` and close it on exit.

    Parameters
    ----------
    cfg : ClusterConfig
    n_workers : int
        Workers the study wants (its concurrency limit). ``local``: that many worker
        processes; batch kinds: ``cfg.jobs`` or ``ceil(n_workers / cfg.processes)`` jobs;
        ``address``: ignored (the scheduler's workers are used as they are).
    threads_per_worker : int
        Threads per local worker (batch kinds use ``cores // processes``).
    log_directory : str, optional
        Job stdout/stderr directory, overriding ``cfg.log_directory``.
    connect_timeout : float
        Seconds allowed to reach a scheduler given by address.

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
        with _batch_cluster(cfg, n_workers, log_directory) as handle:
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
    client = Client(cfg.address, timeout=timeout)
    handle = ClusterHandle("address", client, None, target_jobs=0, max_replacements=0)
    try:
        handle._poll()
        yield handle
    finally:
        client.close()


@contextmanager
def _local_cluster(cfg: ClusterConfig, n_workers: int, threads: int) -> Iterator[ClusterHandle]:
    from distributed import Client, LocalCluster

    kwargs: dict[str, Any] = {}
    if cfg.local_directory:
        kwargs["local_directory"] = cfg.local_directory
    cluster = LocalCluster(
        n_workers=n_workers,
        threads_per_worker=threads,
        processes=True,
        dashboard_address=":0",
        scheduler_kwargs={"dashboard": False},
        **kwargs,
    )
    client = _client_or_close(Client, cluster)
    handle = ClusterHandle("local", client, cluster, target_jobs=n_workers, max_replacements=0)
    try:
        handle._install_plugin()
        handle._poll()
        yield handle
    finally:
        client.close()
        cluster.close()


@contextmanager
def _batch_cluster(cfg: ClusterConfig, n_workers: int, log_directory: str | None) -> Iterator[ClusterHandle]:
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
    cluster = cluster_cls(
        # A random port for the scheduler's HTTP endpoints: no clash with another
        # scheduler on this host, and no dashboard (bokeh is not a dependency).
        scheduler_options={"dashboard_address": ":0", "dashboard": False},
        **_job_kwargs(cfg, log_directory=str(logs)),
    )
    client = _client_or_close(Client, cluster)
    target = cfg.n_jobs(n_workers)
    handle = ClusterHandle(
        cfg.kind, client, cluster, target_jobs=target, max_replacements=cfg.max_replacement_jobs
    )
    try:
        handle._install_plugin()
        _add_jobs(cluster, target)
        try:
            # Wait for the submissions themselves (not for the jobs to start): a refused
            # sbatch (unknown partition, account, QOS) is an error now, not a silent hang.
            cluster.sync(cluster._correct_state)
        except RuntimeError as exc:
            _drop_unsubmitted(cluster)
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
        if tmp_logs:
            shutil.rmtree(tmp_logs, ignore_errors=True)
