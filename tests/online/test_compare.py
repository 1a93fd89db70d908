"""The sampler comparison (``wheretolearn online compare``): validation box coverage, the
lockstep engine, paired ratios and the CLI (issue 13, item 6)."""

import json

import numpy as np
import pytest
import tomli_w
from typer.testing import CliRunner

from wheretolearn.cli import app
from wheretolearn.online.compare import (box_validation_set, sampler_config,
                                         summarise_comparison)
from wheretolearn.online.config import OnlineStudyConfig

runner = CliRunner()
TINY = {"study": {"n": 8, "n_steps": 6, "n_simulations": 8},
        "buffer": {"capacity": 30, "watermark": 12},
        "training": {"hidden": [16], "torch_threads": 1},
        "sampler": {"name": "breed", "period": 5, "sigma": 0.2}}


def test_validation_set_covers_corners_edges_and_interior():
    bounds = np.array([[100.0, 500.0]] * 5)
    p, g = box_validation_set(bounds, n_edge=64, n_interior=64, seed=1)
    assert p.shape == (160, 5) and (g == 0).sum() == 32
    corners = p[g == 0]
    assert len({tuple(r) for r in corners}) == 32
    assert np.all(np.isin(corners, [100.0, 500.0]))
    on_bound = np.isin(p[g == 1], [100.0, 500.0])
    assert 0.35 < on_bound.mean() < 0.65                     # half the coordinates on a bound
    assert not np.isin(p[g == 2], [100.0, 500.0]).any()
    assert np.all((p >= 100) & (p <= 500))
    p2, _ = box_validation_set(bounds, n_edge=64, n_interior=64, seed=1)
    np.testing.assert_array_equal(p, p2)                    # its own seed: same set


def test_sampler_variants():
    cfg = OnlineStudyConfig.model_validate(TINY)
    assert sampler_config(cfg, "uniform").sampler.name == "uniform"       # breed keys dropped
    w = sampler_config(cfg, "breed-nrmse-weighted").sampler
    assert (w.name, w.weighted, w.fitness_loss, w.sigma) == ("breed", True, "nrmse", 0.2)
    with pytest.raises(ValueError, match="unknown sampler variant"):
        sampler_config(cfg, "uniform-weighted")


def test_summary_ratios_are_paired_by_seed():
    runs = [{"sampler": s, "seed": k, "batches": 1, "seconds": 1.0,
             "summary": {m: v for m in ("mean", "median", "p95", "p99", "max")}}
            for s, k, v in (("uniform", 0, 2.0), ("uniform", 1, 4.0),
                            ("breed", 0, 1.0), ("breed", 1, 4.0))]
    table = summarise_comparison({"samplers": ["uniform", "breed"], "runs": runs})
    assert table["breed"]["p99"]["ratio"] == pytest.approx((2.0 + 1.0) / 2)
    assert table["breed"]["p99"]["mean"] == pytest.approx(2.5)
    assert table["uniform"]["max"]["ratio"] == 1.0


def test_compare_cli_writes_the_table_and_nothing_on_bad_input(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(tomli_w.dumps(TINY))
    out = tmp_path / "cmp"
    res = runner.invoke(app, ["online", "compare", str(cfg), "--samplers", "uniform,breed",
                              "--seeds", "2", "--out", str(out), "--no-progress",
                              "--batches-per-simulation", "3"])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "compare.json").read_text())
    assert [r["sampler"] for r in data["runs"]] == ["uniform", "breed"] * 2
    # same budget: every run simulated the same number of simulations
    assert {r["simulations"] for r in data["runs"]} == {8}
    assert data["validation"]["n_simulations"] == 32 + 128
    assert data["summary"]["uniform"]["p99"]["ratio"] == 1.0
    assert "| breed |" in (out / "compare.md").read_text() and "P99" in res.output
    assert (out / "figures" / "compare_errors.png").stat().st_size > 0
    bad = runner.invoke(app, ["online", "compare", str(cfg), "--samplers", "breed",
                              "--seeds", "1", "--out", str(tmp_path / "bad"), "--no-progress"])
    assert bad.exit_code == 2 and "uniform" in bad.output
    assert not (tmp_path / "bad").exists()
    again = runner.invoke(app, ["online", "compare", str(cfg), "--out", str(out),
                                "--no-progress"])
    assert again.exit_code == 2 and "already exists" in again.output


def test_heat_breed_example_is_heat_online_with_sampler_breed():
    from pathlib import Path

    from wheretolearn.online.config import load_online_config

    ex = Path(__file__).resolve().parents[2] / "examples"
    breed = load_online_config(str(ex / "heat_breed.toml"))
    online = load_online_config(str(ex / "heat_online.toml"), **{"sampler.name": "breed"})
    assert breed == online
    assert breed.sampler.options(n_steps=100, capacity=2500, watermark=500)["window"] == 50
