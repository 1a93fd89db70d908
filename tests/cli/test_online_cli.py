"""Tests of ``wheretolearn online run | resume | compare`` argument handling (a full CLI
study runs in tests/online/test_reliability.py::test_fault_injection_20_percent_through_cli)."""

import pytest
import tomli_w
import typer
from cli_checks import refused
from typer.testing import CliRunner

from wheretolearn.cli import app

runner = CliRunner()


def write_config(path, **sections):
    path.write_text(tomli_w.dumps(sections))
    return path


@pytest.mark.parametrize("command, flags", [
    ("run", ("--out", "--workers", "--sampler", "--scheduler", "--cluster",
             "--print-job-script", "--fail-rate", "--max-seconds", "--no-progress", "--seed",
             "--problem", "--option", "--num-threads", "--queue", "--walltime")),
    ("resume", ("--max-seconds", "--no-progress", "--restart", "--trust")),
    ("compare", ("--out", "--samplers", "--seeds", "--passes", "--batches-per-simulation",
                 "--val-interior", "--val-faces", "--val-corners", "--val-seed",
                 "--val-design", "--cache", "--bootstrap-seed", "--jobs", "--no-progress")),
])
def test_help_of_each_sub_command_lists_its_own_options(command, flags):
    res = runner.invoke(app, ["online", command, "--help"])
    assert res.exit_code == 0, res.output
    assert f"wheretolearn online {command}" in res.output
    for flag in flags:
        assert flag in res.output, (command, flag)
    cmd = typer.main.get_command(app).commands["online"].commands[command]
    own = {o for p in cmd.params if p.param_type_name == "option" for o in p.opts}
    short = {"run": {"-o", "--partition"}, "compare": {"-j"}}.get(command, set())
    assert own == set(flags) | short


def test_online_alone_prints_its_sub_commands():
    for args in (["online"], ["online", "--help"]):
        res = runner.invoke(app, args)
        assert res.exit_code == (2 if args == ["online"] else 0)   # click: no args, status 2
        for name in ("run", "resume", "compare"):
            assert name in res.output
        assert "Usage: wheretolearn online" in res.output


def test_the_old_form_names_online_run(tmp_path):
    cfg = write_config(tmp_path / "s.toml", study={"n": 8})
    err = refused(runner.invoke(app, ["online", str(cfg), "--out", str(tmp_path / "r")]),
                  "not a sub-command of 'wheretolearn online'",
                  f"wheretolearn online run {cfg} --out DIR")
    assert "Usage:" not in err
    refused(runner.invoke(app, ["online", "rnu"]), "No such command 'rnu'", "'run'")
    assert not (tmp_path / "r").exists()


def test_an_option_of_another_sub_command_is_named(tmp_path):
    cfg = write_config(tmp_path / "s.toml", study={"n": 8})
    refused(runner.invoke(app, ["online", "run", str(cfg), "--seeds", "3", "--out",
                                str(tmp_path / "r")]),
            "online run does not take --seeds", "'wheretolearn online compare'")
    refused(runner.invoke(app, ["online", "compare", str(cfg), "--workers", "3", "--out",
                                str(tmp_path / "r")]),
            "online compare does not take --workers", "'wheretolearn online run'")
    refused(runner.invoke(app, ["online", "compare", str(cfg), "--seeds", "many"]),
            "Invalid value for '--seeds'", "online compare --help")
    assert not (tmp_path / "r").exists()


def test_print_job_script_for_slurm_from_flag(tmp_path):
    cfg = write_config(tmp_path / "s.toml", cluster={"queue": "debug", "cores": 2,
                                                     "processes": 2, "walltime": "00:10:00"})
    res = runner.invoke(app, ["online", "run", str(cfg), "--cluster", "slurm",
                              "--print-job-script"])
    assert res.exit_code == 0, res.output
    assert "#SBATCH" in res.output and "-p debug" in res.output and "00:10:00" in res.output
    assert not any(tmp_path.glob("run*"))


def test_print_job_script_needs_a_batch_kind(tmp_path):
    cfg = write_config(tmp_path / "s.toml", study={"n": 8})
    res = runner.invoke(app, ["online", "run", str(cfg), "--print-job-script"])
    assert res.exit_code == 2
    assert "submits no batch job" in res.output


def test_slurm_without_queue_is_a_clear_error(tmp_path):
    cfg = write_config(tmp_path / "s.toml", study={"n": 8})
    res = runner.invoke(app, ["online", "run", str(cfg), "--cluster", "slurm", "--out",
                              str(tmp_path / "r")])
    assert res.exit_code == 2 and "needs queue" in res.output


def test_out_is_required_and_flags_are_validated(tmp_path):
    cfg = write_config(tmp_path / "s.toml", study={"n": 8})
    res = runner.invoke(app, ["online", "run", str(cfg), "--no-progress"])
    assert res.exit_code == 2 and "--out" in res.output
    res = runner.invoke(app, ["online", "run", str(cfg), "--out", str(tmp_path / "r"),
                              "--sampler", "random"])
    assert res.exit_code == 2 and "unknown sampler 'random'" in res.output
    res = runner.invoke(app, ["online", "run", str(cfg), "--out", str(tmp_path / "r"),
                              "--workers", "0"])
    assert res.exit_code == 2 and "executor.workers" in res.output
    res = runner.invoke(app, ["online", "run", str(tmp_path / "missing.toml"), "--out",
                              str(tmp_path / "r")])
    assert res.exit_code == 2 and "does not exist" in res.output
    assert not (tmp_path / "r").exists()


def test_existing_run_folder_is_not_overwritten(tmp_path):
    cfg = write_config(tmp_path / "s.toml", study={"n": 8})
    out = tmp_path / "r"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    res = runner.invoke(app, ["online", "run", str(cfg), "--out", str(out), "--no-progress"])
    assert res.exit_code == 2 and "not empty" in res.output
    assert (out / "keep.txt").read_text() == "x"


def test_resume_needs_a_run_folder(tmp_path):
    res = runner.invoke(app, ["online", "resume", str(tmp_path)])
    assert res.exit_code == 2 and "not an online run folder" in res.output
    refused(runner.invoke(app, ["online", "run", "a.toml", "b"]),
            "unexpected extra argument", "online run --help")


def test_progress_counts_lineages_so_redraws_do_not_overfill_the_bar():
    from wheretolearn.cli.online import _Progress

    # 4 lineages requested; one simulation failed and was redrawn, its replacement completed
    status = {"simulations_completed": 2, "simulations_failed": 1, "simulations_redrawn": 1,
              "simulations_running": 2, "samples_received": 10, "buffer_fill": 5,
              "buffer_capacity": 10, "batches": 0, "loss": None, "val_error": None}
    with _Progress(4) as bar:
        bar(status)
        assert bar._task.completed == 2  # two lineages ended, two still running


# -- online resume: a run folder is data, not code (issue 24 item 2) ------------------------
EVIL = "from pathlib import Path\nPath({sentinel!r}).write_text('evil.py was imported')\n" \
       "def make(**options):\n    raise RuntimeError('evil make ran')\n"


def _crafted_run(tmp_path, problem="evil", **study):
    """A run folder (no checkpoint yet) whose config.toml was written by someone else:
    ``problem`` "evil" names ``DIR/evil.py:make``, which writes SENTINEL when imported."""
    run = tmp_path / "run"
    run.mkdir()
    sentinel = tmp_path / "SENTINEL"
    (run / "evil.py").write_text(EVIL.format(sentinel=str(sentinel)))
    spec = f"{run / 'evil.py'}:make" if problem == "evil" else problem
    write_config(run / "config.toml", study={"problem": spec, "n_steps": 4, **study})
    return run, spec, sentinel


def _listing(run):
    return sorted(str(p.relative_to(run)) for p in run.rglob("*"))


@pytest.mark.parametrize("problem, options", [
    ("evil", {}),
    ("subprocess:run", {"args": ["touch", "{sentinel}"]}),
])
def test_resume_refuses_a_folder_naming_user_code(tmp_path, problem, options):
    run, spec, sentinel = _crafted_run(tmp_path, problem)
    if options:
        opts = {"args": [a.format(sentinel=sentinel) for a in options["args"]]}
        write_config(run / "config.toml", study={"problem": spec, "options": opts})
    before = _listing(run)
    res = runner.invoke(app, ["online", "resume", str(run), "--no-progress"])
    refused(res, "names user code", f"problem = {spec!r}", "--trust", str(run))
    assert not sentinel.exists() and _listing(run) == before


def test_resume_refuses_a_folder_naming_a_command(tmp_path):
    run, _, sentinel = _crafted_run(tmp_path, "heat2d")
    write_config(run / "config.toml",
                 study={"command": ["touch", str(sentinel)], "n_steps": 2,
                        "options": {"field_shape": [2]}},
                 sampler={"bounds": [[0.0, 1.0]]})
    res = runner.invoke(app, ["online", "resume", str(run), "--no-progress"])
    refused(res, "names user code", "command = ['touch'", "--trust")
    assert not sentinel.exists()


def test_resume_refuses_a_folder_naming_a_worker_python(tmp_path):
    run, _, _ = _crafted_run(tmp_path, "heat2d")
    write_config(run / "config.toml", study={"n": 8},
                 cluster={"kind": "slurm", "queue": "q", "python": "/tmp/not-python"})
    refused(runner.invoke(app, ["online", "resume", str(run)]),
                    "[cluster] python = '/tmp/not-python'", "--trust")


def _fake_resume(monkeypatch):
    """Replace the study itself (tested in tests/online); record how it was called."""
    from wheretolearn.online import study

    calls = []

    def fake(run_dir, **kw):
        calls.append(kw)
        raise ValueError("the study would start here")

    monkeypatch.setattr(study, "resume_online_study", fake)
    return calls


def test_resume_with_trust_goes_past_the_check(tmp_path, monkeypatch):
    calls = _fake_resume(monkeypatch)
    run, _, _ = _crafted_run(tmp_path)
    res = runner.invoke(app, ["online", "resume", str(run), "--trust", "--no-progress"])
    assert res.exit_code == 2 and "names user code" not in res.stderr, res.output
    assert res.stderr.strip().splitlines()[-1] == "error: the study would start here"
    assert len(calls) == 1 and calls[0]["trust"] is True


def test_resume_of_a_builtin_problem_needs_no_trust(tmp_path, monkeypatch):
    calls = _fake_resume(monkeypatch)
    run, _, _ = _crafted_run(tmp_path, "heat2d")
    res = runner.invoke(app, ["online", "resume", str(run), "--no-progress"])
    assert res.stderr.strip().splitlines()[-1] == "error: the study would start here"
    assert len(calls) == 1 and calls[0]["trust"] is False


def test_resume_online_study_asks_for_trust(tmp_path):
    from wheretolearn.online.study import resume_online_study

    run, _, sentinel = _crafted_run(tmp_path)
    before = _listing(run)
    with pytest.raises(ValueError, match=r"names user code .*evil\.py:make.*trust=True"):
        resume_online_study(run)
    assert not sentinel.exists() and _listing(run) == before


@pytest.mark.parametrize("flag", ["--trust", "--restart"])
def test_trust_and_restart_are_only_for_resume(tmp_path, flag):
    cfg = write_config(tmp_path / "s.toml", study={"n": 8})
    refused(runner.invoke(app, ["online", "run", str(cfg), "--out", str(tmp_path / "r"),
                                flag]),
            f"online run does not take {flag}", "'wheretolearn online resume'")
    assert not (tmp_path / "r").exists()


# -- the insecure-cluster warning, and imports that flow one way -----------------------------
@pytest.mark.parametrize("kind, warned", [("local", True), ("slurm", True), ("address", False)])
def test_tls_false_warns_for_every_kind_but_address(kind, warned, capsys):
    from wheretolearn.cli._online_args import insecure_cluster_warning
    from wheretolearn.cluster import ClusterConfig

    extra = {"queue": "q"} if kind == "slurm" else {}
    extra = {"address": "tcp://127.0.0.1:1"} if kind == "address" else extra
    with insecure_cluster_warning(ClusterConfig(kind=kind, tls=False, **extra)):
        pass
    err = capsys.readouterr().err
    assert err.startswith("warning: ") == warned and err.count("\n") == int(warned)


def test_online_args_does_not_import_the_online_command():
    import ast
    import inspect

    from wheretolearn.cli import _online_args

    tree = ast.parse(inspect.getsource(_online_args))
    relative = {node.module for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.level == 1}
    assert "online" not in relative, relative
