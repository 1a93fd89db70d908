"""Training-distribution families the bilevel descent can move (SPEC §3, issue 25).

:func:`~wheretolearn.design.bilevel.bilevel_descent` splits every step in two:

(a) the KRR / adjoint part, the same for every family (``bilevel._adjoint_step``): from the
    draws ``x_i`` and labels ``y_i`` it fits KRR, solves the adjoint and returns the per-sample
    weights ``c_i = (f(x_i) - y_i) p_i / N`` (:class:`AdjointQuantities`);
(b) the family (:class:`TrainingFamily`): how ``nu_theta`` is drawn (:meth:`~TrainingFamily.draw`),
    how ``c`` becomes a gradient in its parameters (:meth:`~TrainingFamily.gradient`) and how a
    step is taken safely (:meth:`~TrainingFamily.update`: trust region, floors).

The loop itself (schedules, Adam, backtracking, best iterate) only sees a family's state as a
tuple of tensors. Families are found by the type of the initial measure
(:func:`family_for`); a new one subclasses :class:`TrainingFamily` and is added with
:func:`register_family`.

Score families (:class:`GaussianFamily`, :class:`GaussianMixtureFamily`) use the
score-function gradient ``g = sum_i c_i grad_theta log p_theta(x_i)`` with the draws held fixed
(see the module docstring of :mod:`~wheretolearn.design.bilevel` for why no pathwise term is
added). The particle family (:class:`ParticleFamily`, ``needs_inputs = True``) instead uses
``input_grad`` of :class:`AdjointQuantities`: the gradient of the seen loss with respect to
the training inputs themselves (implicit differentiation of the KRR solve, see
``bilevel._input_gradient``).

Particle family (state ``(points (M, d),)``):

* **Draws.** ``N == M``: the particles themselves. ``N > M``: the particles plus ``N - M``
  draws of the Gaussian kernel density around them (per-coordinate Silverman bandwidth of the
  current particles, :class:`~wheretolearn.measures.empirical.ParticleMeasure`); the gradient
  of a smoothed draw ``x = x_I + h z`` flows to its particle ``x_I`` (``h`` held fixed).
* **Gradient.** ``M dJ/dx_i`` summed over the draws of particle ``i``: the Wasserstein
  gradient of ``J`` at ``nu = (1/M) sum delta_{x_i}`` (the factor ``M`` makes ``lr``
  independent of ``M`` and comparable to the Gaussian mean's).
* **Trust region.** Each particle moves at most ``PARTICLE_MAX_MOVE`` radii, then the whole
  move is scaled so that its RMS ``sqrt(mean_i ||dx_i||^2)`` -- the W2 bound of the coupling
  ``x_i -> x_i'`` -- is at most the radius.

Step control of the mixture (generalising the Gaussian's, see ``bilevel``):

* **Trust region.** With the weights fixed, coupling component ``k`` of ``nu`` with component
  ``k`` of ``nu'`` by the same ``z`` gives ``W2(nu, nu')^2 <= sum_k w_k (||dm_k||^2 +
  ||dL_k||_F^2)``; the means / factors part of an update is scaled so that this bound is at
  most the trust radius. The logits move separately, by at most ``2 radius / R`` in max-norm
  per step (``R`` the spread of the seen samples: 0.5 at the default ``max_move = 0.25``), so a
  step changes no weight ratio by more than ``e^(4 radius / R)``.
* **Floors.** A factor diagonal entry that a step would make non-positive is set to
  ``DIAG_CLAMP`` (the Gaussian's rule, SPEC §2, so that ``K = 1`` is the Gaussian run), and a
  logit more than ``log 1000`` below the largest is raised to that (no component's weight falls
  below 1/1000 of the largest one's, so no component dies). Every update that hits a floor is
  recorded (``floors`` in the result's ``collapse``; the study turns it into a warning): a
  clamped diagonal is a component that was about to collapse to zero variance.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch

from .._validation import check_positive_int, torch_generator
from ..measures.empirical import Empirical, ParticleMeasure, silverman_bandwidth
from ..measures.gaussian import DIAG_CLAMP, Gaussian, empirical_gaussians
from ..measures.mixture import (GaussianMixture, gaussian_mixture_sample,
                                gaussian_mixture_score, kmeans_mixture)

__all__ = ["TrainingFamily", "GaussianFamily", "GaussianMixtureFamily", "ParticleFamily",
           "AdjointQuantities", "Draw", "Update", "family_for", "register_family",
           "available_families", "MIXTURE_INITS", "mixture_start", "PARTICLE_INITS",
           "particle_start"]

#: How :func:`mixture_start` builds the initial mixture.
MIXTURE_INITS = ("auto", "metatest", "kmeans", "split")

_ADAM_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-8
#: No mixture weight falls below this fraction of the largest weight.
WEIGHT_FLOOR = 1e-3
#: Max-norm of a logit step per unit of ``radius / R``.
_LOGIT_PER_RADIUS = 2.0
#: How :func:`particle_start` picks the initial particles.
PARTICLE_INITS = ("metatest", "start")
#: No particle moves more than this many trust radii in one step.
PARTICLE_MAX_MOVE = 4.0


@dataclass
class Draw:
    """Training inputs of one step and what the family needs to differentiate at them.

    Attributes
    ----------
    x : (N, d) tensor
    latent : family-specific (Gaussian: ``z`` with ``x = m + L z``; mixture: ``(labels, z)``
        with ``x_i = m_{k_i} + L_{k_i} z_i``, or None for given inputs)
    """

    x: torch.Tensor
    latent: Any = None


@dataclass
class AdjointQuantities:
    """Output of the KRR / adjoint part of a step, the input of :meth:`TrainingFamily.gradient`.

    Attributes
    ----------
    weights : (N,) tensor
        ``c_i = (f(x_i) - y_i) p_i / N`` (divided by the label scale squared): the gradient of
        the seen loss is ``sum_i c_i grad_theta log p_theta(x_i)`` for a score family.
    coef : (N,) tensor
        KRR coefficients ``a`` (factor dtype).
    adjoint : (N,) tensor
        Adjoint state ``p`` at the draws (factor dtype).
    input_grad : (N, d) tensor or None
        ``dJ/dx_i``, the gradient of the seen loss in the training inputs (computed only for a
        family with ``needs_inputs``; factor dtype).
    """

    weights: torch.Tensor
    coef: torch.Tensor
    adjoint: torch.Tensor
    input_grad: torch.Tensor | None = None


class Update(NamedTuple):
    """Result of :meth:`TrainingFamily.update`.

    ``move``: the W2 bound of the step taken; ``clipped``: the trust region shortened it;
    ``floors``: names of the floors it hit (``"scale_floor"``, ``"weight_floor"``).
    """

    state: tuple
    move: float
    clipped: bool
    floors: tuple[str, ...] = ()


class TrainingFamily(ABC):
    """A parametrised training distribution ``nu_theta`` for :func:`bilevel_descent`.

    The state is a tuple of tensors in the working dtype (never modified in place: the loop
    keeps old states for backtracking and the best iterate). Every hook the loop calls is
    declared here.

    Parameters
    ----------
    dtype : torch.dtype
        Working dtype.
    spread : float
        RMS spread ``R`` of the pooled seen meta-test samples (the trust region's length unit).
    """

    #: Name used in options, summaries and the CLI (``--family``).
    name: ClassVar[str] = ""
    #: Names of the state tensors, in order (keys of :attr:`AdjointGradient.grads`).
    param_names: ClassVar[tuple[str, ...]] = ()
    #: The gradient needs ``dJ/dx`` (:attr:`AdjointQuantities.input_grad`).
    needs_inputs: ClassVar[bool] = False

    def __init__(self, *, dtype: torch.dtype, spread: float):
        self.dtype = dtype
        self.spread = float(spread)

    @abstractmethod
    def initial_state(self, measure: Any) -> tuple:
        """The state of ``measure`` (copied, in the working dtype)."""

    @abstractmethod
    def check(self, measure: Any, *, dim: int, n_train: int) -> None:
        """Raise ``ValueError`` when ``measure`` cannot start a run with these sizes."""

    @abstractmethod
    def draw(self, state: tuple, n: int, generator: torch.Generator) -> Draw:
        """``n`` training inputs of ``nu_theta``."""

    @abstractmethod
    def draw_at(self, state: tuple, x: torch.Tensor) -> Draw:
        """The :class:`Draw` of given inputs ``x`` (N, d) (for ``adjoint_gradient``)."""

    @abstractmethod
    def gradient(self, state: tuple, draw: Draw, q: AdjointQuantities) -> tuple:
        """Gradient of the seen loss in the state tensors (same shapes, working dtype)."""

    @abstractmethod
    def update(self, state: tuple, direction: tuple, lr: float,
               radius: float | None) -> Update:
        """New state ``state - lr * direction`` shortened to the trust ``radius`` (None: off)
        and projected back onto valid parameters."""

    @abstractmethod
    def measure(self, state: tuple) -> Any:
        """The measure of ``state`` (a new object)."""

    def describe(self, state: tuple) -> dict:
        """Fields of the step record that show the iterate (default: its mean)."""
        return {"mean": self.measure(state).mean.double().tolist()}


# ------------------------------------------------------------------------------ Gaussian
class GaussianFamily(TrainingFamily):
    """``N(m, L L^T)``, state ``(mean (d,), scale_tril (d, d))``.

    Score at ``x = m + L z`` in closed form: ``grad_m = L^{-T} z``,
    ``grad_L = tril(L^{-T} z z^T) - diag(1 / diag L)``, summed with the weights ``c`` first so
    one ``(d, d + 1)`` triangular solve does the whole contraction.
    """

    name = "gaussian"
    param_names = ("mean", "scale_tril")

    def __init__(self, *, dtype: torch.dtype, spread: float):
        super().__init__(dtype=dtype, spread=spread)
        self._lower: dict[int, torch.Tensor] = {}

    def lower(self, d: int) -> torch.Tensor:
        if d not in self._lower:
            self._lower[d] = torch.ones(d, d, dtype=self.dtype).tril()
        return self._lower[d]

    def initial_state(self, measure: Gaussian) -> tuple:
        return (measure.mean.detach().to(self.dtype).clone(),
                measure.scale_tril.detach().to(self.dtype).clone())

    def check(self, measure, *, dim: int, n_train: int) -> None:
        if measure.dim != dim:
            raise ValueError(f"init must be a Gaussian of dimension {dim}, got {measure!r}")

    def draw(self, state, n, generator) -> Draw:
        mean, tril = state
        z = torch.randn(n, mean.shape[0], generator=generator, dtype=self.dtype)
        return Draw(mean + z @ tril.T, z)

    def draw_at(self, state, x) -> Draw:
        mean, tril = state
        z = torch.linalg.solve_triangular(tril, (x - mean).T, upper=False).T
        return Draw(x, z)

    def gradient(self, state, draw, q) -> tuple:
        _, tril = state
        z, c = draw.latent, q.weights
        rhs = torch.cat([(z.T @ c)[:, None], z.T @ (c[:, None] * z)], dim=1)
        sol = torch.linalg.solve_triangular(tril.T, rhs, upper=True)
        grad_l = (sol[:, 1:] * self.lower(tril.shape[0])
                  - c.sum() * torch.diag(1.0 / torch.diagonal(tril)))
        return sol[:, 0], grad_l

    def update(self, state, direction, lr, radius) -> Update:
        mean, tril = state
        gm, gl = direction
        mean, tril, move, floored = _gaussian_step(mean, tril, gm, gl, lr,
                                                   self.lower(tril.shape[0]), radius)
        clipped = radius is not None and move >= radius * (1 - 1e-9)
        return Update((mean, tril), move, clipped, ("scale_floor",) if floored else ())

    def measure(self, state) -> Gaussian:
        return Gaussian(state[0], scale_tril=state[1])

    def describe(self, state) -> dict:
        return {"mean": state[0].double().tolist()}


def gaussian_update(mean, tril, gm, gl, lr_t, adam, lower, radius=None):
    """One Gaussian parameter update (new tensors), shortened to the trust ``radius`` (a bound
    on the W2 move), then the diagonal clamp of SPEC §2.

    Returns ``(mean, tril, move)`` with ``move = sqrt(||dm||^2 + ||dL||_F^2)`` as taken.
    """
    if adam is not None:
        gm, gl = adam.direction(gm, gl)
    return _gaussian_step(mean, tril, gm, gl, lr_t, lower, radius)[:3]


def _gaussian_step(mean, tril, gm, gl, lr_t, lower, radius):
    """:func:`gaussian_update` without Adam; also says whether the diagonal was clamped."""
    dm, dl = lr_t * gm, (lr_t * gl) * lower
    move = math.sqrt(float(dm @ dm) + float((dl * dl).sum()))
    if radius is not None and move > radius:
        dm, dl = dm * (radius / move), dl * (radius / move)
        move = radius
    mean = mean - dm
    tril = tril - dl
    diag = torch.diagonal(tril)
    floored = bool((diag <= 0).any())
    if floored:
        tril = tril.clone()
        torch.diagonal(tril).masked_fill_(diag <= 0, DIAG_CLAMP)
    if not (bool(torch.isfinite(mean).all()) and bool(torch.isfinite(tril).all())):
        raise ValueError("bilevel iterate became non-finite; lower lr")
    return mean, tril, move, floored


# ------------------------------------------------------------------------------ mixture
class GaussianMixtureFamily(TrainingFamily):
    """``sum_k softmax(logits)_k N(m_k, L_k L_k^T)``, state ``(logits (K,), means (K, d),
    scale_trils (K, d, d))``.

    Draws: :func:`~wheretolearn.measures.gaussian_mixture_sample` (one uniform per draw for the
    component, then ``x = m_k + L_k z``). Gradient: the closed-form mixture score through the
    responsibilities, :func:`~wheretolearn.measures.gaussian_mixture_score` (in float64; it
    costs O(K N d^2) beside the adjoint part's O(N M d)). Step control: module docstring.
    """

    name = "mixture"
    param_names = ("logits", "means", "scale_trils")

    def initial_state(self, measure: GaussianMixture) -> tuple:
        w = measure.weights.detach().double()
        return (torch.log(w / w.sum()).to(self.dtype),
                measure.means.detach().to(self.dtype).clone(),
                measure.scale_trils.detach().to(self.dtype).clone())

    def check(self, measure, *, dim: int, n_train: int) -> None:
        if measure.dim != dim:
            raise ValueError(f"init must be a GaussianMixture of dimension {dim}, got {measure!r}")
        if measure.n_components > n_train:
            raise ValueError(f"init has {measure.n_components} components but n_train is "
                             f"{n_train}: each step would leave components without a draw; use "
                             f"at most n_train components")
        w = measure.weights.detach()
        if bool((w <= 0).any()):
            raise ValueError(f"init has a component of weight {float(w.min()):.3g}: every "
                             f"component of a mixture to optimise needs a positive weight")

    def draw(self, state, n, generator) -> Draw:
        logits, means, trils = state
        w = torch.softmax(logits.double(), 0)
        x, labels, z = gaussian_mixture_sample(w, means, trils, n, generator=generator)
        return Draw(x, (labels, z))

    def draw_at(self, state, x) -> Draw:
        return Draw(x, None)

    def gradient(self, state, draw, q) -> tuple:
        logits, means, trils = state
        labels, z = draw.latent if draw.latent is not None else (None, None)
        grads = gaussian_mixture_score(draw.x.double(), q.weights.double(), logits.double(),
                                       means.double(), trils.double(), labels=labels, latent=z)
        return tuple(g.to(self.dtype) for g in grads)

    def update(self, state, direction, lr, radius) -> Update:
        logits, means, trils = state
        ga, gm, gl = direction
        d = means.shape[1]
        lower = torch.ones(d, d, dtype=self.dtype).tril()
        da = lr * ga
        da = da - da.mean()           # softmax is shift invariant: keep the logits centred
        dm, dl = lr * gm, (lr * gl) * lower
        w = torch.softmax(logits.double(), 0)
        move = math.sqrt(float(w @ ((dm.double() ** 2).sum(1) + (dl.double() ** 2).sum((1, 2)))))
        clipped = False
        if radius is not None:
            if move > radius:
                dm, dl = dm * (radius / move), dl * (radius / move)
                move, clipped = radius, True
            cap = _LOGIT_PER_RADIUS * radius / self.spread if self.spread > 0 else math.inf
            top = float(da.abs().max())
            if top > cap:
                da = da * (cap / top)
                clipped = True
        logits, means, trils = logits - da, means - dm, trils - dl
        floors = []
        diag = torch.diagonal(trils, dim1=1, dim2=2)
        if bool((diag <= 0).any()):
            trils = trils.clone()
            torch.diagonal(trils, dim1=1, dim2=2).masked_fill_(diag <= 0, DIAG_CLAMP)
            floors.append("scale_floor")
        low = float(logits.max()) + math.log(WEIGHT_FLOOR)
        if bool((logits < low).any()):
            logits = logits.clamp(min=low)
            floors.append("weight_floor")
        if not all(bool(torch.isfinite(t).all()) for t in (logits, means, trils)):
            raise ValueError("bilevel iterate became non-finite; lower lr")
        return Update((logits, means, trils), move, clipped, tuple(floors))

    def measure(self, state) -> GaussianMixture:
        logits, means, trils = state
        return GaussianMixture(torch.softmax(logits.double(), 0).to(self.dtype), means,
                               scale_tril=trils)

    def describe(self, state) -> dict:
        logits, means, _ = state
        w = torch.softmax(logits.double(), 0)
        return {"mean": (w @ means.double()).tolist(), "weights": w.tolist()}


def mixture_start(seen_x: torch.Tensor, components: int, *, method: str = "auto",
                  start: Gaussian | None = None,
                  generator: int | torch.Generator | None = None,
                  dtype: torch.dtype | None = None) -> GaussianMixture:
    """Initial ``K``-component mixture for the bilevel descent, from the meta-test family.

    Parameters
    ----------
    seen_x : (J, L, d) tensor
        Seen meta-test samples (the only meta-test information the descent uses).
    components : int
        ``K >= 1``.
    method : "auto" | "metatest" | "kmeans" | "split"
        ``metatest``: the ``Q_j`` themselves (Gaussians fitted to each ``seen_x[j]``, equal
        weights; needs ``K = J``) -- the "mixture" baseline as a start; ``kmeans``:
        :func:`~wheretolearn.measures.kmeans_mixture` of the pooled seen samples; ``split``:
        ``start`` split into ``K`` components ``N(m + L u_k / 2, (3/4) C)``, ``u_k ~ N(0, I)``
        (whose mixture has covariance ``C`` on average over ``u``; ``K = 1`` is ``start``
        itself); ``auto``: ``metatest`` when ``K = J``, else ``kmeans``.
    start : Gaussian, optional
        Required for ``split``.
    generator : seed, torch.Generator or None
        k-means seeding / the split offsets.
    dtype : dtype of the result (default: that of ``seen_x``).

    Returns
    -------
    GaussianMixture
    """
    k = check_positive_int(components, "components")
    x = torch.as_tensor(seen_x).detach()
    if x.ndim != 3:
        raise ValueError(f"seen_x must have shape (J, L, d), got {tuple(x.shape)}")
    n_q, n_l, d = x.shape
    dt = dtype or x.dtype
    if method not in MIXTURE_INITS:
        raise ValueError(f"method must be one of {', '.join(MIXTURE_INITS)}, got {method!r}")
    if method == "auto":
        method = "metatest" if k == n_q else "kmeans"
    if method == "metatest":
        if k != n_q:
            raise ValueError(f"mixture init 'metatest' starts from the {n_q} meta-test measures "
                             f"and needs components = {n_q}, got {k}")
        gs = empirical_gaussians(x, dtype=torch.float64)
        return GaussianMixture(torch.full((k,), 1.0 / k, dtype=torch.float64),
                               torch.stack([g.mean for g in gs]),
                               scale_tril=torch.stack([g.scale_tril for g in gs])).to(dtype=dt)
    if method == "kmeans":
        if k > n_q * n_l:
            raise ValueError(f"components must be at most the {n_q * n_l} pooled seen samples "
                             f"for k-means, got {k}")
        return kmeans_mixture(x.reshape(-1, d), k, generator=generator, dtype=dt)
    if start is None:
        raise ValueError("mixture init 'split' needs the start Gaussian, got None")
    mean, tril = start.mean.detach().double(), start.scale_tril.detach().double()
    if k == 1:
        return GaussianMixture(torch.ones(1, dtype=torch.float64), mean[None],
                               scale_tril=tril[None]).to(dtype=dt)
    u = torch.randn(k, d, generator=torch_generator(generator), dtype=torch.float64)
    means = mean + 0.5 * u @ tril.T
    trils = math.sqrt(0.75) * tril.expand(k, d, d)
    return GaussianMixture(torch.full((k,), 1.0 / k, dtype=torch.float64), means,
                           scale_tril=trils).to(dtype=dt)


# ------------------------------------------------------------------------------ particles
class ParticleFamily(TrainingFamily):
    """``(1/M) sum_i delta_{x_i}`` with a Gaussian-KDE smoothing for ``N > M`` draws; state
    ``(points (M, d),)``. See the module docstring (draws, gradient, trust region)."""

    name = "particles"
    param_names = ("points",)
    needs_inputs = True

    def initial_state(self, measure) -> tuple:
        return (measure.points.detach().to(self.dtype).clone(),)

    def check(self, measure, *, dim: int, n_train: int) -> None:
        pts = measure.points
        if pts.ndim != 2 or pts.shape[1] != dim:
            raise ValueError(f"init must hold particles of dimension {dim}, got points of shape "
                             f"{tuple(pts.shape)}")
        if pts.shape[0] > n_train:
            raise ValueError(f"init has {pts.shape[0]} particles but n_train is {n_train}: "
                             f"every step trains on all particles, so use at most n_train "
                             f"particles")
        w = measure.weights.detach()
        if not bool(torch.allclose(w, torch.full_like(w, 1.0 / w.shape[0]))):
            raise ValueError("init must be equally weighted particles (the particle family "
                             "moves positions, not weights)")

    def draw(self, state, n, generator) -> Draw:
        (pts,) = state
        m = pts.shape[0]
        if n == m:
            return Draw(pts, None)
        idx = torch.randint(m, (n - m,), generator=generator)
        z = torch.randn(n - m, pts.shape[1], generator=generator, dtype=self.dtype)
        h = silverman_bandwidth(pts)
        return Draw(torch.cat([pts, pts[idx] + z * h]), idx)

    def draw_at(self, state, x) -> Draw:
        (pts,) = state
        if x.shape != pts.shape:
            raise ValueError(f"the particle family's gradient is taken at the particles "
                             f"themselves: x must have shape {tuple(pts.shape)}, got "
                             f"{tuple(x.shape)}")
        return Draw(x, None)

    def gradient(self, state, draw, q) -> tuple:
        (pts,) = state
        m = pts.shape[0]
        g = q.input_grad
        if g is None:
            raise ValueError("the particle family needs AdjointQuantities.input_grad")
        grad = g[:m].clone()
        if draw.latent is not None:
            grad.index_add_(0, draw.latent, g[m:])
        return ((m * grad).to(self.dtype),)

    def update(self, state, direction, lr, radius) -> Update:
        (pts,) = state
        (g,) = direction
        dx = lr * g
        clipped = False
        if radius is not None:
            norms = dx.double().norm(dim=1)
            cap = PARTICLE_MAX_MOVE * radius
            over = norms > cap
            if bool(over.any()):
                dx = dx * torch.where(over, cap / norms, torch.ones_like(norms)).to(dx.dtype)[:, None]
                clipped = True
        move = math.sqrt(float((dx.double() ** 2).sum(1).mean()))
        if radius is not None and move > radius:
            dx = dx * (radius / move)
            move, clipped = radius, True
        pts = pts - dx
        if not bool(torch.isfinite(pts).all()):
            raise ValueError("bilevel iterate became non-finite; lower lr")
        return Update((pts,), move, clipped, ())

    def measure(self, state) -> ParticleMeasure:
        return ParticleMeasure(state[0])

    def describe(self, state) -> dict:
        return {"mean": state[0].double().mean(0).tolist()}


def particle_start(seen_x: torch.Tensor, particles: int, *, method: str = "metatest",
                   start: Gaussian | None = None,
                   generator: int | torch.Generator | None = None,
                   dtype: torch.dtype | None = None) -> ParticleMeasure:
    """Initial ``M`` particles for the bilevel descent.

    Parameters
    ----------
    seen_x : (J, L, d) tensor
        Seen meta-test samples.
    particles : int
        ``M >= 1``.
    method : "metatest" | "start"
        ``metatest``: ``M`` of the pooled seen samples, uniformly without replacement (needs
        ``M <= J L``); ``start``: ``M`` draws of the Gaussian ``start``.
    start : Gaussian, optional
        Required for ``start``.
    generator : seed, torch.Generator or None
    dtype : dtype of the result (default: that of ``seen_x``).
    """
    m = check_positive_int(particles, "particles")
    x = torch.as_tensor(seen_x).detach()
    if x.ndim != 3:
        raise ValueError(f"seen_x must have shape (J, L, d), got {tuple(x.shape)}")
    dt = dtype or x.dtype
    if method not in PARTICLE_INITS:
        raise ValueError(f"method must be one of {', '.join(PARTICLE_INITS)}, got {method!r}")
    g = torch_generator(generator)
    if method == "metatest":
        pool = x.reshape(-1, x.shape[-1])
        if m > pool.shape[0]:
            raise ValueError(f"particles must be at most the {pool.shape[0]} pooled seen samples "
                             f"that particle init 'metatest' subsamples, got {m}")
        idx = torch.randperm(pool.shape[0], generator=g)[:m]
        return ParticleMeasure(pool[idx].to(dt))
    if start is None:
        raise ValueError("particle init 'start' needs the start Gaussian, got None")
    return ParticleMeasure(start.sample(m, generator=g).detach().to(dt))


# ------------------------------------------------------------------------------ Adam
class Adam:
    """Adam moments for a tuple of parameter tensors (Kingma & Ba), bias-corrected."""

    def __init__(self, *params: torch.Tensor):
        self.t = 0
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    def direction(self, *grads: torch.Tensor) -> tuple:
        b1, b2 = _ADAM_BETAS
        self.t += 1
        out = []
        for i, g in enumerate(grads):
            self.m[i] = b1 * self.m[i] + (1 - b1) * g
            self.v[i] = b2 * self.v[i] + (1 - b2) * g * g
            mhat = self.m[i] / (1 - b1 ** self.t)
            vhat = self.v[i] / (1 - b2 ** self.t)
            out.append(mhat / (vhat.sqrt() + _ADAM_EPS))
        return tuple(out)

    def reset(self) -> None:
        """Forget the moments (after a rejected step they point the wrong way)."""
        self.__init__(*self.m)


# ------------------------------------------------------------------------------ registry
_FAMILIES: dict[type, type[TrainingFamily]] = {Gaussian: GaussianFamily,
                                               GaussianMixture: GaussianMixtureFamily,
                                               ParticleMeasure: ParticleFamily,
                                               Empirical: ParticleFamily}


def register_family(measure_type: type, family: type[TrainingFamily]) -> None:
    """Let :func:`bilevel_descent` move measures of ``measure_type`` with ``family``."""
    if not (isinstance(family, type) and issubclass(family, TrainingFamily)):
        raise TypeError(f"family must be a TrainingFamily subclass, got {family!r}")
    _FAMILIES[measure_type] = family


def available_families() -> dict[str, str]:
    """``{family name: measure type name}`` of every registered family."""
    return {fam.name: typ.__name__ for typ, fam in _FAMILIES.items()}


def family_for(measure: Any) -> type[TrainingFamily]:
    """The family class that moves ``measure`` (by exact type, then by subclass)."""
    fam = _FAMILIES.get(type(measure))
    if fam is None:
        fam = next((f for t, f in _FAMILIES.items() if isinstance(measure, t)), None)
    if fam is None:
        names = ", ".join(t.__name__ for t in _FAMILIES)
        raise ValueError(f"init must be one of {names} (the families bilevel_descent can "
                         f"move), got {type(measure).__name__}")
    return fam
