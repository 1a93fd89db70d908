"""``wheretolearn compare`` checks what it reads (issue 24 item 5): a malformed
``summary.json`` (invalid JSON, not an object, a missing key, a value of the wrong type)
gives one ``error:`` line naming the file and what is wrong, exit 2, no traceback."""

import json

import pytest
from cli_checks import refused as _refused
from typer.testing import CliRunner

from wheretolearn.cli import app

runner = CliRunner()
BILEVEL = {"learned": {}, "problem": "sobol-g", "dim": 2, "eval_n": [8, 16],
           "baselines": {"optimized": {"8": 0.5, "16": 0.25}, "normal": {"8": 0.6, "16": 0.3}},
           "baselines_ci": {"optimized": {"16": {"values": [0.2, 0.3]}}},
           "seconds_total": 1.5}
ONLINE = {"val_error": {"mean": 0.1, "p95": 0.2, "p99": 0.3, "max": 0.4}, "seconds": 3.0}


def _run(tmp_path, content: str):
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    (run / "summary.json").write_text(content)
    return run


@pytest.mark.parametrize("content, needles", [
    ("[1, 2, 3]", ["must hold a JSON object", "got list"]),
    ('"text"', ["must hold a JSON object", "got string"]),
    ("{not json", ["is not valid JSON"]),
    (json.dumps({**ONLINE, "val_error": [0.1]}), ["'val_error'", "must be a table"]),
    (json.dumps({**ONLINE, "val_error": {"mean": "low"}}), ["'val_error.mean'", "number"]),
    (json.dumps({**ONLINE, "seconds": "3 s"}), ["'seconds'", "number"]),
    (json.dumps({**BILEVEL, "eval_n": ["many"]}), ["'eval_n'", "sample sizes"]),
    (json.dumps({k: v for k, v in BILEVEL.items() if k != "eval_n"}),
     ["'eval_n'", "is missing"]),
    (json.dumps({**BILEVEL, "baselines": [0.5]}), ["'baselines'", "table"]),
    (json.dumps({**BILEVEL, "baselines": {"optimized": {"16": "good"}}}), ["'baselines'"]),
    (json.dumps({**BILEVEL, "baselines_ci": {"optimized": {"16": {"values": "x"}}}}),
     ["'baselines_ci.optimized.16.values'", "list of numbers"]),
    (json.dumps({"final_error": 0.1, "seconds": [1]}), ["'seconds'", "number"]),
])
def test_a_malformed_summary_is_one_error_line_naming_the_file(tmp_path, content, needles):
    run = _run(tmp_path, content)
    res = runner.invoke(app, ["compare", str(run)])
    _refused(res, str(run / "summary.json") if "valid JSON" in needles[0] else str(run),
             *needles)


@pytest.mark.parametrize("summary", [BILEVEL, ONLINE, {"final_error": 0.1, "seconds": 2}])
def test_well_formed_summaries_are_compared(tmp_path, summary):
    run = _run(tmp_path, json.dumps(summary))
    res = runner.invoke(app, ["compare", str(run), "--figure", str(tmp_path / "c.png")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "c.png").is_file()


def test_a_config_table_of_the_wrong_type_is_ignored(tmp_path):
    run = _run(tmp_path, json.dumps(ONLINE))
    (run / "config.toml").write_text('study = "heat2d"\n')
    res = runner.invoke(app, ["compare", str(run)])
    assert res.exit_code == 0, res.output
