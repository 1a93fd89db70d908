"""CLI command ``wheretolearn ama``: AMA studies for neural operators (SPEC §4).

Parses, calls :func:`wheretolearn.design.ama_study.run_ama_study` and prints a table.
Settings merge as: preset of the problem < ``--config`` TOML < flags.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from . import app
from ._common import cli_errors, load_toml


def _lipschitz(text: Optional[str]) -> Any:
    if text is None or text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"--lipschitz must be 'auto' or a number >= 0, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"--lipschitz must be 'auto' or a number >= 0, got {text!r}")
    return value


#: Flag of each bounded config key (``SIZE_LIMITS["ama"]``; the others are keys only).
_SIZE_FLAGS = {"repeats": "--repeats", "iterations": "--iterations", "workers": "--workers",
               "num_threads": "--num-threads"}


def _sample_bytes(cfg) -> int | None:
    """Bytes of one labelled (input, output) pair of a built-in problem (``None``: a user
    problem, whose grid is its own)."""
    item = 4 if cfg.dtype == "float32" else 8
    if cfg.problem == "ntd":
        return 2 * 4 * cfg.n * item             # boundary data in and out
    if cfg.problem == "darcy":
        return 2 * cfg.n ** 2 * item            # coefficient field in, solution out
    if cfg.problem == "burgers":
        return 2 * cfg.n * item                 # initial condition in, solution out
    if cfg.problem == "radiative":
        return 2 * cfg.n ** 2 * item            # scattering field in, density out
    return None


def check_ama_size(cfg) -> None:
    """Refuse sizes beyond :data:`SIZE_LIMITS` and, for the built-in problems, labelled
    data larger than the machine's memory, before any work."""
    from .._validation import SIZE_LIMITS, check_memory, check_sizes

    check_sizes(cfg.model_dump(), SIZE_LIMITS["ama"], flags=_SIZE_FLAGS)
    per = _sample_bytes(cfg)
    if per is None:
        return
    held = {"meta-test samples (n_measures x (n_seen + n_unseen) + n_pool)":
                (cfg.n_measures * (cfg.n_seen + cfg.n_unseen) + (cfg.n_pool or 0)) * per,
            "training samples (n_train + n_opt + eval_n)":
                (cfg.n_train + cfg.n_opt + max(cfg.eval_n)) * per}
    check_memory(held, "this AMA study", "lower n, n_measures, n_seen, n_unseen, n_train, "
                 "n_opt or eval_n")


def _offset(text: Optional[str]) -> Any:
    """``--offset-sd``: None, "family" or a float."""
    if text is None or text == "family":
        return text
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"--offset-sd must be 'family' or a number >= 0, got {text!r}") from None


def _compare_list(text: Optional[str]) -> Optional[list[str]]:
    """``--compare qbc,coreset`` -> ``["qbc", "coreset"]`` (names checked by the config)."""
    if text is None:
        return None
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise ValueError(f"--compare must name active-learning strategies, e.g. qbc,coreset; "
                         f"got {text!r}")
    return names


def _print_compare(console, summary: dict) -> None:
    """The per-N table of a pool problem (mean [95 % CI] over trials)."""
    from rich.table import Table

    table = summary["compare"]
    ns = [str(n) for n in table["schedule"]]
    out = Table(title=f"{summary['problem']}: every method per N, unseen held-out error "
                      f"(mean [95% CI] over {table['trials']} trials)")
    out.add_column("method")
    for n in ns:
        out.add_column(f"N={n}", justify="right")
    for name, by_n in table["methods"].items():
        out.add_row(name, *[f"{by_n[n]['mean']:.4f} [{by_n[n]['lo']:.4f}, {by_n[n]['hi']:.4f}]"
                            for n in ns])
    console.print(out)


def _print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    ns = [str(n) for n in summary["eval_n"]]
    table = Table(title=(f"AMA {summary['problem']} ({summary['preset']}): fresh models, unseen "
                         f"relative OOD error (mean [95% CI] over {summary['repeats']} repeats)"))
    table.add_column("source")
    for n in ns:
        table.add_column(f"N={n}", justify="right")
    for name, by_n in summary["baselines_ci"].items():
        table.add_row(name, *[f"{by_n[n]['mean']:.4f} [{by_n[n]['lo']:.4f}, {by_n[n]['hi']:.4f}]"
                              for n in ns])
    console = Console(width=max(100, 30 * (len(ns) + 1)))
    console.print(table)
    if summary.get("compare"):
        _print_compare(console, summary)
    lip = summary["lipschitz"]
    rec = summary.get("recommended")
    if rec:
        console.print(f"recommended: {rec['source']} (lowest seen error {rec['seen_error']:.4f} at "
                      f"N={rec['n']}; margin {rec['margin']:.4f} over {rec['runner_up']}; learned "
                      f"is {rec['learned_minus_best']:.4f} above the best)")
    console.print(f"in-loop model (not a fresh model) OOD error per iteration: "
                  f"{', '.join(f'{e:.4f}' for e in summary['ood_error'])}")
    console.print(f"J / J_0 per iteration: "
                  f"{', '.join(f'{e:.4f}' for e in summary['relative_ama_loss'])} "
                  f"(monotone: {summary['ama_loss_monotone']})")
    if summary.get("reductions"):
        _print_particles(console, summary)
        console.print(f"L = {lip['true'][0]['value']:.4g}, L' = {lip['model'][0]['value']:.4g} "
                      f"(repeat 1); {summary['seconds']:.1f} s")
        return
    console.print(f"L = {lip['true'][0]['value']:.4g}, L' = {lip['model'][0]['value']:.4g} "
                  f"(repeat 1); learned {_fmt(summary['learned']['parameter'])} = "
                  f"{_fmt(summary['learned']['mean'])} (from "
                  f"{_fmt(summary['learned']['initial'])}); {summary['seconds']:.1f} s")


def _print_particles(console, summary: dict) -> None:
    """Particle AMA: per start, the reduction of the relative OOD error (squared and root)
    and the fresh models' learned / mixture-of-Q ratio per N."""
    from rich.table import Table

    ns = [str(n) for n in summary["eval_n"]]
    out = Table(title=f"radiative, knudsen {summary['knudsen']:g}: reduction of the relative "
                      f"OOD error from the start (in-loop model; fresh models per N)")
    out.add_column("start")
    out.add_column("in-loop squared / root", justify="right")
    for n in ns:
        out.add_column(f"N={n} squared / root; learned/mixture", justify="right")
    for start, red in summary["reductions"].items():
        loop = red["in_loop"]
        out.add_row(start, f"{loop['squared']:.1%} / {loop['root']:.1%}",
                    *[f"{red['fresh'][n]['squared']:.1%} / {red['fresh'][n]['root']:.1%}; "
                      f"{red['fresh'][n]['learned_over_mixture']:.3f}" for n in ns])
    console.print(out)


def _fmt(value: Any) -> str:
    """A float, a name, or a list of either, for the summary line."""
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_fmt(v) for v in value) + ")"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


@app.command("ama")
@cli_errors
def ama(
    out: Path = typer.Option(..., "--out", help="run folder to create"),
    problem: Optional[str] = typer.Option(
        None, "--problem",
        help="ntd | darcy | burgers | radiative | a user problem 'pkg.mod:factory', 'file.py:factory' or "
             "plugin name (required unless --config sets problem)"),
    preset: Optional[str] = typer.Option(None, "--preset", help="ci | small | paper (default ci)"),
    config: Optional[Path] = typer.Option(
        None, "--config", help="TOML file of settings (default: none, the preset alone)"),
    repeats: Optional[int] = typer.Option(
        None, "--repeats", help="independent AMA runs (default: the preset's)"),
    iterations: Optional[int] = typer.Option(
        None, "--iterations", help="AMA iterations (default: the preset's)"),
    seed: Optional[int] = typer.Option(
        None, "--seed", help="seed of the first repeat (default 0)"),
    lipschitz: Optional[str] = typer.Option(
        None, "--lipschitz",
        help="auto (estimate L and L') or a fixed value for both (default auto)"),
    device: Optional[str] = typer.Option(
        None, "--device", help="cpu | cuda (model training; default cpu)"),
    workers: Optional[int] = typer.Option(
        None, "--workers", help="Dask workers for labelling (default: label in this process)"),
    scheduler: Optional[str] = typer.Option(
        None, "--scheduler", help="Dask scheduler ADDRESS (default: none)"),
    cluster: Optional[str] = typer.Option(
        None, "--cluster",
        help="local | slurm | pbs | sge (uses the config's [cluster] table; default: none)"),
    cache_dir: Optional[Path] = typer.Option(
        None, "--cache-dir", help="labelled data (zarr; default: kept in memory)"),
    num_threads: Optional[int] = typer.Option(
        None, "--num-threads", help="torch threads (default: torch's current count)"),
    theta_tol: Optional[float] = typer.Option(
        None, "--theta-tol", help="stop when an update moves theta less than this (default 1e-4)"),
    offset_sd: Optional[str] = typer.Option(
        None, "--offset-sd", help="Darcy: spread of the random constant offset: 'family' (sd "
                                  "of the meta-test means, default) or a number >= 0"),
    learn_spectrum: Optional[bool] = typer.Option(
        None, "--learn-spectrum/--mean-only",
        help="Darcy: learn the KLE spectrum with the mean (default) or the mean only"),
    family: Optional[str] = typer.Option(
        None, "--family",
        help="single (one parametric field, default) | mixture (a uniform mixture of one "
             "field per Q_j, started at the Q_j's parameters)"),
    model: Optional[str] = typer.Option(
        None, "--model",
        help="deeponet (default) | fno (Fourier neural operator; needs wheretolearn[fno]) | a "
             "user factory 'pkg.mod:factory' or 'file.py:factory'; sizes from the preset, "
             "model_options in --config override them"),
    normalize: Optional[bool] = typer.Option(
        None, "--normalize/--no-normalize",
        help="standardise the model's inputs and outputs with statistics of its training "
             "split (default) or train the plain network"),
    knudsen: Optional[float] = typer.Option(
        None, "--knudsen", help="radiative: Knudsen number eps (paper: 0.125, 2, 8; default "
                                "0.125)"),
    particle_start: Optional[str] = typer.Option(
        None, "--particle-start",
        help="radiative: initial particles, paper (1e-3 N(0, I), default) | mixture (samples "
             "of the mixture of the Q_k) | both (both studies in one run folder)"),
    eta_shrink: Optional[str] = typer.Option(
        None, "--eta-shrink",
        help="radiative: when a flow step would raise J, divide eta by 10 ('divide', the "
             "authors' code; default) or by 2 ('halve', as the paper writes)"),
    compare: Optional[str] = typer.Option(
        None, "--compare",
        help="burgers: active-learning baselines on the same pool, comma-separated (qbc, "
             "coreset, random), grown through the preset's eval_n with repeats trials; "
             "default: none"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing run folder"),
    no_progress: bool = typer.Option(False, "--no-progress", help="no progress bars"),
) -> None:
    """Alternating minimisation (paper Alg. 2) of the training distribution of a neural
    operator (DeepONet, FNO or a user model).

    Unset values come from --config, then from the preset of the problem.
    """
    from rich.console import Console

    from ..design.ama_study import resolve_ama_config, run_ama_study

    file_cfg: dict[str, Any] = dict(load_toml(config)) if config is not None else {}
    if problem is None and not file_cfg.get("problem"):
        raise ValueError("give --problem (ntd | darcy | pkg.mod:factory) or a --config file "
                         "that sets problem")
    if family is not None and family not in ("single", "mixture"):
        raise ValueError(f"--family must be single or mixture, got {family!r}")
    if particle_start is not None and particle_start not in ("paper", "mixture", "both"):
        raise ValueError(f"--particle-start must be paper, mixture or both, got "
                         f"{particle_start!r}")
    if eta_shrink is not None and eta_shrink not in ("divide", "halve"):
        raise ValueError(f"--eta-shrink must be divide or halve, got {eta_shrink!r}")
    if preset is not None and preset not in ("ci", "small", "paper"):
        raise ValueError(f"--preset must be ci, small or paper, got {preset!r}")
    cluster_cfg = None
    if cluster is not None:
        if cluster not in ("local", "slurm", "pbs", "sge"):
            raise ValueError(f"--cluster must be local, slurm, pbs or sge, got {cluster!r}")
        cluster_cfg = {**(file_cfg.get("cluster") or {}), "kind": cluster}
    if scheduler is not None and cluster is not None:
        raise ValueError("give either --scheduler or --cluster, not both")
    flags = {"problem": problem, "preset": preset, "repeats": repeats, "iterations": iterations,
             "seed": seed, "lipschitz": _lipschitz(lipschitz), "device": device,
             "workers": workers, "scheduler": scheduler, "cluster": cluster_cfg,
             "cache_dir": None if cache_dir is None else str(cache_dir),
             "num_threads": num_threads, "theta_tol": theta_tol,
             "offset_sd": _offset(offset_sd), "learn_spectrum": learn_spectrum,
             "family": family, "normalize": normalize, "model": model,
             "compare": _compare_list(compare), "knudsen": knudsen,
             "particle_start": particle_start}
    if eta_shrink is not None:
        flags["flow"] = {"shrink": eta_shrink}
    cfg = resolve_ama_config(file_cfg, flags)
    check_ama_size(cfg)
    result = run_ama_study(cfg, out, progress=not no_progress, overwrite=overwrite,
                           console=Console(stderr=True))
    _print_summary(result.summary)
    typer.echo(f"run folder: {result.run_dir}")
