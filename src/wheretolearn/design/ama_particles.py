"""Nonparametric (particle) update of AMA: a Wasserstein gradient flow of ``J`` (paper §4.2,
Alg. 2 with particles, SM F.5; SPEC §4; issue 22).

``nu = (1/M) sum_i delta_{x_i}`` with particles ``x_i`` (here sine-KLE coefficients of the
log-scattering, :class:`~wheretolearn.measures.FieldParticles`). With the model fixed, one
step moves every particle along minus the gradient of the first variation of
``J(nu) = part1 + part2 * part3``::

    x_i <- x_i - eta * grad_x (dJ/dnu)(x_i),     grad_x (dJ/dnu)(x_i) = M * dJ/dx_i,

(for an empirical measure with weights ``1/M`` the derivative of ``J`` w.r.t. one particle is
``1/M`` times the gradient of the first variation at that particle). ``dJ/dx_i`` is exact:

* ``part1 = (1/M) sum_i ||G*(a_i) - G(a_i)||_q^2``: the labels ``G*(a_i)`` depend on the
  particle, so the gradient runs through the model (autograd) and the radiative solver (its
  adjoint, :class:`~wheretolearn.problems.radiative.RadiativeTransport`);
* ``part2`` through ``m2(nu) = (1/M) sum_i ||a_i - 1||_q^2`` (closed form in the particles);
* ``part3 = sqrt(mean_k W2(nu, Q_k)^2)`` through the optimal plans ``P^k`` of ``ot.emd``
  between the particles' fields and fixed samples ``y^k_j`` of each ``Q_k`` (envelope
  theorem: ``d W2^2 / d a_i = 2 q sum_j P^k_ij (a_i - y^k_j)``).

Step control (the authors' code): a step that would raise ``J`` is not taken and ``eta`` is
divided by ``shrink`` (10 in the authors' code, ``"divide"``; 2 as the paper writes,
``"halve"``); the current ``eta`` is kept in the update's ``state`` and carries over to the
next AMA iteration; the flow stops when ``||eta grad||_F < tol`` (Frobenius norm over all
particles) or after ``max_steps`` trial steps. So ``J`` never increases within the flow.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from .._validation import check_positive_float, check_positive_int

__all__ = ["SHRINK_RULES", "check_flow", "first_variation_gradient", "particle_flow_update"]

#: Step-shrink rules: the factor ``eta`` is divided by when a step would raise ``J``.
SHRINK_RULES = {"divide": 10.0, "halve": 2.0}

_FLOW_KEYS = ("eta", "shrink", "tol", "max_steps")


def check_flow(options: dict) -> dict:
    """Validate the flow options ``{"eta", "shrink", "tol", "max_steps"}`` (any subset);
    returns them with defaults filled (eta 1e-6, divide, tol 1e-6, 50 steps: the paper's)."""
    unknown = sorted(set(options) - set(_FLOW_KEYS))
    if unknown:
        raise ValueError(f"unknown flow option {unknown[0]!r}; allowed: {', '.join(_FLOW_KEYS)}")
    out = {"eta": 1e-6, "shrink": "divide", "tol": 1e-6, "max_steps": 50, **options}
    check_positive_float(out["eta"], "flow.eta")
    check_positive_float(out["tol"], "flow.tol", allow_zero=True)
    check_positive_int(out["max_steps"], "flow.max_steps")
    if out["shrink"] not in SHRINK_RULES:
        raise ValueError(f"flow.shrink must be one of {', '.join(SHRINK_RULES)}, got "
                         f"{out['shrink']!r}")
    return out


def _value(objective, x: torch.Tensor) -> tuple[float, Any, torch.Tensor]:
    """``(J, BoundValue, leaf)`` at particles ``x`` (M, d), the graph kept for a gradient;
    ``J = inf`` when the fields overflow or the solver fails (a rejected step)."""
    leaf = x.detach().clone().requires_grad_(True)
    with torch.no_grad():                  # a step so large that exp(c . phi) overflows
        points = getattr(objective.setup.build(x.detach()), "points", None)
    if points is not None and not bool(torch.isfinite(points).all()):
        return math.inf, None, leaf
    try:
        bound = objective(leaf)
    except FloatingPointError:
        return math.inf, None, leaf
    value = float(bound.value.detach())
    return (value if math.isfinite(value) else math.inf), bound, leaf


def first_variation_gradient(bound, leaf: torch.Tensor) -> torch.Tensor:
    """``grad_x (dJ/dnu)(x_i) = M dJ/dx_i`` (M, d) from a ``BoundValue`` built on ``leaf``."""
    (g,) = torch.autograd.grad(bound.value, leaf)
    return g * leaf.shape[0]


def particle_flow_update(objective, theta: torch.Tensor, *, state: dict | None = None,
                         eta: float = 1e-6, shrink: str = "divide", tol: float = 1e-6,
                         max_steps: int = 50) -> dict:
    """Run the gradient flow (module docstring) from particles ``theta`` (M, d).

    Parameters
    ----------
    objective : AMAObjective
        ``J`` with the model fixed; ``objective(x)`` builds ``nu`` from particles ``x``.
    theta : (M, d) tensor
        Current particles (not modified).
    state : dict, optional
        Carries ``eta`` across calls (the step size of the previous AMA iteration); updated.
    eta, shrink, tol, max_steps
        Initial step (used when ``state`` has none), shrink rule, stop tolerance on
        ``||eta grad||_F``, cap on trial steps.

    Returns
    -------
    dict
        ``theta`` (M, d), ``j`` (``J`` at it), and ``flow``: ``eta`` at the end, ``steps``
        (trial steps), ``accepted``, ``rejected``, ``j_trajectory`` (``J`` after every
        accepted step, the start first), ``grad_norm`` (first-variation gradient at the
        start, Frobenius), ``stop`` and ``seconds_per_gradient`` (one ``J`` with its gradient).
    """
    opts = check_flow({"eta": eta, "shrink": shrink, "tol": tol, "max_steps": max_steps})
    state = {} if state is None else state
    step_size = float(state.get("eta", opts["eta"]))
    factor = SHRINK_RULES[opts["shrink"]]
    x = theta.detach().to(torch.float64)
    t0 = time.perf_counter()
    value, bound, leaf = _value(objective, x)
    if bound is None:
        raise FloatingPointError("the radiative solver failed at the current particles")
    grad = first_variation_gradient(bound, leaf)
    t_grad = [time.perf_counter() - t0]
    traj, grad0 = [value], float(grad.norm())
    steps = accepted = rejected = 0
    stop = f"max_steps = {opts['max_steps']}"
    while steps < opts["max_steps"]:
        move = step_size * grad
        if float(move.norm()) < opts["tol"]:
            stop = f"||eta grad|| = {float(move.norm()):.3g} < tol = {opts['tol']:g}"
            break
        steps += 1
        t0 = time.perf_counter()
        cand_value, cand_bound, cand_leaf = _value(objective, x - move)
        if cand_value <= value:
            x, value = cand_leaf.detach(), cand_value
            grad = first_variation_gradient(cand_bound, cand_leaf)
            t_grad.append(time.perf_counter() - t0)
            traj.append(value)
            accepted += 1
        else:
            step_size /= factor
            rejected += 1
    state["eta"] = step_size
    return {"theta": x, "j": value,
            "flow": {"eta": step_size, "steps": steps, "accepted": accepted,
                     "rejected": rejected, "j_trajectory": traj, "grad_norm": grad0,
                     "stop": stop, "shrink": opts["shrink"],
                     "seconds_per_gradient": sum(t_grad) / len(t_grad)}}
