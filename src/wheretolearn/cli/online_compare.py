"""``wheretolearn online compare CONFIG.toml --samplers uniform,breed --seeds 10 --out DIR``:
the sampler comparison of :mod:`wheretolearn.online.compare` (issues 13 and 23).

Only parses, calls the library and prints the table; the folder ``DIR`` appears only once
every run finished (it is staged next to it, the validation cache included unless
``--cache`` names a folder of its own).
"""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import typer

from .._progress import ProgressBars

#: Default ``--samplers`` and ``--passes`` (the other defaults are the options' own).
DEFAULT_SAMPLERS = "uniform,breed,breed-weighted"
DEFAULT_PASSES = 1.5


def _check_int(value: int, option: str, low: int) -> None:
    if value < low:
        raise ValueError(f"{option} must be an integer >= {low}, got {value}")


def run_compare(config: str, *, out: Optional[Path], samplers: Optional[str], seeds: int,
                passes: Optional[float], batches_per_simulation: Optional[float],
                val_interior: int, val_faces: int, val_corners: int, val_seed: int,
                val_design: str, cache: Optional[Path], bootstrap_seed: int, jobs: int,
                progress: bool) -> None:
    """Validate the arguments, run the comparison, write ``DIR`` and print the table."""
    from ..online.compare import (DESIGNS, ComparisonProtocol, ValidationDesign,
                                  compare_samplers, comparison_table, write_comparison)
    from ..online.config import load_online_config

    if out is None:
        raise ValueError("--out DIR is required (the comparison folder to create)")
    if out.exists():
        raise FileExistsError(f"output folder {str(out)!r} already exists; choose another --out")
    names = [s.strip() for s in (samplers or DEFAULT_SAMPLERS).split(",") if s.strip()]
    _check_int(seeds, "--seeds", 1)
    if passes is not None and batches_per_simulation is not None:
        raise ValueError(f"give either --passes ({passes}) or --batches-per-simulation "
                         f"({batches_per_simulation}), not both")
    if batches_per_simulation is None:
        passes = DEFAULT_PASSES if passes is None else passes
        if not (math.isfinite(passes) and passes > 0):
            raise ValueError(f"--passes must be a finite number > 0, got {passes}")
    elif not (math.isfinite(batches_per_simulation) and batches_per_simulation > 0):
        raise ValueError(f"--batches-per-simulation must be a finite number > 0, got "
                         f"{batches_per_simulation}")
    _check_int(val_interior, "--val-interior", 1)
    _check_int(val_faces, "--val-faces", 0)
    _check_int(val_corners, "--val-corners", 0)
    _check_int(val_seed, "--val-seed", 0)
    _check_int(bootstrap_seed, "--bootstrap-seed", 0)
    _check_int(jobs, "--jobs", 1)
    if val_design not in DESIGNS:
        raise ValueError(f"--val-design must be one of {', '.join(DESIGNS)}, got {val_design!r}")
    if cache is not None and cache.exists() and not cache.is_dir():
        raise ValueError(f"--cache must be a folder, got the file {str(cache)!r}")
    cfg = load_online_config(config)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    protocol = ComparisonProtocol(
        seeds=seeds, passes=passes, batches_per_simulation=batches_per_simulation,
        validation=ValidationDesign(n_interior=val_interior, n_faces=val_faces,
                                    n_corners=val_corners, seed=val_seed, design=val_design),
        bootstrap_seed=bootstrap_seed)
    try:
        with ProgressBars(progress, transient=True) as bars:
            task = bars.task("compare", len(names) * seeds)
            result = compare_samplers(
                cfg, names, protocol=protocol, jobs=jobs,
                cache=cache if cache is not None else stage / "validation",
                progress=lambda label: task.update(description=label),
                on_run=lambda record: task.advance())
        summary = write_comparison(result, out, config_path=config, stage=stage)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    val = result["protocol"]["validation"]
    typer.echo(comparison_table(summary, result))
    folder = Path(val["cache"])
    where = folder if cache is not None else out / "validation" / folder.name
    hint = "" if cache is not None else " (--cache DIR shares it between comparisons)"
    typer.echo(f"validation set {'reused' if val['reused'] else 'generated'}: {where}{hint}")
    typer.echo(f"written to {out}/compare.json, compare.md, errors.npz, "
               "figures/compare_errors.png")
