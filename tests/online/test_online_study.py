"""Tests of the online study: configuration, validation set, run folder, stop and resume."""

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from wheretolearn.online.checkpoint import CheckpointStore, load_checkpoint
from wheretolearn.online.config import OnlineStudyConfig, load_online_config
from wheretolearn.online.ledger import SimulationLedger
from wheretolearn.online.study import (OnlineStudy, resume_online_study, run_online_study,
                                       validation_set)
from wheretolearn.online.trainer import OnlineTrainer
from wheretolearn.problems import get_problem

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "heat_online.toml"
SUMMARY_KEYS = {"simulations_requested", "simulations_completed", "simulations_failed",
                "retries", "samples_received", "samples_duplicated", "val_error",
                "trainer_samples_per_second", "trainer_idle_fraction", "seconds", "cluster"}


def tiny(**sections):
    base = {"study": {"n": 12, "n_steps": 8, "n_simulations": 10, "seed": 1},
            "buffer": {"capacity": 40, "watermark": 16},
            "training": {"hidden": [32, 32], "torch_threads": 1},
            "executor": {"workers": 2, "simulation_timeout": 10.0},
            "validation": {"n_val": 2, "every_batches": 10},
            "checkpoint": {"every_batches": 25}}
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return OnlineStudyConfig.model_validate(base)


def untrained_error(cfg, x, y):
    """Mean relative L2 error on (x, y) of the study's network before any training."""
    import torch

    from wheretolearn.models.mlp import MLP

    torch.manual_seed(cfg.study.seed)
    model = MLP(x.shape[1], y.shape[1], hidden=tuple(cfg.training.hidden))
    return OnlineTrainer(model, y_shift=300.0, y_scale=200.0).validate(x, y)["mean"]


def test_defaults_are_the_cpu_settings_and_the_example_parses():
    cfg = OnlineStudyConfig()
    assert (cfg.study.n, cfg.study.n_steps, cfg.study.n_simulations) == (64, 100, 200)
    assert (cfg.buffer.kind, cfg.buffer.capacity, cfg.buffer.watermark) == ("reservoir", 2500, 500)
    assert (cfg.training.hidden, cfg.training.lr, cfg.training.batch_size) == ([256, 256], 1e-3, 10)
    assert cfg.executor.attempts_in_flight == cfg.executor.workers == 2
    # The example spells the defaults, but for a shorter timeout suited to 50 ms simulations.
    assert load_online_config(str(EXAMPLE)) == cfg.with_overrides(
        **{"executor.simulation_timeout": 10.0})
    paper = OnlineStudyConfig.paper()
    assert (paper.study.n, paper.study.n_simulations, paper.buffer.capacity) == (1000, 25000, 6000)
    over = cfg.with_overrides(**{"executor.workers": 4, "sampler.name": "halton",
                                 "executor.fail_rate": None})
    assert over.executor.workers == 4 and over.sampler.name == "halton"
    with pytest.raises(ValidationError, match="watermark"):
        cfg.with_overrides(**{"buffer.watermark": 3000})


def test_validation_set_is_the_batched_solver_on_its_own_seed():
    problem = get_problem("heat2d", n=6, n_steps=4)
    bounds = np.array([[100.0, 500.0]] * 5)
    params, x, y = validation_set(problem, bounds, n_val=3, seed=7)
    np.testing.assert_allclose(params, np.random.default_rng(7).uniform(100, 500, (3, 5)))
    assert x.shape == (12, 6) and y.shape == (12, 36)
    truth = problem(params).reshape(3, 4, 36)
    for v in range(3):
        for t in range(4):
            row = v * 4 + t
            np.testing.assert_allclose(y[row], truth[v, t], rtol=1e-6)
            np.testing.assert_allclose(x[row, :5], (params[v] - 100) / 400, rtol=1e-6)
            assert x[row, 5] == pytest.approx(t / 3)
    _, x2, _ = validation_set(problem, bounds, n_val=3, seed=7)
    np.testing.assert_array_equal(x, x2)


def test_run_folder_summary_metrics_checkpoint(tmp_path):
    out = tmp_path / "run"
    seen = []
    cfg = tiny(training={"min_batches": 150, "lr": 1e-2})
    result = run_online_study(cfg, out, progress=seen.append)
    summary = result.summary
    assert result.run_dir == out and result.config == cfg     # the common study result
    assert SUMMARY_KEYS <= set(summary)
    assert set(summary["val_error"]) == {"mean", "median", "p95", "p99", "max"}
    assert summary["simulations_completed"] == 10 and summary["samples_received"] == 80
    assert summary["samples_duplicated"] == 0 and summary["stopped"] == "completed"
    assert 0 <= summary["trainer_idle_fraction"] < 1
    assert summary["cluster"]["kind"] == "local"
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    # resolved config round-trips
    assert load_online_config(str(out / "config.toml")) == cfg
    # metrics: increasing batches, validation rows, error went down from the first check
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    batches = [r["batch"] for r in rows if "final" not in r]
    assert batches == sorted(set(batches)) and rows[-1]["final"]
    assert rows[-1]["val_mean"] == pytest.approx(summary["val_error"]["mean"])
    # training helped: the same network before training (same seed) is worse
    assert summary["batches"] >= 150
    assert (out / "figures" / "online_training.png").stat().st_size > 1000
    # progress saw the stream
    assert seen[-1]["samples_received"] == 80 and seen[-1]["simulations_completed"] == 10
    # final checkpoint: buffer holds only steps the ledger received; trainer counters agree
    latest = CheckpointStore(out).latest()
    state = load_checkpoint(latest / "checkpoint.pt")
    assert json.loads((latest / "ledger.json").read_text()) == json.loads(
        (out / "ledger.json").read_text())                  # the final ledger, both places
    ledger = SimulationLedger.from_state_dict(state["ledger"])
    for sim, step in zip(np.asarray(state["buffer"]["sim_id"]), np.asarray(state["buffer"]["step"])):
        assert ledger[int(sim)].has_step(int(step))
    assert state["trainer"]["batches_seen"] == summary["batches"]
    # training fitted what it trained on: the saved model beats the same untrained network
    # on the samples in the final buffer
    x, y = np.asarray(state["buffer"]["x"]), np.asarray(state["buffer"]["y"])
    trained = OnlineTrainer.from_state_dict(state["trainer"]).validate(x, y)["mean"]
    assert trained < untrained_error(cfg, x, y) / 2
    assert summary["samples_trained"] == state["trainer"]["samples_seen"]
    with pytest.raises(FileExistsError, match="not empty"):
        run_online_study(tiny(), out)
    # the marker lists every path the run wrote: --overwrite may replace exactly those
    from wheretolearn._ownership import MARKER, check_replaceable, list_tree

    record = json.loads((out / MARKER).read_text())
    assert record["paths"] == sorted(list_tree(out)) and "figures/online_training.png" in \
        record["paths"]
    assert check_replaceable(out, "run", overwrite=True) is True
    (out / "figures" / "mine.png").write_bytes(b"a user's figure")
    with pytest.raises(FileExistsError, match="mine.png"):
        check_replaceable(out, "run", overwrite=True)


def test_stop_at_max_batches_then_resume_to_the_end(tmp_path):
    out = tmp_path / "run"
    cfg = tiny(study={"n_simulations": 16}, training={"max_batches": 12},
               buffer={"kind": "fifo", "capacity": 30, "watermark": 10},
               checkpoint={"every_batches": 5})
    first = run_online_study(cfg, out).summary
    assert first["stopped"] == "max_batches" and first["batches"] == 12
    assert first["simulations_unfinished"] + first["simulations_completed"] == \
        first["simulations_requested"]
    # FIFO serves each received sample at most once: trained <= received
    assert first["samples_trained"] <= first["samples_received"]
    # lift the batch limit in the run folder's config and resume
    text = (out / "config.toml").read_text().replace("max_batches = 12", "")
    (out / "config.toml").write_text(text)
    assert "max_batches" not in tomllib.loads(text)["training"]
    second = resume_online_study(out).summary
    assert second["stopped"] == "completed" and second["sessions"] == 2
    assert second["simulations_completed"] == 16 and second["samples_duplicated"] == 0
    assert second["samples_received"] == 16 * 8
    # FIFO: every received sample trained exactly once over both sessions
    assert second["samples_trained"] == 16 * 8


def test_open_rejects_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(ValueError, match="not an online run folder"):
        OnlineStudy.open(tmp_path)


def test_max_seconds_stops_resumably_even_before_training(tmp_path):
    out = tmp_path / "run"
    # 0.01 s: the limit is reached before the first batch (the cluster alone takes longer)
    first = run_online_study(tiny(), out, max_seconds=0.01).summary
    assert first["stopped"] == "max_seconds" and first["batches"] == 0
    assert first["simulations_completed"] + first["simulations_unfinished"] == \
        first["simulations_requested"]
    second = resume_online_study(out).summary
    assert second["stopped"] == "completed" and second["simulations_completed"] == 10
    assert second["samples_received"] == 80 and second["samples_duplicated"] == 0
    assert second["seconds"] > first["seconds"]


def test_a_checkpoint_of_an_older_layout_is_refused_by_name(tmp_path):
    """0.x: no compatibility code. A top-level checkpoint.pt (the first layout) or a checkpoint
    without the record of delivered steps is refused with what is missing, not patched up."""
    import shutil

    from wheretolearn.online.checkpoint import save_checkpoint

    out = tmp_path / "run"
    run_online_study(tiny(), out, max_seconds=0.01)
    state, _ = CheckpointStore(out).load_latest()
    assert "delivered" in state
    older = tmp_path / "older"
    shutil.copytree(out, older)
    shutil.rmtree(older / "checkpoints")
    save_checkpoint(older / "checkpoint.pt", state)
    with pytest.raises(ValueError, match="top-level checkpoint.pt.*older wheretolearn"):
        resume_online_study(older)
    state.pop("delivered")
    CheckpointStore(out).publish(state)            # the newest verified checkpoint now
    with pytest.raises(ValueError, match=r"lacks \['delivered'\].*older wheretolearn"):
        resume_online_study(out)


def test_checkpoint_sampler_state_matches_its_ledger(tmp_path):
    """The monitor draws a new simulation (sampler.ask, then ledger.new_simulation, under the
    sampler lock) at any moment. A checkpoint must not hold a sampler that already drew for a
    simulation its ledger lacks: on resume that draw would be skipped (a QMC sequence loses
    its balance, an adaptive sampler links losses to the wrong parameters)."""
    import threading
    import time

    study = OnlineStudy.create(tiny(), tmp_path / "run")
    study._build()
    study._seconds_before, study._t_session = 0.0, time.monotonic()
    executor = type("Executor", (), {"receive_lock": threading.Lock()})()

    def new_simulation():  # what EnsembleExecutor._new_simulation does
        with study.sampler_lock:
            params = study.sampler.ask(1, sim_ids=[len(study.ledger)])[0]
            study.ledger.new_simulation(params)

    class RacingLedger(SimulationLedger):
        def state_dict(self):
            state = super().state_dict()
            monitor = threading.Thread(target=new_simulation)
            monitor.start()
            monitor.join(1.0)   # the monitor runs right after the ledger snapshot
            threads.append(monitor)
            return state

    threads = []
    new_simulation()
    study.ledger.__class__ = RacingLedger
    state = study._snapshot(executor)
    for t in threads:
        t.join(10)
    assert state["sampler"]["n_drawn"] == len(state["ledger"]["simulations"]) == 1
    assert len(study.ledger) == study.sampler.n_drawn == 2


def test_samples_duplicated_is_counted_apart_from_the_ledger(tmp_path):
    """``samples_duplicated`` compares what the buffer received with itself, not with the
    ledger: a resumed ledger that lost a received step (a dedup bug) lets the step through
    again, and the counter must see it. Before, its record was rebuilt from the ledger on
    resume, so it could not disagree with the ledger."""
    from wheretolearn.online.study import OnlineStudy

    cfg = tiny()
    study = OnlineStudy.create(cfg, tmp_path / "run")
    study._build()
    sim = study.ledger.new_simulation(study.bounds[:, 0])
    study.ledger.start_attempt(sim)
    field = np.zeros(study.y_val.shape[1], dtype=np.float32)
    params = study.ledger.params(sim)
    assert study._on_sample(sim, 3, params, field, 0.1)
    study.ledger.record_step(sim, 3)
    study._seconds_before, study._t_session = 0.0, 0.0
    state = study._snapshot(None)
    # the ledger "forgets" step 3 (what a dedup bug would do)
    rec = state["ledger"]["simulations"][0]
    rec["received"] = "00" * len(bytes.fromhex(rec["received"]))
    resumed = OnlineStudy(cfg, tmp_path / "run")
    resumed._resume_state = state
    resumed._build()
    assert resumed.ledger.is_new_step(sim, 3)          # the buggy ledger accepts it again
    assert resumed._on_sample(sim, 3, params, field, 0.1)
    assert resumed.counters["samples_duplicated"] == 1


def test_trainer_wall_time_is_split_honestly_and_validation_keeps_to_its_budget(tmp_path):
    """The trainer's wall time (first batch to the end) is split into training steps,
    validation, checkpoints, waiting and other; the parts add up to it and it fits in the
    session's wall time. Validation every batch would take most of it: the budget
    (``max_fraction``) skips checks so that validation stays near that fraction."""
    import time

    cfg = tiny(validation={"every_batches": 1, "max_fraction": 0.1, "n_val": 4},
               checkpoint={"every_batches": 20})
    out = tmp_path / "run"
    t0 = time.monotonic()
    s = run_online_study(cfg, out).summary
    outside = time.monotonic() - t0
    split = s["trainer_time"]
    parts = split["seconds"]
    assert set(parts) == {"train", "validation", "checkpoint", "waiting", "other"}
    assert all(v >= 0 for v in parts.values())
    assert sum(parts.values()) == pytest.approx(split["wall_seconds"], rel=1e-6)
    assert sum(split["fractions"].values()) == pytest.approx(1.0, rel=1e-6)
    assert split["wall_seconds"] + split["warmup_seconds"] <= outside
    assert s["trainer_idle_fraction"] == pytest.approx(split["fractions"]["waiting"])
    assert s["trainer_samples_per_second"] == pytest.approx(
        s["samples_trained"] / split["wall_seconds"])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    checks = [r for r in rows if "val_mean" in r and "final" not in r]
    assert 1 <= len(checks) < s["batches"]                   # skipped to keep the budget
    # A check runs only while validation so far is within 10 % of the wall time so far, so the
    # total can pass the budget by at most the longest single check (whatever the load).
    cumulative = [0.0] + [r["trainer_validation_seconds"] for r in checks]
    longest_check = max(b - a for a, b in zip(cumulative, cumulative[1:]))
    assert parts["validation"] <= 0.1 * split["wall_seconds"] + longest_check + 1e-3


def test_failures_before_redraw_accepts_melissas_old_key():
    old = OnlineStudyConfig.model_validate({"executor": {"crashes_before_redraw": 2}})
    new = OnlineStudyConfig.model_validate({"executor": {"failures_before_redraw": 2}})
    assert old == new and new.executor.failures_before_redraw == 2
    assert OnlineStudyConfig.model_validate(new.model_dump()) == new   # round trip


def test_bounds_rows_are_checked_against_the_problem_before_the_folder(tmp_path):
    """``[sampler] bounds`` need one row per parameter the problem declares (its
    ``input_shape``), not a count known by the problem's name."""
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"must have 5 rows for problem 'heat2d' \(one per "
                                         r"parameter: T_init, .*\), got 4"):
        run_online_study(tiny(sampler={"bounds": [[100.0, 500.0]] * 4}), out)
    assert not out.exists()
