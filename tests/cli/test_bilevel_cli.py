"""`wheretolearn demo` / `wheretolearn bilevel`: a tiny run works, bad input -> exit 2, one line."""

import json

import pytest
from typer.testing import CliRunner

from wheretolearn.cli import app

runner = CliRunner()

TINY = """
n_train = 20
steps = 3
eval_n = [16]
repeats = 1
n_measures = 2
n_seen = 30
n_unseen = 60
"""


def _one_line_error(result):
    text = result.output.strip()
    return result.exit_code == 2 and text.startswith("error: ") and len(text.splitlines()) == 1 \
        and "Traceback" not in text


def test_demo_with_tiny_override(tmp_path):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY)
    out = tmp_path / "demo"
    res = runner.invoke(app, ["demo", "--out", str(out), "--config", str(cfg), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "run folder" in res.output and "optimized" in res.output
    assert "acoreset (approx.)" in res.output       # the column is not the paper's method
    summary = json.loads((out / "summary.json").read_text())
    assert "acoreset" in summary["approximate"]
    assert summary["problem"] == "sobol-g" and summary["steps"] == 3
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3


def test_bilevel_flags_override_config(tmp_path):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY + 'problem = "friedman1"\n')
    out = tmp_path / "run"
    res = runner.invoke(app, ["bilevel", "--config", str(cfg), "--steps", "2", "--dim", "6",
                              "--eval-n", "8,12", "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["problem"], summary["dim"], summary["steps"]) == ("friedman1", 6, 2)
    assert set(summary["baselines"]["optimized"]) == {"8", "12"}
    # paper settings fill what neither the file nor the flags set (Friedman 1: s = 3)
    assert "bandwidth = 3.0" in (out / "config.toml").read_text()


@pytest.mark.parametrize("args, needle", [
    (["--problem", "ackley"], "unknown problem"),
    (["--problem", "sobol-g", "--dim", "0"], "dim"),
    (["--problem", "sobol-g", "--n-train", "-5"], "n_train"),
    (["--problem", "sobol-g", "--lr", "nan"], "lr"),
    (["--problem", "sobol-g", "--eval-n", "1024,x"], "--eval-n"),
    (["--problem", "friedman1", "--dim", "3"], "dim"),
    (["--config", "does-not-exist.toml"], "does not exist"),
    ([], "--problem"),
])
def test_bad_input_exit_2_one_line_no_folder(tmp_path, args, needle):
    out = tmp_path / "run"
    res = runner.invoke(app, ["bilevel", *args, "--out", str(out), "--no-progress"])
    assert _one_line_error(res), res.output
    assert needle in res.output
    assert list(tmp_path.iterdir()) == []


def test_unknown_config_key_and_existing_folder(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('problem = "sobol-g"\nlearning_rate = 0.1\n')
    out = tmp_path / "run"
    res = runner.invoke(app, ["bilevel", "--config", str(cfg), "--out", str(out)])
    assert _one_line_error(res) and "unknown config key 'learning_rate'" in res.output
    assert not out.exists()
    out.mkdir()
    (out / "x").write_text("old")
    res = runner.invoke(app, ["bilevel", "--problem", "sobol-g", "--out", str(out)])
    assert _one_line_error(res) and "already exists" in res.output
    assert [p.name for p in out.iterdir()] == ["x"]


def test_bilevel_trials_flag_and_collapse_warning_line(tmp_path):
    cfg = tmp_path / "tiny.toml"
    # Friedman 1 at 10x the paper's lr with no trust region: collapses, rejected
    cfg.write_text('problem = "friedman1"\nlr = 5e-3\nn_train = 100\nsteps = 30\n'
                   'n_measures = 10\nn_seen = 100\nn_unseen = 20\neval_n = [16]\nrepeats = 1\n'
                   'baselines = ["normal"]\n'
                   '[bilevel_options]\nmax_move = 1e9\n')
    out = tmp_path / "run"
    res = runner.invoke(app, ["bilevel", "--config", str(cfg), "--trials", "2", "--out",
                              str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trials"] == 2 and "over 2 trials" in res.output
    # each warning of summary.json is one 'warning:' line of the output
    lines = [x for x in res.output.splitlines() if x.startswith("warning: ")]
    assert summary["collapse"]["flagged"] and summary["warnings"]
    assert len(lines) == len(summary["warnings"]) and "collapsed" in lines[0]
