"""Finished runs side by side: ``wheretolearn compare RUN_DIR...`` (issue 16 item 5).

:func:`summarize_run` reads one run folder's ``summary.json`` into a row with the same
columns for every kind of run:

* online: the final validation error over held-out simulations (mean, p95, p99, max over
  (simulation, step) samples), simulations, batches, wall seconds;
* bilevel / demo: the unseen meta-test error of KRR trained on the optimised distribution at
  the largest evaluation size (mean over repeats; max over repeats), and the same for the
  best baseline, wall seconds;
* anything else with a ``summary.json``: the ``error``-like numbers it holds (AMA runs).

What is read is checked first (:func:`check_summary`): a ``summary.json`` that is not valid
JSON, not a JSON object, lacks a key its kind needs or holds a value of the wrong type is a
``ValueError`` naming the file, the key and what is wrong.

:func:`plot_comparison` draws the mean with the tail (p95 .. max) as an error bar per run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

__all__ = ["summarize_run", "compare_runs", "plot_comparison", "check_summary"]

COLUMNS = ("run", "kind", "problem", "mean", "p95", "p99", "max", "baseline", "seconds")


def _nan() -> float:
    return math.nan


class _Bad(ValueError):
    """A value of ``summary.json`` that does not have the type its key needs."""


def _number(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _expect(table: dict, key: str, ok, what: str, where: str, *, required: bool = False):
    """``table[key]`` after checking it with ``ok``; ``_Bad`` names ``where.key``."""
    if key not in table:
        if required:
            raise _Bad(f"key {where + key!r} is missing")
        return None
    value = table[key]
    if not ok(value):
        raise _Bad(f"key {where + key!r} must be {what}, got {_short(value)}")
    return value


def _size(n: Any) -> bool:
    """A sample size as ``summary.json`` holds it: an integer (or its digits)."""
    return (isinstance(n, int) and not isinstance(n, bool)) or (isinstance(n, str)
                                                                and n.isdigit())


def _short(value: Any) -> str:
    """``list [1, 2]``: the JSON type and the start of the value."""
    kinds = {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}
    text = json.dumps(value)
    return f"{kinds.get(type(value), 'number')} {text[:40]}{'...' if len(text) > 40 else ''}"


def _is_table_of_numbers(value: Any) -> bool:
    return isinstance(value, dict) and all(_number(v) for v in value.values())


def _check_online(summary: dict) -> None:
    ve = _expect(summary, "val_error", lambda v: isinstance(v, dict), "a table", "",
                 required=True)
    for key in ("mean", "p95", "p99", "max"):
        _expect(ve, key, _number, "a number or null", "val_error.")
    _expect(summary, "seconds", _number, "a number or null", "")


def _check_bilevel(summary: dict) -> None:
    _expect(summary, "eval_n", lambda v: isinstance(v, list) and all(map(_size, v)),
            "a list of sample sizes", "", required=True)
    _expect(summary, "baselines", lambda v: isinstance(v, dict) and all(
        _is_table_of_numbers(c) for c in v.values()),
        "a table of tables of numbers (source -> N -> error)", "", required=True)
    cis = _expect(summary, "baselines_ci", lambda v: isinstance(v, dict) and all(
        isinstance(c, dict) and all(isinstance(x, dict) for x in c.values())
        for c in v.values()), "a table of tables (source -> N -> interval)", "") or {}
    for name, cells in cis.items():
        for n, cell in cells.items():
            _expect(cell, "values", lambda v: isinstance(v, list) and all(map(_number, v)),
                    "a list of numbers", f"baselines_ci.{name}.{n}.")
    _expect(summary, "seconds_total", _number, "a number or null", "")


def _check_generic(summary: dict) -> None:
    for key in ("seconds", "seconds_total"):
        _expect(summary, key, _number, "a number or null", "")


def check_summary(summary: Any, source: str | Path) -> dict:
    """``summary`` (the parsed ``summary.json`` at ``source``) after checking the keys and
    types its kind of run needs; ``ValueError`` naming the file and what is wrong."""
    if not isinstance(summary, dict):     # the file's content: a value error, as the others
        raise ValueError(f"{str(source)!r} must hold a JSON object (a table of "  # noqa: TRY004
                         f"results), got {_short(summary)}")
    try:
        if "val_error" in summary:
            _check_online(summary)
        elif "baselines" in summary and "learned" in summary:
            _check_bilevel(summary)
        else:
            _check_generic(summary)
    except _Bad as exc:
        raise ValueError(f"{str(source)!r} is not a summary wheretolearn wrote: {exc}") from None
    return summary


def _read_summary(run: Path) -> dict:
    """The checked ``summary.json`` of ``run``."""
    path = run / "summary.json"
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        raise ValueError(f"{str(run)!r} holds no finished run (no readable summary.json)"
                         ) from None
    try:
        summary = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{str(path)!r} is not valid JSON ({exc})") from None
    return check_summary(summary, path)


def _table(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _online_row(summary: dict, cfg: dict) -> dict:
    ve = summary.get("val_error") or {}
    return {"kind": "online", "problem": str(_table(cfg.get("study")).get("problem",
                                                                              "heat2d")),
            "mean": ve.get("mean"), "p95": ve.get("p95"), "p99": ve.get("p99"),
            "max": ve.get("max"), "baseline": None, "seconds": summary.get("seconds"),
            "detail": f"{summary.get('simulations_completed', '?')} simulations, "
                      f"{summary.get('batches', '?')} batches"}


def _bilevel_row(summary: dict) -> dict:
    ns = [str(n) for n in summary.get("eval_n", [])]
    n = max(ns, key=int) if ns else None
    cis = summary.get("baselines_ci", {})
    opt = (cis.get("optimized") or {}).get(n, {}) if n else {}
    values = [v for v in opt.get("values", []) if v is not None]
    # baselines: source -> N -> mean error (a number), as the bilevel study writes it
    others = {name: cells.get(n) for name, cells in summary.get("baselines", {}).items()
              if name != "optimized" and n}
    others = {k: v for k, v in others.items() if v is not None}
    best = min(others.items(), key=lambda kv: kv[1]) if others else None
    return {"kind": "bilevel", "problem": f"{summary.get('problem')} d={summary.get('dim')}",
            "mean": (summary.get("baselines") or {}).get("optimized", {}).get(n),
            "p95": None, "p99": None, "max": max(values) if values else None,
            "baseline": f"{best[0]} {best[1]:.4g}" if best else None,
            "seconds": summary.get("seconds_total"),
            "detail": f"unseen error at N={n}, {len(values)} repeats"}


def _generic_row(summary: dict) -> dict:
    numbers = {k: v for k, v in summary.items() if isinstance(v, (int, float))
               and not isinstance(v, bool) and "error" in k}
    mean = numbers.get("final_error", numbers.get("mean_error", next(iter(numbers.values()),
                                                                      None)))
    return {"kind": str(summary.get("kind", "run")), "problem": str(summary.get("problem", "?")),
            "mean": mean, "p95": None, "p99": None, "max": None, "baseline": None,
            "seconds": summary.get("seconds", summary.get("seconds_total")),
            "detail": ", ".join(f"{k}={v:.4g}" for k, v in list(numbers.items())[:3])}


def summarize_run(run_dir: str | Path) -> dict[str, Any]:
    """One row (see :data:`COLUMNS`, plus ``detail``) for the finished run in ``run_dir``;
    ``ValueError`` naming the folder when it holds no finished run."""
    import tomllib

    run = Path(run_dir)
    summary = _read_summary(run)
    try:
        cfg = tomllib.loads((run / "config.toml").read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        cfg = {}
    if "val_error" in summary:
        row = _online_row(summary, cfg)
    elif "baselines" in summary and "learned" in summary:
        row = _bilevel_row(summary)
    else:
        row = _generic_row(summary)
    return {"run": str(run), **row}


def compare_runs(run_dirs: list[str | Path]) -> list[dict[str, Any]]:
    """Rows of :func:`summarize_run` for each folder, in the order given."""
    if not run_dirs:
        raise ValueError("give at least one run folder")
    return [summarize_run(d) for d in run_dirs]


def plot_comparison(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Bar per run: mean error, with a bar from p95 (or the mean) up to the max; log scale.
    Written to a temporary file and renamed, so ``path`` is never half-written."""
    import os

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    labels = [Path(r["run"]).name or r["run"] for r in rows]
    mean = [r["mean"] if r["mean"] is not None else _nan() for r in rows]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(rows) + 2), 3.5))
    xs = range(len(rows))
    ax.bar(xs, mean, color="tab:blue", alpha=0.7, label="mean")
    for x, r, m in zip(xs, rows, mean):
        lo = r["p95"] if r["p95"] is not None else m
        if r["max"] is not None:
            ax.plot([x, x], [lo, r["max"]], color="black", lw=2)
            ax.plot([x], [r["max"]], marker="v", color="black")
    ax.set_xticks(list(xs), labels, rotation=20, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("relative error (mean; line: p95..max)")
    ax.set_title("runs compared")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path
