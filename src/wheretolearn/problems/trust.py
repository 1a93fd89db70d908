"""Which problem names run only this package's code (issue 24 item 2: run folders are data).

A run folder someone else wrote names its problem in ``config.toml``. Rebuilding that
problem from an import path (``"evil.py:make"``, ``"subprocess:run"``), an installed
plugin's name, or the registered ``"external"`` problem (which launches the command its
options name) runs code the folder chose. Code that reads run folders therefore rebuilds
only *built-in* problems by itself, through the registry alone (never through
:mod:`~wheretolearn.problems.plugins`), and imports anything else only when the caller
says it trusts the folder.
"""

from __future__ import annotations

from typing import Any

__all__ = ["COMMAND_PROBLEMS", "is_builtin_problem", "user_code_message"]

#: Registered problems that launch a program named by their options.
COMMAND_PROBLEMS = ("external",)

_PACKAGE = "wheretolearn.problems."


def is_builtin_problem(name: Any) -> bool:
    """Whether ``name`` is a problem of this package that runs only the package's code: a
    name registered by a module of :mod:`wheretolearn.problems`, other than
    :data:`COMMAND_PROBLEMS`."""
    from .base import problem_factory

    if not isinstance(name, str) or name in COMMAND_PROBLEMS:
        return False
    factory = problem_factory(name)
    return factory is not None and getattr(factory, "__module__", "").startswith(_PACKAGE)


def user_code_message(run_dir: Any, what: str, how: str) -> str:
    """The one-line refusal: ``run folder X names user code (what); how``."""
    return f"run folder {str(run_dir)!r} names user code ({what}); {how}"
