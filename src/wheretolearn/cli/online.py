"""CLI ``wheretolearn online run | resume | compare``: one sub-command per task.

* ``wheretolearn online run CONFIG.toml --out DIR [options]`` runs a study;
* ``wheretolearn online resume DIR`` continues an interrupted one (its settings stay those
  of ``DIR/config.toml``, so it takes only ``--max-seconds``, ``--no-progress``,
  ``--restart`` and ``--trust``);
* ``wheretolearn online compare CONFIG.toml --samplers ... --seeds N --out DIR`` compares
  samplers at the same budget (:mod:`.online_compare`).

Only parses, calls :mod:`wheretolearn.online.study` and prints (SPEC §5). Settings are
merged as: defaults < CONFIG.toml < flags. Heavy imports happen inside the commands. Each
sub-command declares only its own options: click refuses any other, and
:class:`_OnlineGroup` prints that refusal (like every other one) as one ``error:`` line
with exit status 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from . import app
from ._common import OneLineUsageGroup, cli_errors, click_errors
from ._online_args import check_config_path, insecure_cluster_warning, resume

#: What ``online resume`` accepts, said when it is given anything else.
_RESUME_TAKES = ("a started study keeps the settings of its config.toml; resume takes only "
                 "--max-seconds, --no-progress, --restart and --trust")


class _OnlineGroup(OneLineUsageGroup):
    """``wheretolearn online``: the old form ``online CONFIG.toml`` is answered with the
    new one, an option given to the wrong sub-command names the one that has it."""

    def resolve_command(self, ctx: typer.Context, args: list[str]) -> Any:
        name = args[0] if args else ""
        if name not in self.commands and (name.endswith(".toml") or Path(name).exists()):
            instead = (f"to continue a run: wheretolearn online resume {name}"
                       if Path(name).is_dir() else
                       f"to run a study: wheretolearn online run {name} --out DIR")
            raise click_errors.UsageError(f"{name!r} is not a sub-command of 'wheretolearn "
                                          f"online' (run, resume or compare); {instead}",
                                          ctx=ctx)
        return super().resolve_command(ctx, args)

    def one_line(self, exc: Any) -> str:
        sub = exc.ctx.command.name if exc.ctx is not None else None
        if isinstance(exc, click_errors.NoSuchOption) and sub in self.commands:
            if sub == "resume":
                return f"online resume does not take {exc.option_name}: {_RESUME_TAKES}"
            owners = [name for name, cmd in self.commands.items() if name != sub
                      and any(exc.option_name in p.opts for p in cmd.params)]
            if owners:
                return (f"online {sub} does not take {exc.option_name} (an option of "
                        f"'wheretolearn online {owners[0]}')")
        return super().one_line(exc)


online_app = typer.Typer(
    cls=_OnlineGroup,
    help="Train a surrogate online while an ensemble of simulations streams into it: "
         "'online run' a study, 'online resume' an interrupted one, 'online compare' "
         "samplers (see docs/online.md).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,      # plain text: '[cluster]' must print as written
)
app.add_typer(online_app, name="online")


class _Progress:
    """Live display of an online study: simulations done/running/failed, samples, buffer
    fill, loss (one :class:`~wheretolearn._progress.ProgressBars` bar)."""

    def __init__(self, total: int):
        from .._progress import ProgressBars

        self._bars = ProgressBars()
        self._total = total

    def __enter__(self) -> "_Progress":
        self._task = self._bars.__enter__().task("simulations", self._total)
        self._task.update(info="starting")
        return self

    def __exit__(self, *exc: Any) -> None:
        self._bars.__exit__(*exc)

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
        self._task.update(completed=ended, info=info)


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


@online_app.command("run", no_args_is_help=True)
@cli_errors
def run(
    config: str = typer.Argument(..., metavar="CONFIG.toml", help="study configuration"),
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
) -> None:
    """Train a surrogate online while an ensemble of simulations streams into it.

    Settings: defaults < CONFIG.toml < flags. A run stopped by --max-seconds or Ctrl-C
    goes on with 'wheretolearn online resume DIR'.
    """
    from ..cluster import job_script
    from ..online.config import load_online_config
    from ..online.study import run_online_study

    check_max_seconds(max_seconds)
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
        result = _run(run_online_study, cfg, out, total=cfg.study.n_simulations,
                      progress=not no_progress, max_seconds=max_seconds)
    _print_summary(result.summary, result.run_dir)


@online_app.command("resume", no_args_is_help=True)
@cli_errors
def resume_command(
    run_dir: Path = typer.Argument(..., metavar="DIR", help="run folder to resume (made by "
                                   "'wheretolearn online run')"),
    max_seconds: Optional[float] = typer.Option(None, "--max-seconds", help="stop (resumable) "
                                                "after this many seconds (a number > 0; "
                                                "default: no limit)"),
    no_progress: bool = typer.Option(False, "--no-progress", help="no live progress display"),
    restart: bool = typer.Option(False, "--restart", help="start a run whose checkpoint is "
                                 "gone again from nothing"),
    trust: bool = typer.Option(False, "--trust", help="the run folder may name code to "
                               "import or launch (a user problem, a command, a cluster's "
                               "python or address); resume it anyway (only for folders whose "
                               "author you trust)"),
) -> None:
    """Continue an interrupted online study in its run folder DIR.

    The study keeps the settings of DIR/config.toml: resume takes only --max-seconds,
    --no-progress, --restart and --trust. A finished run is reported and left unchanged.
    """
    check_max_seconds(max_seconds)
    resume(run_dir, max_seconds=max_seconds, progress=not no_progress, restart=restart,
           run=_run, print_summary=_print_summary, trust=trust)


@online_app.command("compare", no_args_is_help=True)
@cli_errors
def compare(
    config: str = typer.Argument(..., metavar="CONFIG.toml", help="study configuration to "
                                 "compare samplers on"),
    out: Optional[Path] = typer.Option(None, "--out", help="comparison folder to create "
                                       "(required)"),
    samplers: Optional[str] = typer.Option(None, "--samplers", help="comma-separated "
                                           "samplers, including uniform (the reference) (default "
                                           "uniform,breed,breed-weighted)"),
    seeds: int = typer.Option(10, "--seeds", help="paired seeds 0..N-1, the same for every "
                              "sampler (default 10)"),
    passes: Optional[float] = typer.Option(None, "--passes", help="training passes over the "
                                           "samples generated, the same for every sampler "
                                           "(default 1.5)"),
    batches_per_simulation: Optional[float] = typer.Option(
        None, "--batches-per-simulation", help="a fixed pace of training batches per "
        "simulation instead of --passes (the old protocol: 4.75; default: off)"),
    val_interior: int = typer.Option(512, "--val-interior", help="interior validation "
                                     "simulations (the headline; default 512)"),
    val_faces: int = typer.Option(128, "--val-faces", help="validation simulations on the "
                                  "faces of the box (default 128)"),
    val_corners: int = typer.Option(64, "--val-corners", help="at most this many corners of "
                                    "the box (all when fewer; default 64)"),
    val_seed: int = typer.Option(2024, "--val-seed", help="seed of the validation set "
                                 "(default 2024)"),
    val_design: str = typer.Option("sobol", "--val-design", help="sobol | halton "
                                   "(space-filling design of the validation set; default "
                                   "sobol)"),
    cache: Optional[Path] = typer.Option(None, "--cache", help="folder caching validation "
                                         "sets, reused when problem, options, bounds, sizes "
                                         "and seed match (default: DIR/validation, not "
                                         "shared)"),
    bootstrap_seed: int = typer.Option(0, "--bootstrap-seed", help="seed of the bootstrap "
                                       "intervals (default 0)"),
    jobs: int = typer.Option(1, "--jobs", "-j", help="runs at once, each in its own process "
                             "(the results do not depend on it; default 1)"),
    no_progress: bool = typer.Option(False, "--no-progress", help="no live progress display"),
) -> None:
    """Compare samplers on CONFIG.toml at the same budget.

    Paired seeds, interior / faces / corners validation groups; the folder DIR appears only
    once every run finished. See docs/online.md, Comparing samplers.
    """
    from .online_compare import run_compare

    run_compare(config, out=out, samplers=samplers, seeds=seeds, passes=passes,
                batches_per_simulation=batches_per_simulation, val_interior=val_interior,
                val_faces=val_faces, val_corners=val_corners, val_seed=val_seed,
                val_design=val_design, cache=cache, bootstrap_seed=bootstrap_seed,
                jobs=jobs, progress=not no_progress)


def check_max_seconds(value: float | None) -> None:
    """``--max-seconds`` follows the rule of ``[study] max_seconds`` (checked first)."""
    from ..online.preflight import check_max_seconds as check

    check(value)
