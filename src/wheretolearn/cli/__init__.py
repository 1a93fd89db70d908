"""The ``wheretolearn`` command line: parses, calls the library, prints.

Each command group lives in its own module and registers itself on :data:`app`.
Heavy imports (torch, dask) happen inside the commands so ``--help`` stays fast.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="wheretolearn",
    help="Decide where a scientific surrogate should get its training data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)



@app.callback()
def _root() -> None:
    """Decide where a scientific surrogate should get its training data."""


from . import ama as _ama  # noqa: E402,F401  (registers ama)
from . import bilevel as _bilevel  # noqa: E402,F401  (registers demo, bilevel)
from . import generate as _generate  # noqa: E402,F401  (registers generate)
from . import online as _online  # noqa: E402,F401  (registers online)


@app.command("version")
def version() -> None:
    """Print the package version."""
    from .. import __version__

    typer.echo(__version__)


def main() -> None:
    """Console-script entry point."""
    app()


__all__ = ["app", "main"]
