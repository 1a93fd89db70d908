"""Breed inside the online engine: config options, weighted training, a real study where
``tell`` reaches the sampler, and a resume that restores the sampler exactly."""

import json

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from wheretolearn.models.mlp import MLP
from wheretolearn.online.config import OnlineStudyConfig
from wheretolearn.online.ledger import SimulationLedger
from wheretolearn.online.study import OnlineStudy
from wheretolearn.online.trainer import OnlineTrainer
from wheretolearn.report.runfolder import to_jsonable


TINY = {"study": {"n": 12, "n_steps": 8, "n_simulations": 10, "seed": 1},
        "buffer": {"capacity": 40, "watermark": 16},
        "training": {"hidden": [32, 32], "torch_threads": 1, "min_batches": 120},
        "executor": {"workers": 2, "simulation_timeout": 10.0},
        "validation": {"n_val": 2, "every_batches": 20},
        "checkpoint": {"every_batches": 50}}


def tiny_breed(**sampler):
    # period 15 = the derived 3 x (capacity 40 // 8 steps) simulations
    return OnlineStudyConfig.model_validate({**TINY,
                                             "sampler": {"name": "breed", "period": 15,
                                                         **sampler}})


def test_sampler_options_are_validated_and_derived_from_the_buffer():
    cfg = OnlineStudyConfig().with_overrides(**{"sampler.name": "breed"})
    opts = cfg.sampler.options(n_steps=100, capacity=2500, watermark=500)["options"].flat()
    # period and min_finished as OGAS; window 2 x capacity, min_steps 0.1 x steps (ours)
    assert (opts["window"], opts["period"], opts["min_finished"], opts["min_steps"]) == (
        50, 75, 10, 10)
    assert OnlineStudyConfig().sampler.options(n_steps=100, capacity=2500, watermark=500) == {}
    with pytest.raises(ValidationError, match="applies only to name = 'breed'"):
        OnlineStudyConfig.model_validate({"sampler": {"name": "uniform", "sigma": 0.2}})
    with pytest.raises(ValidationError, match="sigma"):
        OnlineStudyConfig.model_validate({"sampler": {"name": "breed", "sigma": 0.0}})
    with pytest.raises(ValidationError, match="trigger"):
        OnlineStudyConfig.model_validate({"sampler": {"name": "breed", "trigger": "often"}})
    with pytest.raises(ValidationError, match="fitness_loss"):
        OnlineStudyConfig.model_validate({"sampler": {"name": "breed", "fitness_loss": "l1"}})


def _trainer(seed=0):
    torch.manual_seed(seed)
    return OnlineTrainer(MLP(3, 4, hidden=(8,)), y_shift=300.0, y_scale=200.0, fused=False)


def test_weighted_batch_loss_and_nrmse():
    rng = np.random.default_rng(0)
    x = rng.random((5, 3)).astype(np.float32)
    y = (100 + 400 * rng.random((5, 4))).astype(np.float32)
    w = np.array([2.0, 0.0, 1.0, 0.5, 1.5])
    t = _trainer()
    pred = t.predict(x)
    out = t.train_arrays(x, y, weights=w)
    per = out["per_sample_loss"]
    assert out["loss"] == pytest.approx(float(np.mean(w * per)), rel=1e-5)
    rel = np.linalg.norm(pred - y, axis=1) / np.linalg.norm(y, axis=1)
    np.testing.assert_allclose(out["per_sample_nrmse"], rel, rtol=1e-4)
    # weights of 1 give the unweighted step exactly
    a, b = _trainer(), _trainer()
    a.train_arrays(x, y)
    b.train_arrays(x, y, weights=np.ones(5))
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        torch.testing.assert_close(pa, pb)
    with pytest.raises(ValueError, match="weights"):
        _trainer().train_arrays(x, y, weights=[1.0, -1.0, 1.0, 1.0, 1.0])


def test_tell_reaches_breed_during_a_real_study_and_resume_restores_it(tmp_path):
    import tomli_w
    from typer.testing import CliRunner

    from wheretolearn.cli import app

    run = tmp_path / "run"
    cfg = tiny_breed(weighted=True, fitness_loss="nrmse")
    # First session from the CLI with --sampler breed (Breed's defaults), stopped at 60 batches.
    toml = tmp_path / "tiny.toml"
    toml.write_text(tomli_w.dumps({**TINY, "training": {**TINY["training"], "max_batches": 60},
                                   "checkpoint": {"every_batches": 20}}))
    res = CliRunner().invoke(app, ["online", "run", str(toml), "--sampler", "breed", "--out",
                                   str(run), "--no-progress"])
    assert res.exit_code == 0, res.output
    # Resume: the restored Breed state equals the checkpointed one (generator, fitness,
    # window, proposals, counters, queue), so it continues as the uninterrupted study would.
    study = OnlineStudy.open(run)
    saved = study._resume_state["sampler"]
    assert saved["counters"]["batches_told"] == 60
    study._build()
    assert json.dumps(to_jsonable(study.sampler.state_dict())) == json.dumps(to_jsonable(saved))
    # Continue without the batch limit (the run folder's config.toml still holds it).
    study = OnlineStudy(cfg, run)
    study._resume_state = OnlineStudy.open(run)._resume_state
    summary = study.run()
    diag = json.loads((run / "sampler.json").read_text())
    sampler = OnlineStudy.open(run)._resume_state["sampler"]
    # every trained batch was told to the sampler, and it resampled from what it was told
    assert sampler["counters"]["batches_told"] == summary["batches"] >= 120
    assert sampler["counters"]["generation"] >= 1
    told = [f for f in diag["draws"]["fitness"] if f is not None]
    assert len(told) == summary["simulations_completed"] == 10
    assert len(diag["proposals"]) == sampler["counters"]["generation"] + 1
    # the study told Breed its budget: no generation once the 10th simulation was requested
    assert sampler["options"]["n_simulations"] == 10
    lines = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("sampler_generation", 0) >= 1 for r in lines)
    ledger = SimulationLedger.load_json(run / "ledger.json")
    weights = np.array([r.weight for r in ledger])
    assert np.all(weights > 0) and len(weights) == 10
    for name in ("breed_params.png", "breed_fitness.png", "breed_schedule.png"):
        assert (run / "figures" / name).stat().st_size > 0


def test_issue_23_sampler_keys_defaults_and_options():
    s = OnlineStudyConfig.model_validate({"sampler": {"name": "breed"}}).sampler
    # the defaults the issue 23 measurement kept: MSE fitness with the batch baseline (better
    # per-sample tails on heat and Gray-Scott than nRMSE / step), the paper's R schedule
    assert (s.fitness_loss, s.fitness_baseline, s.fitness_quantile) == ("mse", "batch", 0.9)
    assert (s.r_start, s.r_end, s.r_break) == (0.5, 0.7, 3)
    assert (s.children, s.weight_cap, s.boundary_share) == ("reflect", 10.0, 0.0)
    opts = s.options(n_steps=100, capacity=2500, watermark=500, n_simulations=200)
    assert opts["n_simulations"] == 200 and opts["options"].weight_cap == 10.0
    flat = opts["options"].flat()
    assert flat["children"] == "reflect" and flat["fitness_quantile"] == 0.9
    assert "n_simulations" not in s.options(n_steps=100, capacity=2500, watermark=500)
    assert "boundary_share" not in opts                              # 0: the plain design
    # boundary_share applies to every sampler (Breed: to its base sampler)
    u = OnlineStudyConfig.model_validate({"sampler": {"name": "halton",
                                                      "boundary_share": 0.125}}).sampler
    assert u.options(n_steps=100, capacity=2500, watermark=500) == {"boundary_share": 0.125}
    b = OnlineStudyConfig.model_validate({"sampler": {"name": "breed", "boundary_share": 0.125,
                                                      "fitness_quantile": "mean"}}).sampler
    opts = b.options(n_steps=100, capacity=2500, watermark=500)
    assert opts["boundary_share"] == 0.125
    assert opts["options"].parents.fitness_quantile == "mean"
    from wheretolearn.online.sampler_registry import make_sampler

    make_sampler("breed", [[0.0, 1.0]] * 5, seed=0, **opts)         # every key is accepted
    for bad, match in (({"name": "breed", "weight_cap": 0.5}, "weight_cap"),
                       ({"name": "breed", "children": "wrap"}, "children"),
                       ({"name": "breed", "fitness_quantile": 0.0}, "fitness_quantile"),
                       ({"name": "breed", "fitness_quantile": "median"}, "fitness_quantile"),
                       ({"name": "uniform", "boundary_share": 1.5}, "boundary_share"),
                       ({"name": "breed", "boundary_share": 0.8}, "boundary_share"),
                       ({"name": "uniform", "weight_cap": 3.0}, "applies only")):
        with pytest.raises(ValidationError, match=match):
            OnlineStudyConfig.model_validate({"sampler": bad})
