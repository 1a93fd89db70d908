"""Cluster selection without a batch system: the [cluster] table's validation, the batch
scripts for Slurm/PBS/SGE, reachability of a scheduler address, and real local/address
clusters (the Slurm path itself is exercised in test_slurm.py)."""

from __future__ import annotations

import socket
import sys
import time

import pytest
from pydantic import ValidationError

from wheretolearn.cluster import (
    ClusterConfig,
    check_scheduler_reachable,
    job_script,
    open_cluster,
)


# -- [cluster] table validation ---------------------------------------------------------
def test_default_is_local():
    cfg = ClusterConfig()
    assert cfg.kind == "local"
    assert cfg.n_jobs(3) == 3


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"kind": "kubernetes"}, "'local', 'slurm', 'pbs', 'sge' or 'address'"),
        ({"kind": "slurm"}, "needs queue"),
        ({"kind": "pbs"}, "needs queue"),
        ({"kind": "sge", "queue": ""}, "needs queue"),
        ({"kind": "address"}, "needs address"),
        ({"walltime": "1:00"}, "walltime must be HH:MM:SS"),
        ({"walltime": "00:60:00"}, "walltime must be HH:MM:SS"),
        ({"walltime": "01:00:00:00"}, "walltime must be HH:MM:SS"),
        ({"walltime": "one hour"}, "walltime must be HH:MM:SS"),
        ({"memory": "lots"}, "memory must be a positive size"),
        ({"cores": 1, "processes": 2}, "processes (2) must not exceed cores (1)"),
        ({"cores": 0}, "greater than or equal to 1"),
        ({"jobs": 0}, "greater than or equal to 1"),
        ({"partition": "debug"}, "Extra inputs are not permitted"),
    ],
)
def test_invalid_tables_are_rejected_with_a_clear_message(table, message):
    with pytest.raises(ValidationError) as err:
        ClusterConfig.model_validate(table)
    assert message in str(err.value)


@pytest.mark.parametrize("walltime", ["00:05:00", "1:30:00", "72:00:00", "120:59:59"])
def test_valid_walltimes_are_accepted(walltime):
    assert ClusterConfig(walltime=walltime).walltime == walltime


def test_with_kind_overrides_and_revalidates():
    cfg = ClusterConfig(queue="debug")
    assert cfg.with_kind("slurm").kind == "slurm"
    with pytest.raises(ValidationError, match="needs queue"):
        ClusterConfig().with_kind("pbs")
    with pytest.raises(ValueError, match="unknown cluster kind 'lsf'; allowed: local, slurm"):
        cfg.with_kind("lsf")


@pytest.mark.parametrize(("n_workers", "processes", "jobs", "expected"), [(5, 1, None, 5), (5, 2, None, 3), (5, 2, 7, 7)])
def test_job_count_follows_the_number_of_workers(n_workers, processes, jobs, expected):
    cfg = ClusterConfig(kind="slurm", queue="q", cores=2, processes=processes, jobs=jobs)
    assert cfg.n_jobs(n_workers) == expected


# -- batch scripts ----------------------------------------------------------------------
def _cfg(kind, **kw):
    base = dict(
        kind=kind,
        queue="short",
        cores=4,
        processes=2,
        memory="8GB",
        walltime="02:15:00",
        account="proj42",
        job_extra_directives=["--exclusive"] if kind == "slurm" else ["-l gpu=0"],
    )
    return ClusterConfig(**{**base, **kw})


def test_slurm_job_script_has_the_directives():
    script = job_script(_cfg("slurm"), n_workers=5)
    lines = script.splitlines()
    assert lines[0].startswith("#!")
    for directive in ("#SBATCH -p short", "#SBATCH -t 02:15:00", "#SBATCH --cpus-per-task=4",
                      "#SBATCH --mem=8G", "#SBATCH -A proj42", "#SBATCH --exclusive"):
        assert directive in lines, directive
    worker = next(line for line in lines if "distributed.cli.dask_worker" in line)
    # The workers run this very interpreter (the venv that has wheretolearn installed).
    assert worker.startswith(sys.executable + " ")
    assert "--nthreads 2" in worker and "--nworkers 2" in worker
    assert "submits 3 such job(s)" in script  # ceil(5 workers / 2 per job)
    # Workers retire 5 minutes before the 02:15:00 walltime, so no job is killed mid-task.
    assert "--lifetime 7800s --lifetime-stagger 60s" in worker
    short = job_script(_cfg("slurm", walltime="00:10:00"))
    assert "--lifetime" not in short


def test_pbs_job_script_has_the_directives():
    lines = job_script(_cfg("pbs"), n_workers=2).splitlines()
    for directive in ("#PBS -q short", "#PBS -l walltime=02:15:00", "#PBS -A proj42", "#PBS -l gpu=0"):
        assert directive in lines, directive
    assert any(line.startswith("#PBS -l select=1:ncpus=4:mem=") for line in lines)


def test_sge_job_script_has_the_directives():
    lines = job_script(_cfg("sge"), n_workers=2).splitlines()
    for directive in ("#$ -q short", "#$ -l h_rt=02:15:00", "#$ -P proj42", "#$ -l gpu=0"):
        assert directive in lines, directive


@pytest.mark.parametrize("kind", ["local", "address"])
def test_job_script_needs_a_batch_kind(kind):
    cfg = ClusterConfig(kind=kind, address="tcp://127.0.0.1:8786" if kind == "address" else None)
    with pytest.raises(ValueError, match="submits no batch job"):
        job_script(cfg)


def test_batch_kind_without_the_batch_command_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ValueError, match="needs the batch command 'sbatch', which is not on PATH"):
        with open_cluster(ClusterConfig(kind="slurm", queue="debug"), n_workers=1):
            pass


# -- scheduler addresses ----------------------------------------------------------------
def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_scheduler_fails_within_the_timeout():
    address = f"tcp://127.0.0.1:{_closed_port()}"
    start = time.monotonic()
    with pytest.raises(ValueError, match=f"scheduler at {address} cannot be reached"):
        check_scheduler_reachable(address, timeout=2.0)
    assert time.monotonic() - start < 3.0


def test_silent_scheduler_times_out():
    # A listening socket whose accept backlog is full never completes the handshake,
    # like a scheduler host that drops packets.
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        fillers = []
        try:
            for _ in range(16):
                try:
                    fillers.append(socket.create_connection(("127.0.0.1", port), timeout=0.3))
                except OSError:
                    break  # backlog full
            start = time.monotonic()
            with pytest.raises(ValueError, match="cannot be reached within 0.5 s"):
                check_scheduler_reachable(f"tcp://127.0.0.1:{port}", timeout=0.5)
            assert time.monotonic() - start < 1.5
        finally:
            for f in fillers:
                f.close()


@pytest.mark.parametrize(("address", "message"), [("tcp://127.0.0.1", "not of the form 'tcp://host:port'"), ("", "must be a string"),
                                                  (None, "must be a string")])
def test_malformed_scheduler_address(address, message):
    with pytest.raises(ValueError, match=message):
        check_scheduler_reachable(address)


def test_address_kind_with_unreachable_scheduler_fails_before_connecting():
    cfg = ClusterConfig(kind="address", address=f"tcp://127.0.0.1:{_closed_port()}")
    with pytest.raises(ValueError, match="cannot be reached"):
        with open_cluster(cfg, n_workers=1, connect_timeout=1.0):
            pass


# -- real clusters ----------------------------------------------------------------------
def test_local_cluster_runs_tasks_in_separate_worker_processes_and_closes():
    import os

    with open_cluster(ClusterConfig(), n_workers=2) as handle:
        # client.run ships os.getpid by reference: no test-module import in the workers.
        pids = set(handle.client.run(os.getpid).values())
        info = handle.info()
        client = handle.client
    assert os.getpid() not in pids and len(pids) == 2
    assert info["kind"] == "local" and info["jobs_submitted"] == 0
    assert len(info["workers_seen"]) == 2
    assert client.status == "closed"
    assert handle.cluster.status.name == "closed"


def test_address_kind_uses_an_existing_scheduler_and_leaves_it_running():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp",
                      dashboard_address=None) as lc:
        cfg = ClusterConfig(kind="address", address=lc.scheduler_address)
        with open_cluster(cfg, n_workers=4) as handle:
            assert handle.client.submit(lambda x: x * 2, 21).result() == 42
            info = handle.info()
        assert info["kind"] == "address" and info["jobs_submitted"] == 0
        assert len(info["workers_seen"]) == 1
        with Client(lc) as other:  # the scheduler we connected to is not ours to close
            assert other.submit(lambda: 1).result() == 1


# -- the CLI's one-line errors (exit status 2) for cluster selection ------------------------
@pytest.mark.parametrize(
    ("cluster_table", "flags", "message"),
    [
        ({}, ["--cluster", "lsf"], "unknown cluster kind 'lsf'; allowed: local, slurm, pbs, sge, address"),
        ({"kind": "pbs"}, [], "needs queue"),
        ({"kind": "slurm", "queue": "debug", "walltime": "2h"}, [], "walltime must be HH:MM:SS"),
        ({}, ["--scheduler", "tcp://127.0.0.1:{port}"], "scheduler at tcp://127.0.0.1:{port} cannot be reached"),
    ],
)
def test_cli_cluster_errors_are_one_line_with_exit_status_2(tmp_path, cluster_table, flags, message):
    import tomli_w
    from typer.testing import CliRunner

    from wheretolearn.cli import app

    port = _closed_port()
    config = tmp_path / "study.toml"
    config.write_text(tomli_w.dumps({"study": {"n": 8, "n_steps": 2, "n_simulations": 1},
                                     "cluster": cluster_table}))
    out = tmp_path / "run"
    args = ["online", "run", str(config), "--out", str(out), "--no-progress",
            *[f.format(port=port) for f in flags]]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert message.format(port=port) in lines[0]
    assert not out.exists()


# -- scripts/local-slurm.sh refuses clearly where it cannot work ---------------------------
def _run_script_unprivileged(*args):
    """Run local-slurm.sh as a non-root user, with an ``scontrol`` that finds no Slurm."""
    import os
    import shutil
    import subprocess
    import tempfile
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "scripts" / "local-slurm.sh"
    # Not under pytest's tmp_path: that is private to root, and the stub must be reachable.
    with tempfile.TemporaryDirectory(prefix="wtl-fake-bin-") as fake_bin:
        os.chmod(fake_bin, 0o755)
        stub = Path(fake_bin) / "scontrol"
        stub.write_text("#!/bin/sh\nexit 1\n")
        stub.chmod(0o755)
        # A copy, since the checkout may sit in a directory only root can enter.
        script = Path(shutil.copy(script, Path(fake_bin) / "local-slurm.sh"))
        script.chmod(0o755)
        path = f"{fake_bin}:/usr/sbin:/usr/bin:/sbin:/bin"
        # runuser resets PATH: set it again inside.
        cmd = ["env", f"PATH={path}", "LC_ALL=C", "bash", str(script), *args]
        if os.geteuid() == 0:
            if shutil.which("runuser") is None:
                pytest.skip("running as root and runuser is missing: cannot run the script unprivileged")
            cmd = ["runuser", "-u", "nobody", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30)


def test_local_slurm_script_needs_root():
    proc = _run_script_unprivileged("start")
    assert proc.returncode == 1
    assert "must run as root" in proc.stderr and proc.stdout == ""


def test_local_slurm_script_rejects_bad_arguments():
    proc = _run_script_unprivileged("--partition", "no spaces")
    assert proc.returncode == 1 and "partition name 'no spaces'" in proc.stderr


def test_a_failing_watcher_pass_is_logged_once_and_does_not_stop_the_watcher(caplog):
    import asyncio
    import logging

    from wheretolearn.cluster import ClusterHandle

    handle = ClusterHandle("slurm", None, None, target_jobs=1, max_replacements=1)
    outcomes = iter([OSError("squeue: command timed out")] * 2 + [None])

    async def ensure():
        exc = next(outcomes)
        if exc is not None:
            raise exc

    handle._ensure_async = ensure
    with caplog.at_level(logging.WARNING, logger="wheretolearn.cluster.job_watch"):
        for _ in range(3):
            asyncio.run(handle._watch_tick())  # never raises: the watcher keeps running
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["checking the slurm worker jobs failed (watcher goes on): "
                        "OSError: squeue: command timed out"]
    assert handle._last_watch_error is None  # the third pass succeeded


def test_local_cluster_is_closed_when_the_client_cannot_connect(monkeypatch):
    import distributed

    closed = []

    class FakeCluster:
        scheduler_address = "tls://127.0.0.1:1"
        security = None

        def __init__(self, **kwargs):
            pass

        def close(self):
            closed.append(True)

    def refusing_client(cluster):
        raise OSError("client could not connect to the scheduler")

    monkeypatch.setattr(distributed, "LocalCluster", FakeCluster)
    monkeypatch.setattr(distributed, "Client", refusing_client)
    with pytest.raises(OSError, match="could not connect"):
        with open_cluster(ClusterConfig(), n_workers=1):
            pass  # pragma: no cover -- never entered
    assert closed == [True]  # the worker processes are not left running


# -- the private dask API, kept in one adapter ----------------------------------------------
def test_private_dask_api_still_matches_the_adapter():
    """Fails when a dask / dask-jobqueue release changes the private API the engine uses
    (SpecCluster._correct_state, ._i, ._dummy_job, worker_spec / new_worker_spec)."""
    from dask_jobqueue import SLURMCluster

    from wheretolearn.cluster import dask_private as dp

    assert dp.private_api_problems() == []
    with SLURMCluster(cores=1, processes=1, memory="1GB", queue="q",
                      scheduler_options={"dashboard_address": None}) as cluster:
        assert dp.private_api_problems(cluster) == []
        assert dp.worker_processes_per_job(cluster) == 1
        dp.add_jobs(cluster, 2)                       # specs only: nothing is submitted
        names = set(cluster.worker_spec)
        assert len(names) == 2 and not cluster.workers
        dp.fresh_job_names(cluster)
        dp.add_jobs(cluster, 1)
        assert len(set(cluster.worker_spec) - names) == 1   # a new, unused name
        cluster.worker_spec.clear()


def test_no_private_dask_api_outside_the_adapter():
    from pathlib import Path

    import wheretolearn.cluster as cluster_pkg

    for path in Path(cluster_pkg.__file__).parent.glob("*.py"):
        if path.name == "dask_private.py":
            continue
        text = path.read_text()
        for name in ("._correct_state", "._dummy_job", "cluster._i "):
            assert name not in text, f"{path.name} uses {name}; go through dask_private"
