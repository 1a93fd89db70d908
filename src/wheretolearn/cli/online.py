"""CLI ``wheretolearn online CONFIG.toml --out DIR`` and ``wheretolearn online resume DIR``.

Only parses, calls :mod:`wheretolearn.online.study` and prints (SPEC §5). Settings are
merged as: defaults < CONFIG.toml < flags. Heavy imports happen inside the command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from . import app
from ._common import cli_errors
from ._online_args import (check_config_path, check_resume_flags, insecure_cluster_warning,
                           resume)

_USAGE = ("wheretolearn online CONFIG.toml --out DIR [options]  |  "
          "wheretolearn online resume DIR  |  "
          "wheretolearn online compare CONFIG.toml --samplers uniform,breed --seeds 5 --out DIR")


class _Progress:
    """Live display: simulations done/running/failed, samples, buffer fill, loss."""

    def __init__(self, total: int):
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(TextColumn("simulations"), BarColumn(), TextColumn("{task.fields[info]}"),
                             TimeElapsedColumn(), console=Console(stderr=True), transient=False)
        self._task = self._bar.add_task("online", total=total, info="starting")

    def __enter__(self) -> "_Progress":
        self._bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._bar.stop()

    def __call__(self, s: dict) -> None:
        loss = "-" if s["loss"] is None else f"{s['loss']:.3g}"
        val = "-" if s["val_error"] is None else f"{s['val_error']:.3g}"
        info = (f"done {s['simulations_completed']} running {s['simulations_running']} "
                f"failed {s['simulations_failed']} | samples {s['samples_received']} | buffer "
                f"{s['buffer_fill']}/{s['buffer_capacity']} | batch {s['batches']} loss {loss} "
                f"val {val}")
        # The total counts lineages: a failed simulation that was redrawn did not end its
        # lineage (its replacement goes on), so it does not advance the bar.
        ended = s["simulations_completed"] + s["simulations_failed"] - s["simulations_redrawn"]
        self._bar.update(self._task, completed=ended, info=info)


def _print_summary(summary: dict, run_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"online study ({summary['stopped']})")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    for key in ("simulations_requested", "simulations_completed", "simulations_failed",
                "retries", "samples_received", "samples_duplicated", "batches"):
        table.add_row(key, str(summary[key]))
    ve = summary["val_error"]
    table.add_row("val_error mean / median", f"{ve['mean']:.4g} / {ve['median']:.4g}")
    table.add_row("val_error p95 / p99 / max", f"{ve['p95']:.4g} / {ve['p99']:.4g} / {ve['max']:.4g}")
    table.add_row("trainer samples/s", f"{summary['trainer_samples_per_second']:.1f}")
    table.add_row("trainer idle fraction", f"{summary['trainer_idle_fraction']:.3f}")
    table.add_row("seconds", f"{summary['seconds']:.1f}")
    Console().print(table)
    typer.echo(f"run folder: {run_dir}")


def _problem_overrides(config: str, problem: str | None, option: list[str]) -> dict:
    """``--problem`` (a relative ``file.py:factory`` is relative to the current folder) and
    ``--option key=value`` merged into the file's ``[study.options]``."""
    from ..problems.plugins import canonical_spec
    from .generate import parse_key_values

    overrides: dict[str, Any] = {}
    if problem is not None:
        overrides["study.problem"] = canonical_spec(problem)
    if option:
        from ..online.config import load_online_config

        base = load_online_config(config).study.options
        overrides["study.options"] = {**base, **parse_key_values(option, "--option")}
    return overrides


def _run(fn: Any, *args: Any, total: int, progress: bool, **kw: Any) -> dict:
    if not progress:
        return fn(*args, **kw)
    with _Progress(total) as bar:
        return fn(*args, progress=bar, **kw)


@app.command("online", no_args_is_help=True)
@cli_errors
def online(
    ctx: typer.Context,
    config: str = typer.Argument(..., metavar="CONFIG.toml | resume | compare",
                                 help="study configuration, or the word 'resume' or "
                                 "'compare'"),
    run_dir: Optional[Path] = typer.Argument(None, metavar="DIR",
                                             help="run folder to resume (after 'resume'), "
                                             "or the CONFIG.toml to compare samplers on "
                                             "(after 'compare')"),
    out: Optional[Path] = typer.Option(None, "--out",
        help="run folder to create (required to run)"),
    workers: Optional[int] = typer.Option(None, "--workers", help="Dask workers (= concurrent "
                                          "simulations unless [executor] "
                                          "max_concurrent; default 2)"),
    sampler: Optional[str] = typer.Option(None, "--sampler",
                                          help="uniform | halton | sobol | lhs | breed "
                                          "(default uniform)"),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="address of a running "
                                            "Dask scheduler (tls://host:port with certificates "
                                            "from the Dask configuration, or tcp://host:port; "
                                            "default: none)"),
    cluster: Optional[str] = typer.Option(None, "--cluster", help="local | slurm | pbs | sge | "
                                          "address (overrides [cluster] kind; default local)"),
    print_job_script: bool = typer.Option(False, "--print-job-script",
                                          help="print the batch job script and exit"),
    fail_rate: Optional[float] = typer.Option(None, "--fail-rate", help="fault injection: "
                                              "probability that an attempt crashes or "
                                              "hangs (default 0)"),
    max_seconds: Optional[float] = typer.Option(None, "--max-seconds", help="stop (resumable) "
                                                "after this many seconds (a number > 0; "
                                                "default: no limit)"),
    no_progress: bool = typer.Option(False, "--no-progress", help="no live progress display"),
    seed: Optional[int] = typer.Option(None, "--seed", help="study seed (overrides [study] "
                                       "seed; default 0)"),
    problem: Optional[str] = typer.Option(None, "--problem", help="the simulator (overrides "
                                          "[study] problem): heat2d, a plugin name, "
                                          "pkg.module:factory or file.py:factory; see "
                                          "docs/user_solver.md (default: the config's problem, "
                                          "heat2d)"),
    option: list[str] = typer.Option([], "--option", "-o", help="problem option key=value "
                                     "(repeatable; merged into [study.options])"),
    num_threads: Optional[int] = typer.Option(None, "--num-threads", help="torch threads of "
                                              "the trainer (overrides [training] "
                                              "torch_threads; default: cores left by local "
                                              "workers)"),
    queue: Optional[str] = typer.Option(None, "--queue", "--partition", help="batch queue / "
                                        "Slurm partition (overrides [cluster] queue; "
                                        "default: none)"),
    walltime: Optional[str] = typer.Option(None, "--walltime", help="batch job time limit "
                                           "HH:MM:SS (overrides [cluster] walltime; "
                                           "default 00:30:00)"),
    restart: bool = typer.Option(False, "--restart", help="resume only: start a run whose "
                                 "checkpoint is gone again from nothing"),
    trust: bool = typer.Option(False, "--trust", help="resume only: the run folder may name "
                               "code to import or launch (a user problem, a command, a "
                               "cluster's python or address); resume it anyway (only for "
                               "folders whose author you trust)"),
    samplers: Optional[str] = typer.Option(None, "--samplers", help="compare: comma-separated "
                                           "samplers, including uniform (the reference) (default "
                                           "uniform,breed,breed-weighted)"),
    seeds: int = typer.Option(10, "--seeds", help="compare: paired seeds 0..N-1, the same "
                              "for every sampler (default 10)"),
    passes: Optional[float] = typer.Option(None, "--passes", help="compare: training passes "
                                           "over the samples generated, the same for every "
                                           "sampler (default 1.5)"),
    batches_per_simulation: Optional[float] = typer.Option(
        None, "--batches-per-simulation", help="compare: a fixed pace of training batches "
        "per simulation instead of --passes (the old protocol: 4.75; default: off)"),
    val_interior: int = typer.Option(512, "--val-interior", help="compare: interior "
                                     "validation simulations (the headline; default 512)"),
    val_faces: int = typer.Option(128, "--val-faces", help="compare: validation simulations "
                                  "on the faces of the box (default 128)"),
    val_corners: int = typer.Option(64, "--val-corners", help="compare: at most this many "
                                    "corners of the box (all when fewer; default 64)"),
    val_seed: int = typer.Option(2024, "--val-seed", help="compare: seed of the validation "
                                 "set (default 2024)"),
    val_design: str = typer.Option("sobol", "--val-design", help="compare: sobol | halton "
                                   "(space-filling design of the validation set; default "
                                   "sobol)"),
    cache: Optional[Path] = typer.Option(None, "--cache", help="compare: folder caching "
                                         "validation sets, reused when problem, options, "
                                         "bounds, sizes and seed match (default: DIR/"
                                         "validation, not shared)"),
    bootstrap_seed: int = typer.Option(0, "--bootstrap-seed", help="compare: seed of the "
                                       "bootstrap intervals (default 0)"),
) -> None:
    """Train a surrogate online while an ensemble of simulations streams into it.

    Usage: wheretolearn online CONFIG.toml --out DIR [options], or
    wheretolearn online resume DIR (continue an interrupted study; takes only
    --max-seconds, --no-progress, --restart and --trust), or
    wheretolearn online compare CONFIG.toml --samplers uniform,breed,breed-weighted --seeds 10
    --out DIR (samplers at the same budget, paired seeds, interior / faces / corners
    validation groups; see docs/online.md, Comparing samplers).
    """
    check_max_seconds(max_seconds)
    if config == "resume":
        check_resume_flags(ctx)
        return resume(run_dir, max_seconds=max_seconds, progress=not no_progress,
                      restart=restart, run=_run, print_summary=_print_summary, trust=trust)
    if config == "compare" and run_dir is not None:
        from .online_compare import run_compare

        return run_compare(str(run_dir), out=out, samplers=samplers, seeds=seeds,
                           passes=passes, batches_per_simulation=batches_per_simulation,
                           val_interior=val_interior, val_faces=val_faces,
                           val_corners=val_corners, val_seed=val_seed, val_design=val_design,
                           cache=cache, bootstrap_seed=bootstrap_seed,
                           progress=not no_progress)
    if run_dir is not None:
        raise ValueError(f"unexpected argument {str(run_dir)!r}; usage: {_USAGE}")
    if restart:
        raise ValueError("--restart applies only to 'wheretolearn online resume DIR'")
    if trust:
        raise ValueError("--trust applies only to 'wheretolearn online resume DIR' (a config "
                         "file of your own needs no trust)")
    from ..cluster import job_script
    from ..online.config import load_online_config
    from ..online.study import run_online_study

    check_config_path(config)
    cfg = load_online_config(config, **_problem_overrides(config, problem, option),
                             **{"executor.workers": workers, "sampler.name": sampler,
                                        "executor.fail_rate": fail_rate, "study.seed": seed,
                                        "training.torch_threads": num_threads,
                                        "cluster.queue": queue, "cluster.walltime": walltime})
    if cluster is not None:
        cfg = cfg.model_copy(update={"cluster": cfg.cluster.with_kind(cluster)})
    if scheduler is not None:
        cfg = cfg.with_overrides(**{"cluster.kind": "address", "cluster.address": scheduler})
    if print_job_script:
        typer.echo(job_script(cfg.cluster, n_workers=cfg.executor.workers))
        raise typer.Exit(0)
    if out is None:
        raise ValueError("--out DIR is required (the run folder to create)")
    from ..online.preflight import preflight

    preflight(cfg, out)              # before the progress display and the run folder
    with insecure_cluster_warning(cfg.cluster):
        summary = _run(run_online_study, cfg, out, total=cfg.study.n_simulations,
                       progress=not no_progress, max_seconds=max_seconds)
    _print_summary(summary, out)


def check_max_seconds(value: float | None) -> None:
    """``--max-seconds`` follows the rule of ``[study] max_seconds`` (checked first)."""
    from ..online.preflight import check_max_seconds as check

    check(value)
