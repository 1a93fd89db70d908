"""``wheretolearn online compare CONFIG.toml --samplers uniform,breed,breed-weighted --seeds 5
--out DIR``: the sampler comparison of :mod:`wheretolearn.online.compare` (issue 13).

Only parses, calls the library and prints the table; the folder ``DIR`` appears only once
every run finished.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def run_compare(config: str, *, out: Optional[Path], samplers: Optional[str], seeds: int,
                batches_per_simulation: float, progress: bool) -> None:
    """Validate the arguments, run the comparison, write ``DIR`` and print the table."""
    from ..online.compare import comparison_table, compare_samplers, write_comparison
    from ..online.config import load_online_config

    if out is None:
        raise ValueError("--out DIR is required (the comparison folder to create)")
    if out.exists():
        raise FileExistsError(f"output folder {str(out)!r} already exists; choose another --out")
    names = [s.strip() for s in (samplers or "uniform,breed,breed-weighted").split(",")
             if s.strip()]
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    if not batches_per_simulation > 0:
        raise ValueError(f"--batches-per-simulation must be > 0, got {batches_per_simulation}")
    cfg = load_online_config(config)
    total = len(names) * seeds
    if progress:
        from rich.progress import Progress

        with Progress(transient=True) as bar:
            task = bar.add_task("compare", total=total)

            def tick(label: str) -> None:
                bar.update(task, description=label, advance=0 if tick.first else 1)
                tick.first = False

            tick.first = True
            result = compare_samplers(cfg, names, seeds=seeds,
                                      batches_per_simulation=batches_per_simulation,
                                      progress=tick)
    else:
        result = compare_samplers(cfg, names, seeds=seeds,
                                  batches_per_simulation=batches_per_simulation)
    summary = write_comparison(result, out, config_path=config)
    typer.echo(comparison_table(summary, seeds=seeds))
    typer.echo(f"written to {out}/compare.json, compare.md, figures/compare_errors.png")
