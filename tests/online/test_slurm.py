"""The HPC path for real: dask-jobqueue against a single-node Slurm (scripts/local-slurm.sh).

Marked ``slurm``: skipped with the reason where no Slurm can be used, failed instead under
``WHERETOLEARN_REQUIRE_SLURM=1`` (CI). Tasks shipped to the Slurm workers are standard
library functions, so the workers never have to import this test module.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from wheretolearn.online.cluster import ClusterConfig, open_cluster

pytestmark = pytest.mark.slurm


def _slurm_cfg(partition: str, **kw) -> ClusterConfig:
    return ClusterConfig(kind="slurm", queue=partition, memory="1GB", walltime="00:10:00", **kw)


def _job_state(job_id: str) -> str:
    out = subprocess.run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"],
                         capture_output=True, text=True, timeout=20)
    return out.stdout.strip() or "GONE"


def _wait(predicate, timeout: float, what: str) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.2)
    return time.monotonic() - start


def test_tasks_run_inside_slurm_jobs(slurm_partition, tmp_path):
    start = time.monotonic()
    with open_cluster(_slurm_cfg(slurm_partition), n_workers=2, log_directory=str(tmp_path)) as handle:
        first = handle.client.submit(os.getenv, "SLURM_JOB_ID", pure=False).result(timeout=90)
        seconds_to_first_result = time.monotonic() - start
        handle.client.wait_for_workers(2, timeout=60)
        job_ids = handle.client.gather(
            handle.client.map(os.getenv, ["SLURM_JOB_ID"] * 6, pure=False)
        )
        info = handle.info()
        submitted = handle.job_ids
    print(f"submit -> first task result on the local Slurm: {seconds_to_first_result:.2f} s")
    # Every task ran inside one of the two jobs this cluster submitted, never in this process.
    assert first in submitted and set(job_ids) <= set(submitted)
    assert os.environ.get("SLURM_JOB_ID") not in set(job_ids)
    assert info["kind"] == "slurm" and info["jobs_submitted"] == 2 == len(submitted)
    assert len(info["workers_seen"]) == 2
    # Closing the cluster releases its jobs (scale down at the end).
    _wait(lambda: all(_job_state(j) in ("GONE", "CANCELLED", "COMPLETED") for j in submitted),
          30, "the jobs to end after close")
    assert any(p.suffix == ".err" for p in tmp_path.iterdir())  # job logs went where asked


def test_scancelled_job_is_replaced_and_its_work_rescheduled(slurm_partition, tmp_path):
    with open_cluster(_slurm_cfg(slurm_partition), n_workers=2, log_directory=str(tmp_path)) as handle:
        client = handle.client
        client.wait_for_workers(2, timeout=90)
        # 2 s tasks keep both workers busy while one of their jobs is cancelled.
        futures = client.map(time.sleep, [2.0] * 6, pure=False)
        _wait(lambda: sum(len(v) for v in client.processing().values()) >= 2, 30, "tasks to start")
        victim = handle.job_ids[0]
        subprocess.run(["scancel", victim], check=True, timeout=20)
        t_cancel = time.monotonic()
        waited = _wait(lambda: handle.jobs_submitted >= 3, 30, "a replacement job")
        client.gather(futures)  # work lost with the cancelled job ran again elsewhere
        _wait(lambda: len(client.scheduler_info(n_workers=-1)["workers"]) == 2, 60,
              "the replacement worker to join")
        rejoined = time.monotonic() - t_cancel
        info = handle.info()
        replacement = handle.job_ids[2]
        assert client.submit(os.getenv, "SLURM_JOB_ID", pure=False).result(timeout=30) != victim
    print(f"scancel -> replacement submitted {waited:.1f} s, its worker joined {rejoined:.1f} s")
    assert _job_state(victim) in ("CANCELLED", "GONE")
    assert replacement not in handle.job_ids[:2]
    assert info["jobs_submitted"] == 3 and len(info["workers_seen"]) == 3
    assert handle.jobs_replaced == 1
