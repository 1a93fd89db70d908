"""One rule per key, no coercion, in every command's TOML (issue 16 item 3): ``dim = true``,
``dim = "2"``, ``dim = 2.0``, ``n = "8"``, ``overwrite = "yes"`` are errors, not values."""

import pytest
from typer.testing import CliRunner

from wheretolearn.cli import app

runner = CliRunner()


def one_error_line(res, *needles):
    err = res.stderr.strip()
    assert res.exit_code == 2, res.output
    assert err.startswith("error: ") and "\n" not in err, err
    for needle in needles:
        assert needle in err, err


@pytest.mark.parametrize("line", ['n = "8"', "n = 8.0", "n = true", 'overwrite = "yes"',
                                  'seed = "1"', "workers = 1.5", 'options = "n=8"'])
def test_generate_config_types(tmp_path, line):
    cfg = tmp_path / "g.toml"
    key = line.split()[0]
    base = {"problem": 'problem = "burgers"', "n": "n = 3", "out": f'out = "{tmp_path / "d"}"'}
    base[key] = line
    cfg.write_text("\n".join(base.values()) + "\n")
    one_error_line(runner.invoke(app, ["generate", "--config", str(cfg), "--no-progress"]),
                   f"config key {key!r}")
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("value", ["true", '"2"', "2.0"])
def test_bilevel_config_types(tmp_path, value):
    cfg = tmp_path / "b.toml"
    cfg.write_text(f'problem = "sobol-g"\ndim = {value}\nsteps = 2\n')
    one_error_line(runner.invoke(app, ["bilevel", "--config", str(cfg), "--out",
                                       str(tmp_path / "r"), "--no-progress"]), "dim")
    assert not (tmp_path / "r").exists()
