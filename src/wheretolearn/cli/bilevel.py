"""CLI commands ``wheretolearn demo`` and ``wheretolearn bilevel`` (bilevel studies, SPEC §3).

The commands only parse, call :func:`wheretolearn.design.bilevel_study.run_bilevel_study` and print.
Settings are merged as: paper settings of the problem < ``--config`` TOML < flags.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import typer

from . import app
from ._common import cli_errors, load_toml

_PAPER = " (default: --config, else the paper setting)"
_PROBLEMS = "sobol-g | friedman1 | friedman2 | rkhs | a plugin name | pkg.module:factory"


def _parse_int_list(text: str | None, name: str) -> list[int] | None:
    """``"1024,4096"`` -> ``[1024, 4096]``; raises ValueError naming the flag."""
    if text is None:
        return None
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{name} must be comma-separated positive integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise ValueError(f"{name} must be comma-separated positive integers, got {text!r}")
    return values


#: Flag of each bounded config key (``SIZE_LIMITS["bilevel"]``; the others are keys only).
_SIZE_FLAGS = {"dim": "--dim", "n_train": "--n-train", "steps": "--steps", "eval_n": "--eval-n",
               "repeats": "--repeats", "trials": "--trials", "num_threads": "--num-threads"}


def _memory_terms(cfg) -> dict[str, float]:
    """Rough bytes a bilevel study holds at once (see :func:`check_memory`)."""
    item = 4 if cfg.dtype == "float32" else 8
    n_eval, seen = max(cfg.eval_n), cfg.n_measures * cfg.n_seen
    return {
        "meta-test samples (n_measures x (n_seen + n_unseen) x dim)":
            cfg.n_measures * (cfg.n_seen + cfg.n_unseen) * cfg.dim * 8,
        "bilevel kernels (n_train x (n_train + n_measures x n_seen))":
            3 * cfg.n_train * (cfg.n_train + seen) * item,
        "evaluation kernels (eval_n x (eval_n + n_unseen))":
            3 * n_eval * (n_eval + cfg.n_unseen) * 8,
        "covariances (dim x dim per measure)": 3 * (cfg.n_measures + 8) * cfg.dim ** 2 * 8,
    }


def check_study_size(cfg) -> None:
    """Refuse a study whose sizes exceed :data:`SIZE_LIMITS` or whose rough memory need
    exceeds the machine's, before any work; one error naming the option."""
    from .._validation import SIZE_LIMITS, check_memory, check_sizes

    check_sizes(cfg.model_dump(), SIZE_LIMITS["bilevel"], flags=_SIZE_FLAGS)
    check_memory(_memory_terms(cfg), "this bilevel study",
                 "lower dim, n_train, eval_n, n_measures, n_seen or n_unseen")


def _run_and_report(cfg, out: Path, *, overwrite: bool, progress: bool) -> dict:
    from rich.console import Console

    from ..design.bilevel_study import run_bilevel_study

    err_console = Console(stderr=True)
    result = run_bilevel_study(cfg, out, progress=progress, overwrite=overwrite,
                               console=err_console)
    _print_table(result.summary)
    typer.echo(f"run folder: {result.run_dir}")
    return result.summary


def _print_table(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    ns = [str(n) for n in summary["eval_n"]]
    over = (f"{summary['trials']} trials" if summary.get("trials", 1) > 1
            else f"{summary['repeats']} repeats")
    family = {"mixture": f" mixture K={summary.get('components')}",
              "particles": f" particles M={summary.get('particles')}"}.get(
                  summary.get("family"), "")
    sel = summary.get("family_selection")
    if sel:
        family += f" (best family on the seen split: {sel['chosen']})"
    table = Table(title=(f"{summary['problem']} d={summary['dim']}{family}: unseen relative OOD "
                         f"error (mean [95% CI] over {over})"))
    table.add_column("source")
    for n in ns:
        table.add_column(f"N={n}", justify="right")
    for name, by_n in summary["baselines"].items():
        cells = []
        for n in ns:
            mean, ci = by_n.get(n), summary["baselines_ci"][name].get(n, {})
            cells.append("n/a" if mean is None else f"{mean:.4f} [{ci['lo']:.4f}, {ci['hi']:.4f}]")
        approx = " (approx.)" if name in summary.get("approximate", {}) else ""
        table.add_row(name + approx, *cells)
    console = Console(width=max(100, 30 * (len(ns) + 1)))
    console.print(table)
    console.print(f"error at N={summary['n_train']} during training: "
                  f"{summary['initial_error']:.4f} -> {summary['final_error']:.4f} "
                  f"(min {summary['min_unseen_error']:.4f}); "
                  f"{1e3 * summary['seconds_per_step']:.2f} ms/step "
                  f"({1e3 * summary['grad_seconds_per_step']:.2f} ms gradient)")
    for line in summary.get("warnings", []):
        typer.echo(f"warning: {line}", err=True)


@app.command("demo")
@cli_errors
def demo(
    out: Optional[Path] = typer.Option(None, "--out",
        help="run folder (default runs/demo-<time>)"),
    steps: Optional[int] = typer.Option(None, "--steps", help="bilevel steps (default 300)"),
    config: Optional[Path] = typer.Option(None, "--config",
        help="TOML overriding demo settings (default: none)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing run folder"),
    no_progress: bool = typer.Option(False, "--no-progress", help="no progress bars"),
    num_threads: Optional[int] = typer.Option(None, "--num-threads",
                                              help="torch threads (default: automatic)"),
) -> None:
    """Small Sobol G bilevel study (300 steps): run folder, figures, table."""
    from ..design.bilevel_study import DEMO_SETTINGS, resolve_bilevel_config

    file_cfg = load_toml(config) if config is not None else None
    cfg = resolve_bilevel_config(DEMO_SETTINGS, file_cfg, {"steps": steps,
                                                         "num_threads": num_threads})
    check_study_size(cfg)
    if out is None:
        out = Path("runs") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    _run_and_report(cfg, out, overwrite=overwrite, progress=not no_progress)


@app.command("bilevel")
@cli_errors
def bilevel(
    out: Path = typer.Option(..., "--out", help="run folder to create"),
    problem: Optional[str] = typer.Option(None, "--problem",
                                          help=_PROBLEMS + " (required: flag or config)"),
    dim: Optional[int] = typer.Option(None, "--dim", help="input dimension d" + _PAPER),
    n_train: Optional[int] = typer.Option(None, "--n-train", help="samples N per step" + _PAPER),
    steps: Optional[int] = typer.Option(None, "--steps", help="bilevel steps" + _PAPER),
    lr: Optional[float] = typer.Option(None, "--lr", help="initial learning rate" + _PAPER),
    bandwidth: Optional[float] = typer.Option(None, "--bandwidth",
        help="kernel length scale s" + _PAPER),
    init: Optional[str] = typer.Option(None, "--init", help="normal | barycenter" + _PAPER),
    family: Optional[str] = typer.Option(
        None, "--family", help="gaussian | mixture | particles | best: the distribution the "
                               "descent moves; best runs all three and reports the one with "
                               "the lowest seen error (default: --config, else gaussian)"),
    particles: Optional[int] = typer.Option(
        None, "--particles", help="particles M, at most --n-train (default: --config, else "
                                  "n_train)"),
    particle_init: Optional[str] = typer.Option(
        None, "--particle-init", help="metatest | start: initial particles from the pooled "
                                      "seen samples or the initial Gaussian (default: metatest)"),
    particle_bandwidth: Optional[float] = typer.Option(
        None, "--particle-bandwidth", help="KDE bandwidth of the learned particles' smoothing "
        "beyond M draws, times Silverman's (default: --config, else 1)"),
    components: Optional[int] = typer.Option(
        None, "--components", help="mixture components K (default: --config, else n_measures)"),
    mixture_init: Optional[str] = typer.Option(
        None, "--mixture-init", help="auto | metatest | kmeans | split: the initial mixture "
                                     "(default: --config, else auto)"),
    init_mean: Optional[float] = typer.Option(None, "--init-mean",
        help="m0 of N(m0 1, s0^2 I)" + _PAPER),
    init_std: Optional[float] = typer.Option(None, "--init-std",
        help="s0 of N(m0 1, s0^2 I)" + _PAPER),
    eval_n: Optional[str] = typer.Option(None, "--eval-n", help="e.g. 1024,4096" + _PAPER),
    repeats: Optional[int] = typer.Option(None, "--repeats",
        help="draws per (source, N)" + _PAPER),
    trials: Optional[int] = typer.Option(
        None, "--trials",
            help="whole runs with different seeds; table = mean and 95% CI over them" + _PAPER),
    seed: Optional[int] = typer.Option(None, "--seed",
        help="seed of the meta-test, sampling and evaluation (default: --config, else 0)"),
    optimizer: Optional[str] = typer.Option(None, "--optimizer", help="sgd | adam" + _PAPER),
    use_iterate: Optional[str] = typer.Option(
        None, "--use-iterate", help="best (lowest seen error, default) | final"),
    normalize_labels: Optional[bool] = typer.Option(
        None, "--normalize-labels/--raw-labels", help="scale-free bilevel objective" + _PAPER),
    num_threads: Optional[int] = typer.Option(None, "--num-threads",
        help="torch threads (default: --config, else automatic)"),
    config: Optional[Path] = typer.Option(None, "--config",
        help="TOML file of settings (default: none)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing run folder"),
    no_progress: bool = typer.Option(False, "--no-progress", help="no progress bars"),
) -> None:
    """Bilevel optimisation of a Gaussian (Gaussian-mixture, or particle) training
    distribution for KRR, with baselines.

    Unset values come from --config, then from the paper's settings for the problem.
    """
    from ..design.bilevel_study import resolve_bilevel_config

    file_cfg: dict[str, Any] | None = load_toml(config) if config is not None else None
    if problem is None and not (file_cfg or {}).get("problem"):
        raise ValueError(f"give --problem ({_PROBLEMS}) or a --config file that sets problem")
    flags = {"problem": problem, "dim": dim, "n_train": n_train, "steps": steps, "lr": lr,
             "bandwidth": bandwidth, "init": init, "init_mean": init_mean, "init_std": init_std,
             "family": family, "components": components, "mixture_init": mixture_init,
             "particles": particles, "particle_init": particle_init,
             "particle_bandwidth": particle_bandwidth,
             "eval_n": _parse_int_list(eval_n, "--eval-n"), "repeats": repeats,
             "trials": trials, "seed": seed,
             "optimizer": optimizer, "use_iterate": use_iterate,
             "normalize_labels": normalize_labels, "num_threads": num_threads}
    cfg = resolve_bilevel_config(file_cfg, flags)
    check_study_size(cfg)
    _run_and_report(cfg, out, overwrite=overwrite, progress=not no_progress)
