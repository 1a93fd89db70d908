"""Time-dependent simulators: the contract an online study needs, and a base class for it.

An online study (SPEC §5) streams every time step of every simulation into the trainer.
A problem can take part when it has (the *online contract*)

* ``parameter_bounds`` -- ``(d, 2)`` array of ``[low, high]`` (or ``[sampler] bounds``);
* ``parameter_names`` -- ``d`` strings;
* ``n_steps`` -- positive int, the time steps of one simulation;
* ``simulate(params)`` -- ``params (d,)`` -> iterator of ``(step, field)`` with ``step`` in
  ``0..n_steps-1`` and ``field`` of shape ``field_shape``;
* ``output_shape == (n_steps, *field_shape)`` and ``input_shape == (d,)``, so that calling
  the problem on ``(B, d)`` parameters gives ``(B, n_steps, *field_shape)`` trajectories
  (the held-out validation set is computed this way).

:class:`SimulatorProblem` supplies everything but ``simulate``, the bounds and the names;
:func:`check_online_contract` checks any problem and names *all* that is missing in one
line. ``simulate`` may accept the keywords ``sim_id`` and ``attempt``; the online executor
passes them when it does (:func:`simulate_steps`).
"""

from __future__ import annotations

import inspect
from typing import Any, Iterator

import numpy as np
import torch

from .._validation import check_positive_int, resolve_dtype
from .base import Problem

__all__ = ["SimulationError", "SimulatorProblem", "check_function_contract",
           "check_online_contract", "simulate_steps"]

#: Where the contract is documented (quoted by error messages).
CONTRACT_DOC = "docs/user_solver.md"


class SimulationError(RuntimeError, ValueError):
    """A simulation failed: crashed, hung, wrote a malformed step or too few steps.

    Also a ``ValueError``: outside the online engine (which relaunches failed attempts) it
    is the user's program or its input that failed, and the command line reports it in one
    ``error:`` line with exit status 2, leaving no half-written output."""


class SimulatorProblem(Problem):
    """Base class of a user simulator: parameters ``(d,)`` -> ``n_steps`` fields.

    Parameters
    ----------
    bounds : (d, 2) array-like
        ``[low, high]`` of every parameter (what samplers draw from).
    n_steps : int
        Time steps of one simulation.
    field_shape : tuple of int
        Shape of one time step's field (``()`` for a scalar).
    names : list of str, optional
        Parameter names (default ``p0 .. p{d-1}``).
    dtype : "float32" | "float64"
        Dtype of ``__call__``'s output.

    Subclasses implement :meth:`simulate`. ``__call__`` on ``(B, d)`` parameters runs the
    ``B`` simulations one after another and returns ``(B, n_steps, *field_shape)``, checking
    that every step arrived once with the announced shape.
    """

    name = "simulator"

    def __init__(self, bounds: Any, *, n_steps: int, field_shape: Any = (),
                 names: list[str] | None = None, dtype: str = "float32"):
        b = np.array(bounds, dtype=np.float64)
        if b.ndim != 2 or b.shape[1] != 2 or b.shape[0] < 1:
            raise ValueError(f"bounds must have shape (d, 2) with d >= 1, got {b.shape}")
        if not np.all(np.isfinite(b)) or not np.all(b[:, 0] < b[:, 1]):
            raise ValueError(f"bounds must be finite with low < high in every row, got "
                             f"{b.tolist()}")
        self._bounds = b
        self.n_steps = check_positive_int(n_steps, "n_steps")
        self.field_shape = _shape(field_shape, "field_shape")
        d = b.shape[0]
        names = [f"p{i}" for i in range(d)] if names is None else [str(n) for n in names]
        if len(names) != d:
            raise ValueError(f"names must give one name per parameter ({d}), got {len(names)}")
        self._names = names
        self.dtype = resolve_dtype(dtype)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self._bounds.shape[0],)

    @property
    def output_shape(self) -> tuple[int, ...]:
        return (self.n_steps, *self.field_shape)

    @property
    def parameter_bounds(self) -> np.ndarray:
        """``(d, 2)`` ``[low, high]`` (a copy)."""
        return self._bounds.copy()

    @property
    def parameter_names(self) -> list[str]:
        return list(self._names)

    def options(self) -> dict[str, Any]:
        return {"bounds": self._bounds.tolist(), "n_steps": self.n_steps,
                "field_shape": list(self.field_shape), "names": self.parameter_names,
                "dtype": str(self.dtype).replace("torch.", "")}

    def default_input_measure(self) -> Any:
        """Uniform on ``parameter_bounds``."""
        from ..measures import Uniform

        return Uniform(self._bounds[:, 0], self._bounds[:, 1])

    def simulate(self, params: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """Run one simulation of ``params (d,)``, yielding ``(step, field)``."""
        raise NotImplementedError

    def _evaluate(self, u: torch.Tensor) -> torch.Tensor:
        p = u.detach().cpu().double().numpy()
        np_dtype = torch.empty((), dtype=self.dtype).numpy().dtype
        out = np.empty((p.shape[0], *self.output_shape), dtype=np_dtype)
        for b in range(p.shape[0]):
            out[b] = collect_trajectory(self, p[b], sim_id=b)
        return torch.from_numpy(out)


def collect_trajectory(problem: Any, params: np.ndarray, *, sim_id: int = 0,
                       attempt: int = 1) -> np.ndarray:
    """Run ``problem.simulate(params)`` to the end: ``(n_steps, *field_shape)`` float64.

    Raises :class:`SimulationError` when a step is out of range, repeated, has the wrong
    shape, or missing at the end.
    """
    n_steps = int(problem.n_steps)
    field_shape = tuple(problem.output_shape[1:])
    out = np.empty((n_steps, *field_shape), dtype=np.float64)
    seen = np.zeros(n_steps, dtype=bool)
    for step, field in simulate_steps(problem, params, sim_id=sim_id, attempt=attempt):
        step = int(step)
        if not 0 <= step < n_steps:
            raise SimulationError(f"simulation yielded step {step}, outside 0..{n_steps - 1}")
        if seen[step]:
            raise SimulationError(f"simulation yielded step {step} twice")
        f = np.asarray(field)
        if f.shape != field_shape:
            raise SimulationError(f"step {step} has shape {f.shape}, expected {field_shape}")
        out[step], seen[step] = f, True
    if not seen.all():
        missing = np.flatnonzero(~seen)
        raise SimulationError(f"simulation ended after {int(seen.sum())} of {n_steps} steps "
                              f"(missing {_list(missing)})")
    return out


def simulate_steps(problem: Any, params: np.ndarray, *, sim_id: int,
                   attempt: int) -> Iterator[tuple[int, np.ndarray]]:
    """``problem.simulate(params)``, passing ``sim_id`` / ``attempt`` when it accepts them.

    Always a generator: closing it closes the problem's own generator."""
    try:
        sig = inspect.signature(problem.simulate).parameters
    except (TypeError, ValueError):
        sig = {}
    kw = {}
    var_kw = any(p.kind is p.VAR_KEYWORD for p in sig.values())
    for key, value in (("sim_id", sim_id), ("attempt", attempt)):
        if key in sig or var_kw:
            kw[key] = value
    # a generator whatever simulate returns (a list, an iterator): close() always works and
    # reaches an inner generator's finally (an external program is killed there)
    yield from problem.simulate(params, **kw)


def check_online_contract(problem: Any, *, bounds: Any = None) -> np.ndarray:
    """Check that ``problem`` can run in an online study; return its ``(d, 2)`` bounds.

    ``bounds`` (e.g. ``[sampler] bounds``) overrides the problem's own. Raises one
    ``ValueError`` listing everything that is missing or inconsistent.
    """
    name = getattr(problem, "_spec", {}).get("name", getattr(problem, "name", "?"))
    issues: list[str] = []
    if not callable(getattr(problem, "simulate", None)):
        issues.append("no simulate(params) method yielding (step, field) pairs")
    n_steps = getattr(problem, "n_steps", None)
    if not isinstance(n_steps, (int, np.integer)) or isinstance(n_steps, bool) or n_steps < 1:
        issues.append(f"n_steps must be a positive int, got {n_steps!r}")
        n_steps = None
    b = bounds if bounds is not None else _attr(problem, "parameter_bounds")
    if b is None:
        issues.append("no parameter_bounds (d, 2) (or [sampler] bounds)")
    else:
        b = np.asarray(b, dtype=np.float64)
        if b.ndim != 2 or b.shape[1] != 2 or not np.all(np.isfinite(b)) or not np.all(
                b[:, 0] < b[:, 1]):
            issues.append(f"parameter_bounds must be (d, 2) finite with low < high, got "
                          f"{b.tolist()}")
            b = None
    names = _attr(problem, "parameter_names")
    if names is None:
        issues.append("no parameter_names (d strings)")
    elif b is not None and len(list(names)) != b.shape[0]:
        issues.append(f"parameter_names has {len(list(names))} names for {b.shape[0]} bounds")
    in_shape = tuple(_attr(problem, "input_shape") or ())
    out_shape = _attr(problem, "output_shape")
    if b is not None and in_shape != (b.shape[0],):
        issues.append(f"input_shape must be ({b.shape[0]},) (one entry per parameter), got "
                      f"{in_shape}")
    if out_shape is None or n_steps is None or len(tuple(out_shape)) < 1 or tuple(
            out_shape)[0] != n_steps:
        issues.append(f"output_shape must be (n_steps, *field_shape), got {out_shape!r} with "
                      f"n_steps={n_steps!r}")
    if issues:
        raise ValueError(f"problem {name!r} does not meet the online contract "
                         f"({CONTRACT_DOC}): " + "; ".join(issues))
    return b


def check_function_contract(problem: Any, dim: int) -> None:
    """Check that ``problem`` is a function of vectors for the bilevel study: inputs
    ``(B, dim)`` -> one scalar label each, ``(B,)``. Raises one ``ValueError`` otherwise."""
    name = getattr(problem, "_spec", {}).get("name", getattr(problem, "name", "?"))
    in_shape = tuple(_attr(problem, "input_shape") or ())
    out_shape = _attr(problem, "output_shape")
    issues = []
    if in_shape != (dim,):
        issues.append(f"input_shape must be ({dim},) for dim={dim}, got {in_shape}")
    if out_shape is None or tuple(out_shape) != ():
        issues.append(f"output_shape must be () (one scalar per input), got {out_shape!r}")
    if issues:
        raise ValueError(f"problem {name!r} is not a function of vectors for the bilevel "
                         f"study ({CONTRACT_DOC}): " + "; ".join(issues))


def _attr(obj: Any, name: str) -> Any:
    try:
        return getattr(obj, name, None)
    except Exception:  # noqa: BLE001 -- a property that raises counts as missing
        return None


def _shape(value: Any, name: str) -> tuple[int, ...]:
    if isinstance(value, (int, np.integer)):
        value = (value,)
    try:
        shape = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a tuple of positive ints, got {value!r}") from None
    if any(v < 1 for v in shape):
        raise ValueError(f"{name} must be a tuple of positive ints, got {value!r}")
    return shape


def _list(idx: np.ndarray, k: int = 5) -> str:
    head = ", ".join(str(int(i)) for i in idx[:k])
    return head + (f", ... ({len(idx)} in all)" if len(idx) > k else "")
