"""``wheretolearn ama --problem burgers``: the ci preset, the active-learning comparison on
the same pool (``--compare``), and one-line errors (issue 22)."""

import json

import pytest
from cli_checks import refused
from typer.testing import CliRunner

from wheretolearn.cli import app

runner = CliRunner()

#: The keys every AMA study's summary.json has (NtD, Darcy, Burgers).
SUMMARY_KEYS = {"problem", "preset", "grid", "parameter", "family", "iterations", "n_train",
                "repeats", "norm", "ood_error", "ood_error_ci", "ood_error_squared",
                "ama_loss", "relative_ama_loss", "relative_ama_loss_ci", "ama_loss_monotone",
                "theta_moved_iterations", "initial_ood_error", "final_ood_error", "eval_n",
                "baselines", "baselines_ci", "baselines_seen_ci", "recommended", "lipschitz",
                "learned", "metatest", "architecture", "timing_per_iteration", "history",
                "figures", "seconds"}


@pytest.mark.parametrize("extra", [["--repeats", "1"], ["--compare", "qbc,coreset"]],
                         ids=["ci", "ci-compare"])
def test_ci_preset_with_and_without_the_active_learning_comparison(tmp_path, extra):
    out = tmp_path / "run"
    res = runner.invoke(app, ["ama", "--problem", "burgers", "--preset", "ci", "--out", str(out),
                              "--no-progress", "--num-threads", "1", *extra])
    assert res.exit_code == 0, res.output
    s = json.loads((out / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(s) and s["problem"] == "burgers" and s["grid"] == 32
    assert s["ama_loss_monotone"] and s["metatest"]["n_measures"] == 1
    assert s["metatest"]["params"][0]["n_pool"] == 40
    assert set(s["baselines"]) == {"learned", "initial", "mixture"}
    table = s["compare"]
    assert table["schedule"] == [10, 20] and table["trials"] == s["repeats"]
    comparing = "--compare" in extra
    methods = {"learned", "initial", "mixture"} | ({"qbc", "coreset"} if comparing else set())
    assert set(table["methods"]) == methods
    for name, by_n in table["methods"].items():
        assert set(by_n) == {"10", "20"}
        assert all(0 < c["mean"] < 2 and c["n"] == s["repeats"] for c in by_n.values())
    # the distribution rows are the guard's fresh models (same numbers as baselines_ci)
    assert table["methods"]["learned"]["20"]["values"] == s["baselines_ci"]["learned"]["20"][
        "values"]
    assert "figures/compare_vs_n.png" in s["figures"]
    for fig in s["figures"]:
        assert (out / fig).exists()
    if comparing:
        rounds = (out / "compare.jsonl").read_text().strip().splitlines()
        assert len(rounds) == 2 * s["repeats"] * 2          # strategies x trials x sizes
        assert {json.loads(r)["strategy"] for r in rounds} == {"qbc", "coreset"}
        assert set(table["versus"]["qbc"]) == {"10", "20"}
        assert table["options"]["qbc"]["n_models"] == 4
        assert "coreset" in res.output and "every method per N" in res.output
    else:
        assert not (out / "compare.jsonl").exists()


@pytest.mark.parametrize("args, message", [
    (["--problem", "burgers", "--compare", "bald"],
     "unknown active-learning strategy 'bald'; choose from coreset, qbc, random"),
    (["--problem", "burgers", "--compare", "qbc,qbc"], "may be named once"),
    (["--problem", "burgers", "--compare", ","], "--compare must name"),
    (["--problem", "ntd", "--compare", "qbc"], "only burgers has one, not 'ntd'"),
    (["--problem", "darcy", "--compare", "qbc,coreset"], "only burgers has one, not 'darcy'"),
])
def test_compare_errors_are_one_line(tmp_path, args, message):
    out = tmp_path / "run"
    res = runner.invoke(app, ["ama", "--out", str(out), "--no-progress", *args])
    refused(res, message)
    assert not out.exists()


@pytest.mark.parametrize("toml, message", [
    ('problem = "burgers"\nn_pool = 15\ncompare = ["qbc"]\n', "exceeds the pool (n_pool = 15)"),
    ('problem = "burgers"\neval_n = [20, 10]\ncompare = ["qbc"]\n', "strictly increasing"),
    ('problem = "burgers"\nn_measures = 3\n', "n_measures must be 1"),
    ('problem = "darcy"\nn_pool = 50\n', "n_pool is a setting of burgers"),
])
def test_pool_settings_are_checked(tmp_path, toml, message):
    cfg = tmp_path / "c.toml"
    cfg.write_text(toml)
    res = runner.invoke(app, ["ama", "--config", str(cfg), "--out", str(tmp_path / "r")])
    refused(res, message)
