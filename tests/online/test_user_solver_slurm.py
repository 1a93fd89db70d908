"""The worked example of a user's solver on a real (local) Slurm: Dask workers in batch
jobs, each simulation one ``srun`` step inside the worker's job, exactly once per step."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import tomli_w

pytestmark = pytest.mark.slurm

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "user_solver"


def test_example_solver_study_on_slurm_with_an_srun_launcher(slurm_partition, tmp_path):
    cfg = tomllib.loads((EXAMPLE / "study.toml").read_text())
    cfg["study"].update(n_simulations=6, n_steps=5, launcher=["srun", "--ntasks", "{cores}"],
                        command=[a if a != "20" else "5" for a in cfg["study"]["command"]])
    cfg["study"]["options"]["cwd"] = str(EXAMPLE)
    cfg["training"].update(min_batches=20, hidden=[16], torch_threads=1)
    cfg["validation"].update(n_val=1)
    cfg["executor"].update(simulation_timeout=60)
    cfg["cluster"] = {"kind": "slurm", "queue": slurm_partition, "memory": "1GB",
                      "walltime": "00:10:00", "interface": "lo"}  # Dask on loopback only
    config = tmp_path / "study.toml"
    config.write_text(tomli_w.dumps(cfg))
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "wheretolearn", "online", "run", str(config),
                           "--out", str(out), "--no-progress"],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"] == "completed" and summary["cluster"]["kind"] == "slurm"
    assert summary["simulations_completed"] == 6 and summary["simulations_failed"] == 0
    assert summary["samples_received"] == 30 and summary["samples_duplicated"] == 0
    ledger = json.loads((out / "ledger.json").read_text())["simulations"]
    assert all(len(s["attempts"]) == 1 for s in ledger)


RAMP = '''
import numpy as np
from wheretolearn.problems import SimulatorProblem


class Ramp(SimulatorProblem):
    def __init__(self, *, m=4, n_steps=4):
        super().__init__([[0.0, 1.0], [0.0, 1.0]], n_steps=n_steps, field_shape=(m,),
                         names=["slope", "offset"])
        self.m = m

    def simulate(self, params):
        x = np.linspace(0, 1, self.m)
        for s in range(self.n_steps):
            yield s, params[0] * x * (s + 1) + params[1]
'''


def test_python_problem_by_file_path_in_slurm_jobs(slurm_partition, tmp_path):
    """Batch jobs import a user's file by its absolute path, like local workers."""
    (tmp_path / "ramp.py").write_text(RAMP)
    config = tmp_path / "study.toml"
    config.write_text(tomli_w.dumps({
        "study": {"problem": "ramp.py:Ramp", "n_simulations": 4, "options": {"m": 6}},
        "buffer": {"capacity": 20, "watermark": 4},
        "training": {"hidden": [8], "torch_threads": 1, "min_batches": 5},
        "executor": {"workers": 2, "simulation_timeout": 60.0},
        "validation": {"n_val": 1, "every_batches": 5},
        "cluster": {"kind": "slurm", "queue": slurm_partition, "memory": "1GB",
                    "walltime": "00:10:00", "interface": "lo"}}))  # Dask on loopback only
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "wheretolearn", "online", "run", str(config),
                           "--out", str(out), "--no-progress"],
                          capture_output=True, text=True, timeout=240, cwd="/")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cluster"]["kind"] == "slurm" and summary["simulations_completed"] == 4
    assert summary["samples_received"] == 16 and summary["samples_duplicated"] == 0
