"""Alternating minimisation of the OOD bound (paper Alg. 2, §4.2; SPEC §4).

Iteration 0 trains the model on ``N`` samples of the initial ``nu``. Each later iteration
(b) updates ``nu = nu(theta)`` with the model fixed, to decrease ``J(nu, G)``, then (a)
trains the model on ``N`` samples of the new ``nu``. ``J`` never increases (Prop. 4.7):

* ``J`` is always evaluated on the same fixed latent draws ``xi_opt`` (common random
  numbers), so it is a deterministic function of ``theta`` and the model;
* an update that does not lower ``J`` is reverted (Adam: the round is undone and its
  step halved before the next round; differential evolution: the old ``theta`` is kept);
* after training, if ``J`` went up, training continues for ``retrain_steps`` more steps
  up to ``retrain_rounds`` times (the authors' rule), and if it is still higher the
  previous weights are restored.

The Lipschitz constants ``L`` (solver) and ``L'`` (model) are estimated once, after the
first training, over samples of ``nu_0`` and of every ``Q_j`` (or fixed by the user), and
then kept fixed as in the paper, so ``J`` stays one function across iterations.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from .._validation import check_nonnegative_int, check_positive_float, check_positive_int
from ..models.operator_training import TrainConfig, train_operator
from .ama_bound import (BoundValue, LipschitzEstimate, ama_bound, estimate_lipschitz,
                        lipschitz_or_fixed, quadrature_norm_sq, w2_squared_to_family)

__all__ = ["AMAConfig", "AMAResult", "AMAObjective", "run_ama", "de_update", "adam_update",
           "UPDATES"]


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
    update : "de" | "adam"
    de : dict
        ``differential_evolution`` options (``popsize``, ``tol``, ``maxiter``).
    adam : dict
        ``lr``, ``steps`` per round, ``rounds``.
    seed : int
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
    seed: int = 0

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
    """

    history: list[dict]
    theta: float
    theta0: float
    model: torch.nn.Module
    lipschitz_true: LipschitzEstimate
    lipschitz_model: LipschitzEstimate
    learned: Any = None
    initial_model: Any = None


class AMAObjective:
    """``J(nu(theta), G)`` on fixed latent draws, for a fixed model and fixed constants.

    Parameters
    ----------
    setup : AMASetup
    metatest : OperatorMetaTest (its measures are the ``Q_j``)
    model : torch.nn.Module
    xi : (n_opt, K) tensor of standard-normal KLE coefficients
    lipschitz_true, lipschitz_model : float
    """

    def __init__(self, setup, metatest, model, xi, lipschitz_true: float, lipschitz_model: float,
                 g0_true_sq: float):
        self.setup, self.model, self.xi = setup, model, xi
        self.family = metatest.measures
        self.m2_family = torch.stack([q.second_moment().double() for q in self.family])
        self.L, self.Lp = float(lipschitz_true), float(lipschitz_model)
        self.g0_true_sq = g0_true_sq
        self.w_out = setup.output_weights.double()
        self.evaluations = 0

    def g0_model_sq(self) -> torch.Tensor:
        zero = torch.zeros(1, *self.setup.problem.input_shape, dtype=torch.float64)
        return quadrature_norm_sq(self.model(zero).double().cpu(), self.w_out)[0]

    def samples(self, nu: Any) -> torch.Tensor:
        """The inputs ``part1`` averages over: ``nu`` at the fixed latent draws, or the
        particles themselves for an empirical ``nu`` (particle AMA)."""
        if self.xi is not None and hasattr(nu, "from_coefficients"):
            return nu.from_coefficients(self.xi)
        return nu.points

    def __call__(self, theta: Any) -> BoundValue:
        """``J`` at ``theta`` (a float or a tensor that may require grad)."""
        self.evaluations += 1
        nu = self.setup.build(theta)
        u = self.samples(nu)
        truth = self.setup.problem(u)                       # batched solver (adjoint if grad)
        pred = self.model(u).double().cpu()
        part1 = quadrature_norm_sq(truth.double() - pred, self.w_out).mean()
        m2 = nu.second_moment().double()
        w2sq = w2_squared_to_family(nu, self.family).double()
        return ama_bound(part1, m2_nu=m2, m2_family=self.m2_family, w2sq=w2sq,
                         lipschitz_true=self.L, lipschitz_model=self.Lp,
                         g0_true_sq=self.g0_true_sq, g0_model_sq=self.g0_model_sq())

    def value(self, theta: Any) -> float:
        with torch.no_grad():
            return float(self(theta).value)


def de_update(objective: AMAObjective, theta: float, *, bounds: tuple[float, float],
              seed: int, popsize: int = 30, tol: float = 1e-12, maxiter: int = 1000) -> dict:
    """Global 1-D update by ``scipy.optimize.differential_evolution`` (paper SM F.3)."""
    from scipy.optimize import differential_evolution

    res = differential_evolution(lambda t: objective.value(float(t[0])), [bounds],
                                 popsize=popsize, tol=tol, maxiter=maxiter, seed=seed,
                                 x0=np.array([min(max(theta, bounds[0]), bounds[1])]),
                                 polish=True)
    return {"theta": float(res.x[0]), "evaluations": int(res.nfev)}


def adam_update(objective: AMAObjective, theta: float, *, lr: float = 1e-3, steps: int = 500,
                rounds: int = 3, j_start: float | None = None) -> dict:
    """Adam on ``theta`` with the gradient of ``J`` through the model *and* the solver.

    Up to ``rounds`` rounds of ``steps`` steps; a round that does not lower ``J`` is undone
    and the step halved for the next one; stops after the first round that lowers ``J``.
    """
    best_theta = float(theta)
    best_j = objective.value(best_theta) if j_start is None else j_start
    step = float(lr)
    for _ in range(check_positive_int(rounds, "rounds")):
        t = torch.tensor(best_theta, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.Adam([t], lr=step)
        for _ in range(check_positive_int(steps, "steps")):
            opt.zero_grad(set_to_none=True)
            objective(t).value.backward()
            opt.step()
        j = objective.value(float(t.detach()))
        if j < best_j:
            return {"theta": float(t.detach()), "evaluations": objective.evaluations, "lr": step}
        step *= 0.5
    return {"theta": best_theta, "evaluations": objective.evaluations, "lr": step}


def _de_step(objective, theta, *, setup, config, j_start, seed):
    if setup.bounds is None:
        raise ValueError(f"problem {setup.name!r} has no bounds for differential evolution")
    return de_update(objective, theta, bounds=setup.bounds, seed=seed, **config.de)


def _adam_step(objective, theta, *, setup, config, j_start, seed):
    return adam_update(objective, theta, j_start=j_start, **config.adam)


#: Distribution updates by name: ``(objective, theta, *, setup, config, j_start, seed) ->
#: {"theta": ..., ...}``; a new variant (e.g. particle gradient flows) adds an entry.
UPDATES: dict[str, Callable[..., dict]] = {"de": _de_step, "adam": _adam_step}


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
    cfg = config
    seed = cfg.seed
    g = torch.Generator().manual_seed(seed)
    theta = float(setup.theta0)
    nu = setup.build(theta)
    xi_opt = nu.sample_coefficients(cfg.n_opt, g)           # fixed for every J evaluation
    train_seed = 10_000 + seed                               # fixed training draws (CRN)
    model = model_factory(seed)
    history: list[dict] = []
    g0_true = setup.g0_true_sq()

    def train(x, y, steps=None, k=0):
        return train_operator(model, x, y, config=cfg.train, steps=steps,
                              weights=setup.output_weights, seed=seed * 7919 + k,
                              progress=progress)

    # ---- iteration 0: train on nu_0, estimate L and L'
    t0 = time.perf_counter()
    x, y = labeller.label(nu, cfg.n_train, train_seed)
    t_label = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = train(x, y)
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    samples = _lipschitz_samples(setup, metatest, x, cfg.lipschitz_samples)
    lip_true = lipschitz_or_fixed(cfg.lipschitz_true, lambda: estimate_lipschitz(
        setup.problem, samples, input_weights=setup.input_weights.double(),
        output_weights=setup.output_weights.double(), iterations=cfg.lipschitz_iterations,
        safety=cfg.safety, jvp=setup.jvp, generator=seed))
    lip_model = lipschitz_or_fixed(cfg.lipschitz_model, lambda: estimate_lipschitz(
        lambda u: model(u).double().cpu(), samples, input_weights=setup.input_weights.double(),
        output_weights=setup.output_weights.double(), iterations=cfg.lipschitz_iterations,
        safety=cfg.safety, jvp="forward", generator=seed + 1))
    t_lip = time.perf_counter() - t0
    objective = AMAObjective(setup, metatest, model, xi_opt, lip_true.value, lip_model.value, g0_true)
    with torch.no_grad():
        bound = objective(theta)
    record = _record(0, theta, bound, None, metatest, model, t_label, t_train, t_lip, 0.0,
                     update_accepted=None, train_accepted=True, train_steps=res.steps)
    history.append(record)
    if callback:
        callback(record)
    j_prev = record["ama_loss"]
    initial_model = copy.deepcopy(model)

    for k in range(1, cfg.iterations + 1):
        # ---- (b) update nu with the model fixed
        t0 = time.perf_counter()
        out = UPDATES[cfg.update](objective, theta, setup=setup, config=cfg, j_start=j_prev,
                                  seed=seed * 100 + k)
        j_upd = objective.value(out["theta"])
        update_accepted = j_upd <= j_prev
        if update_accepted:
            theta = out["theta"]
        else:
            j_upd = j_prev
        t_update = time.perf_counter() - t0
        # ---- (a) train on N samples of the new nu
        nu = setup.build(theta)
        label_before = labeller.seconds
        x, y = labeller.label(nu, cfg.n_train, train_seed)
        t_label = labeller.seconds - label_before
        t0 = time.perf_counter()
        previous = copy.deepcopy(model.state_dict())
        if not cfg.warm_start:
            model.load_state_dict(model_factory(seed + 1000 * k).state_dict())
        res = train(x, y, k=k)
        steps = res.steps
        j_new = objective.value(theta)
        rounds = 0
        while j_new > j_upd and rounds < cfg.retrain_rounds:
            steps += train(x, y, steps=cfg.retrain_steps, k=k * 100 + rounds + 1).steps
            j_new = objective.value(theta)
            rounds += 1
        train_accepted = j_new <= j_upd
        if not train_accepted:
            model.load_state_dict(previous)
        t_train = time.perf_counter() - t0
        with torch.no_grad():
            bound = objective(theta)
        record = _record(k, theta, bound, j_upd, metatest, model, t_label, t_train, 0.0, t_update,
                         update_accepted=update_accepted, train_accepted=train_accepted,
                         train_steps=steps, retrain_rounds=rounds)
        history.append(record)
        if callback:
            callback(record)
        j_prev = record["ama_loss"]
    return AMAResult(history=history, theta=theta, theta0=float(setup.theta0), model=model,
                     lipschitz_true=lip_true, lipschitz_model=lip_model,
                     learned=setup.build(theta), initial_model=initial_model)


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
    """``theta`` for the JSON record: a float, or nested lists for a vector / particle
    parameter (particle AMA's theta is a tensor of particles)."""
    if isinstance(theta, torch.Tensor):
        t = theta.detach().cpu().double()
        return float(t) if t.numel() == 1 else t.tolist()
    if isinstance(theta, np.ndarray):
        return float(theta) if theta.size == 1 else theta.astype(float).tolist()
    return float(theta)
