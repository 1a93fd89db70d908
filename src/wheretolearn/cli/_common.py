"""Shared CLI plumbing: one-line errors with exit status 2, progress bars, TOML configs."""

from __future__ import annotations

import contextlib
import functools
import importlib
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import typer
from typer.core import TyperGroup

__all__ = ["OneLineUsageGroup", "cli_errors", "click_errors", "fail", "is_allocation_failure",
           "load_toml"]

#: The exceptions of the click that typer parses with (``UsageError``, ``NoSuchOption``):
#: recent typer runs on a copy of click of its own, which ``typer.BadParameter`` comes from.
click_errors = importlib.import_module(typer.BadParameter.__module__)


def fail(message: str, code: int = 2) -> None:
    """Print ``error: message`` on stderr (one line, no traceback) and exit."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def cli_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn user-input errors (ValueError, TypeError, FileNotFoundError, FileExistsError,
    pydantic's ValidationError) and the environment's refusals (any ``OSError``: a
    read-only file system, a full disk, a file where a folder is needed; running out of
    memory: ``MemoryError``, numpy's ``_ArrayMemoryError``, torch's allocation failures)
    raised by the library into one line ``error: ...`` and exit status 2. Notes added to
    the exception (``add_note``, e.g. where an interrupted data set waits to be resumed) go
    on that line. The ``with`` blocks unwind first: run folders' and data sets' staging
    folders are removed, nothing is left half-written.

    SIGTERM (``timeout``, ``kill``, a batch scheduler's time limit) is turned into
    ``SystemExit(143)`` while the command runs, so ``with`` blocks unwind: a run folder's
    hidden staging directory is removed instead of being left behind, and the command
    prints ``error: terminated (SIGTERM)`` with how to resume where it can."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from pydantic import ValidationError

        try:
            with _sigterm_exits():
                return func(*args, **kwargs)
        except ValidationError as exc:
            fail(format_validation_error(exc))
        except (ValueError, TypeError, FileNotFoundError, FileExistsError,
                PermissionError) as exc:
            fail(_one_line(exc))
        except OSError as exc:
            # the environment refused: read-only file system, disk full, a file where a
            # folder is needed, ... -- say which path and why, nothing half-written
            fail(_one_line(exc))
        except MemoryError as exc:
            fail(_out_of_memory(exc))
        except RuntimeError as exc:
            if not is_allocation_failure(exc):
                raise
            fail(_out_of_memory(exc))
        except KeyboardInterrupt as exc:
            typer.echo(f"error: interrupted{_notes(exc)}", err=True)
            sys.exit(130)
        except SystemExit as exc:
            if exc.code == 128 + signal.SIGTERM:
                typer.echo(f"error: terminated (SIGTERM){_notes(exc)}", err=True)
            raise

    return wrapper


#: Raised by a group given nothing when it prints its help (click >= 8.2).
_NO_ARGS_IS_HELP = getattr(click_errors, "NoArgsIsHelpError", ())


class OneLineUsageGroup(TyperGroup):
    """A command group whose usage errors (an unknown sub-command or option, a missing
    argument, a value of the wrong type) end like every other refusal of the CLI: one
    ``error:`` line on stderr, exit status 2, where click prints usage, a hint and the
    error on three lines. Given nothing, the group still prints its help.

    Subclasses word particular refusals in :meth:`one_line`."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        with self._one_line_usage_errors():
            return super().parse_args(ctx, args)

    def invoke(self, ctx: typer.Context) -> Any:
        # covers choosing the sub-command, parsing its arguments and running it
        with self._one_line_usage_errors():
            return super().invoke(ctx)

    def one_line(self, exc: Any) -> str:
        """The message of ``exc`` (a click ``UsageError``) and where the help is."""
        where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        return f"{exc.format_message()}{where}"

    @contextlib.contextmanager
    def _one_line_usage_errors(self):
        try:
            yield
        except _NO_ARGS_IS_HELP:
            raise                                    # prints the help
        except click_errors.UsageError as exc:
            fail(self.one_line(exc), code=exc.exit_code)


#: Messages of torch's (and other libraries') ``RuntimeError`` when memory runs out.
_ALLOCATION_FAILURES = ("can't allocate memory", "DefaultCPUAllocator", "out of memory",
                        "Cannot allocate memory")


def is_allocation_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says that memory ran out (``MemoryError``; a torch allocator's
    ``RuntimeError``, CUDA's included)."""
    if isinstance(exc, MemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in _ALLOCATION_FAILURES)


def _out_of_memory(exc: BaseException) -> str:
    """``out of memory (...)``: the first line of what the allocator said, what to do."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (f"out of memory ({text[:200]}); choose smaller sizes (dimension, samples, grid, "
            f"chunk) or fewer workers{_notes(exc)}")


def _notes(exc: BaseException) -> str:
    notes = getattr(exc, "__notes__", None) or []
    return "".join(f"; {n}" for n in notes)


def _one_line(exc: BaseException) -> str:
    """The first line of the message (an ``OSError`` names errno, reason and path) and the
    notes."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text + _notes(exc)


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def _sigterm_exits():
    """SIGTERM raises ``SystemExit(143)`` inside the block (main thread only: Python
    installs signal handlers there alone); the previous handler is restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def format_validation_error(exc: Any) -> str:
    """One line per pydantic error, joined with '; ': ``key.path: message (got value)``
    (a table is named by its keys, long values are cut: never the whole config)."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ())) or "config"
        if err.get("type") == "extra_forbidden":
            parts.append(f"unknown config key {loc!r}")
        else:
            parts.append(f"{loc}: {err.get('msg')} (got {_short(err.get('input'))})")
    return "; ".join(parts)


def _short(value: Any, limit: int = 60) -> str:
    """``repr`` of an offending value, a table named by its keys, cut at ``limit``."""
    if isinstance(value, dict):
        text = "a table with keys " + ", ".join(map(str, value))
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file; a missing or malformed file raises ``ValueError`` naming it."""
    import tomllib

    p = Path(path)
    if not p.exists():
        raise ValueError(f"config file {str(p)!r} does not exist")
    if not p.is_file():
        raise ValueError(f"config file {str(p)!r} is not a file")
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"config file {str(p)!r} is not valid TOML: {exc}") from None
