"""A started cluster and its job watchdog: :class:`ClusterHandle` carries the Dask client,
records the workers and jobs seen, and keeps the number of batch jobs at its target (a job
that ends early -- ``scancel``, walltime reached, node failure -- is replaced, up to
``max_replacement_jobs`` times)."""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from typing import Any

from .config import BATCH_KINDS
from .dask_private import (add_jobs, drop_unsubmitted, fresh_job_names, submit_jobs_async,
                           worker_processes_per_job)
from .jobs import _submit_error

log = logging.getLogger(__name__)

__all__ = ["ClusterHandle"]

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
        if self.kind not in BATCH_KINDS or self.cluster is None:
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
        """``{"kind", "scheduler", "tls", "jobs_submitted", "workers_seen": [...]}`` for
        ``summary.json``; ``tls`` is whether the scheduler address is ``tls://``."""
        self._poll()
        with self._lock:
            seen = list(self._workers_seen)
        address = self.scheduler_address
        return {"kind": self.kind, "scheduler": address, "tls": address.startswith("tls://"),
                "jobs_submitted": self.jobs_submitted, "workers_seen": seen}

    @property
    def scheduler_address(self) -> str:
        """The address the client talks to (``tls://...`` for a batch cluster with TLS)."""
        return str(self.client.scheduler.address)

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
        fresh_job_names(cluster)
        add_jobs(cluster, n_new)
        try:
            await submit_jobs_async(cluster)
        except RuntimeError as exc:  # keep watching; the next pass tries again
            log.warning("submitting a replacement job failed: %s", _submit_error(exc))
            drop_unsubmitted(cluster)
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
        if self.kind not in BATCH_KINDS or self.cluster is None:
            return
        from distributed.utils import sync

        sync(self.cluster.loop, self._ensure_async)

    def scale(self, n_workers: int) -> None:
        """Set the number of workers to keep (``0`` releases all jobs at the end of a run)."""
        if n_workers < 0:
            raise ValueError(f"n_workers must be >= 0, got {n_workers}")
        if self.cluster is None:
            return
        if self.kind in BATCH_KINDS:
            processes = worker_processes_per_job(self.cluster)
            self.target_jobs = math.ceil(n_workers / processes)
            self.cluster.scale(jobs=self.target_jobs)
        else:
            self.target_jobs = n_workers
            self.cluster.scale(n_workers)

    def _start_watcher(self) -> None:
        if self.kind not in BATCH_KINDS:
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
