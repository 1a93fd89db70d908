"""Huge sizes are refused before any work (issue 24 item 5): every size flag and config key
of ``demo``, ``bilevel``, ``ama`` and ``generate`` has an upper bound, and a run whose
estimated memory exceeds the machine's is refused; each gives one ``error:`` line naming
the option, the value and the allowed range, exit 2, and nothing is written."""

import pytest
from cli_checks import refused as _refused
from typer.testing import CliRunner

from wheretolearn import _validation
from wheretolearn.cli import app

runner = CliRunner()
HUGE = "99999999999"
BURGERS = ["-o", "n=16", "-o", "n_steps=5"]


def _nothing_written(folder) -> None:
    assert sorted(p.name for p in folder.iterdir() if p.suffix != ".toml") == []


@pytest.mark.parametrize("flag, allowed", [
    ("--dim", "between 1 and 10000"), ("--n-train", "between 1 and 100000"),
    ("--steps", "between 1 and 10000000"), ("--eval-n", "between 1 and 100000"),
    ("--repeats", "between 1 and 10000"), ("--trials", "between 1 and 10000"),
    ("--num-threads", "between 1 and 1024"),
])
def test_bilevel_size_flags_are_bounded(tmp_path, flag, allowed):
    res = runner.invoke(app, ["bilevel", "--problem", "sobol-g", flag, HUGE, "--no-progress",
                              "--out", str(tmp_path / "run")])
    _refused(res, flag, HUGE, allowed)
    _nothing_written(tmp_path)


@pytest.mark.parametrize("key", ["n_seen", "n_unseen", "n_measures", "trial_offset"])
def test_bilevel_size_config_keys_are_bounded(tmp_path, key):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"problem = 'sobol-g'\n{key} = {HUGE}\n")
    res = runner.invoke(app, ["bilevel", "--config", str(cfg), "--no-progress",
                              "--out", str(tmp_path / "run")])
    _refused(res, f"config key {key!r}", HUGE, "between")
    _nothing_written(tmp_path)


def test_demo_steps_are_bounded(tmp_path):
    res = runner.invoke(app, ["demo", "--steps", HUGE, "--no-progress",
                              "--out", str(tmp_path / "run")])
    _refused(res, "--steps", HUGE, "between 1 and 10000000")
    _nothing_written(tmp_path)


def test_a_bilevel_study_larger_than_the_memory_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(_validation, "memory_limit_bytes", lambda: 2**20)
    res = runner.invoke(app, ["bilevel", "--problem", "sobol-g", "--n-train", "2000",
                              "--no-progress", "--out", str(tmp_path / "run")])
    _refused(res, "memory", "more than this machine's 1.0 MiB", "n_train")
    _nothing_written(tmp_path)


@pytest.mark.parametrize("args, needles", [
    (["--n", HUGE], ["--n", HUGE, "between 1 and 10000000"]),
    (["--n", "8", "--chunk", HUGE], ["--chunk", HUGE, "between 1 and 1000000"]),
    (["--n", "8", "--workers", HUGE], ["--workers", HUGE, "between 0 and 256"]),
    (["--n", "8", "--num-threads", HUGE], ["--num-threads", HUGE, "between 1 and 1024"]),
    (["--n", "8", "-o", "n_steps=" + HUGE], ["'n_steps'", HUGE, "at most 10000000"]),
])
def test_generate_sizes_are_bounded(tmp_path, args, needles):
    res = runner.invoke(app, ["generate", "burgers", "--out", str(tmp_path / "d.zarr"),
                              "--workers", "0", "--no-progress", *BURGERS, *args])
    _refused(res, *needles)
    _nothing_written(tmp_path)


def test_generate_config_sizes_are_bounded(tmp_path):
    cfg = tmp_path / "g.toml"
    cfg.write_text(f"problem = 'burgers'\nn = {HUGE}\nout = '{tmp_path / 'd.zarr'}'\n")
    res = runner.invoke(app, ["generate", "--config", str(cfg), "--no-progress", *BURGERS])
    _refused(res, "config key 'n'", HUGE)
    _nothing_written(tmp_path)


def test_a_generate_chunk_larger_than_the_memory_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(_validation, "memory_limit_bytes", lambda: 2**16)
    res = runner.invoke(app, ["generate", "burgers", "--n", "4000", "--chunk", "4000",
                              "--out", str(tmp_path / "d.zarr"), "--workers", "0",
                              "--no-progress", *BURGERS])
    _refused(res, "memory", "--chunk")
    _nothing_written(tmp_path)


@pytest.mark.parametrize("args, needles", [
    (["--repeats", HUGE], ["--repeats", HUGE, "between 1 and 10000"]),
    (["--iterations", HUGE], ["--iterations", HUGE, "between 0 and 10000"]),
    (["--workers", HUGE], ["--workers", HUGE, "between 0 and 256"]),
    (["--num-threads", HUGE], ["--num-threads", HUGE, "between 1 and 1024"]),
])
def test_ama_size_flags_are_bounded(tmp_path, args, needles):
    res = runner.invoke(app, ["ama", "--problem", "ntd", "--no-progress",
                              "--out", str(tmp_path / "run"), *args])
    _refused(res, *needles)
    _nothing_written(tmp_path)


@pytest.mark.parametrize("line, needles", [
    (f"n = {HUGE}", ["config key 'n'", "between 5 and 1024"]),
    (f"n_train = {HUGE}", ["config key 'n_train'", HUGE]),
    (f"eval_n = [10, {HUGE}]", ["config key 'eval_n'", HUGE]),
    (f"branch_hidden = [64, {HUGE}]", ["config key 'branch_hidden'", HUGE]),
    (f"width = {HUGE}", ["config key 'width'", HUGE]),
    (f"steps = {HUGE}", ["config key 'steps'", HUGE]),
    (f"[de]\npopsize = {HUGE}", ["config key 'de.popsize'", HUGE]),
])
def test_ama_size_config_keys_are_bounded(tmp_path, line, needles):
    cfg = tmp_path / "a.toml"
    cfg.write_text(f"problem = 'ntd'\n{line}\n")
    res = runner.invoke(app, ["ama", "--config", str(cfg), "--no-progress",
                              "--out", str(tmp_path / "run")])
    _refused(res, *needles)
    _nothing_written(tmp_path)


def test_an_ama_study_larger_than_the_memory_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(_validation, "memory_limit_bytes", lambda: 2**16)
    res = runner.invoke(app, ["ama", "--problem", "darcy", "--no-progress",
                              "--out", str(tmp_path / "run")])
    _refused(res, "memory", "n_seen")
    _nothing_written(tmp_path)


@pytest.mark.parametrize("table, key, allowed", [
    ("study", "n_simulations", "less than or equal to 10000000"),
    ("study", "n", "less than or equal to 4096"),
    ("buffer", "capacity", "less than or equal to 100000000"),
    ("executor", "workers", "less than or equal to 100000"),
    ("validation", "n_val", "less than or equal to 1000000"),
])
def test_online_size_keys_are_bounded(tmp_path, table, key, allowed):
    cfg = tmp_path / "study.toml"
    head = "" if table == "study" else f"[{table}]\n"
    cfg.write_text(f"[study]\nproblem = 'heat2d'\n{head}{key} = {HUGE}\n")
    res = runner.invoke(app, ["online", "run", str(cfg), "--no-progress", "--out",
                              str(tmp_path / "run")])
    _refused(res, key, allowed)
    _nothing_written(tmp_path)


def test_online_workers_flag_is_bounded(tmp_path):
    cfg = tmp_path / "study.toml"
    cfg.write_text("[study]\nproblem = 'heat2d'\n")
    res = runner.invoke(app, ["online", "run", str(cfg), "--workers", HUGE, "--no-progress",
                              "--out", str(tmp_path / "run")])
    _refused(res, "workers", "less than or equal to 100000")
    _nothing_written(tmp_path)


def test_online_buffer_larger_than_memory_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(_validation, "memory_limit_bytes", lambda: 2**20)
    cfg = tmp_path / "study.toml"
    cfg.write_text("[study]\nproblem = 'heat2d'\nn = 64\n[buffer]\ncapacity = 2500\n")
    res = runner.invoke(app, ["online", "run", str(cfg), "--no-progress", "--out",
                              str(tmp_path / "run")])
    _refused(res, "needs about", "[buffer] capacity", "lower [buffer] capacity")
    _nothing_written(tmp_path)
