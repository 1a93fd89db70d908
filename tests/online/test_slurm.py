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

from wheretolearn.cluster import ClusterConfig, open_cluster

pytestmark = pytest.mark.slurm


def _slurm_cfg(partition: str, **kw) -> ClusterConfig:
    # interface "lo": the scheduler and workers listen on loopback only (the local Slurm
    # node is 127.0.0.1), so the tests send no traffic to the network.
    return ClusterConfig(kind="slurm", queue=partition, memory="1GB", walltime="00:10:00",
                         interface="lo", **kw)


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


def test_pending_job_is_not_mistaken_for_a_lost_one(slurm_partition, tmp_path):
    # Two jobs that each need every core of the node: one runs, one waits in the queue.
    cpus = subprocess.run(["sinfo", "-h", "-p", slurm_partition, "-o", "%c"],
                          capture_output=True, text=True, timeout=20).stdout.split()[0]
    cfg = _slurm_cfg(slurm_partition, cores=int(cpus.rstrip("+")))
    with open_cluster(cfg, n_workers=2, log_directory=str(tmp_path)) as handle:
        handle.wait_for_workers(1, timeout=60)
        time.sleep(3.5)  # several passes of the watcher
        states = sorted(_job_state(j) for j in handle.job_ids)
        assert states == ["PENDING", "RUNNING"]
        assert handle.jobs_submitted == 2 and handle.jobs_replaced == 0


def test_refused_submission_is_a_clear_error_not_a_hang(slurm_partition):
    cfg = _slurm_cfg(slurm_partition).model_copy(update={"queue": "no-such-partition"})
    start = time.monotonic()
    with pytest.raises(ValueError, match="submitting the worker jobs failed: sbatch: error: invalid partition"):
        with open_cluster(cfg, n_workers=2):
            pass
    assert time.monotonic() - start < 30


def test_scancelled_job_is_replaced_and_its_work_rescheduled(slurm_partition, tmp_path):
    with open_cluster(_slurm_cfg(slurm_partition), n_workers=2, log_directory=str(tmp_path)) as handle:
        client = handle.client
        handle.wait_for_workers(2, timeout=90)
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
    print(f"scancel -> replacement submitted {waited:.1f} s; lost work redone and replacement joined {rejoined:.1f} s")
    assert _job_state(victim) in ("CANCELLED", "GONE")
    assert replacement not in handle.job_ids[:2]
    assert info["jobs_submitted"] == 3 and len(info["workers_seen"]) == 3
    assert handle.jobs_replaced == 1


# -- the online study on Slurm ----------------------------------------------------------
_STUDY_TOML = """
[study]
problem = "heat2d"
n = 16
n_steps = {n_steps}
n_simulations = {n_simulations}
seed = 0

[buffer]
kind = "fifo"
capacity = 400
watermark = 20

[training]
batch_size = 10
hidden = [32]

[executor]
workers = 2
simulation_timeout = 60.0
max_retries = 3

[validation]
n_val = 2
every_batches = 1000

[checkpoint]
every_batches = 1000

[cluster]
kind = "local"          # --cluster slurm overrides it
queue = "{partition}"
memory = "1GB"
walltime = "00:10:00"
interface = "lo"        # scheduler and workers on loopback only
"""


def _check_ensemble_accounted_for(summary: dict, n_steps: int) -> None:
    """Every simulation completed or recorded as failed, no sample twice."""
    assert summary["stopped"] == "completed"
    assert summary["simulations_completed"] + summary["simulations_failed"] == summary["simulations_requested"]
    assert summary["simulations_unfinished"] == 0
    assert summary["samples_duplicated"] == 0
    assert summary["samples_received"] == summary["simulations_completed"] * n_steps


def test_heat_study_runs_on_slurm_from_the_cli(slurm_partition, tmp_path):
    import json
    import sys

    config = tmp_path / "study.toml"
    config.write_text(_STUDY_TOML.format(n_steps=20, n_simulations=8, partition=slurm_partition))
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "wheretolearn", "online", "run", str(config), "--out", str(out),
         "--cluster", "slurm", "--no-progress"],
        capture_output=True, text=True, timeout=110,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    _check_ensemble_accounted_for(summary, n_steps=20)
    assert summary["simulations_completed"] == 8
    assert summary["cluster"]["kind"] == "slurm"
    assert summary["cluster"]["tls"] is True  # TLS by default
    assert summary["cluster"]["scheduler"].startswith("tls://127.0.0.1:")
    assert not (out / ".dask-tls").exists()  # the workers' credentials went with the cluster
    assert summary["cluster"]["jobs_submitted"] == 2
    assert len(summary["cluster"]["workers_seen"]) == 2


def test_tls_false_from_the_cli_warns_once_and_is_recorded(slurm_partition, tmp_path):
    import json
    import sys

    config = tmp_path / "study.toml"
    config.write_text(_STUDY_TOML.format(n_steps=5, n_simulations=2, partition=slurm_partition)
                      + "tls = false\n")
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "wheretolearn", "online", "run", str(config), "--out", str(out),
         "--cluster", "slurm", "--no-progress"],
        capture_output=True, text=True, timeout=110,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    warnings = [ln for ln in proc.stderr.splitlines() if "tls = false" in ln]
    assert len(warnings) == 1 and warnings[0].startswith("warning: [cluster] tls = false")
    cluster = json.loads((out / "summary.json").read_text())["cluster"]
    assert cluster["tls"] is False and cluster["scheduler"].startswith("tcp://127.0.0.1:")
    assert json.loads((out / "summary.json").read_text())["simulations_completed"] == 2


def test_refused_submission_from_the_cli_exits_2_and_leaves_no_run_folder(tmp_path):
    import sys

    config = tmp_path / "study.toml"
    config.write_text(_STUDY_TOML.format(n_steps=5, n_simulations=2, partition="no-such-partition"))
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "wheretolearn", "online", "run", str(config), "--out", str(out),
         "--cluster", "slurm", "--no-progress"],
        capture_output=True, text=True, timeout=110,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "invalid partition" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_heat_study_survives_a_scancelled_worker_job(slurm_partition, tmp_path, monkeypatch):
    import contextlib

    import wheretolearn.cluster as cluster_mod  # what the study imports open_cluster from
    from wheretolearn.online.config import load_online_config
    from wheretolearn.online.study import run_online_study

    config = tmp_path / "study.toml"
    # 10 000 steps: a few seconds of streaming even on a quiet machine, so the cancelled
    # job's work and its replacement both fall inside the run.
    config.write_text(_STUDY_TOML.format(n_steps=100, n_simulations=100, partition=slurm_partition))
    # A small buffer and message queue make the simulations wait for the trainer
    # (back-pressure), so simulations stay in flight long enough to be hit by scancel.
    cfg = load_online_config(str(config), **{"executor.queue_maxsize": 10, "buffer.capacity": 40})
    cfg = cfg.model_copy(update={"cluster": cfg.cluster.with_kind("slurm")})

    # Keep a reference to the study's cluster handle to see which job runs what.
    handles = []
    real_open_cluster = cluster_mod.open_cluster

    @contextlib.contextmanager
    def spying_open_cluster(*args, **kwargs):
        with real_open_cluster(*args, **kwargs) as handle:
            handles.append(handle)
            yield handle

    monkeypatch.setattr(cluster_mod, "open_cluster", spying_open_cluster)
    start = time.monotonic()
    events: dict = {}

    def busy_job() -> str | None:
        """Slurm job id of a worker with a simulation assigned right now."""
        handle = handles[0]
        workers = handle.client.scheduler_info(n_workers=-1)["workers"]
        names = {address: info["name"] for address, info in workers.items()}
        for address, keys in handle.client.processing().items():
            job = handle.cluster.workers.get(names.get(address))
            if keys and job is not None:
                return job.job_id
        return None

    def progress(status: dict) -> None:
        if status["samples_received"] > 0 and "first_sample" not in events:
            events["first_sample"] = time.monotonic() - start
        # As soon as samples stream, cancel the job of a worker that has a simulation
        # assigned (or, should the timing never show one, any running job of this study).
        done = status["simulations_completed"]
        if status["samples_received"] > 0 and "cancelled" not in events:
            job_id = busy_job()
            if job_id is None and done >= 10:
                job_id = next((j for j in handles[0].job_ids if _job_state(j) == "RUNNING"), None)
            if job_id is not None:
                subprocess.run(["scancel", job_id], check=True, timeout=20)
                events["cancelled"] = job_id
                events["done_at_cancel"] = done

    summary = run_online_study(cfg, tmp_path / "run", progress=progress).summary
    print(f"submit -> first sample on the local Slurm: {events['first_sample']:.1f} s; "
          f"scancel job {events.get('cancelled')} after {events.get('done_at_cancel')} of 100 "
          f"simulations; retries {summary['retries']}, attempts {summary['attempts']}, "
          f"redeliveries dropped {summary['redeliveries_dropped']}, jobs submitted "
          f"{summary['cluster']['jobs_submitted']}")
    assert "cancelled" in events and events["done_at_cancel"] < 50
    _check_ensemble_accounted_for(summary, n_steps=100)
    assert summary["simulations_completed"] == 100  # retries cover one lost worker
    assert summary["cluster"]["jobs_submitted"] >= 3  # a replacement job was requested
    assert _job_state(events["cancelled"]) in ("CANCELLED", "GONE")


def test_replacements_stop_at_max_replacement_jobs(slurm_partition, tmp_path):
    cfg = _slurm_cfg(slurm_partition, max_replacement_jobs=0)
    with open_cluster(cfg, n_workers=1, log_directory=str(tmp_path)) as handle:
        handle.wait_for_workers(1, timeout=60)
        subprocess.run(["scancel", handle.job_ids[0]], check=True, timeout=20)
        _wait(lambda: not handle.client.scheduler_info(n_workers=-1)["workers"], 30, "the worker to leave")
        time.sleep(2.5)  # watcher passes that must not submit anything
        handle.ensure_workers()
        assert handle.jobs_submitted == 1 and handle.jobs_replaced == 0


def test_client_without_the_credentials_is_refused_while_the_cluster_works(
        slurm_partition, tmp_path, intruders_refused):
    with open_cluster(_slurm_cfg(slurm_partition), n_workers=1, log_directory=str(tmp_path),
                      shared_temp_directory=tmp_path / "tls") as handle:
        address = handle.scheduler_address
        job = handle.client.submit(time.sleep, 3.0, pure=False)  # a task in flight meanwhile
        start = time.monotonic()
        refusals = intruders_refused(address)
        refused_in = time.monotonic() - start
        # Code of this process given only the address (AMA labelling) gets in.
        from distributed import Client

        with Client(address, timeout=20) as own:
            assert own.submit(os.getenv, "SLURM_JOB_ID", pure=False).result(timeout=30) in handle.job_ids
        job.result(timeout=90)  # the run's own work still completes
        result = handle.client.submit(os.getenv, "SLURM_JOB_ID", pure=False).result(timeout=30)
        job_ids = handle.job_ids
    print(f"intruders refused in {refused_in:.1f} s:", *refusals, sep="\n  ")
    assert address.startswith("tls://127.0.0.1:")
    assert result in job_ids
    assert refused_in < 30
