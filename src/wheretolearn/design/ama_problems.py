"""What AMA needs to know about a problem (SPEC §4): its norms, its parametric training
family ``nu(theta)``, its meta-test family and the update rule for ``theta``.

:func:`ama_setup` is the single lookup from a problem name to an :class:`AMASetup`
(``ntd``, ``darcy``); further problems (particles, user simulators) add a builder to
:data:`AMA_SETUPS`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

__all__ = ["AMASetup", "ama_setup", "AMA_SETUPS", "available_ama_problems"]


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
    jvp : "forward" | "fd"
        How the Lipschitz estimate applies the solver's Jacobian.
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


def ama_setup(name: str, **options: Any) -> AMASetup:
    """The :class:`AMASetup` of problem ``name`` (the one place problems are looked up)."""
    if name not in AMA_SETUPS:
        raise ValueError(f"unknown AMA problem {name!r}; choose one of "
                         f"{', '.join(available_ama_problems())}")
    return AMA_SETUPS[name](**options)
