"""The private dask / dask-jobqueue API the online engine depends on, in one place.

dask-jobqueue offers no public way to submit jobs and *see* a refused submission (its
``scale`` submits in a callback whose errors only reach the log), to give replacement jobs
fresh names, or to ask how many workers one job starts. These functions use the private
attributes that do it; :func:`private_api_problems` checks that they still exist with the
expected shapes, and ``tests/cluster/test_cluster.py`` fails when a dask release changes
them (pyproject.toml also pins the versions this was written against).
"""

from __future__ import annotations

import inspect
from typing import Any

__all__ = ["add_jobs", "drop_unsubmitted", "submit_jobs", "submit_jobs_async",
           "fresh_job_names", "worker_processes_per_job", "close_credential_files",
           "private_api_problems"]


def add_jobs(cluster: Any, n: int) -> None:
    """Add ``n`` job specs to a dask-jobqueue cluster without starting them.

    ``cluster.scale`` would start them in a callback whose errors only reach the log; the
    caller then runs :func:`submit_jobs` itself and sees a refused submission.
    """
    for _ in range(max(n, 0)):
        cluster.worker_spec.update(cluster.new_worker_spec())


def drop_unsubmitted(cluster: Any) -> None:
    """Forget jobs whose submission was refused (they have no job id and cannot be closed)."""
    from distributed.core import Status

    for name, job in list(cluster.workers.items()):
        if getattr(job, "job_id", None) is None:
            job.status = Status.failed  # what cluster.close() expects of a job never started
            del cluster.workers[name]
            cluster.worker_spec.pop(name, None)


async def submit_jobs_async(cluster: Any) -> None:
    """Start the jobs of ``cluster.worker_spec`` not started yet; a refused submission
    raises (``SpecCluster._correct_state``)."""
    await cluster._correct_state()


def submit_jobs(cluster: Any) -> None:
    """:func:`submit_jobs_async` from outside the cluster's event loop."""
    cluster.sync(cluster._correct_state)


def fresh_job_names(cluster: Any) -> None:
    """Make the next job names new (``SpecCluster._i`` counts them), so that a replacement
    is never mistaken for the job it replaces."""
    cluster._i = getattr(cluster, "_i", 0) + 1


def worker_processes_per_job(cluster: Any) -> int:
    """Dask workers one job of this dask-jobqueue cluster starts."""
    return int(cluster._dummy_job.worker_processes)


def close_credential_files(cluster: Any) -> None:
    """Delete the workers' temporary TLS files now, not when the cluster is garbage
    collected (dask-jobqueue keeps them as ``cluster._job_<key>`` temporary files)."""
    for key in ("ca_file", "cert", "key"):
        handle = getattr(cluster, f"_job_{key}", None)
        if handle is not None:
            try:
                handle.close()
            except FileNotFoundError:  # its folder was removed already
                pass


def private_api_problems(cluster: Any | None = None) -> list[str]:
    """What no longer matches the private API used here (empty when all is well).

    Without ``cluster`` only the classes are checked; with a dask-jobqueue cluster (it can
    be built without a batch system) its instance attributes too.
    """
    from distributed.deploy.spec import SpecCluster

    problems = []
    fn = getattr(SpecCluster, "_correct_state", None)
    if fn is None:
        problems.append("SpecCluster._correct_state is gone")
    elif inspect.signature(fn).parameters.keys() != {"self"}:
        problems.append(f"SpecCluster._correct_state takes {list(inspect.signature(fn).parameters)}")
    if not hasattr(SpecCluster, "new_worker_spec"):
        problems.append("SpecCluster.new_worker_spec is gone")
    if cluster is not None:
        if not isinstance(getattr(cluster, "_i", None), int):
            problems.append("cluster._i (job name counter) is not an int")
        dummy = getattr(cluster, "_dummy_job", None)
        if not isinstance(getattr(dummy, "worker_processes", None), int):
            problems.append("cluster._dummy_job.worker_processes is not an int")
        if not isinstance(getattr(cluster, "worker_spec", None), dict):
            problems.append("cluster.worker_spec is not a dict")
        spec = cluster.new_worker_spec()
        if not (isinstance(spec, dict) and len(spec) == 1):
            problems.append(f"new_worker_spec() gave {type(spec).__name__}, not one entry")
    return problems
