"""Argument checks of ``wheretolearn online run`` and ``online resume`` (issue 16 item 3).

``online resume DIR`` declares only ``--max-seconds``, ``--no-progress``, ``--restart`` and
``--trust``: every other flag would change a study that has started (its settings are in
``DIR/config.toml``), so the command line refuses it by name. A finished run
is reported and left unchanged; a run whose checkpoint is gone is restarted from nothing
only with ``--restart``. A run folder is data, not code (issue 24 item 2): one whose
config names code to import or launch (a problem that is not built-in, a command, a
cluster's ``python`` / ``address`` / job directives) is resumed only with ``--trust``.

Imports flow one way: :mod:`.online` imports this module, never the reverse.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import typer

__all__ = ["check_config_path", "insecure_cluster_warning", "resume"]

#: How to go on with a run folder that names code.
TRUST_HINT = "pass --trust if you trust who wrote it"
#: How a study that ended on its own is recorded in ``summary.json``.
_FINISHED = ("completed", "max_batches")


def check_config_path(config: str) -> None:
    """A study configuration must be a TOML file: a folder (a run folder, probably) or a
    missing path is refused with what to type instead."""
    p = Path(config)
    if p.is_dir():
        hint = (f"; to continue that run: wheretolearn online resume {config}"
                if (p / "config.toml").is_file() else "")
        raise ValueError(f"{config!r} is a folder, not a study configuration (CONFIG.toml)"
                         f"{hint}")
    if not p.exists():
        raise ValueError(f"config file {config!r} does not exist; usage: wheretolearn online "
                         "run CONFIG.toml --out DIR, or wheretolearn online resume DIR")


@contextmanager
def insecure_cluster_warning(cluster_cfg: Any) -> Iterator[None]:
    """``[cluster] tls = false`` on any kind but ``address``: one ``warning:`` line on
    stderr before the run (instead of Python's warning display with a source line)."""
    import warnings

    from ..cluster import INSECURE_MESSAGE, InsecureClusterWarning

    with warnings.catch_warnings():
        if cluster_cfg.kind != "address" and not cluster_cfg.tls:
            typer.echo(f"warning: {INSECURE_MESSAGE}", err=True)
            warnings.simplefilter("ignore", InsecureClusterWarning)
        yield


def _has_checkpoint(run_dir: Path) -> bool:
    from ..online.checkpoint import CheckpointStore

    return CheckpointStore(run_dir).latest() is not None or (run_dir / "checkpoint.pt").is_file()


def _checkpoint_expected(run_dir: Path) -> bool:
    """Traces that a checkpoint was written (a session ended, or published one)."""
    folder = run_dir / "checkpoints"
    numbered = folder.is_dir() and any(p.name.isdigit() for p in folder.iterdir())
    return (numbered or (run_dir / "summary.json").is_file()
            or (run_dir / "ledger.json").is_file())


def _load_config(run_dir: Path) -> Any:
    """The run folder's online configuration, or one line saying what the folder is."""
    import tomllib

    from pydantic import ValidationError

    from ..online.config import load_online_config
    from ._common import format_validation_error

    path = run_dir / "config.toml"
    try:
        return load_online_config(str(path))
    except ValidationError as exc:
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError):
            data = {}
        if "study" not in data and "problem" in data:
            what = "a bilevel run folder"
        else:
            what = f"not an online run folder ({format_validation_error(exc)[:200]})"
        raise ValueError(f"{str(run_dir)!r} is {what}; online resume continues only runs "
                         "made by 'wheretolearn online run'") from None


def _finished(run_dir: Path) -> str | None:
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    stopped = summary.get("stopped") if isinstance(summary, dict) else None
    return stopped if stopped in _FINISHED else None


def resume(run_dir: Path, *, max_seconds: float | None, progress: bool, restart: bool,
           run: Callable[..., dict], print_summary: Callable[[dict, Path], None],
           trust: bool = False) -> None:
    """``wheretolearn online resume DIR``: checks (``trust``: the folder may name code to
    run), then continue the study."""
    from ..online.config import check_run_trusted
    from ..online.study import resume_online_study

    if not run_dir.exists():
        raise ValueError(f"run folder {str(run_dir)!r} does not exist")
    if not run_dir.is_dir():
        raise ValueError(f"{str(run_dir)!r} is a file; online resume takes the run folder "
                         "that 'wheretolearn online run CONFIG.toml --out DIR' made")
    if not (run_dir / "config.toml").is_file():
        raise ValueError(f"{str(run_dir)!r} is not an online run folder (no config.toml)")
    cfg = _load_config(run_dir)
    stopped = _finished(run_dir)
    if stopped is not None:
        typer.echo(f"run folder {run_dir} is finished (stopped: {stopped}); nothing to resume, "
                   "nothing changed")
        return
    if not trust:
        check_run_trusted(run_dir, cfg, how=TRUST_HINT)   # before anything is written
    if not _has_checkpoint(run_dir):
        if _checkpoint_expected(run_dir) and not restart:
            raise ValueError(f"run folder {str(run_dir)!r} has no usable checkpoint (deleted "
                             "or damaged), so its progress is lost; pass --restart to start "
                             "it again from nothing in the same folder")
        typer.echo(f"no checkpoint in {run_dir}: starting the study again from nothing",
                   err=True)
    elif restart:
        raise ValueError(f"run folder {str(run_dir)!r} has a checkpoint; --restart is only for "
                         "a run whose checkpoint is gone (to start afresh, use a new --out)")
    with insecure_cluster_warning(cfg.cluster):  # [cluster] tls = false: one warning line
        result = run(resume_online_study, run_dir, total=cfg.study.n_simulations,
                     progress=progress, max_seconds=max_seconds, trust=trust)
    print_summary(result.summary, result.run_dir)
