"""``--out`` may not be the current folder, a folder above it, the root or the home folder
(issue 24 item 5): refused with one ``error:`` line before anything is written, and no
staging folder is left behind (``--out ..`` used to leave one)."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from wheretolearn.cli import app

runner = CliRunner()
TINY = ("n_train = 12\nsteps = 2\neval_n = [8]\nrepeats = 1\nn_measures = 2\nn_seen = 20\n"
        "n_unseen = 30\nbaselines = []\n")


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def work(tmp_path, monkeypatch):
    """An empty current folder ``tmp/top/work`` (its parents hold only it); HOME is
    ``tmp/home``."""
    cwd = tmp_path / "top" / "work"
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "tiny.toml").write_text(TINY)
    return tmp_path


def _commands(root: Path, out: str) -> dict[str, list[str]]:
    return {
        "bilevel": ["bilevel", "--problem", "sobol-g", "--config", str(root / "tiny.toml"),
                    "--out", out, "--no-progress"],
        "demo": ["demo", "--steps", "1", "--out", out, "--no-progress"],
        "generate": ["generate", "burgers", "--n", "2", "--out", out, "--workers", "0",
                     "--no-progress", "-o", "n=16", "-o", "n_steps=5"],
        "ama": ["ama", "--problem", "ntd", "--out", out, "--no-progress"],
    }


@pytest.mark.parametrize("command", ["bilevel", "demo", "generate", "ama"])
@pytest.mark.parametrize("out", [".", "..", "sub/..", "../..", "~", "/", "./"])
def test_out_enclosing_the_current_folder_is_refused(work, command, out):
    before = _tree(work)
    res = runner.invoke(app, _commands(work, out)[command] + ["--overwrite"])
    err = res.stderr.strip()
    assert res.exit_code == 2, res.output
    assert err.startswith("error: ") and "\n" not in err, err
    assert "is the current folder, a folder above it, the root or the home folder" in err
    assert _tree(work) == before


def test_a_new_folder_below_the_current_one_is_fine(work):
    res = runner.invoke(app, _commands(work, "runs/../run")["bilevel"])
    assert res.exit_code == 0, res.output
    assert (work / "top" / "work" / "run" / "summary.json").is_file()
    assert sorted(p.name for p in (work / "top" / "work").iterdir()) == ["run"]
