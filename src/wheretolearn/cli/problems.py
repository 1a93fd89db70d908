"""``wheretolearn problems``: every problem with its options, default input measure and
whether the online engine runs it."""

from __future__ import annotations

import inspect
from typing import Any

from . import app


def _options(signature: inspect.Signature) -> str:
    """The flat option keys (``key=default``) that ``get_problem`` accepts."""
    params = signature.parameters.values()
    parts = []
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        parts.append(p.name if p.default is p.empty else f"{p.name}={p.default!r}")
    return ", ".join(parts)


def _measure(problem: Any) -> str:
    try:
        m = problem.default_input_measure()
    except Exception:  # noqa: BLE001  (no default measure: generate needs one given)
        return "-"
    record = m.to_dict() if hasattr(m, "to_dict") else {}
    short = {k: v for k, v in record.items() if isinstance(v, (int, float, str))}
    text = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in list(short.items())[:4])
    return f"{type(m).__name__}({text})"


def describe_problems() -> list[dict[str, str]]:
    """One row per registered problem: name, options (with defaults), shapes of the default
    build, default input measure, online (has a time-stepping ``simulate()``)."""
    from ..problems import available_problems, get_problem, problem_signature

    online = set(available_problems(kind="online"))
    rows = []
    for name in available_problems():
        signature = problem_signature(name)       # None: not built in (a plugin)
        row = {"name": name,
               "options": _options(signature) if signature is not None else "(plugin)",
               "shapes": "-", "measure": "-", "online": "yes" if name in online else "no"}
        try:
            problem = get_problem(name)
        except Exception:  # noqa: BLE001  (needs options, e.g. external's command)
            row["shapes"] = "(needs options)"
        else:
            row["shapes"] = f"{tuple(problem.input_shape)} -> {tuple(problem.output_shape)}"
            row["measure"] = _measure(problem)
        rows.append(row)
    return rows


@app.command("problems")
def problems() -> None:
    """List every problem: options (with defaults), input -> output shapes of the default
    build, default input measure (what 'generate' samples) and whether 'online' runs it.
    User problems are given by import path (pkg.module:factory) or installed plugins."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="problems (wheretolearn.problems.get_problem(name, **options))")
    for col in ("name", "options", "shapes", "default input measure", "online"):
        table.add_column(col, overflow="fold")
    for r in describe_problems():
        table.add_row(r["name"], r["options"], r["shapes"], r["measure"], r["online"])
    Console(width=160).print(table)
