"""Alternating minimisation of the OOD bound (paper Alg. 2, §4.2; SPEC §4; issue 21).

Iteration 0 trains the model on ``N`` samples of the initial ``nu``. Each later iteration
(b) updates ``nu = nu(theta)`` (``theta`` a float or a vector) with the model fixed, to
decrease ``J(nu, G)``, then (a) trains the model on ``N`` samples of the new ``nu``:

* ``J`` is always evaluated on the same fixed latent draws ``xi_opt`` (common random
  numbers), so it is a deterministic function of ``theta`` and the model;
* an update that does not lower ``J`` is reverted (Adam: the round is undone and its
  step halved before the next round; differential evolution and L-BFGS-B: the old
  ``theta`` is kept);
* training is judged on the *held-out loss* of the new data set (never on ``J``): the
  previous weights' held-out loss on that split is the reference; training that does not
  beat it continues for ``retrain_steps`` more steps up to ``retrain_rounds`` times, and
  if it still does not, the previous weights are restored. A warm start never restores
  the old weights silently (:func:`train_operator` keeps the best weights *seen during
  training*);
* the loop stops early, and says so (``stop_reason``), when an update moves ``theta`` by
  less than ``theta_tol`` (max-norm).

The Lipschitz constants ``L`` (solver) and ``L'`` (model) and the model's ``||G(0)||`` are
estimated once, after the first training, over samples of ``nu_0`` and of every ``Q_j`` (or
fixed by the user), and then kept fixed as in the paper (the authors hard-coded all three),
so ``J`` stays one function of ``(theta, G)`` whose model dependence is ``part1``. The safety
factor on the estimates is a heuristic (the supremum over inputs is approximated by a
maximum over samples); a map known to be linear (NtD) has one Jacobian, so its factor is 1.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from .._validation import check_nonnegative_int, check_positive_float, check_positive_int
from ..models.operator_training import TrainConfig, train_operator
from .ama_bound import (BoundConstants, BoundValue, LipschitzEstimate, LipschitzOptions,
                        ama_bound, estimate_lipschitz, lipschitz_or_fixed,
                        mixture_component_bound, quadrature_norm_sq, w2_squared_to_family)

__all__ = ["AMAConfig", "AMAResult", "AMAObjective", "run_ama", "de_update", "adam_update",
           "lbfgsb_update", "UPDATES", "retrain", "theta_step"]


@dataclass
class AMAConfig:
    """Settings of one AMA run (SPEC §4 gives the paper's values per problem).

    Attributes
    ----------
    n_train : int
        Training samples ``N`` per iteration.
    iterations : int
        AMA iterations after the initial training.
    n_opt : int
        Fixed samples of ``nu`` for ``part1`` of ``J`` (the update step and the logged J).
    train : TrainConfig
    retrain_rounds, retrain_steps : int
        Extra training rounds when ``J`` did not decrease (paper: 10 x 1000 NtD, 2 Darcy).
    warm_start : bool
        Continue from the previous iteration's weights (else a fresh initialisation).
    lipschitz_true, lipschitz_model : "auto" or float
        Estimate (power iteration x ``safety``) or fix ``L`` / ``L'``.
    safety : float
        Safety factor on the estimated constants.
    lipschitz_samples : int
        Samples per measure (``nu_0`` and each ``Q_j``) for the estimates.
    lipschitz_iterations : int
        Power iterations.
    update : "de" | "adam" | "de+adam" | "lbfgsb" | "particles"
    de : dict
        ``differential_evolution`` options (``popsize``, ``tol``, ``maxiter``).
    adam : dict
        ``lr``, ``steps`` per round, ``rounds``.
    lbfgsb : dict
        ``maxiter`` of the L-BFGS-B update (paper SM F.6: 1).
    flow : dict
        The particle gradient flow (:mod:`.ama_particles`): ``eta``, ``shrink`` ("divide" by
        10 or "halve"), ``tol``, ``max_steps``.
    seed : int
    theta_tol : float
        Stop when an update moves ``theta`` by less than this (max over components).
    """

    n_train: int = 200
    iterations: int = 10
    n_opt: int = 200
    train: TrainConfig = field(default_factory=TrainConfig)
    retrain_rounds: int = 2
    retrain_steps: int = 1000
    warm_start: bool = True
    lipschitz_true: Any = "auto"
    lipschitz_model: Any = "auto"
    safety: float = 1.5
    lipschitz_samples: int = 4
    lipschitz_iterations: int = 20
    update: str = "de"
    de: dict = field(default_factory=lambda: {"popsize": 30, "tol": 1e-12, "maxiter": 1000})
    adam: dict = field(default_factory=lambda: {"lr": 1e-3, "steps": 500, "rounds": 3})
    lbfgsb: dict = field(default_factory=lambda: {"maxiter": 10})
    flow: dict = field(default_factory=dict)
    seed: int = 0
    theta_tol: float = 1e-4

    def __post_init__(self) -> None:
        check_positive_int(self.n_train, "n_train")
        check_nonnegative_int(self.iterations, "iterations")
        check_positive_int(self.n_opt, "n_opt")
        check_nonnegative_int(self.retrain_rounds, "retrain_rounds")
        check_positive_int(self.retrain_steps, "retrain_steps")
        check_positive_float(self.safety, "safety")
        check_positive_int(self.lipschitz_samples, "lipschitz_samples")
        check_positive_int(self.lipschitz_iterations, "lipschitz_iterations")
        check_nonnegative_int(self.seed, "seed")
        check_positive_float(self.theta_tol, "theta_tol", allow_zero=True)
        from .ama_particles import check_flow

        self.flow = check_flow(dict(self.flow))
        if self.update not in UPDATES:
            raise ValueError(f"update must be one of {', '.join(sorted(UPDATES))}, got "
                             f"{self.update!r}")


@dataclass
class AMAResult:
    """History and final state of an AMA run.

    ``history``: one record per iteration (``iteration``, ``theta``, ``ama_loss`` =
    ``J(nu_k, G_k)``, its parts, ``ood_error``, ``ood_error_squared``, the ``J`` after the
    update half-step, whether the update / training were accepted, and timings
    ``seconds_label``, ``seconds_train``, ``seconds_lipschitz``, ``seconds_update``).
    ``ood_error`` there is the *in-loop* model's error (warm-started, trained across
    iterations): not comparable with fresh-model errors. ``stop_reason``: "iterations" or
    "theta moved less than theta_tol at iteration k".
    """

    history: list[dict]
    theta: Any
    theta0: Any
    model: torch.nn.Module
    lipschitz_true: LipschitzEstimate
    lipschitz_model: LipschitzEstimate
    learned: Any = None
    initial_model: Any = None
    stop_reason: str = "iterations"
    g0_model_sq: float = 0.0


class AMAObjective:
    """``J(nu(theta), G)`` on fixed latent draws, for a fixed model and fixed constants.

    Parameters
    ----------
    setup : AMASetup
    metatest : OperatorMetaTest (its measures are the ``Q_j``)
    model : torch.nn.Module
    xi : (n_opt, K) tensor of standard-normal KLE coefficients
    lipschitz_true, lipschitz_model : float
    g0_true_sq : float, ``||G*(0)||_q^2``
    g0_model_sq : float or None
        A fixed ``||G(0)||_q^2`` (the loop's estimate after the first training); None: the
        current model's value at every evaluation.
    """

    def __init__(self, setup, metatest, model, xi, lipschitz_true: float, lipschitz_model: float,
                 g0_true_sq: float, g0_model_sq: float | None = None):
        self.setup, self.model, self.xi = setup, model, xi
        self.family = metatest.measures
        self.m2_family = torch.stack([q.second_moment().double() for q in self.family])
        self.L, self.Lp = float(lipschitz_true), float(lipschitz_model)
        self.g0_true_sq = g0_true_sq
        self.w_out = setup.output_weights.double()
        self.evaluations = 0
        self.fixed_g0_model_sq = g0_model_sq

    def g0_model_sq(self) -> torch.Tensor:
        if self.fixed_g0_model_sq is not None:
            return torch.tensor(float(self.fixed_g0_model_sq), dtype=torch.float64)
        zero = self.setup.origin_input()
        return quadrature_norm_sq(self.model(zero).double().cpu(), self.w_out)[0]

    def constants(self) -> BoundConstants:
        """``L``, ``L'``, ``||G*(0)||^2`` and the model's ``||G(0)||^2`` (see
        :meth:`g0_model_sq`)."""
        return BoundConstants(self.L, self.Lp, self.g0_true_sq, self.g0_model_sq())

    def samples(self, nu: Any) -> torch.Tensor:
        """The inputs ``part1`` averages over: ``nu`` at the fixed latent draws, or the
        particles themselves for an empirical ``nu`` (particle AMA)."""
        if self.xi is not None and hasattr(nu, "from_coefficients"):
            return nu.from_coefficients(self.xi)
        return nu.points

    def truth(self, nu: Any, u: torch.Tensor) -> torch.Tensor:
        """``G*(u)`` (B, *out): the setup's exact shortcut on the fixed draws when it has one
        (Darcy: ``G*(c + v) = exp(-c) G*(v)``), else the batched solver (adjoint if grad)."""
        if getattr(self.setup, "truth", None) is not None and self.xi is not None and \
                hasattr(nu, "kle_part"):
            return self.setup.truth(nu, self.xi)
        return self.setup.problem(u)

    def __call__(self, theta: Any) -> BoundValue:
        """``J`` at ``theta`` (a float, a vector, or a tensor that may require grad)."""
        self.evaluations += 1
        nu = self.setup.build(theta)
        u = self.samples(nu)
        truth = self.truth(nu, u)
        pred = self.model(u).double().cpu()
        errors = quadrature_norm_sq(truth.double() - pred, self.w_out)
        if getattr(nu, "bound", None) == "component":      # the mixture family (ama_bound)
            w2 = torch.stack([w2_squared_to_family(c, self.family).double()
                              for c in nu.components])
            m2c = torch.stack([c.second_moment().double() for c in nu.components])
            return mixture_component_bound(
                errors, nu.component_of(u.shape[0]), m2_components=m2c,
                m2_family=self.m2_family, w2sq=w2, constants=self.constants())
        part1 = errors.mean()
        m2 = nu.second_moment().double()
        w2sq = w2_squared_to_family(nu, self.family).double()
        return ama_bound(part1, m2_nu=m2, m2_family=self.m2_family, w2sq=w2sq,
                         constants=self.constants())

    def value(self, theta: Any) -> float:
        with torch.no_grad():
            return float(self(theta).value)


def _bounds_list(bounds: Any, dim: int) -> list[tuple[float, float]]:
    """One ``(low, high)`` per component (a single pair for a 1-D parameter)."""
    if bounds is None:
        raise ValueError("differential evolution needs bounds")
    b = list(bounds)
    if len(b) == 2 and all(isinstance(v, (int, float)) for v in b):
        b = [tuple(b)]
    if len(b) < dim:
        raise ValueError(f"bounds give {len(b)} intervals for a {dim}-component theta")
    return [(float(lo), float(hi)) for lo, hi in b[:dim]]


def _theta_out(like: Any, value: np.ndarray) -> Any:
    """Return ``value`` in the kind of ``like``: a float for a scalar, else a list."""
    if np.ndim(like) == 0:
        return float(value[0])
    return [float(v) for v in value]


def de_update(objective: AMAObjective, theta: Any, *, bounds: Any, seed: int, popsize: int = 30,
              tol: float = 1e-12, maxiter: int = 1000) -> dict:
    """Global update by ``scipy.optimize.differential_evolution`` (paper SM F.3).

    ``theta`` a float (``bounds`` one pair) or a vector (``bounds`` one pair per component);
    returns ``{"theta": same kind, "evaluations"}``.
    """
    from scipy.optimize import differential_evolution

    x0 = np.atleast_1d(np.asarray(theta, dtype=np.float64))
    b = _bounds_list(bounds, x0.size)
    x0 = np.array([min(max(v, lo), hi) for v, (lo, hi) in zip(x0, b)])

    def f(t):
        return objective.value(_theta_out(theta, t))

    res = differential_evolution(f, b, popsize=popsize, tol=tol, maxiter=maxiter, seed=seed,
                                 x0=x0, polish=True)
    return {"theta": _theta_out(theta, np.asarray(res.x)), "evaluations": int(res.nfev)}


def adam_update(objective: AMAObjective, theta: Any, *, lr: float = 1e-3, steps: int = 500,
                rounds: int = 3, j_start: float | None = None, mask: Any = None,
                bounds: Any = None) -> dict:
    """Adam on ``theta`` (float or vector) through reparametrised samples: the gradient of
    ``J`` passes through the model, the solver (or its exact shortcut) and the closed-form
    ``m2`` and ``W2``.

    Up to ``rounds`` rounds of ``steps`` steps; a round that does not lower ``J`` is undone
    and the step halved for the next one; stops after the first round that lowers ``J``.
    ``mask`` (bool per component) freezes components (their values are detached, so an
    exact shortcut that caches solves per spectrum stays valid). ``bounds`` (one pair per
    component, or None) are enforced by projecting every iterate.
    """
    vec = np.ndim(theta) > 0
    best = np.atleast_1d(np.asarray(theta, dtype=np.float64)).copy()
    keep = (torch.ones(best.size, dtype=torch.bool) if mask is None
            else torch.as_tensor(np.asarray(mask, dtype=bool)))
    best_j = objective.value(_theta_out(theta, best)) if j_start is None else j_start
    step = float(lr)
    box = None if bounds is None else torch.tensor(_bounds_list(bounds, best.size),
                                                   dtype=torch.float64)
    for _ in range(check_positive_int(rounds, "rounds")):
        t = torch.tensor(best, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.Adam([t], lr=step)
        for _ in range(check_positive_int(steps, "steps")):
            opt.zero_grad(set_to_none=True)
            eff = torch.where(keep, t, t.detach())
            objective(eff if vec else eff[0]).value.backward()
            opt.step()
            if box is not None:
                with torch.no_grad():
                    t.copy_(torch.minimum(torch.maximum(t, box[:, 0]), box[:, 1]))
        cand = t.detach().numpy().copy()
        j = objective.value(_theta_out(theta, cand))
        if j < best_j:
            return {"theta": _theta_out(theta, cand), "evaluations": objective.evaluations,
                    "lr": step}
        step *= 0.5
    return {"theta": _theta_out(theta, best), "evaluations": objective.evaluations, "lr": step}


def lbfgsb_update(objective: AMAObjective, theta: Any, *, maxiter: int = 10,
                  j_start: float | None = None, mask: Any = None, bounds: Any = None) -> dict:
    """L-BFGS-B on ``theta`` with the exact gradient of ``J`` (paper SM F.6: scipy's
    ``minimize`` on the bound with analytic gradients): through the model, the solver's
    adjoint and the closed-form ``m2`` and ``W2``. Quasi-Newton steps suit a ``J`` whose
    valleys are narrow in some directions of ``theta`` (Burgers' ``(log sigma, log tau,
    log alpha)``), where Adam's per-component steps overshoot.

    ``maxiter`` iterations (each with its own line search) within ``bounds`` (one pair per
    component, or None); ``mask`` freezes components (their gradient is zero). A trial point
    where the solver diverges (``FloatingPointError``) counts as ``J = inf``, so the line
    search backs off. The result is kept only if it lowers ``J`` below ``j_start`` (default:
    ``J`` at ``theta``); returns ``{"theta", "evaluations", "iterations", "message"}``.
    """
    from scipy.optimize import minimize

    vec = np.ndim(theta) > 0
    x0 = np.atleast_1d(np.asarray(theta, dtype=np.float64)).copy()
    keep = (torch.ones(x0.size, dtype=torch.bool) if mask is None
            else torch.as_tensor(np.asarray(mask, dtype=bool)))
    box = None if bounds is None else _bounds_list(bounds, x0.size)
    if box is not None:
        x0 = np.array([min(max(v, lo), hi) for v, (lo, hi) in zip(x0, box)])
    j0 = objective.value(_theta_out(theta, x0)) if j_start is None else float(j_start)

    def fg(x):
        t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        eff = torch.where(keep, t, t.detach())
        try:
            value = objective(eff if vec else eff[0]).value
        except FloatingPointError:
            return math.inf, np.zeros_like(x)
        (grad,) = torch.autograd.grad(value, t)
        return float(value.detach()), grad.numpy().astype(np.float64)

    res = minimize(fg, x0, jac=True, method="L-BFGS-B", bounds=box,
                   options={"maxiter": check_positive_int(maxiter, "maxiter")})
    out = {"evaluations": objective.evaluations, "iterations": int(res.nit),
           "message": str(res.message)}
    cand = _theta_out(theta, np.asarray(res.x, dtype=np.float64))
    try:
        j = objective.value(cand)
    except FloatingPointError:
        j = math.inf
    if not j < j0:
        return {"theta": _theta_out(theta, x0), **out}
    return {"theta": cand, **out}


def _lbfgsb_step(objective, theta, *, setup, config, j_start, seed, state=None):
    bounds = setup.bounds if isinstance(setup.bounds, list) else None
    return lbfgsb_update(objective, theta, j_start=j_start, mask=setup.mask, bounds=bounds,
                         **config.lbfgsb)


def _de_step(objective, theta, *, setup, config, j_start, seed, state=None):
    if setup.bounds is None:
        raise ValueError(f"problem {setup.name!r} has no bounds for differential evolution")
    return de_update(objective, theta, bounds=setup.bounds, seed=seed, **config.de)


def _adam_step(objective, theta, *, setup, config, j_start, seed, state=None):
    bounds = setup.bounds if isinstance(setup.bounds, list) else None
    return adam_update(objective, theta, j_start=j_start, mask=setup.mask, bounds=bounds,
                       **config.adam)


def _de_adam_step(objective, theta, *, setup, config, j_start, seed, state=None):
    """A multimodal location parameter (NtD frequency): differential evolution over the first
    component with the others fixed, then Adam over the whole vector from there."""
    if setup.bounds is None or np.ndim(theta) == 0:
        raise ValueError(f"update 'de+adam' needs a vector theta with bounds ({setup.name!r})")
    rest = list(theta[1:])
    sub = _FirstComponent(objective, rest)
    first = de_update(sub, float(theta[0]), bounds=_bounds_list(setup.bounds, 1)[0], seed=seed,
                      **config.de)["theta"]
    start = [first, *rest]
    j_mid = objective.value(start)
    if j_mid > j_start:                                      # DE found nothing better
        start, j_mid = list(theta), j_start
    out = _adam_step(objective, start, setup=setup, config=config, j_start=j_mid, seed=seed)
    return out


class _FirstComponent:
    """``J`` as a function of ``theta[0]`` with the other components fixed (for DE)."""

    def __init__(self, objective, rest):
        self.objective, self.rest = objective, rest

    def value(self, t0: float) -> float:
        return self.objective.value([float(t0), *self.rest])


def _particles_step(objective, theta, *, setup, config, j_start, seed, state=None):
    """The particle gradient flow (:func:`.ama_particles.particle_flow_update`); its step
    size lives in ``state`` across AMA iterations."""
    from .ama_particles import particle_flow_update

    return particle_flow_update(objective, theta, state=state, **config.flow)


#: Distribution updates by name: ``(objective, theta, *, setup, config, j_start, seed, state)
#: -> {"theta": ..., ...}``. ``state`` is one dict per AMA run that an update may keep across
#: iterations (the particle flow's step size); an update that returns ``"j"`` (``J`` at the
#: new theta) saves the loop one evaluation; ``"flow"`` is recorded as it is.
UPDATES: dict[str, Callable[..., dict]] = {"de": _de_step, "adam": _adam_step,
                                           "de+adam": _de_adam_step, "lbfgsb": _lbfgsb_step,
                                           "particles": _particles_step}


def _lipschitz_samples(setup, metatest, nu_x: torch.Tensor, per: int) -> torch.Tensor:
    xs = [nu_x[:per]] + [metatest.seen_x[j, :per] for j in range(metatest.n_measures)]
    return torch.cat(xs).double()


def run_ama(setup, metatest, config: AMAConfig, labeller, *,
            model_factory: Callable[[int], torch.nn.Module],
            callback: Callable[[dict], None] | None = None,
            progress: Callable[..., None] | None = None) -> AMAResult:
    """Run Alg. 2 (see the module docstring).

    Parameters
    ----------
    setup : AMASetup
    metatest : OperatorMetaTest
        ``Q_j`` (its ``measures``), seen samples (Lipschitz estimates), unseen samples (the
        reported OOD error).
    config : AMAConfig
    labeller : Labeller
        Labels ``N`` samples of each ``nu`` once (reused when ``nu`` repeats).
    model_factory : callable
        ``seed -> fresh model``.
    callback : callable, optional
        Receives each iteration's record.
    progress : callable, optional
        Forwarded to :func:`train_operator`.
    """
    from .ama_problems import prepare_setup

    cfg, seed = config, config.seed
    setup = prepare_setup(setup, metatest)
    theta = _initial_theta(setup)
    nu = setup.build(theta)
    g = torch.Generator().manual_seed(seed)
    # fixed latent draws for every J evaluation; particles are their own samples
    xi_opt = nu.sample_coefficients(cfg.n_opt, g) if hasattr(nu, "sample_coefficients") else None
    train_seed = 10_000 + seed                               # fixed training draws (CRN)
    model = model_factory(seed)
    history: list[dict] = []

    def train(x, y, steps=None, k=0):
        tcfg = cfg.train if steps is None else dataclasses.replace(cfg.train, steps=steps)
        return train_operator(model, x, y, config=tcfg, weights=setup.output_weights,
                              seed=seed * 7919 + k, progress=progress)

    # ---- iteration 0: train on nu_0, estimate L, L' and ||G(0)||
    t0 = time.perf_counter()
    x, y = labeller.label(nu, cfg.n_train, train_seed)
    t_label = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = train(x, y)
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    lip_true, lip_model = _constants(setup, metatest, model, x, cfg)
    t_lip = time.perf_counter() - t0
    objective = AMAObjective(setup, metatest, model, xi_opt, lip_true.value, lip_model.value,
                             setup.g0_true_sq())
    g0_model = float(objective.g0_model_sq().detach())
    objective.fixed_g0_model_sq = g0_model
    with torch.no_grad():
        bound = objective(theta)
    show = getattr(setup, "theta_summary", None) or (lambda t: t)
    update_state: dict = {}
    record = _record(0, show(theta), bound, None, metatest, model, t_label, t_train, t_lip, 0.0,
                     update_accepted=None, train_accepted=True, train_steps=res.steps,
                     val_loss=res.best_val_loss)
    history.append(record)
    if callback:
        callback(record)
    j_prev = record["ama_loss"]
    initial_model = copy.deepcopy(model)
    stop_reason = "iterations"

    for k in range(1, cfg.iterations + 1):
        # ---- (b) update nu with the model fixed
        t0 = time.perf_counter()
        out = UPDATES[cfg.update](objective, theta, setup=setup, config=cfg, j_start=j_prev,
                                  seed=seed * 100 + k, state=update_state)
        j_upd = float(out["j"]) if "j" in out else objective.value(out["theta"])
        update_accepted = j_upd <= j_prev
        old = theta
        if update_accepted:
            theta = out["theta"]
        else:
            j_upd = j_prev
        moved = theta_step(old, theta)
        t_update = time.perf_counter() - t0
        if moved < cfg.theta_tol:
            stop_reason = (f"theta moved {moved:.3g} < theta_tol = {cfg.theta_tol:g} at "
                           f"iteration {k}")
            break
        # ---- (a) train on N samples of the new nu, judged on the held-out loss
        nu = setup.build(theta)
        label_before = labeller.seconds
        x, y = labeller.label(nu, cfg.n_train, train_seed)
        t_label = labeller.seconds - label_before
        t0 = time.perf_counter()
        if not cfg.warm_start:
            fresh = model_factory(seed + 1000 * k).state_dict()
        outcome = retrain(model, lambda steps=None, x=x, y=y, k=k: train(x, y, steps=steps, k=k),
                          rounds=cfg.retrain_rounds, retrain_steps=cfg.retrain_steps,
                          start_state=None if cfg.warm_start else fresh)
        t_train = time.perf_counter() - t0
        with torch.no_grad():
            bound = objective(theta)
        extra = {"flow": out["flow"]} if "flow" in out else {}
        record = _record(k, show(theta), bound, j_upd, metatest, model, t_label, t_train, 0.0,
                         t_update, update_accepted=update_accepted, theta_step=moved, **outcome,
                         **extra)
        history.append(record)
        if callback:
            callback(record)
        j_prev = record["ama_loss"]
    return AMAResult(history=history, theta=theta, theta0=setup.theta0, model=model,
                     lipschitz_true=lip_true, lipschitz_model=lip_model,
                     learned=setup.build(theta).detach() if hasattr(setup.build(theta), "detach")
                     else setup.build(theta), initial_model=initial_model,
                     stop_reason=stop_reason, g0_model_sq=g0_model)


def _initial_theta(setup) -> Any:
    """``theta0`` as a float (one parameter) or a list of floats (a vector)."""
    t0 = setup.theta0
    if isinstance(t0, torch.Tensor):                     # particles (M, d)
        return t0.detach().clone()
    return [float(v) for v in t0] if np.ndim(t0) > 0 else float(t0)


def theta_step(old: Any, new: Any) -> float:
    """``max_i |new_i - old_i|``: how far an update moved ``theta`` (stop rule)."""
    a = np.atleast_1d(np.asarray(old, dtype=np.float64))
    b = np.atleast_1d(np.asarray(new, dtype=np.float64))
    return float(np.max(np.abs(b - a))) if a.size else 0.0


def retrain(model: torch.nn.Module, train: Callable[..., Any], *, rounds: int,
            retrain_steps: int, start_state: dict | None = None) -> dict:
    """Train ``model`` on a new data set and keep the result only if it helps.

    The reference is the held-out loss of the *current* weights on the new data's split
    (``TrainResult.initial_val_loss`` of the first call, before any step). Training that
    does not beat it continues ``retrain_steps`` more steps, up to ``rounds`` times; if it
    still does not, the previous weights are restored. ``start_state`` (a fresh
    initialisation) replaces the weights before training (the reference stays the previous
    weights' loss). ``train(steps=None) -> TrainResult`` trains in place on one fixed split.

    Returns ``{"train_accepted", "train_steps", "retrain_rounds", "val_loss",
    "val_loss_before"}`` (``val_loss``: held-out loss of the weights kept).
    """
    previous = copy.deepcopy(model.state_dict())
    if start_state is not None:
        ref = train(steps=1).initial_val_loss           # previous weights on the new split
        model.load_state_dict(start_state)
    res = train()
    ref = res.initial_val_loss if start_state is None else ref
    val, steps, done = res.best_val_loss, res.steps, 0
    while not val < ref and done < rounds:
        more = train(steps=retrain_steps)
        steps += more.steps
        val = min(val, more.best_val_loss)
        done += 1
    accepted = bool(val < ref)
    if not accepted:
        model.load_state_dict(previous)
    return {"train_accepted": accepted, "train_steps": steps, "retrain_rounds": done,
            "val_loss": float(val if accepted else ref), "val_loss_before": float(ref)}


def _constants(setup, metatest, model, x, cfg) -> tuple[LipschitzEstimate, LipschitzEstimate]:
    """``L`` (safety 1 for a linear ``G*``: one Jacobian everywhere) and ``L'``."""
    samples = _lipschitz_samples(setup, metatest, x, cfg.lipschitz_samples)
    safety_true = 1.0 if getattr(setup, "linear", False) else cfg.safety
    weights = {"input_weights": setup.input_weights.double(),
               "output_weights": setup.output_weights.double()}
    lip_true = lipschitz_or_fixed(cfg.lipschitz_true, lambda: estimate_lipschitz(
        setup.problem, samples, **weights, generator=cfg.seed,
        options=LipschitzOptions(iterations=cfg.lipschitz_iterations, safety=safety_true,
                                 jvp=setup.jvp)))
    lip_model = lipschitz_or_fixed(cfg.lipschitz_model, lambda: estimate_lipschitz(
        lambda u: model(u).double().cpu(), samples, **weights, generator=cfg.seed + 1,
        options=LipschitzOptions(iterations=cfg.lipschitz_iterations, safety=cfg.safety,
                                 jvp="forward")))
    return lip_true, lip_model


def _record(k, theta, bound: BoundValue, j_update, metatest, model, t_label, t_train, t_lip,
            t_update, **extra) -> dict:
    model.eval()
    sq = metatest.error_squared(model)
    model.train()
    d = bound.to_dict()
    return {"iteration": k, "theta": _plain(theta), "ama_loss": d["value"], "part1": d["part1"],
            "part2": d["part2"], "part3": d["part3"], "ama_loss_after_update": j_update,
            "ood_error": float(np.sqrt(sq)), "ood_error_squared": float(sq),
            "seconds_label": t_label, "seconds_train": t_train, "seconds_lipschitz": t_lip,
            "seconds_update": t_update, **extra}


def _plain(theta: Any) -> Any:
    """``theta`` for the JSON record: a float, nested lists for a vector parameter, or the
    setup's summary dict (particle AMA: ``AMASetup.theta_summary``)."""
    if isinstance(theta, dict):
        return theta
    if isinstance(theta, torch.Tensor):
        t = theta.detach().cpu().double()
        return float(t) if t.numel() == 1 else t.tolist()
    if isinstance(theta, np.ndarray):
        return float(theta) if theta.size == 1 else theta.astype(float).tolist()
    if isinstance(theta, (list, tuple)):
        return [float(v) for v in theta]
    return float(theta)
