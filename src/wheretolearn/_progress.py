"""Progress display for long work: one abstraction for every study, ``generate`` and the CLI.

::

    with ProgressBars(enabled=True) as bars:
        task = bars.task("AMA repeat 1/3", total=10)
        for it in range(10):
            ...
            task.advance(info=f"J {j:.3g}")      # one step done, with a short status text

``enabled=False`` gives the same interface doing nothing, so callers never branch on it.
Bars are drawn by rich on stderr (stdout stays for results) and appear only while the
context is open; rich is imported only when a bar is shown.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ProgressBars", "ProgressTask"]


class ProgressTask:
    """One bar: :meth:`advance` by steps or :meth:`update` to an absolute position."""

    def __init__(self, bar: Any = None, task_id: Any = None):
        self._bar, self._id = bar, task_id

    @property
    def completed(self) -> float | None:
        """Steps done so far (None when the bars are disabled)."""
        if self._bar is None:
            return None
        return next(t.completed for t in self._bar.tasks if t.id == self._id)

    def advance(self, steps: float = 1, info: str | None = None) -> None:
        """Move ``steps`` forward; ``info`` replaces the status text shown beside the bar."""
        if self._bar is not None:
            self._bar.update(self._id, advance=steps, **_fields(info))

    def update(self, *, completed: float | None = None, total: float | None = None,
               description: str | None = None, info: str | None = None) -> None:
        """Set the position, the total, the label or the status text (``None``: unchanged)."""
        if self._bar is not None:
            kw = {k: v for k, v in (("completed", completed), ("total", total),
                                     ("description", description)) if v is not None}
            self._bar.update(self._id, **kw, **_fields(info))


class ProgressBars:
    """Context manager holding any number of bars (:meth:`task`); a no-op when disabled.

    Parameters
    ----------
    enabled : bool
        Draw the bars (False: every call does nothing).
    console : rich.console.Console, optional
        Where to draw (default: a console on stderr).
    transient : bool
        Remove the bars when the context closes (default: leave them on screen).
    """

    def __init__(self, enabled: bool = True, *, console: Any = None, transient: bool = False):
        self.enabled, self._console, self._transient = bool(enabled), console, transient
        self._bar: Any = None

    def __enter__(self) -> "ProgressBars":
        if self.enabled:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                                 TimeElapsedColumn(), TimeRemainingColumn(),
                                 console=self._console or Console(stderr=True),
                                 transient=self._transient)
            self._bar.start()
        return self

    def __exit__(self, *exc: Any) -> bool:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        return False

    def task(self, description: str, total: float | None, *, completed: float = 0
             ) -> ProgressTask:
        """A new bar labelled ``description`` with ``total`` steps (None: unknown)."""
        if self._bar is None:
            return ProgressTask()
        return ProgressTask(self._bar, self._bar.add_task(description, total=total,
                                                          completed=completed, info=""))


def _fields(info: str | None) -> dict:
    return {} if info is None else {"info": info}
