"""Fixtures for the online engine's tests: a usable local Slurm for tests marked ``slurm``.

A ``slurm`` test runs against a real single-node Slurm (``scripts/local-slurm.sh``). When
none is running and this process is root, the fixture starts one (and stops it again at
the end of the session); otherwise the test is skipped with the reason -- unless
``WHERETOLEARN_REQUIRE_SLURM=1`` (set by ``.ci/run``), where a Slurm that cannot be used
fails the test instead: in CI a skipped Slurm test is a failure, not a pass.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "local-slurm.sh"
REQUIRE_ENV = "WHERETOLEARN_REQUIRE_SLURM"
PARTITION_ENV = "WHERETOLEARN_SLURM_PARTITION"


def _running_partition() -> str | None:
    """The partition a running Slurm offers (``$WHERETOLEARN_SLURM_PARTITION`` when set
    and known, else the default one), or ``None`` when no Slurm answers."""
    if shutil.which("sinfo") is None:
        return None
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=15)
        parts = subprocess.run(["sinfo", "-h", "-o", "%P %a"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if "UP" not in ping.stdout or parts.returncode != 0:
        return None
    up = [line.split()[0] for line in parts.stdout.splitlines() if line.split()[-1:] == ["up"]]
    wanted = os.environ.get(PARTITION_ENV)
    if wanted and wanted in (p.rstrip("*") for p in up):
        return wanted
    defaults = [p.rstrip("*") for p in up if p.endswith("*")]
    return (defaults or [p.rstrip("*") for p in up] or [None])[0]


def _why_cannot_start() -> str | None:
    if os.geteuid() != 0:
        return (
            f"no Slurm is running and this user (uid {os.geteuid()}) is not root, so "
            f"{SCRIPT.name} cannot start one"
        )
    if shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
        return "no Slurm is installed and apt-get is not available to install it"
    if not SCRIPT.is_file():
        return f"{SCRIPT} is missing"
    return None


@pytest.fixture(scope="session")
def _local_slurm():
    """``(partition, reason)``: a running local Slurm's partition, or ``None`` and why not."""
    partition = _running_partition()
    started = False
    reason = None
    if partition is None:
        reason = _why_cannot_start()
        if reason is None:
            args = ["bash", str(SCRIPT), "start"]
            if os.environ.get(PARTITION_ENV):
                args += ["--partition", os.environ[PARTITION_ENV]]
            try:
                proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
            except subprocess.TimeoutExpired:
                reason = f"{SCRIPT.name} did not finish within 300 s"
            else:
                if proc.returncode == 0:
                    started = True
                    partition = proc.stdout.strip().splitlines()[-1]
                else:
                    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                    reason = f"{SCRIPT.name} failed (exit {proc.returncode}): {tail}"
    yield partition, reason
    if started:
        subprocess.run(["bash", str(SCRIPT), "stop"], capture_output=True, timeout=60)


@pytest.fixture
def slurm_partition(_local_slurm) -> str:
    """Partition of a usable local Slurm; skips (or fails under WHERETOLEARN_REQUIRE_SLURM=1)."""
    partition, reason = _local_slurm
    if partition is None:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but Slurm is not usable: {reason}", pytrace=False)
        pytest.skip(f"Slurm not usable: {reason}")
    return partition


@pytest.fixture(autouse=True)
def _require_slurm_for_marked(request):
    """Every test marked ``slurm`` gets the skip/fail logic, even without the fixture."""
    if request.node.get_closest_marker("slurm") is not None:
        request.getfixturevalue("slurm_partition")
