"""The problem interface: a ground-truth map ``G*`` from discretised inputs to outputs.

Every problem (benchmark function or PDE solver) maps a batch ``u`` of shape
``(B, *input_shape)`` to ``G*(u)`` of shape ``(B, *output_shape)``. Numpy in gives numpy
out; torch in gives torch out (with gradients where the problem says
``differentiable = True``). Problems never modify their input.
"""

from __future__ import annotations

import dataclasses
import inspect
from abc import ABC, abstractmethod
from typing import Any, Callable

import numpy as np
import torch

from .._validation import as_tensor, check_finite

__all__ = ["Problem", "register_problem", "get_problem", "available_problems", "problem_spec",
           "problem_signature"]


class Problem(ABC):
    """Abstract ground-truth map.

    Attributes
    ----------
    name : str
        Registry name (``"sobol-g"``, ``"darcy"``, ...).
    input_shape, output_shape : tuple of int
        Shape of one input / output sample (without the batch dimension).
    differentiable : bool
        Whether torch inputs propagate gradients through :meth:`__call__`.
    """

    name: str = "problem"
    differentiable: bool = False

    @property
    @abstractmethod
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input sample."""

    @property
    @abstractmethod
    def output_shape(self) -> tuple[int, ...]:
        """Shape of one output sample."""

    def coordinates(self) -> dict[str, np.ndarray]:
        """Discretisation the problem uses (grid / boundary coordinates), by name."""
        return {}

    def options(self) -> dict[str, Any]:
        """The options this problem was built with (JSON-serialisable), for provenance."""
        return {}

    def record_spec(self, name: str, options: dict[str, Any]) -> "Problem":
        """Record how to rebuild this problem -- ``get_problem(name, **options)`` -- for
        Dask workers, batch jobs and run folders (:func:`problem_spec` reads it); returns
        ``self``. :func:`get_problem` records it for every problem it builds."""
        self._spec = {"name": str(name), "options": dict(options)}
        return self

    def field_range(self, bounds: Any) -> tuple[float, float] | None:
        """``(lo, hi)`` holding every output value for parameters inside ``bounds`` (d, 2),
        when the problem knows it (an online surrogate scales its targets onto [-1, 1] with
        it); ``None`` (default): unknown, the study uses its held-out fields' range."""
        return None

    def default_input_measure(self) -> Any:
        """A measure whose samples are valid inputs (for ``wheretolearn generate``)."""
        raise NotImplementedError(f"problem {self.name!r} has no default input measure")

    @abstractmethod
    def _evaluate(self, u: torch.Tensor) -> torch.Tensor:
        """Map a validated tensor ``(B, *input_shape)`` to ``(B, *output_shape)``."""

    def __call__(self, u: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        """Evaluate ``G*`` on a batch; numpy in -> numpy out, torch in -> torch out."""
        is_numpy = not isinstance(u, torch.Tensor)
        t = as_tensor(u, "u")
        self.check_input(t)
        out = self._evaluate(t)
        return out.detach().cpu().numpy() if is_numpy else out

    def check_input(self, u: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``u`` has shape ``(B, *input_shape)`` and is finite."""
        want = tuple(self.input_shape)
        if u.ndim != len(want) + 1 or tuple(u.shape[1:]) != want:
            shape = "(B, " + ", ".join(map(str, want)) + ")"
            raise ValueError(f"input u for problem {self.name!r} must have shape {shape}, "
                             f"got {tuple(u.shape)}")
        check_finite(u, "input u")

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"


_REGISTRY: dict[str, Callable[..., Problem]] = {}


def register_problem(name: str) -> Callable[[Callable[..., Problem]], Callable[..., Problem]]:
    """Class decorator: make a problem constructible as ``get_problem(name, **options)``.

    The options are flat keywords (a TOML ``[problem.options]`` table): a constructor
    parameter that is an option object -- its default a dataclass instance -- takes its
    fields one by one (see :func:`problem_signature`)."""

    def deco(factory: Callable[..., Problem]) -> Callable[..., Problem]:
        _REGISTRY[name] = factory
        return factory

    return deco


#: Kinds of :func:`available_problems`.
PROBLEM_KINDS = ("all", "builtin", "online")


def available_problems(kind: str = "all") -> list[str]:
    """Problem names, sorted.

    ``kind="all"``: every name :func:`get_problem` accepts -- this package's and those of
    installed plugins (entry-point group ``wheretolearn.problems``); import paths
    ``"module:factory"`` are accepted too. ``"builtin"``: this package's problems only.
    ``"online"``: the built-in problems an online study can stream (their factory has a
    time-stepping ``simulate``; ``external``, chosen by ``[study] command``, is left out).
    (The AMA studies' problems: :func:`wheretolearn.design.available_ama_problems`.)
    """
    if kind not in PROBLEM_KINDS:
        raise ValueError(f"kind must be one of {', '.join(PROBLEM_KINDS)}, got {kind!r}")
    if kind == "builtin":
        return sorted(_REGISTRY)
    if kind == "online":
        return sorted(name for name, factory in _REGISTRY.items()
                      if callable(getattr(factory, "simulate", None)) and name != "external")
    from .plugins import entry_point_problems

    return sorted(set(_REGISTRY) | set(entry_point_problems()))


def problem_factory(name: str) -> Callable[..., Problem] | None:
    """The factory of the built-in problem ``name`` (its class), or ``None`` when ``name``
    is not built in (a plugin or an import path, resolved by :func:`get_problem`)."""
    return _REGISTRY.get(name)


def get_problem(name: str, **options: Any) -> Problem:
    """Build the problem ``name`` with keyword ``options``.

    ``name`` is a registered name (``"heat2d"``), an import path ``"pkg.mod:factory"`` or
    ``"path/file.py:factory"``, or the name of an installed plugin (entry-point group
    ``wheretolearn.problems``); see :mod:`wheretolearn.problems.plugins`. The problem
    remembers how it was built (:func:`problem_spec`), so workers can rebuild it.

    A registered problem takes its options flat, as a TOML table gives them: the fields of
    an option-object parameter are keys of their own (``get_problem("grayscott",
    noise=0.0)`` builds ``GrayScott(physics=GrayScottPhysics(noise=0.0))``); the keys it
    accepts are :func:`problem_signature`'s.

    Raises ``ValueError`` naming the allowed problems when ``name`` is unknown, or the
    cause when a user problem cannot be imported or its factory returns no ``Problem``.
    """
    from .plugins import find_factory

    if not isinstance(name, str):
        raise TypeError(f"problem must be a name or an import path (str), got "
                        f"{type(name).__name__}")
    if name in _REGISTRY:
        problem = _build_registered(_REGISTRY[name], options)
    else:
        factory = find_factory(name)
        if factory is None:
            raise ValueError(f"unknown problem {name!r}; choose one of "
                             f"{', '.join(available_problems())}, or give an import path "
                             "'package.module:factory'")
        problem = factory(**options)
        if not isinstance(problem, Problem):
            raise ValueError(f"problem {name!r}: the factory returned a "
                             f"{type(problem).__name__}, not a wheretolearn Problem")
    problem.record_spec(name, options)
    return problem


def problem_spec(problem: Problem) -> dict[str, Any]:
    """``{"name", "options"}`` that rebuild ``problem`` with :func:`get_problem`: how it was
    built when it came from :func:`get_problem`, else its ``name`` and ``options()``."""
    spec = getattr(problem, "_spec", None)
    if spec is not None:
        return {"name": spec["name"], "options": dict(spec["options"])}
    return {"name": problem.name, "options": problem.options()}


def problem_signature(name: str) -> inspect.Signature | None:
    """The keyword options ``get_problem(name, **options)`` accepts for the built-in problem
    ``name``, with their defaults: its constructor's parameters, where a parameter that is an
    option object (its default a dataclass instance) is replaced by that object's fields.
    ``None`` when ``name`` is not built in (a plugin or an import path)."""
    factory = _REGISTRY.get(name)
    if factory is None:
        return None
    params = []
    for p in inspect.signature(factory).parameters.values():
        if not _is_option_object(p.default):
            params.append(p)
            continue
        params.extend(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY,
                                        default=getattr(p.default, f.name), annotation=f.type)
                      for f in dataclasses.fields(p.default) if f.init)
    return inspect.Signature(sorted(params, key=lambda q: q.kind))


def _is_option_object(default: Any) -> bool:
    """Whether a constructor parameter's default is an option object (a dataclass instance)."""
    return dataclasses.is_dataclass(default) and not isinstance(default, type)


def _option_objects(factory: Callable[..., Problem]) -> dict[str, Any]:
    """``{parameter: default}`` for the constructor parameters of ``factory`` that are
    option objects (:func:`_is_option_object`)."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return {}
    return {p.name: p.default for p in params if _is_option_object(p.default)}


def _build_registered(factory: Callable[..., Problem], options: dict[str, Any]) -> Problem:
    """``factory(**options)`` with the flat fields of each option-object parameter gathered
    into that object (fields not given keep the constructor's default)."""
    kwargs = dict(options)
    for pname, default in _option_objects(factory).items():
        fields = {f.name for f in dataclasses.fields(default) if f.init}
        given = {key: kwargs.pop(key) for key in list(kwargs) if key in fields}
        if not given:
            continue
        if pname in kwargs:
            raise TypeError(f"give either {pname} or its fields ({', '.join(sorted(given))}), "
                            "not both")
        kwargs[pname] = dataclasses.replace(default, **given)
    return factory(**kwargs)
