"""``wheretolearn ama --problem radiative``: particle AMA with the ci preset (both starts in
one run folder), and one-line errors for radiative settings (issue 22)."""

import json

import torch
from cli_checks import refused
from test_ama_burgers_cli import SUMMARY_KEYS
from typer.testing import CliRunner

from wheretolearn.cli import app

runner = CliRunner()


def test_ci_preset_both_starts_writes_the_run_folder(tmp_path):
    out = tmp_path / "run"
    res = runner.invoke(app, ["ama", "--problem", "radiative", "--preset", "ci", "--out", str(out),
                              "--no-progress", "--num-threads", "1", "--knudsen", "2",
                              "--particle-start", "both", "--eta-shrink", "halve"])
    assert res.exit_code == 0, res.output
    s = json.loads((out / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(s) and s["problem"] == "radiative" and s["grid"] == 11
    assert s["knudsen"] == 2.0 and s["particle_start"] == "paper" and s["particles"] == 12
    assert set(s["starts"]) == {"paper", "mixture"} and set(s["reductions"]) == {"paper",
                                                                                 "mixture"}
    for start, red in s["reductions"].items():
        assert set(red["in_loop"]) >= {"squared", "root"}
        assert set(red["fresh"]) == {"6", "12"}
        assert s["starts"][start]["particle_start"] == start
    assert set(s["baselines"]) == {"learned", "initial", "mixture"}
    # the mixture of Q is trained once and shared by both starts
    assert s["starts"]["mixture"]["baselines"]["mixture"] == s["baselines"]["mixture"]
    assert s["ama_loss_monotone"] and s["metatest"]["n_measures"] == 3
    assert [p["sigma"] for p in s["metatest"]["params"]] == [1.0, 2.0, 3.0]
    assert s["family_options"]["knudsen"] == 2.0
    cfg = (out / "config.toml").read_text()
    assert 'shrink = "halve"' in cfg and "eta = 0.003" in cfg       # flag merged into preset
    for j in s["particle_j"]:
        for traj in j:
            assert all(b <= a for a, b in zip(traj, traj[1:]))
    parts = torch.load(out / "particles.pt")
    assert set(parts) == {"paper", "mixture"} and parts["paper"][0].shape == (12, 9)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["start"] for r in records} == {"paper", "mixture"}
    assert "figures/particle_flow.png" in s["figures"]
    for fig in s["figures"]:
        assert (out / fig).exists()
    assert (out / "model.pt").exists()


def test_radiative_settings_are_checked(tmp_path):
    out = str(tmp_path / "x")
    refused(runner.invoke(app, ["ama", "--problem", "darcy", "--out", out, "--knudsen", "2",
                                "--no-progress"]),
            "knudsen is a setting of the radiative problem")
    refused(runner.invoke(app, ["ama", "--problem", "radiative", "--out", out,
                                "--particle-start", "uniform", "--no-progress"]),
            "--particle-start must be paper, mixture or both, got 'uniform'")
    refused(runner.invoke(app, ["ama", "--problem", "radiative", "--out", out,
                                "--eta-shrink", "third", "--no-progress"]),
            "--eta-shrink must be divide or halve")
