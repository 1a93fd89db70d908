"""TLS for batch clusters without a batch system: the [cluster] tls key, the job script's
TLS arguments, the workers' credential files, the opt-out warning and its record, and
tls:// scheduler addresses. Every scheduler here listens on loopback (interface "lo");
the real Slurm path is in test_slurm.py."""

from __future__ import annotations

import os
import stat

import pytest
from pydantic import ValidationError

from wheretolearn.cluster import (
    ClusterConfig,
    ClusterHandle,
    InsecureClusterWarning,
    check_scheduler_reachable,
    job_script,
)
from wheretolearn.cluster.start import _batch_cluster_kwargs, _credentials_folder
from wheretolearn.cluster.dask_private import close_credential_files


def _slurm(**kw) -> ClusterConfig:
    return ClusterConfig(kind="slurm", queue="q", memory="1GB", interface="lo", **kw)


def test_tls_is_on_by_default_and_strictly_boolean():
    assert ClusterConfig().tls is True and _slurm().tls is True
    with pytest.raises(ValidationError, match="valid boolean"):
        ClusterConfig.model_validate({"tls": "no"})


@pytest.mark.parametrize("address", ["http://host:8786", "ucx://host:1"])
def test_addresses_other_than_tcp_or_tls_are_rejected(address):
    with pytest.raises(ValidationError, match="must start with 'tcp://' or 'tls://'"):
        ClusterConfig(kind="address", address=address)
    assert ClusterConfig(kind="address", address="tls://h:1").address == "tls://h:1"


def test_job_script_carries_the_tls_arguments_and_tls_false_drops_them():
    secure = job_script(_slurm(shared_temp_directory="/shared/me"))
    assert "dask_worker tls://<scheduler-address>" in secure
    for arg in ("--protocol tls://", "--tls-ca-file /shared/me/", "--tls-cert /shared/me/",
                "--tls-key /shared/me/"):
        assert arg in secure
    plain = job_script(_slurm(tls=False))
    assert "dask_worker tcp://<scheduler-address>" in plain and "--tls" not in plain


def _start(cfg: ClusterConfig, shared):
    """A SLURMCluster with the engine's own arguments (no job submitted: sbatch not needed)."""
    from dask_jobqueue import SLURMCluster

    return SLURMCluster(**_batch_cluster_kwargs(cfg, None, shared))


def test_batch_cluster_is_tls_on_loopback_and_writes_private_worker_credentials(tmp_path):
    from distributed import Client

    shared = tmp_path / "run" / ".dask-tls"
    with _credentials_folder(_slurm(), shared) as folder:
        assert folder == str(shared) and stat.S_IMODE(shared.stat().st_mode) == 0o700
        with _start(_slurm(), folder) as cluster:
            address = cluster.scheduler_address
            script = cluster.job_script()
            files = sorted(shared.iterdir())
            modes = {stat.S_IMODE(f.stat().st_mode) for f in files}
            with Client(cluster, timeout=20) as client:  # the study's client has the credentials
                handle = ClusterHandle("slurm", client, cluster, target_jobs=0, max_replacements=0)
                info = handle.info()
        close_credential_files(cluster)
        assert not any(shared.iterdir())
    assert address.startswith("tls://127.0.0.1:")
    # The job script names the three worker files, all in the shared folder, owner-only.
    assert len(files) == 3 and {f.name.split(".")[3] for f in files} == {"ca_file", "cert", "key"}
    assert all(f"{f}" in script for f in files) and modes == {0o600}
    assert "--protocol tls://" in script and f"{address}" in script
    assert info["tls"] is True and info["scheduler"] == address
    assert not shared.exists()  # created for the run, removed with it


def test_tls_false_warns_and_is_recorded(tmp_path):
    from distributed import Client

    with pytest.warns(InsecureClusterWarning, match="tls = false.*run code as you"):
        kwargs = _batch_cluster_kwargs(_slurm(tls=False), None, None)
    from dask_jobqueue import SLURMCluster

    with SLURMCluster(**kwargs) as cluster, Client(cluster, timeout=20) as client:
        info = ClusterHandle("slurm", client, cluster, target_jobs=0, max_replacements=0).info()
        assert "--tls" not in cluster.job_script()
    assert info["tls"] is False and info["scheduler"].startswith("tcp://127.0.0.1:")


def test_the_configured_folder_is_kept_and_the_runs_own_removed(tmp_path):
    with _credentials_folder(_slurm(shared_temp_directory=str(tmp_path)), None) as folder:
        assert folder == str(tmp_path)
    assert tmp_path.is_dir()
    stale = tmp_path / "run" / ".dask-tls"  # left by a crashed session of the run
    stale.mkdir(parents=True)
    (stale / ".dask-jobqueue.worker.key.old").write_text("x")
    with _credentials_folder(_slurm(), stale) as folder:
        assert folder == str(stale)
    assert not stale.exists()
    with _credentials_folder(_slurm(tls=False), tmp_path / "x") as folder:
        assert folder is None
    assert not (tmp_path / "x").exists()


def test_tls_scheduler_needs_certificates_from_the_dask_configuration(tmp_path):
    import dask

    with dask.config.set({"distributed.comm.tls.ca-file": None, "distributed.comm.tls.client.cert": None}):
        with pytest.raises(ValueError, match="uses TLS but the Dask configuration sets no "
                                             "distributed.comm.tls.ca-file"):
            check_scheduler_reachable("tls://127.0.0.1:1", timeout=1)
    missing = str(tmp_path / "ca.pem")
    with dask.config.set({"distributed.comm.tls.ca-file": missing,
                          "distributed.comm.tls.client.cert": missing}):
        with pytest.raises(ValueError, match="does not exist"):
            check_scheduler_reachable("tls://127.0.0.1:1", timeout=1)


def test_tls_scheduler_is_used_with_configured_certificates(tmp_path):
    """--scheduler tls://...: a TLS scheduler and worker on loopback, the client's
    certificates from the Dask configuration (files, as a user would configure them)."""
    import dask
    from distributed import LocalCluster
    from distributed.security import Security

    from wheretolearn.cluster import open_cluster

    sec = Security.temporary()
    paths = {}
    for name, value in (("ca", sec.tls_ca_file), ("cert", sec.tls_client_cert), ("key", sec.tls_client_key)):
        paths[name] = tmp_path / f"{name}.pem"
        paths[name].write_text(value)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tls://",
                      host="127.0.0.1", security=sec, dashboard_address=":0",
                      scheduler_kwargs={"dashboard": False}) as cluster:
        address = cluster.scheduler_address
        cfg = ClusterConfig(kind="address", address=address)
        with dask.config.set({"distributed.comm.tls.ca-file": str(paths["ca"]),
                              "distributed.comm.tls.client.cert": str(paths["cert"]),
                              "distributed.comm.tls.client.key": str(paths["key"])}):
            with open_cluster(cfg, n_workers=1) as handle:
                assert handle.client.submit(os.getpid, pure=False).result(timeout=20) == os.getpid()
                assert handle.info()["tls"] is True
        # Without its certificates the same address is refused with one clear message.
        other = Security.temporary()
        for name, value in (("ca", other.tls_ca_file), ("cert", other.tls_client_cert),
                            ("key", other.tls_client_key)):
            paths[name].write_text(value)
        with dask.config.set({"distributed.comm.tls.ca-file": str(paths["ca"]),
                              "distributed.comm.tls.client.cert": str(paths["cert"]),
                              "distributed.comm.tls.client.key": str(paths["key"])}):
            with pytest.raises(ValueError, match="refused the connection"):
                with open_cluster(cfg, n_workers=1, connect_timeout=3):
                    pass
    assert address.startswith("tls://127.0.0.1:")


def test_code_given_only_the_address_reaches_a_tls_scheduler_started_here():
    """AMA labelling and dataset generation get the scheduler's address only: a TLS
    scheduler this process started is found by address, while it is registered."""
    from distributed import Client, LocalCluster
    from distributed.security import Security

    from wheretolearn.datasets.generate import check_scheduler
    from wheretolearn.cluster.security import forget_scheduler, register_scheduler

    sec = Security.temporary()
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tls://",
                      host="127.0.0.1", security=sec, dashboard_address=":0",
                      scheduler_kwargs={"dashboard": False}) as cluster:
        address = cluster.scheduler_address
        with pytest.raises(ValueError, match="sets no distributed.comm.tls.ca-file"):
            check_scheduler(address)  # not ours, and no certificates configured
        register_scheduler(address, sec)
        try:
            check_scheduler(address)
            with Client(address, timeout=20) as client:
                assert client.submit(os.getpid, pure=False).result(timeout=20) == os.getpid()
        finally:
            forget_scheduler(address)
        with pytest.raises(ValueError, match="sets no distributed.comm.tls.ca-file"):
            check_scheduler(address)
