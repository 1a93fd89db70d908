"""Everything an online study can check before its run folder exists.

:func:`preflight` is called by :func:`~wheretolearn.online.study.run_online_study` (and so
by ``wheretolearn online run``) before the run folder is created: the output path, the
problem (by name first: only problems with a time-stepping ``simulate()`` run online), its
options and the online contract, and that the resolved configuration can be written. A bad value
gives one ``ValueError`` / ``FileExistsError`` and nothing on disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["check_online_problem", "check_online_memory",
           "check_max_seconds", "preflight"]


def check_max_seconds(value: Any) -> float | None:
    """``--max-seconds`` / ``max_seconds=``: the rule of ``[study] max_seconds`` (a finite
    number > 0, or None); ``ValueError`` naming the value otherwise."""
    from pydantic import ValidationError

    from .config import StudySection

    if value is None:
        return None
    try:
        return StudySection(max_seconds=value).max_seconds
    except ValidationError as exc:
        msg = exc.errors()[0]["msg"]
        raise ValueError(f"max_seconds: {msg} (got {value!r}); it must be a finite number "
                         "of seconds > 0") from None


def check_online_problem(config: Any) -> Any:
    """Build ``config``'s problem as the study will and check the online contract.

    A registered problem without ``simulate()`` (``darcy``, ``burgers``, ...) is rejected
    by name, listing ``available_problems(kind="online")``. Returns the built problem."""
    from ..problems import (available_problems, check_online_contract, get_problem,
                            problem_factory)

    name = config.study.problem
    factory = problem_factory(name)
    if factory is not None and not callable(getattr(factory, "simulate", None)):
        raise ValueError(
            f"problem {name!r} cannot run in an online study: the online engine streams the "
            f"steps of a time-stepping simulate(params), which {name!r} does not have; online "
            f"problems: {', '.join(available_problems(kind='online'))}, a user problem "
            "'module:factory' or a [study] command (docs/user_solver.md); use "
            f"'wheretolearn generate' for {name!r}")
    spec = config.problem_spec()
    try:
        problem = get_problem(spec["name"], **spec["options"])
    except TypeError as exc:
        raise ValueError(f"bad option for problem {name!r}: {exc}") from None
    _check_bounds_rows(problem, name, config.sampler.bounds)
    check_online_contract(problem, bounds=config.sampler.bounds)
    return problem


def _check_bounds_rows(problem: Any, name: str, bounds: Any) -> None:
    """``[sampler] bounds`` must have one row per parameter of the problem, as its declared
    ``input_shape`` (d,) says (named by its ``parameter_names`` when it has them)."""
    shape = tuple(getattr(problem, "input_shape", ()) or ())
    if bounds is None or len(shape) != 1 or len(bounds) == shape[0]:
        return
    names = getattr(problem, "parameter_names", None)
    which = f": {', '.join(map(str, names))}" if names is not None else ""
    raise ValueError(f"[sampler] bounds must have {shape[0]} rows for problem {name!r} (one "
                     f"per parameter{which}), got {len(bounds)}")


def _check_out(out: str | Path) -> None:
    from .._ownership import check_output_location

    p = Path(out)
    check_output_location(p)
    if p.exists() and not p.is_dir():
        raise FileExistsError(f"--out {str(p)!r} is a file, not a run folder; choose another "
                              "--out")
    if p.is_dir() and any(p.iterdir()):
        hint = (f"; to continue it: wheretolearn online resume {p}"
                if (p / "config.toml").is_file() else "")
        raise FileExistsError(f"output folder {str(p)!r} already exists and is not empty; "
                              f"choose another --out{hint}")


def _check_writable_config(config: Any) -> None:
    import tomli_w

    from ..report.runfolder import toml_ready

    try:
        tomli_w.dumps(toml_ready(config.model_dump()))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the configuration cannot be written as TOML: {exc}") from None


def check_online_memory(config: Any, problem: Any) -> None:
    """Refuse a study whose buffer and validation set alone exceed the machine's memory
    (one ``ValueError`` naming the largest part and what to lower)."""
    import math

    from .._validation import check_memory

    field = math.prod(tuple(problem.output_shape)[1:]) * 4           # float32 per step
    steps = int(problem.n_steps)
    check_memory({"the buffer ([buffer] capacity steps)": config.buffer.capacity * field,
                  "the validation set ([validation] n_val simulations)":
                      config.validation.n_val * steps * field},
                 "this online study", "lower [buffer] capacity, [validation] n_val or the grid")


def preflight(config: Any, out: str | Path) -> Any:
    """Check ``out`` and everything in ``config`` that can be checked without starting;
    return the built problem."""
    _check_out(out)
    _check_writable_config(config)
    problem = check_online_problem(config)
    check_online_memory(config, problem)
    return problem
