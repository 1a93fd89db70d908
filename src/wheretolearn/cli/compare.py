"""``wheretolearn compare RUN_DIR...``: finished runs side by side (table and figure)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from . import app
from ._common import cli_errors


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


@app.command("compare")
@cli_errors
def compare(
    runs: list[Path] = typer.Argument(..., metavar="RUN_DIR...",
                                      help="finished run folders (online, bilevel, ...)"),
    figure: Optional[Path] = typer.Option(None, "--figure", help="also draw the comparison "
                                          "to this PNG file (default: no figure)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing --figure "
                                   "file"),
) -> None:
    """Compare finished runs: errors (mean and tails), best baseline, wall time."""
    from rich.console import Console
    from rich.table import Table

    from .._ownership import check_output_location
    from ..report.compare_runs import COLUMNS, compare_runs, plot_comparison

    if figure is not None:
        check_output_location(figure)
        if figure.exists() and (figure.is_dir() or not overwrite):
            raise FileExistsError(f"--figure {str(figure)!r} already exists; choose another "
                                  "path or pass --overwrite")
        if figure.suffix.lower() != ".png":
            raise ValueError(f"--figure must be a .png path, got {str(figure)!r}")
    rows = compare_runs(runs)
    table = Table(title="runs compared (relative errors; bilevel: unseen meta-test, online: "
                        "held-out simulations)")
    for col in COLUMNS:
        table.add_column(col, justify="left" if col in ("run", "kind", "problem",
                                                       "baseline") else "right")
    for r in rows:
        table.add_row(*[_fmt(r[c]) for c in COLUMNS])
    Console(width=140).print(table)
    if figure is not None:
        figure.parent.mkdir(parents=True, exist_ok=True)
        typer.echo(f"figure: {plot_comparison(rows, figure)}")
