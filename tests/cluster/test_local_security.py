"""Local Dask clusters that the package starts (``online``, ``generate``, AMA labelling)
accept no client without the run's credentials and listen on loopback only -- the
security review's findings 1 and 2 (another user of a login node ran code as the study's
user through a plain ``distributed.Client``; the HTTP endpoint listened on 0.0.0.0)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import psutil
import pytest

from wheretolearn.cluster import ClusterConfig, InsecureClusterWarning, local_cluster, open_cluster


def _listening(pids: set[int]) -> list[tuple[str, int]]:
    """``(ip, port)`` of every listening TCP socket of the processes ``pids``."""
    return sorted({(c.laddr.ip, c.laddr.port) for c in psutil.net_connections("inet")
                   if c.status == psutil.CONN_LISTEN and c.pid in pids})


def _tree(pid: int) -> set[int]:
    proc = psutil.Process(pid)
    return {pid} | {p.pid for p in proc.children(recursive=True)}


def test_local_cluster_refuses_clients_without_the_credentials(intruders_refused):
    from distributed import Client

    with local_cluster(1) as cluster:
        address = cluster.scheduler_address
        assert address.startswith("tls://127.0.0.1:")
        refusals = intruders_refused(address)
        with Client(cluster) as own:  # the run's own client gets in
            assert own.submit(os.getpid, pure=False).result(timeout=30) != os.getpid()
        with Client(address, timeout=20) as by_address:  # code of this process, address only
            assert by_address.submit(sum, [1, 2], pure=False).result(timeout=30) == 3
    print(*refusals, sep="\n")


def test_local_cluster_listens_on_loopback_only():
    before = set(_listening({os.getpid()}))
    with local_cluster(2) as cluster:
        assert len(cluster.scheduler_info["workers"]) == 2 or cluster.wait_for_workers(2) is None
        sockets = set(_listening(_tree(os.getpid()))) - before
    # scheduler, its HTTP endpoints, two workers and their nannies
    assert len(sockets) >= 5, sockets
    assert {ip for ip, _ in sockets} == {"127.0.0.1"}, sockets


def test_local_tls_false_warns_and_is_plain_tcp_on_loopback():
    with pytest.warns(InsecureClusterWarning, match="tls = false"):
        with open_cluster(ClusterConfig(tls=False), n_workers=1) as handle:
            info = handle.info()
    assert info["tls"] is False and info["scheduler"].startswith("tcp://127.0.0.1:")


def test_local_kind_is_tls_by_default_and_recorded():
    with warnings.catch_warnings():
        warnings.simplefilter("error", InsecureClusterWarning)
        with open_cluster(ClusterConfig(), n_workers=1) as handle:
            info = handle.info()
            assert handle.client.submit(sum, [2, 3], pure=False).result(timeout=30) == 5
    assert info["tls"] is True and info["scheduler"].startswith("tls://127.0.0.1:")


PROBE = textwrap.dedent('''
    import time
    from pathlib import Path

    from wheretolearn.problems import Problem

    class Probe(Problem):
        """x -> x^2; tells the test its scheduler's address and waits for its go."""
        name = "probe"

        def __init__(self, flags=""):
            self.flags = flags

        @property
        def input_shape(self):
            return (1,)

        @property
        def output_shape(self):
            return ()

        def default_input_measure(self):
            from wheretolearn.measures import Uniform

            return Uniform(0.0, 1.0, dim=1)

        def _evaluate(self, u):
            from distributed import get_worker

            flags = Path(self.flags)
            (flags / "address.tmp").write_text(get_worker().scheduler.address)
            (flags / "address.tmp").rename(flags / "address")
            end = time.monotonic() + 120
            while not (flags / "go").exists() and time.monotonic() < end:
                time.sleep(0.05)
            return (u ** 2).sum(dim=1)

    def make(flags=""):
        return Probe(flags)
''')


def test_second_client_is_refused_while_generate_runs(tmp_path, intruders_refused):
    """End to end: ``wheretolearn generate --workers 1`` runs; meanwhile clients without the
    run's credentials are refused and every socket of the study listens on loopback."""
    (tmp_path / "probe.py").write_text(PROBE)
    flags = tmp_path / "flags"
    flags.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "wheretolearn", "generate", f"{tmp_path / 'probe.py'}:make",
         "--n", "2", "--chunk", "1", "--workers", "1", "--out", str(tmp_path / "d.zarr"),
         "--no-progress", "-o", f"flags={flags}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        end = time.monotonic() + 180
        while not (flags / "address").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < end, "the study never reached its first task"
            time.sleep(0.1)
        address = (flags / "address").read_text()
        assert address.startswith("tls://127.0.0.1:")
        refusals = intruders_refused(address)
        sockets = _listening(_tree(proc.pid))
    finally:
        (flags / "go").touch()
        out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-2000:]
    assert sockets and {ip for ip, _ in sockets} == {"127.0.0.1"}, sockets
    assert Path(tmp_path / "d.zarr").is_dir()
    print(*refusals, sep="\n")
