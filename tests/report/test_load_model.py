"""``wheretolearn.load_model(RUN_DIR)`` gives back the surrogate a run reported on
(issue 16 item 5); the online round trip is in tests/cli/test_online_args.py. A run folder
is data, not code (issue 24 item 2): one whose config names user code loads from what the
run recorded without importing it, or is refused unless ``trust=True``."""

import json
import tomllib

import pytest
import torch
from typer.testing import CliRunner

import wheretolearn
from wheretolearn.cli import app

TINY = ("n_train = 12\nsteps = 2\neval_n = [8, 16]\nrepeats = 1\nn_measures = 2\n"
        "n_seen = 20\nn_unseen = 30\nbaselines = []\n")


@pytest.fixture(scope="module")
def bilevel_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("bilevel")
    cfg_path = tmp_path / "tiny.toml"
    cfg_path.write_text(TINY)
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["bilevel", "--problem", "sobol-g", "--dim", "2", "--config",
                                   str(cfg_path), "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    return out


def test_bilevel_model_reproduces_the_reported_error(bilevel_run):
    from wheretolearn.design.metatest import make_metatest
    from wheretolearn.models.krr import KernelRidge
    from wheretolearn.problems import get_problem

    out = bilevel_run
    model = wheretolearn.load_model(out)
    assert isinstance(model, KernelRidge)
    cfg = tomllib.loads((out / "config.toml").read_text())
    summary = json.loads((out / "summary.json").read_text())
    metatest = make_metatest(get_problem("sobol-g", dim=2), n_measures=cfg["n_measures"],
                             n_seen=cfg["n_seen"], n_unseen=cfg["n_unseen"], seed=cfg["seed"],
                             dtype=torch.float32)
    # the first repeat of the optimised source at the largest N, as the run reported it
    reported = summary["baselines_ci"]["optimized"]["16"]["values"][0]
    assert float(metatest.error(model.predict, split="unseen")) == pytest.approx(reported,
                                                                                rel=1e-9)
    small = wheretolearn.load_model(out, n=8)
    assert float(metatest.error(small.predict, split="unseen")) == pytest.approx(
        summary["baselines_ci"]["optimized"]["8"]["values"][0], rel=1e-9)


def test_load_model_names_what_it_cannot_load(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        wheretolearn.load_model(tmp_path / "nope")
    (tmp_path / "x").mkdir()
    with pytest.raises(ValueError, match="not a wheretolearn run folder"):
        wheretolearn.load_model(tmp_path / "x")


def test_compare_rows_of_a_bilevel_run(bilevel_run):
    from wheretolearn.report.compare_runs import summarize_run

    out = bilevel_run
    summary = json.loads((out / "summary.json").read_text())
    row = summarize_run(out)
    assert row["kind"] == "bilevel" and row["mean"] == summary["baselines"]["optimized"]["16"]
    assert row["max"] == max(summary["baselines_ci"]["optimized"]["16"]["values"])
    res = CliRunner().invoke(app, ["compare", str(out)])
    assert res.exit_code == 0 and "bilevel" in res.output


# -- run folders are data, not code (issue 24 item 2) --------------------------------------
EVIL = """
from pathlib import Path

Path({sentinel!r}).write_text("evil.py was imported")


def make(dim=2, **options):
    from wheretolearn.problems import SobolG

    return SobolG(dim=dim)
"""


def _plant(run, tmp_path):
    """Put ``evil.py`` (writes ``sentinel`` when imported) in ``run``; return its spec and
    the sentinel path."""
    sentinel = tmp_path / "SENTINEL"
    (run / "evil.py").write_text(EVIL.format(sentinel=str(sentinel)))
    return f"{run / 'evil.py'}:make", sentinel


def _set_problem(run, problem):
    import tomli_w

    cfg = tomllib.loads((run / "config.toml").read_text())
    cfg["problem"] = problem
    (run / "config.toml").write_text(tomli_w.dumps(cfg))


def _copy(run, tmp_path, name="copy"):
    import shutil

    dst = tmp_path / name
    shutil.copytree(run, dst)
    return dst


def test_bilevel_run_records_the_training_set_of_its_model(bilevel_run):
    rec = torch.load(bilevel_run / "model.pt", weights_only=True)
    assert rec["n"] == 16 and rec["x"].shape == (16, 2) and rec["y"].shape == (16,)
    assert rec["x"].dtype == torch.float64 and rec["bandwidth"] > 0 and rec["ridge"] > 0


def test_bilevel_folder_naming_user_code_loads_from_its_records(bilevel_run, tmp_path):
    """A genuine run whose config.toml was swapped for ``evil.py:make``: the model is the
    recorded one and nothing is imported; a size the run did not record is refused."""
    run = _copy(bilevel_run, tmp_path)
    spec, sentinel = _plant(run, tmp_path)
    _set_problem(run, spec)
    want = wheretolearn.load_model(bilevel_run)
    model = wheretolearn.load_model(run)
    x = torch.rand(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert torch.equal(model.predict(x), want.predict(x))
    with pytest.raises(ValueError, match=r"names user code .*evil\.py:make.*trust=True"):
        wheretolearn.load_model(run, n=8)
    assert not sentinel.exists()


@pytest.mark.parametrize("problem", ["sobol-g", "evil"])
def test_old_bilevel_folder_is_refused_naming_what_it_lacks(bilevel_run, tmp_path, problem):
    """A folder of the layout before ``model.pt`` is no longer read (0.x), whatever its
    problem, and nothing is imported."""
    run = _copy(bilevel_run, tmp_path)
    (run / "model.pt").unlink()                            # as written by an older version
    spec, sentinel = _plant(run, tmp_path)
    if problem == "evil":
        _set_problem(run, spec)
    for trust in (False, True):
        with pytest.raises(ValueError, match=r"has no model\.pt .*older wheretolearn"):
            wheretolearn.load_model(run, trust=trust)
    assert not sentinel.exists()


@pytest.mark.parametrize("problem", ["evil", "subprocess:run", "external"])
def test_bilevel_refit_at_another_size_of_user_code_needs_trust(bilevel_run, tmp_path, problem):
    """A size the run did not record is labelled by the problem: user code (``external`` is
    registered here but runs the command its options name) only with ``trust=True``."""
    run = _copy(bilevel_run, tmp_path)
    spec, sentinel = _plant(run, tmp_path)
    _set_problem(run, spec if problem == "evil" else problem)
    with pytest.raises(ValueError) as err:
        wheretolearn.load_model(run, n=8)
    msg = str(err.value)
    assert "names user code" in msg and "trust=True" in msg and str(run) in msg
    assert (spec if problem == "evil" else problem) in msg
    assert not sentinel.exists()


def test_bilevel_refit_at_another_size_loads_with_trust(bilevel_run, tmp_path):
    run = _copy(bilevel_run, tmp_path)
    spec, sentinel = _plant(run, tmp_path)
    _set_problem(run, spec)
    model = wheretolearn.load_model(run, n=8, trust=True)
    assert sentinel.exists()                      # the user said so: evil.py was imported
    x = torch.rand(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(model.predict(x), wheretolearn.load_model(bilevel_run, n=8).predict(x))


def _ama_folder(tmp_path, problem):
    from wheretolearn.models.deeponet import DeepONet

    run = tmp_path / "ama"
    run.mkdir()
    (run / "config.toml").write_text(f"problem = {problem!r}\n")
    (run / "summary.json").write_text(json.dumps({"ama_loss": [0.1], "problem": problem}))
    net = DeepONet([4, 8, 3], [1, 8, 3], [[0.0], [0.5], [1.0]], seed=0)
    net.save(run / "model.pt")
    return run, net


def test_ama_folder_naming_user_code_loads_without_importing_it(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    spec, sentinel = _plant(run, tmp_path)
    folder, net = _ama_folder(tmp_path, spec)
    model = wheretolearn.load_model(folder)
    u = torch.randn(2, 4)
    with torch.no_grad():
        assert torch.equal(model(u), net(u))
    assert not sentinel.exists()


def test_deeponet_load_rebuilds_only_from_known_arguments(tmp_path):
    from wheretolearn.models.deeponet import DeepONet

    folder, _ = _ama_folder(tmp_path, "darcy")
    blob = torch.load(folder / "model.pt", weights_only=True)
    blob["config"]["surprise"] = 1
    torch.save(blob, folder / "model.pt")
    with pytest.raises(ValueError, match="surprise"):
        DeepONet.load(folder / "model.pt")


# -- online run folders --------------------------------------------------------------------
ONLINE = {"study": {"n": 8, "n_steps": 4, "n_simulations": 3, "seed": 1},
          "buffer": {"capacity": 20, "watermark": 4},
          "training": {"hidden": [8], "torch_threads": 1, "batch_size": 4},
          "executor": {"workers": 1, "simulation_timeout": 20.0},
          "validation": {"n_val": 1, "every_batches": 2},
          "checkpoint": {"every_batches": 2}}


@pytest.fixture(scope="module")
def online_run(tmp_path_factory):
    import tomli_w

    root = tmp_path_factory.mktemp("online")
    (root / "s.toml").write_text(tomli_w.dumps(ONLINE))
    res = CliRunner().invoke(app, ["online", "run", str(root / "s.toml"), "--out",
                                   str(root / "run"), "--no-progress"])
    assert res.exit_code == 0, res.output
    return root / "run"


def _set_online_problem(run, problem, options=None):
    import tomli_w

    cfg = tomllib.loads((run / "config.toml").read_text())
    cfg["study"]["problem"] = problem
    cfg["study"]["options"] = options or {}
    (run / "config.toml").write_text(tomli_w.dumps(cfg))


def _as_older_version(run):
    """The run folder as an older version wrote it: one checkpoint.pt without the
    surrogate's record."""
    import shutil

    from wheretolearn.online.checkpoint import CheckpointStore, save_checkpoint

    state, _ = CheckpointStore(run).load_latest()
    state.pop("surrogate", None)
    shutil.rmtree(run / "checkpoints")
    save_checkpoint(run / "checkpoint.pt", state)


def _online_prediction(model):
    import numpy as np

    return model(np.array([300.0, 100.0, 500.0, 200.0, 400.0]), 2)


def test_online_folder_naming_user_code_loads_from_its_records(online_run, tmp_path):
    """``problem = "subprocess:run"`` with options that would run a command: load_model
    rebuilds the surrogate from the checkpoint alone and runs nothing."""
    import numpy as np

    run = _copy(online_run, tmp_path)
    sentinel = tmp_path / "SENTINEL"
    _set_online_problem(run, "subprocess:run", {"args": ["touch", str(sentinel)]})
    model = wheretolearn.load_model(run)
    assert not sentinel.exists()
    np.testing.assert_array_equal(_online_prediction(model),
                                  _online_prediction(wheretolearn.load_model(online_run)))
    assert model.field_shape == (8, 8) and model.n_steps == 4 and len(model.parameter_names) == 5


def test_old_online_folder_is_refused_naming_what_it_lacks(online_run, tmp_path):
    """A single top-level checkpoint.pt (the layout before numbered checkpoints) is no longer
    read, and nothing the folder names is run."""
    run = _copy(online_run, tmp_path)
    _as_older_version(run)
    sentinel = tmp_path / "SENTINEL"
    _set_online_problem(run, "subprocess:run", {"args": ["touch", str(sentinel)]})
    for trust in (False, True):
        with pytest.raises(ValueError, match=r"no complete checkpoint under checkpoints/ "
                                             r"\(only a single checkpoint\.pt\).*older"):
            wheretolearn.load_model(run, trust=trust)
    assert not sentinel.exists()


def test_online_checkpoint_without_the_surrogate_record_is_refused(online_run, tmp_path,
                                                                   monkeypatch):
    from wheretolearn.online.checkpoint import CheckpointStore, save_checkpoint

    run = _copy(online_run, tmp_path)
    state, folder = CheckpointStore(run).load_latest()
    state.pop("surrogate")
    save_checkpoint(folder / "checkpoint.pt", state)
    monkeypatch.setattr(CheckpointStore, "verify", lambda self, p: {})   # hash of the old file
    with pytest.raises(ValueError, match="has no surrogate record .* in its checkpoint"):
        wheretolearn.load_model(run)


def test_load_model_lives_at_the_top_of_the_package():
    import importlib

    from wheretolearn.loading import load_model

    assert wheretolearn.load_model is load_model
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("wheretolearn.report.load")
