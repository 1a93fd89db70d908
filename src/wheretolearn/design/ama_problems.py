"""What AMA needs to know about a problem (SPEC §4): its norms, its parametric training
family ``nu(theta)``, its meta-test family and the update rule for ``theta``.

:func:`ama_setup` is the single lookup from a problem name to an :class:`AMASetup`
(``ntd``, ``darcy``); further built-in problems (particles) add a builder to
:data:`AMA_SETUPS`.

User problems (``"pkg.mod:factory"``, ``"file.py:factory"`` or an installed plugin name, as
for every other command; docs/user_solver.md) come in two kinds:

* the factory returns an :class:`AMASetup`: full control over the family ``nu(theta)``,
  the meta-test family, the norms and the update;
* the factory returns a :class:`~wheretolearn.problems.Problem` whose input is a field on
  a uniform grid of ``[0, 1]`` (shape ``(n,)``) or ``[0, 1]^2`` (shape ``(n, n)``),
  boundary nodes included: :func:`field_setup` makes it a Darcy-like study -- ``nu(theta)``
  is a Gaussian random field with a learnable constant mean ``theta``, the ``Q_j`` are
  :func:`~wheretolearn.design.operator_metatest.field_family`; ``theta`` moves by Adam
  through model and solver when the problem is ``differentiable``, else by differential
  evolution within ``bounds``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

__all__ = ["AMASetup", "ama_setup", "AMA_SETUPS", "available_ama_problems", "field_setup",
           "grid_weights", "grid_points"]


@dataclass
class AMASetup:
    """A problem prepared for AMA.

    Attributes
    ----------
    name : str
    problem : Problem
        The ground truth ``G*`` (batched solver).
    input_weights, output_weights : tensors of the input / output shape
        Quadrature weights of the one norm used in every term of ``J``.
    points : (P, d) array
        Output coordinates (the DeepONet's trunk inputs).
    build : callable
        ``theta (scalar tensor) -> Measure``: the training family ``nu(theta)``; samples are
        ``build(theta).from_coefficients(xi)`` (differentiable in ``theta``).
    theta0 : float
        Initial parameter (NtD: omega = 4 pi; Darcy: mean m = 0).
    parameter : str
        Name of ``theta`` in reports.
    bounds : (float, float) or None
        Search interval for a global update.
    update : "de" | "adam"
        Default update rule (differential evolution / Adam through model and solver).
    family : callable
        ``(n_measures, seed) -> (measures, params)``: the meta-test family ``Q_j``.
    branch, trunk : list of int
        Default DeepONet layer lists (paper sizes for the input size of this grid).
    jvp : "forward" | "fd" | "fd-random"
        How the Lipschitz estimate applies the solver's Jacobian (``"fd-random"``: a solver
        with no gradient at all, see :func:`~wheretolearn.design.ama_bound.estimate_lipschitz`).
    """

    name: str
    problem: Any
    input_weights: torch.Tensor
    output_weights: torch.Tensor
    points: np.ndarray
    build: Callable[[Any], Any]
    theta0: float
    parameter: str
    bounds: tuple[float, float] | None
    update: str
    family: Callable[[int, int], tuple[list, list[dict]]]
    branch: list[int]
    trunk: list[int]
    jvp: str = "forward"
    options: dict = field(default_factory=dict)

    def g0_true_sq(self) -> float:
        """``||G*(0)||_q^2`` (NtD: 0; Darcy: the solution for ``a = 1``)."""
        from .ama_bound import quadrature_norm_sq

        zero = torch.zeros(1, *self.problem.input_shape, dtype=torch.float64)
        with torch.no_grad():
            y = self.problem(zero)
        return float(quadrature_norm_sq(y, self.output_weights.double())[0])


def _ntd_setup(n: int = 128, n_modes: int | None = None) -> AMASetup:
    from ..measures import NtDInputMeasure, SineBasis1D
    from ..problems import get_problem
    from .operator_metatest import ntd_family

    problem = get_problem("ntd", n=n)
    nb = 4 * n - 4
    k = min(128, nb - 2) if n_modes is None else int(n_modes)
    w = SineBasis1D(nb, k).quadrature_weights.float()

    def build(theta):
        return NtDInputMeasure(theta, n_boundary=nb, n_modes=k, dtype=torch.float64)

    return AMASetup(
        name="ntd", problem=problem, input_weights=w, output_weights=w,
        points=problem.coordinates()["points"], build=build, theta0=4 * math.pi,
        parameter="omega", bounds=(-4 * math.pi, 4 * math.pi), update="de",
        family=lambda j, seed: ntd_family(nb, n_measures=j, seed=seed, n_modes=k,
                                          dtype=torch.float64),
        branch=[nb, 256, 256, 128, 200], trunk=[2, 128, 128, 128, 200], jvp="forward",
        options={"n": n, "n_modes": k})


def _darcy_setup(n: int = 64, n_modes: int | None = None) -> AMASetup:
    from ..measures import GaussianRandomField, SineBasis2D
    from ..problems import get_problem
    from .operator_metatest import darcy_family

    problem = get_problem("darcy", n=n)
    k = min(n - 2, 32) if n_modes is None else int(n_modes)
    basis = SineBasis2D(n, k)
    w = basis.quadrature_weights.float()

    def build(theta):
        return GaussianRandomField(basis, alpha=2.0, tau=3.0, sigma=3.0, mean=theta,
                                   dtype=torch.float64)

    return AMASetup(
        name="darcy", problem=problem, input_weights=w, output_weights=w,
        points=problem.coordinates()["points"], build=build, theta0=0.0, parameter="mean",
        bounds=None, update="adam",
        family=lambda j, seed: darcy_family(basis, n_measures=j, seed=seed, dtype=torch.float64),
        branch=[n * n, 256, 256, 128, 200], trunk=[2, 128, 128, 128, 200], jvp="fd",
        options={"n": n, "n_modes": k})


#: Builders of AMA setups by problem name (keyword options: grid size ``n``, ``n_modes``).
AMA_SETUPS: dict[str, Callable[..., AMASetup]] = {"ntd": _ntd_setup, "darcy": _darcy_setup}


def available_ama_problems() -> list[str]:
    return sorted(AMA_SETUPS)


def grid_weights(shape: tuple[int, ...]) -> torch.Tensor:
    """Trapezoid weights (float32) of a uniform grid of ``shape`` on ``[0, 1]^d`` (d = 1, 2),
    boundary nodes included; other shapes get equal weights ``1 / size``. The weights sum
    to 1, so ``sum w u^2`` is the grid's L2 norm squared on the unit domain."""
    from ..measures.fields import trapezoid_weights

    shape = tuple(int(s) for s in shape)
    if len(shape) in (1, 2) and min(shape) >= 2:
        sides = [trapezoid_weights(m) for m in shape]
        w = sides[0] if len(shape) == 1 else sides[0][:, None] * sides[1][None, :]
    else:
        w = torch.full(shape, 1.0 / max(1, math.prod(shape)), dtype=torch.float64)
    return w.float()


def grid_points(shape: tuple[int, ...]) -> np.ndarray:
    """``(prod(shape), d)`` node coordinates of a uniform grid of ``shape`` on ``[0, 1]^d``
    (row-major, the order of ``reshape``); a 0-d or 3-d+ shape is numbered along ``[0, 1]``."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 2:
        a, b = (np.linspace(0.0, 1.0, m) for m in shape)
        return np.stack(np.meshgrid(a, b, indexing="ij"), axis=-1).reshape(-1, 2)
    return np.linspace(0.0, 1.0, max(1, math.prod(shape)))[:, None]


def _output_points(problem: Any) -> np.ndarray:
    size = math.prod(problem.output_shape)
    pts = problem.coordinates().get("points") if hasattr(problem, "coordinates") else None
    if pts is not None:
        pts = np.asarray(pts, dtype=np.float64)
        if pts.ndim == 2 and pts.shape[0] == size:
            return pts
    return grid_points(problem.output_shape)


def field_setup(problem: Any, *, n_modes: int | None = None,
                bounds: tuple[float, float] | None = None,
                mean_range: tuple[float, float] = (0.0, 1.0), name: str | None = None) -> AMASetup:
    """A Darcy-like :class:`AMASetup` for a user problem whose input is a grid field.

    ``nu(theta) = GRF(alpha = 2, tau = 3, sigma = tau^(alpha - dim/2), mean = theta)`` on a
    sine basis of the problem's input grid (``(n,)`` on [0, 1] or ``(n, n)`` on [0, 1]^2),
    ``theta0 = 0``; meta-test family :func:`field_family` (means on ``mean_range``); norms:
    the basis' quadrature weights on the input, :func:`grid_weights` on the output; trunk
    inputs: ``problem.coordinates()["points"]`` when it has one row per output value, else
    :func:`grid_points`. Update: Adam through model and solver when
    ``problem.differentiable``, else differential evolution within ``bounds`` (default
    ``mean_range`` widened by its length on each side). Lipschitz: ``jvp="fd"`` with the
    autograd adjoint when differentiable, ``"fd-random"`` otherwise.
    """
    from ..measures import GaussianRandomField, SineBasis1D, SineBasis2D
    from .operator_metatest import field_family

    label = name or getattr(problem, "name", "user")
    shape = tuple(int(s) for s in problem.input_shape)
    if len(shape) not in (1, 2) or (len(shape) == 2 and shape[0] != shape[1]) or min(shape) < 5:
        raise ValueError(
            f"problem {label!r}: AMA learns a distribution of input *fields*; its input_shape "
            f"{shape} is not (n,) or (n, n) with n >= 5. Return an AMASetup from the factory "
            "for other inputs (docs/user_solver.md), or use `bilevel` for vectors")
    n = shape[0]
    if len(shape) == 1:
        k = min(n - 2, 64) if n_modes is None else int(n_modes)
        basis = SineBasis1D(n, k)
    else:
        k = min(n - 2, 32) if n_modes is None else int(n_modes)
        basis = SineBasis2D(n, k)
    lo, hi = (float(v) for v in mean_range)
    if bounds is None:
        bounds = (lo - (hi - lo), hi + (hi - lo))
    bounds = (float(bounds[0]), float(bounds[1]))
    if not (math.isfinite(bounds[0]) and math.isfinite(bounds[1]) and bounds[0] < bounds[1]):
        raise ValueError(f"bounds must be two finite numbers low < high, got {bounds!r}")
    points = _output_points(problem)
    differentiable = bool(getattr(problem, "differentiable", False))
    size_in = math.prod(shape)

    def build(theta):
        return GaussianRandomField(basis, alpha=2.0, tau=3.0, mean=theta, dtype=torch.float64)

    return AMASetup(
        name=label, problem=problem, input_weights=basis.quadrature_weights.float(),
        output_weights=grid_weights(problem.output_shape), points=points, build=build,
        theta0=0.0, parameter="mean", bounds=bounds,
        update="adam" if differentiable else "de",
        family=lambda j, seed: field_family(basis, n_measures=j, seed=seed,
                                            mean_range=(lo, hi), dtype=torch.float64),
        branch=[size_in, 256, 256, 128, 200], trunk=[points.shape[1], 128, 128, 128, 200],
        jvp="fd" if differentiable else "fd-random",
        options={"n": n, "n_modes": k, "bounds": list(bounds), "mean_range": [lo, hi],
                 "input_shape": list(shape), "output_shape": list(problem.output_shape)})


def _user_setup(spec: str, *, problem_options: dict | None, n_modes: int | None,
                bounds: Any, mean_range: Any) -> AMASetup:
    """Resolve a user problem (import path, file path, plugin) into an :class:`AMASetup`."""
    from ..problems import Problem, available_problems
    from ..problems.plugins import find_factory
    from ..problems.simulator import SimulatorProblem

    options = dict(problem_options or {})
    factory = find_factory(spec)
    if factory is None:
        builtin = set(available_problems())
        why = (f"problem {spec!r} is not an AMA problem" if spec in builtin
               else f"unknown AMA problem {spec!r}")
        raise ValueError(f"{why}; choose one of {', '.join(available_ama_problems())}, an "
                         "installed plugin or an import path 'package.module:factory'")
    try:
        obj = factory(**options)
    except TypeError as exc:
        raise ValueError(f"problem {spec!r}: its factory rejected problem_options "
                         f"{options!r} ({exc})") from exc
    if isinstance(obj, AMASetup):
        return obj
    if not isinstance(obj, Problem):
        raise ValueError(f"problem {spec!r}: the factory returned a {type(obj).__name__}, "
                         "not a wheretolearn Problem or an AMASetup")
    if isinstance(obj, SimulatorProblem):
        raise ValueError(f"problem {spec!r} is a time-stepping simulator of parameter vectors; "
                         "AMA learns distributions of input fields (use `online`, `generate` "
                         "or `bilevel` for it)")
    obj._spec = {"name": spec, "options": options}          # Dask workers rebuild it
    kw = {} if mean_range is None else {"mean_range": tuple(mean_range)}
    return field_setup(obj, n_modes=n_modes, bounds=None if bounds is None else tuple(bounds),
                       name=spec, **kw)


def ama_setup(name: str, *, problem_options: dict | None = None, bounds: Any = None,
              mean_range: Any = None, **options: Any) -> AMASetup:
    """The :class:`AMASetup` of problem ``name`` (the one place problems are looked up).

    ``name`` is a built-in AMA problem (``options``: grid size ``n``, ``n_modes``) or a user
    problem (see the module docstring; ``problem_options`` go to its factory, ``n_modes``,
    ``bounds`` and ``mean_range`` to :func:`field_setup`).
    """
    if name in AMA_SETUPS:
        if problem_options:
            raise ValueError(f"problem_options are for user problems; {name!r} takes n and "
                             "n_modes")
        if mean_range is not None:
            raise ValueError(f"mean_range is for user field problems; {name!r} has its own "
                             "meta-test family")
        setup = AMA_SETUPS[name](**options)
        if bounds is not None:
            setup.bounds = (float(bounds[0]), float(bounds[1]))
        return setup
    if not isinstance(name, str) or not name:
        raise ValueError(f"problem must be a name or an import path, got {name!r}")
    return _user_setup(name, problem_options=problem_options, n_modes=options.get("n_modes"),
                       bounds=bounds, mean_range=mean_range)
