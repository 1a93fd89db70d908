"""The README and docs tables of bilevel results are generated from the committed results
files (benchmarks/reproduction_table.py): text and results cannot drift apart."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "reproduction_table.py"


def test_readme_and_docs_tables_match_the_results_files():
    run = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True,
                         text=True, cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr


def test_table_numbers_are_the_trial_means(tmp_path):
    """The table's optimised cell of each configuration is the mean over its trial files."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import reproduction_table as rt
    finally:
        sys.path.pop(0)
    for name in rt.CONFIGS:
        files = sorted((rt.RESULTS / name).glob("trial*.json"))
        if not files:
            continue
        vals = [json.loads(p.read_text())["baselines"]["optimized"]["1024"] for p in files]
        agg = rt.load_config(name)
        assert agg["trials"] == len(files) or len(files) == 1
        assert abs(agg["baselines"]["optimized"]["1024"] - sum(vals) / len(vals)) < 1e-12
        assert f"{sum(vals) / len(vals):.3f}" in rt.reproduction_table()
