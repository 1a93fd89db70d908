"""Help texts keep their brackets, state defaults; --version; ``wheretolearn problems``
(issue 16 item 5)."""

import re

import typer
from typer.testing import CliRunner

from wheretolearn.cli import app

runner = CliRunner()


def _commands():
    def walk(c, path):
        yield path, c
        for name, sub in getattr(c, "commands", {}).items():
            yield from walk(sub, [*path, name])
    yield from walk(typer.main.get_command(app), [])


def _flat(text):
    return re.sub(r"\s+", " ", text)


def test_square_brackets_survive_in_every_help():
    seen = 0
    for path, cmd in _commands():
        out = _flat(runner.invoke(app, [*path, "--help"]).output)
        for p in cmd.params:
            for piece in re.findall(r"\[[a-z_ ]+\]", p.help or ""):
                seen += 1
                assert piece in out, (path, p.name, piece)
    assert seen >= 5                                  # [options], [measure], [cluster], ...


def test_every_option_states_its_default():
    mine = {"generate", "online", "bilevel", "demo"}
    for path, cmd in _commands():
        if not path or path[0] not in mine:
            continue
        for p in cmd.params:
            if p.param_type_name != "option" or p.is_flag or p.required or p.name in (
                    "samplers",):
                continue
            if p.default is None:
                text = (p.help or "").lower()
                assert "default" in text or "required" in text, (path, p.opts[0], p.help)


def test_num_threads_on_every_computing_command():
    for path in (["generate"], ["online", "run"], ["bilevel"], ["demo"]):
        assert "--num-threads" in runner.invoke(app, [*path, "--help"]).output, path


def test_every_help_works():
    """Every command and sub-command (``online run | resume | compare`` included) answers
    ``--help`` with status 0 and its own usage line."""
    paths = [path for path, _ in _commands()]
    assert ["online", "run"] in paths and ["online", "resume"] in paths
    assert ["online", "compare"] in paths
    for path in paths:
        res = runner.invoke(app, [*path, "--help"])
        assert res.exit_code == 0, (path, res.output)
        assert f"Usage: wheretolearn {' '.join(path)}".rstrip() in res.output, path


def test_version_flag():
    from wheretolearn import __version__

    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"wheretolearn {__version__}"


def test_problems_lists_options_measure_and_online(monkeypatch):
    import wheretolearn.problems as problems_pkg
    from wheretolearn.cli.problems import describe_problems

    every = problems_pkg.available_problems
    monkeypatch.setattr(problems_pkg, "available_problems",       # a shorter list, same kinds
                        lambda kind="all": (["darcy", "heat2d", "sobol-g"] if kind == "all"
                                            else every(kind)))
    rows = {r["name"]: r for r in describe_problems()}
    assert rows["heat2d"]["online"] == "yes" and rows["darcy"]["online"] == "no"
    assert "n_steps=100" in rows["heat2d"]["options"] and "dim=2" in rows["sobol-g"]["options"]
    assert rows["darcy"]["measure"].startswith("GaussianRandomField")
    assert rows["heat2d"]["shapes"] == "(5,) -> (100, 64, 64)"
    res = runner.invoke(app, ["problems"])
    assert res.exit_code == 0 and "heat2d" in res.output and "darcy" in res.output
