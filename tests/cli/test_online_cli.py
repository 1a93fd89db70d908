"""Tests of ``wheretolearn online`` argument handling (a full CLI study runs in
tests/online/test_reliability.py::test_fault_injection_20_percent_through_cli)."""

import tomli_w
from typer.testing import CliRunner

from wheretolearn.cli import app

runner = CliRunner()


def write_config(path, **sections):
    path.write_text(tomli_w.dumps(sections))
    return path


def test_help_lists_every_option():
    res = runner.invoke(app, ["online", "--help"])
    assert res.exit_code == 0
    for flag in ("--out", "--workers", "--sampler", "--scheduler", "--cluster",
                 "--print-job-script", "--fail-rate", "--max-seconds", "--no-progress"):
        assert flag in res.output
    assert "resume" in res.output


def test_print_job_script_for_slurm_from_flag(tmp_path):
    cfg = write_config(tmp_path / "s.toml", cluster={"queue": "debug", "cores": 2,
                                                     "processes": 2, "walltime": "00:10:00"})
    res = runner.invoke(app, ["online", str(cfg), "--cluster", "slurm", "--print-job-script"])
    assert res.exit_code == 0, res.output
    assert "#SBATCH" in res.output and "-p debug" in res.output and "00:10:00" in res.output
    assert not any(tmp_path.glob("run*"))


def test_print_job_script_needs_a_batch_kind(tmp_path):
    cfg = write_config(tmp_path / "s.toml", study={"n": 8})
    res = runner.invoke(app, ["online", str(cfg), "--print-job-script"])
    assert res.exit_code == 2
    assert "submits no batch job" in res.output


def test_slurm_without_queue_is_a_clear_error(tmp_path):
    cfg = write_config(tmp_path / "s.toml", study={"n": 8})
    res = runner.invoke(app, ["online", str(cfg), "--cluster", "slurm", "--out",
                              str(tmp_path / "r")])
    assert res.exit_code == 2 and "needs queue" in res.output


def test_out_is_required_and_flags_are_validated(tmp_path):
    cfg = write_config(tmp_path / "s.toml", study={"n": 8})
    res = runner.invoke(app, ["online", str(cfg), "--no-progress"])
    assert res.exit_code == 2 and "--out" in res.output
    res = runner.invoke(app, ["online", str(cfg), "--out", str(tmp_path / "r"),
                              "--sampler", "random"])
    assert res.exit_code == 2 and "unknown sampler 'random'" in res.output
    res = runner.invoke(app, ["online", str(cfg), "--out", str(tmp_path / "r"),
                              "--workers", "0"])
    assert res.exit_code == 2 and "executor.workers" in res.output
    res = runner.invoke(app, ["online", str(tmp_path / "missing.toml"), "--out",
                              str(tmp_path / "r")])
    assert res.exit_code == 2 and "does not exist" in res.output
    assert not (tmp_path / "r").exists()


def test_existing_run_folder_is_not_overwritten(tmp_path):
    cfg = write_config(tmp_path / "s.toml", study={"n": 8})
    out = tmp_path / "r"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    res = runner.invoke(app, ["online", str(cfg), "--out", str(out), "--no-progress"])
    assert res.exit_code == 2 and "not empty" in res.output
    assert (out / "keep.txt").read_text() == "x"


def test_resume_needs_a_run_folder(tmp_path):
    res = runner.invoke(app, ["online", "resume", str(tmp_path)])
    assert res.exit_code == 2 and "not an online run folder" in res.output
    res = runner.invoke(app, ["online", "a.toml", "b"])
    assert res.exit_code == 2 and "usage" in res.output


def test_progress_counts_lineages_so_redraws_do_not_overfill_the_bar():
    from wheretolearn.cli.online import _Progress

    # 4 lineages requested; one simulation failed and was redrawn, its replacement completed
    status = {"simulations_completed": 2, "simulations_failed": 1, "simulations_redrawn": 1,
              "simulations_running": 2, "samples_received": 10, "buffer_fill": 5,
              "buffer_capacity": 10, "batches": 0, "loss": None, "val_error": None}
    bar = _Progress(4)
    bar(status)
    assert bar._bar.tasks[0].completed == 2  # two lineages ended, two still running
