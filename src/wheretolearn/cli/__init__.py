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
    # Help texts are plain text: ``[options]`` or ``[cluster]`` must print as written (rich
    # markup would swallow them as style tags).
    rich_markup_mode=None,
)



def _print_version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"wheretolearn {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(version: bool = typer.Option(False, "--version", is_eager=True,
                                       callback=_print_version,
                                       help="print the version and exit")) -> None:
    """Decide where a scientific surrogate should get its training data.

    Exit status: 0 success, 2 bad input or a refusal of the system (one 'error:' line,
    nothing half-written), 130 Ctrl-C, 143 SIGTERM. '--overwrite' replaces only a run
    folder or data set that wheretolearn wrote, never anything else.
    """


from . import ama as _ama  # noqa: E402,F401  (registers ama)
from . import bilevel as _bilevel  # noqa: E402,F401  (registers demo, bilevel)
from . import generate as _generate  # noqa: E402,F401  (registers generate)
from . import online as _online  # noqa: E402,F401  (registers online)
from . import problems as _problems  # noqa: E402,F401  (registers problems)
from . import compare as _compare  # noqa: E402,F401  (registers compare)


@app.command("version")
def version() -> None:
    """Print the package version."""
    from .. import __version__

    typer.echo(__version__)


def main() -> None:
    """Console-script entry point."""
    app()


__all__ = ["app", "main"]
