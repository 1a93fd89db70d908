"""Whole-run repeats of the paper's bilevel configurations and the robustness table.

``reproduction``: each of ``examples/{sobol_g, friedman1, friedman2, rkhs, friedman2_adam,
rkhs_barycenter}.toml`` run as whole-run trials (different bilevel and evaluation seeds,
meta-test family seed 0 fixed; trial k is the study's ``trial_offset = k``), evaluated at
N = 1024. Each trial's ``summary.json`` goes to
``benchmarks/results/reproduction/<config>/trial<k>.json``;
``benchmarks/reproduction_table.py`` aggregates them over trials
(:func:`wheretolearn.design.study.aggregate_trials`) into the README and docs tables.

``robustness``: configurations outside the paper's four (other dimensions, meta-test seeds,
learning rates 10x the paper's), one run each, to check that the reported distribution is
never worse than its start. Results in ``benchmarks/results/reproduction/robustness.json``.

Runs with one torch thread; run under ``nice`` on a shared machine. Usage::

    python benchmarks/reproduce_bilevel.py reproduction friedman1 [--trials 0 1 2 3 4]
    python benchmarks/reproduce_bilevel.py robustness [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "reproduction"
CONFIGS = ("sobol_g", "friedman1", "friedman2", "rkhs", "friedman2_adam", "rkhs_barycenter")

#: name -> overrides of the paper settings of the problem (seed = meta-test family).
ROBUSTNESS: dict[str, dict] = {
    "friedman1 d5 seed 1": {"problem": "friedman1", "seed": 1},
    "friedman1 d5 lr x10": {"problem": "friedman1", "lr": 5e-3},
    "sobol-g d2 lr x10": {"problem": "sobol-g", "lr": 1e-1},
    "rkhs d10 lr x10": {"problem": "rkhs", "lr": 50.0},
    "friedman1 d8": {"problem": "friedman1", "dim": 8},
    "friedman2 d5 lr x10": {"problem": "friedman2", "lr": 2.5e-6},
    "sobol-g d4": {"problem": "sobol-g", "dim": 4},
    "friedman1 d5 lr x10 seed 1": {"problem": "friedman1", "lr": 5e-3, "seed": 1},
    "friedman1 d5 seed 2": {"problem": "friedman1", "seed": 2},
    "rkhs d5": {"problem": "rkhs", "dim": 5},
}
ROBUST_EVAL = {"eval_n": [1024], "repeats": 3, "baselines": ["normal"], "num_threads": 1}
#: Evaluation of the reproduction trials: N = 1024, one draw per source and trial (the
#: interval is over trials), one thread; the committed trials were started before the
#: study's start check existed, so it stays off here (the table shows the bilevel iterate).
REPRO_EVAL = {"eval_n": [1024], "repeats": 1, "num_threads": 1, "check_start": False}
#: Trials after the first log the unseen error every 100 steps only (logging; the run itself
#: is bit-identical, see tests/design/test_bilevel.py), which cuts a step's cost by ~3x.
SPARSE_LOGGING = {"eval_unseen": 100}


def to_jsonable(value):
    """NaN (e.g. the unseen error of a step that was not logged) -> None, as in run folders."""
    from wheretolearn.report.runfolder import to_jsonable as convert

    return convert(value)


def _study(cfg: dict, folder: Path) -> dict:
    from wheretolearn.design import resolve_study_config, run_bilevel_study

    resolved = resolve_study_config(cfg)
    summary = run_bilevel_study(resolved, folder, progress=False)
    summary["lr"], summary["bandwidth"] = resolved.lr, resolved.bandwidth
    return summary


def reproduction(name: str, trial: int, sparse: bool = False) -> Path:
    """Trial ``trial`` of config ``name`` as its own study (``trial_offset``), so the trials of
    one configuration can run as separate jobs and a partial set is still usable."""
    cfg = tomllib.loads((ROOT / "examples" / f"{name}.toml").read_text())
    cfg.update(trials=1, trial_offset=trial, **REPRO_EVAL)
    if trial > 0 or sparse:
        cfg["bilevel_options"] = {**cfg.get("bilevel_options", {}), **SPARSE_LOGGING}
    tmp = Path(tempfile.mkdtemp(prefix=f"repro-{name}-"))
    t0 = time.perf_counter()
    try:
        summary = _study(cfg, tmp / "run")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summary.pop("out", None)
    summary.pop("figures", None)
    summary["config"] = name
    summary["eval_settings"] = REPRO_EVAL
    summary["wall_seconds"] = time.perf_counter() - t0
    summary["machine"] = "shared 2-core machine, 1 torch thread, other jobs running"
    out = RESULTS / name
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"trial{trial}.json"
    path.write_text(json.dumps(to_jsonable(summary), indent=1, allow_nan=False))
    return path


def robustness(only: list[str] | None) -> Path:
    path = RESULTS / "robustness.json"
    rows = json.loads(path.read_text()) if path.exists() else {}
    for name, over in ROBUSTNESS.items():
        if (only and name not in only) or (not only and name in rows):
            continue
        if only and name in rows:
            rows[name + " (before the start check)"] = rows.pop(name)
        tmp = Path(tempfile.mkdtemp(prefix="robust-"))
        try:
            s = _study({**over, **ROBUST_EVAL, "bilevel_options": SPARSE_LOGGING}, tmp / "run")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        start, reported = s["baselines"]["normal"]["1024"], s["baselines"]["optimized"]["1024"]
        rows[name] = {
            "settings": {**over, "dim": s["dim"], "lr": s["lr"], "bandwidth": s["bandwidth"]},
            "start_error_1024": start, "reported_error_1024": reported,
            "reported_not_worse": bool(reported <= start
                                       or (s.get("start_check") or {}).get("kept_start")),
            "seen_error_start": s["initial_seen_error"],
            "seen_error_reported": s["reported_seen_error"],
            "unseen_error_n250_start_end": [s["initial_error"], s["final_error"]],
            "best_step": s["best_step"], "collapse": s["collapse"], "warnings": s["warnings"],
            "start_check": s.get("start_check"),
        }
        RESULTS.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rows, indent=1, allow_nan=False))
        print(name, json.dumps(rows[name]["collapse"]), start, "->", reported, flush=True)
    return path


def main() -> None:
    import torch

    torch.set_num_threads(1)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("reproduction", "robustness"))
    ap.add_argument("configs", nargs="*", help=f"reproduction: any of {', '.join(CONFIGS)}")
    ap.add_argument("--trials", nargs="+", type=int, default=[0, 1, 2, 3, 4],
                    help="trial indices to run (each its own study)")
    ap.add_argument("--only", nargs="*", help="robustness: run only these rows")
    args = ap.parse_args()
    if args.what == "reproduction":
        names = args.configs or CONFIGS
        bad = [n for n in names if n not in CONFIGS]
        if bad:
            raise SystemExit(f"error: unknown config {bad[0]!r}; choose from {', '.join(CONFIGS)}")
        for trial in args.trials:          # trials outer: every config gets trial 0 first
            for name in names:
                print(reproduction(name, trial), flush=True)
    else:
        print(robustness(args.only), flush=True)


if __name__ == "__main__":
    main()
