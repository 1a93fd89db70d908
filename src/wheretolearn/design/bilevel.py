"""Bilevel gradient descent for a parametrised training distribution (paper §4.1, Alg. 1/3,
SM D.2 Lemmas D.4-D.5 and eq. D.11; SPEC §3): a Gaussian (the paper's family) or a Gaussian
mixture (issue 25), see :mod:`~wheretolearn.design.bilevel_families`.

Objective (the seen-sample OOD loss of kernel ridge regression trained on ``nu_theta``)::

    J(theta) = (1 / 2J) sum_j mean_l (y_jl - f_theta(v_jl))^2 ,   theta = (m, L), C = L L^T

where ``f_theta`` is KRR (Gaussian kernel, ridge ``eps``) fitted on ``x_i ~ nu_theta``,
``y_i = G*(x_i)``. Per step ``t`` (cosine-annealed ``lr_t`` and ``eps_t``,
:class:`BilevelSchedule`):

1. ``x_i = m + L z_i``, ``z_i ~ N(0, I)``, ``y_i = G*(x_i)``, ``i = 1..N``;
2. ``a = (K + N eps I)^{-1} y`` (one Cholesky factorisation);
3. ``r_i = (1/J) sum_j mean_l k(x_i, v_jl) (y_jl - f(v_jl))`` over the *seen* samples;
4. ``p = (K + N eps I)^{-1} (N r)`` reusing the factor;
5. ``g = mean_i (f(x_i) - y_i) p_i grad_theta log p(x_i; theta)``; ``theta -= lr_t g``;
   non-positive diagonal entries of ``L`` are replaced by ``1e-7``.

Which estimator this is (checked in ``tests/design/test_bilevel.py``):

* ``g`` estimates the gradient of the *population* objective (``N -> infinity`` inner
  problem) by the envelope theorem: the first variation of ``J`` in ``nu`` is
  ``(f - G*) p`` (paper Prop. 4.3), and ``dJ/dtheta = E_nu[(f - G*) p grad log p_theta]``
  (Thm. 4.5). This is the score-function (likelihood-ratio) form; a reparametrisation
  ("pathwise") term must **not** be added -- it is an alternative estimator of the same
  derivative (and would need ``grad G*``), not a second contribution.
* For one fixed draw, ``g`` is *exactly* the gradient at ``theta' = theta`` of the seen loss of
  the importance-weighted KRR fit ``min_f sum_i w_i (f(x_i) - y_i)^2 / 2 + eps ||f||^2 / 2``
  with ``w_i(theta') = p_theta'(x_i) / (N p_theta(x_i))`` and the draws ``x_i`` held fixed:
  ``dJ/dw_i = (f(x_i) - y_i) p_i`` (discrete adjoint) and ``dw_i/dtheta' = score_i / N``.
  The tests compare with autograd through the unrolled weighted solve and with finite
  differences, in float64.

A step is the family-independent KRR / adjoint part (steps 2-4, giving the per-sample weights
``c_i = (f(x_i) - y_i) p_i / N``) followed by the family's contraction ``sum_i c_i grad_theta
log p_theta(x_i)``. The score of ``N(m, L L^T)`` at ``x = m + L z`` is closed form:
``grad_m = L^{-T} z`` and ``grad_L = tril(L^{-T} z z^T) - diag(1 / diag L)``; that of a
mixture goes through the responsibilities (:func:`~wheretolearn.measures.gaussian_mixture_score`).

Step control (not in the paper; added because one bad step wrecked runs outside the paper's
four configurations, issue 15; the fields ``max_move``, ``backtrack``, ``jump`` of
:class:`StepControl`):

* **Trust region on the W2 move.** For ``x = m + L z`` and ``x' = m' + L' z`` (the same ``z``)
  the synchronous coupling gives ``W2(nu, nu')^2 <= ||m - m'||^2 + ||L - L'||_F^2``. Each
  update is scaled down so that this bound is at most ``max_move * R``, where ``R`` is the RMS
  spread of the pooled seen meta-test samples (``sqrt(tr Cov)``): no single step can carry
  ``nu`` further than a fraction of the region the meta-test family covers. The bound costs
  nothing (no matrix square roots) and is exact for the mean part. It is a trust region, not
  a normalisation: steps below the radius are the paper's steps unchanged. A step cut to the
  radius after which the seen error *rose* is undone and the radius halved; one after which
  it fell doubles it again, up to ``max_move * R`` (the acceptance test of a trust-region
  method, on the one noisy objective value each step provides).
* **Backtracking on the seen error.** A step whose iterate *collapsed* -- its KRR fit predicts
  (almost) nothing on the seen samples (``||f(V)|| < 1e-3 ||y_V||``: the kernel vanished
  between ``nu`` and the Q_j), non-finite labels or gradient, or a seen error that jumped above
  both the start's and ``jump`` times the previous accepted one -- is rejected: ``nu`` returns
  to the previous iterate and the learning rate is halved for the rest of the run. Every
  rejection is recorded (``rejected`` in the step record, ``collapse`` in the result).

Implementation notes (speed): the Cholesky factor is computed once per step (float64 by
default) and reused for the adjoint; the seen kernel block ``k(V, X)`` is built once and used
for both ``f(V) = k(V, X) a`` and ``k(V, X)^T (y - f)``; the unseen error uses chunked
matrix-vector products and never forms ``k(V_unseen, X)`` in full; ``f(x_i) - y_i`` is
``-N eps a_i`` exactly, so ``K a`` is never formed.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .._threads import torch_threads
from .._validation import (check_positive_float, check_positive_int, check_type, resolve_dtype,
                           set_frozen, torch_generator)
from ..measures.gaussian import Gaussian
from ..models.krr import (augment_left, augment_right, check_kernel, kernel_from_augmented,
                          laplace_kernel)
from .bilevel_families import Adam as _Adam
from .bilevel_families import AdjointQuantities, Draw, TrainingFamily, family_for
from .metatest import MetaTest

__all__ = ["BilevelResult", "AdjointGradient", "BilevelSchedule", "KRRSettings", "StepControl",
           "bilevel_descent", "adjoint_gradient", "cosine_schedule"]

_OPTIMIZERS = ("sgd", "adam")
_EVAL_CHUNK = 1024
#: ``||f(V)|| / ||y_V||`` below this on the seen samples: the fit predicts nothing there.
_VANISHING = 1e-3
#: The trust radius never shrinks below this fraction of ``max_move * R``.
_MIN_RADIUS_FACTOR = 1.0 / 1024


@dataclass(frozen=True)
class BilevelSchedule:
    """What each step of :func:`bilevel_descent` does, step by step: sizes, the cosine-annealed
    learning rate and ridge (paper SM F.1), and how often the unseen error is logged.

    Attributes
    ----------
    steps : int
        Number of steps ``T`` (paper: 1000).
    n_train : int
        ``N``, training samples per step (paper: 250).
    lr, lr_end : float
        Learning rate ``lr_t``, cosine-annealed from ``lr`` (> 0) at step 0 to ``lr_end``
        (>= 0) at the last step.
    ridge_start, ridge_end : float
        Ridge ``eps_t`` of the system ``K + N eps_t I``, cosine-annealed likewise (paper:
        1e-3 -> 1e-7).
    eval_unseen : bool or int
        Evaluate the unseen error every step (``True``), never (``False``: records carry NaN),
        or every ``k``-th step and at the last one (an int ``k``; the unseen evaluation is
        most of a step's cost and is only logged, never used for choosing).
    """

    steps: int = 1000
    n_train: int = 250
    lr: float = 1e-2
    lr_end: float = 0.0
    ridge_start: float = 1e-3
    ridge_end: float = 1e-7
    eval_unseen: bool | int = True

    def __post_init__(self):
        set_frozen(
            self, steps=check_positive_int(self.steps, "BilevelSchedule.steps"),
            n_train=check_positive_int(self.n_train, "BilevelSchedule.n_train"),
            lr=check_positive_float(self.lr, "BilevelSchedule.lr"),
            lr_end=check_positive_float(self.lr_end, "BilevelSchedule.lr_end", allow_zero=True),
            ridge_start=check_positive_float(self.ridge_start, "BilevelSchedule.ridge_start"),
            ridge_end=check_positive_float(self.ridge_end, "BilevelSchedule.ridge_end"))
        if not isinstance(self.eval_unseen, bool):
            check_positive_int(self.eval_unseen, "BilevelSchedule.eval_unseen (True, False or "
                                                 "a step interval)")

    @property
    def unseen_every(self) -> int:
        """``eval_unseen`` as a step interval: ``True`` -> 1, ``False`` -> 0 (never)."""
        return int(self.eval_unseen)

    def at(self, step: int) -> tuple[float, float]:
        """``(lr_t, eps_t)`` of step ``step`` (:func:`cosine_schedule`)."""
        return (cosine_schedule(self.lr, self.lr_end, step, self.steps),
                cosine_schedule(self.ridge_start, self.ridge_end, step, self.steps))


@dataclass(frozen=True)
class KRRSettings:
    """The inner kernel ridge regression of the bilevel objective and its arithmetic.

    Attributes
    ----------
    bandwidth : float
        Kernel length scale ``s`` (paper: 1, 3, 2/1.1, 5 per problem).
    kernel : "gaussian" | "laplace"
        ``exp(-|x - x'|^2 / (2 s^2))`` (paper default) or ``exp(-|x - x'| / s)``.
    normalize_labels : bool
        Divide the objective by the mean square of the seen labels (gradient of half the
        squared relative seen error): makes ``lr`` independent of the label scale.
    dtype : "float32" | "float64" | torch dtype | None
        Working dtype; None: the meta-test's (:func:`bilevel_descent`) or the measure's
        (:func:`adjoint_gradient`) dtype (float32 in the paper setting).
    factor_dtype : "float32" | "float64" | torch dtype
        Dtype of the Cholesky factorisation of ``K + N eps I`` and its solves.
    num_threads : int or None
        torch intra-op threads for the computation (restored afterwards). None: the package's
        thread policy (:func:`wheretolearn._threads.default_num_threads`), which gives the
        small per-step kernels one thread -- on a shared machine two OpenMP threads
        busy-wait on each other when a core is taken (6x slower beside one busy process).
    """

    bandwidth: float = 1.0
    kernel: str = "gaussian"
    normalize_labels: bool = False
    dtype: Any = None
    factor_dtype: Any = "float64"
    num_threads: int | None = None

    def __post_init__(self):
        set_frozen(self, bandwidth=check_positive_float(self.bandwidth, "KRRSettings.bandwidth"))
        try:
            check_kernel(self.kernel)
        except ValueError as exc:
            raise ValueError(f"KRRSettings.{exc}") from None
        for name in ("dtype", "factor_dtype"):
            value = getattr(self, name)
            if value is not None or name == "factor_dtype":
                try:
                    resolve_dtype(value)
                except ValueError:
                    raise ValueError(f"KRRSettings.{name} must be 'float32', 'float64' or a "
                                     f"torch floating dtype, got {value!r}") from None
        if not isinstance(self.normalize_labels, bool):
            raise TypeError(f"KRRSettings.normalize_labels must be True or False, got "
                            f"{self.normalize_labels!r}")
        if self.num_threads is not None:
            check_positive_int(self.num_threads, "KRRSettings.num_threads")

    def working_dtype(self, default: torch.dtype) -> torch.dtype:
        """``dtype`` as a torch dtype, ``default`` when it is None."""
        return default if self.dtype is None else resolve_dtype(self.dtype)


@dataclass(frozen=True)
class StepControl:
    """How an update is taken and when it is undone (module docstring, "Step control").

    Attributes
    ----------
    optimizer : "sgd" | "adam"
        ``theta -= lr_t g`` (paper) or Adam (betas 0.9 / 0.999) with step ``lr_t``, which
        takes per-parameter steps (useful when label scales are large, e.g. Friedman 2).
    max_move : float or None
        Trust radius: an update may move ``nu`` by at most ``max_move * R`` in W2 (bounded by
        the synchronous coupling), ``R`` the RMS spread of the seen meta-test samples.
        ``None`` turns the trust region off (the paper's plain step).
    backtrack : bool
        Reject collapsed iterates (vanishing kernel, non-finite values, error jump) and halve
        the learning rate; with ``False`` a collapse is only recorded.
    jump : float
        A seen error above ``jump`` (> 1) times the previous accepted one *and* above the
        start's counts as a collapse.
    """

    optimizer: str = "sgd"
    max_move: float | None = 0.25
    backtrack: bool = True
    jump: float = 1.5

    def __post_init__(self):
        if self.optimizer not in _OPTIMIZERS:
            raise ValueError(f"StepControl.optimizer must be one of {', '.join(_OPTIMIZERS)}, "
                             f"got {self.optimizer!r}")
        if self.max_move is not None:
            set_frozen(self, max_move=check_positive_float(self.max_move, "StepControl.max_move"))
        if not isinstance(self.backtrack, bool):
            raise TypeError(f"StepControl.backtrack must be True or False, got {self.backtrack!r}")
        set_frozen(self, jump=check_positive_float(self.jump, "StepControl.jump"))
        if self.jump <= 1.0:
            raise ValueError(f"StepControl.jump must be > 1, got {self.jump:g}")


@dataclass
class BilevelResult:
    """Outcome of :func:`bilevel_descent`.

    Attributes
    ----------
    initial, final : Gaussian or GaussianMixture
        Training distribution before the first and after the last update (the family of
        ``init``).
    best : Gaussian or GaussianMixture
        The iterate whose KRR fit had the lowest *seen* meta-test error (the unseen split is
        never used for choosing).
    history : list of dict
        One record per step: ``step``, ``lr``, ``ridge``, ``seen_error``, ``unseen_error``
        (NaN when not evaluated), ``grad_norm``, ``pred_ratio`` (``||f(V)|| / ||y_V||`` on the
        seen samples: near 0 when the kernel vanished), ``move`` (W2 bound of the update
        taken), ``rejected`` (the iterate collapsed or overshot and was undone), ``seconds``
        (wall time of the step, without the callback), ``grad_seconds`` (gradient part only)
        and ``mean`` (the iterate's mean, before the update; a mixture adds ``weights``).
    seconds_per_step, grad_seconds_per_step : float
        Mean wall time per step, with and without the unseen-error evaluation.
    best_step : int
        Step index of ``best``.
    options : dict
        The settings used (JSON-serialisable).
    collapse : dict
        ``{"events", "first_step", "reasons", "lr_factor", "clipped_steps",
        "radius_shrinks", "radius_factor", "collapsed", "floors"}``:
        how many iterates collapsed (rejected when ``backtrack``; the first index and the
        reasons: ``"vanishing_kernel"``, ``"error_jump"``, ``"non_finite"``), the final
        learning-rate factor, how many updates the trust region shortened and how often it
        shrank (overshoots, undone), whether the final iterate is a collapsed one
        (possible only without ``backtrack``), and ``floors``: how many updates hit each floor
        of the family (mixture: ``scale_floor``, ``weight_floor``; see
        :mod:`~wheretolearn.design.bilevel_families`) and the first step that did.
    """

    initial: Any
    final: Any
    best: Any
    history: list[dict]
    seconds_per_step: float
    grad_seconds_per_step: float
    best_step: int = 0
    options: dict = field(default_factory=dict)
    collapse: dict = field(default_factory=dict)


@dataclass
class AdjointGradient:
    """One adjoint gradient evaluation (see :func:`adjoint_gradient`).

    Attributes
    ----------
    grad_mean : (d,) tensor or None
        Gaussian family only (None for a mixture).
    grad_scale_tril : (d, d) tensor, lower triangular, or None
        Gaussian family only.
    seen_error : float
        Relative root OOD error of the KRR fit on the seen split.
    coef : (N,) tensor
        KRR coefficients ``a``.
    adjoint : (N,) tensor
        Adjoint state ``p`` at the training points.
    grads : dict of str -> tensor
        The gradient in every parameter of the family, by name (Gaussian: ``mean``,
        ``scale_tril``; mixture: ``logits``, ``means``, ``scale_trils``).
    """

    grad_mean: torch.Tensor | None
    grad_scale_tril: torch.Tensor | None
    seen_error: float
    coef: torch.Tensor
    adjoint: torch.Tensor
    grads: dict = field(default_factory=dict)


def cosine_schedule(start: float, end: float, step: int, steps: int) -> float:
    """``end + (start - end) (1 + cos(pi t / (T - 1))) / 2``: ``start`` at step 0, ``end`` at
    the last step ``T - 1`` (cosine annealing, paper SM F.1)."""
    if steps <= 1:
        return float(start)
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * step / (steps - 1)))


class _FactorError(ValueError):
    """``K + N eps I`` could not be factored (non-finite kernel entries: ``nu`` ran away)."""


class _Workspace:
    """Quantities fixed for a whole run: augmented meta-test points, labels, norms."""

    def __init__(self, metatest: MetaTest, krr: KRRSettings, *, dtype: torch.dtype,
                 label_scale: float, eval_unseen: bool):
        d = metatest.dim
        bandwidth = self.bandwidth = krr.bandwidth
        self.kernel = krr.kernel
        self.dtype = dtype
        self.factor_dtype = resolve_dtype(krr.factor_dtype)
        seen_x = metatest.seen_x.detach().to(dtype).reshape(-1, d)
        self.seen_x = seen_x
        self.seen_left = augment_left(seen_x, bandwidth)
        self.seen_y = metatest.seen_y.detach().to(dtype).reshape(-1)
        # equal sample counts per measure: (1/J) sum_j mean_l == mean over all seen rows
        self.n_seen = self.seen_y.shape[0]
        self.seen_den = float((self.seen_y.double() ** 2).sum())
        # RMS spread of the pooled seen samples: the length unit of the trust region
        centred = seen_x.double() - seen_x.double().mean(0)
        self.spread = math.sqrt(float((centred * centred).sum(1).mean()))
        self.inv_label_scale2 = 1.0 / (label_scale * label_scale)
        self.unseen_left = None
        if eval_unseen and metatest.unseen_x.shape[1] > 0:
            unseen_x = metatest.unseen_x.detach().to(dtype).reshape(-1, d)
            self.unseen_left = augment_left(unseen_x, bandwidth)
            self.unseen_y = metatest.unseen_y.detach().to(dtype).reshape(-1)
            self.unseen_den = float((self.unseen_y.double() ** 2).sum())
        self._buffers: dict[tuple[str, int], torch.Tensor] = {}

    def buffer(self, name: str, rows: int, n: int) -> torch.Tensor:
        """A reusable (rows, n) work array: re-allocating ~5 MB every step costs page faults."""
        key = (name, n)
        buf = self._buffers.get(key)
        if buf is None or buf.shape[0] < rows:
            buf = self._buffers[key] = torch.empty(rows, n, dtype=self.dtype)
        return buf[:rows]


def _adjoint_step(ws: _Workspace, x: torch.Tensor, y: torch.Tensor, ridge: float,
                  extras: dict | None = None):
    """Steps 2-4 for one draw, the part every family shares. Returns ``(c, seen_error, coef,
    adjoint, right, pred_ratio)``: ``c_i = (f(x_i) - y_i) p_i / N`` (divided by the label scale
    squared; working dtype) and ``pred_ratio = ||f(V)|| / ||y_V||`` on the seen samples.

    ``x`` (N, d) training inputs, ``y`` (N,) labels; all in the working dtype, no autograd.
    ``extras``: a dict to receive ``kxx`` (``K + N eps I``), ``resid`` (``y_V - f(V)``),
    ``r`` (``k(V, X)^T resid``) and ``k_seen`` for :func:`_input_gradient`.
    """
    n = x.shape[0]
    fdt = ws.factor_dtype
    xf = x.to(fdt)
    # K + N eps I in the factor dtype (float64: the norm expansion loses nothing there)
    if ws.kernel == "laplace":   # explicit differences: sqrt amplifies the cancellation of
        kxx = laplace_kernel(xf, xf, ws.bandwidth)          # the expansion near the diagonal
    else:
        kxx = kernel_from_augmented(augment_left(xf, ws.bandwidth),
                                    augment_right(xf, ws.bandwidth))
    kxx.diagonal().add_(n * ridge)
    chol, info = torch.linalg.cholesky_ex(kxx)
    if int(info) != 0:
        raise _FactorError(f"Cholesky factorisation of K + N*ridge*I failed in {fdt} at "
                         f"ridge={ridge:g}; use factor_dtype='float64' or a larger ridge_end")
    coef = torch.cholesky_solve(y.to(fdt)[:, None], chol)[:, 0]
    right = augment_right(x, ws.bandwidth)
    k_seen = kernel_from_augmented(ws.seen_left, right, kernel=ws.kernel)
    resid = torch.addmv(ws.seen_y, k_seen, coef.to(ws.dtype), alpha=-1.0)   # y - f(V)
    seen_error = math.sqrt(float(resid.double() @ resid.double()) / ws.seen_den)
    pred = ws.seen_y.double() - resid.double()
    pred_ratio = math.sqrt(float(pred @ pred) / ws.seen_den) if ws.seen_den > 0 else 1.0
    r = torch.mv(k_seen.T, resid)                                             # (N,) adjoint rhs
    adjoint = torch.cholesky_solve((r.to(fdt) * (n / ws.n_seen))[:, None], chol)[:, 0]
    # f(x_i) - y_i = -N eps a_i exactly, so c_i = (f_i - y_i) p_i / N = -eps a_i p_i
    c = (coef * adjoint).mul_(-ridge * ws.inv_label_scale2).to(ws.dtype)
    if extras is not None:
        extras.update(kxx=kxx, resid=resid, r=r, k_seen=k_seen)
    return c, seen_error, coef, adjoint, right, pred_ratio


def _input_gradient(ws: _Workspace, x: torch.Tensor, coef: torch.Tensor, adjoint: torch.Tensor,
                    ridge: float, extras: dict, label_grad: torch.Tensor | None) -> torch.Tensor:
    """``dJ/dx_i`` (N, d), factor dtype: the seen loss ``J = (1 / 2 n_V) sum_l (y_l -
    f(v_l))^2`` (over the label scale squared) differentiated in the training inputs through
    the KRR solve ``a = A^{-1} y(X)``, ``A = K(X, X) + N eps I`` (Gaussian kernel).

    With ``q = A^{-1} k(V, X)^T (y_V - f(V)) / n_V`` (the code's adjoint ``p`` is ``N q``),
    ``dJ = -(1/n_V) resid^T dK_VX a - q^T dy + q^T dK a``, and ``grad_x k(x, u) = k (u - x) /
    s^2`` gives, for every ``i``::

        dJ/dx_i = -(a_i / (n_V s^2)) sum_l resid_l k(v_l, x_i) (v_l - x_i)       # k(V, X)
                  + (1 / s^2) sum_k (q_i a_k + q_k a_i) K_ik (x_k - x_i)         # K(X, X)
                  - q_i grad G*(x_i)                                             # labels

    (the last term only when ``label_grad`` is given). Cost: one (n_V, N) x (n_V, d) product
    and one (N, N) x (N, 2 d + 2) product beside the adjoint step's.
    """
    fdt = ws.factor_dtype
    n = x.shape[0]
    s2 = ws.bandwidth ** 2
    xf = x.to(fdt)
    a = coef.to(fdt)
    q = adjoint.to(fdt) / n
    resid, r = extras["resid"], extras["r"]
    # k(V, X) term: sum_l resid_l k_li v_l - (sum_l resid_l k_li) x_i
    kv = (extras["k_seen"].T @ (resid[:, None] * ws.seen_x)).to(fdt)
    g = -(a / (ws.n_seen * s2))[:, None] * (kv - r.to(fdt)[:, None] * xf)
    # K(X, X) term, with K = A - N eps I
    rhs = torch.cat([a[:, None] * xf, q[:, None] * xf, a[:, None], q[:, None]], dim=1)
    kr = extras["kxx"] @ rhs - (n * ridge) * rhs
    d = x.shape[1]
    k_ax, k_qx, k_a, k_q = kr[:, :d], kr[:, d:2 * d], kr[:, 2 * d], kr[:, 2 * d + 1]
    g += (q[:, None] * (k_ax - k_a[:, None] * xf) + a[:, None] * (k_qx - k_q[:, None] * xf)) / s2
    if label_grad is not None:
        g -= q[:, None] * label_grad.to(fdt)
    return g * ws.inv_label_scale2


def _label_gradient(problem: Callable, x: torch.Tensor) -> torch.Tensor | None:
    """``grad G*(x_i)`` (N, d) by autograd, or None when ``problem`` is not differentiable
    (``differentiable`` false) or returns no graph."""
    if not getattr(problem, "differentiable", False):
        return None
    with torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        y = problem(xg)
        if not isinstance(y, torch.Tensor) or not y.requires_grad:
            return None
        (grad,) = torch.autograd.grad(y.sum(), xg)
    return grad.detach()


def _unseen_error(ws: _Workspace, right: torch.Tensor, coef: torch.Tensor) -> float:
    """Relative root OOD error on the unseen split, ``||y_U - k(U, X) a|| / ||y_U||``.

    ``right = augment_right(x)`` (N, d + 2) for the training inputs ``x``, ``coef`` (N,).
    ``k(U, X) a`` is formed ``_EVAL_CHUNK`` rows at a time (1024 x 250 float32: 1 MB, one
    core's L2): exponents and clamp in one call, ``exp2`` in place
    (:func:`~wheretolearn.models.krr.kernel_from_augmented`), a matrix-vector product. The
    squared error is summed in float64.
    """
    c = coef.to(ws.dtype)
    n_rows = ws.unseen_left.shape[0]
    diff = ws.buffer("unseen_diff", 1, n_rows)[0]
    for start in range(0, n_rows, _EVAL_CHUNK):
        k = kernel_from_augmented(ws.unseen_left[start:start + _EVAL_CHUNK], right,
                                  kernel=ws.kernel)
        torch.mv(k, c, out=diff[start:start + _EVAL_CHUNK])
    diff.sub_(ws.unseen_y)
    return math.sqrt(float(diff.double() @ diff.double()) / ws.unseen_den)


def _label_scale(metatest: MetaTest, krr: KRRSettings) -> float:
    """RMS of the seen labels (``krr.normalize_labels``) or 1: the objective is divided by its
    square, i.e. the gradient is that of half the squared *relative* seen error."""
    if not krr.normalize_labels:
        return 1.0
    rms = float(metatest.seen_y.double().square().mean().sqrt())
    return rms if rms > 0 else 1.0


def adjoint_gradient(problem: Callable, metatest: MetaTest, measure: Any,
                     z: torch.Tensor | None = None, *, x: torch.Tensor | None = None,
                     ridge: float = 1e-3, krr: KRRSettings = KRRSettings()) -> AdjointGradient:
    """Single adjoint gradient of the seen OOD loss with respect to the parameters of ``measure``.

    Parameters
    ----------
    problem : callable
        Ground truth ``G*``: ``(N, d)`` tensor -> ``(N,)`` tensor.
    metatest : MetaTest
        Only the seen split is used.
    measure : Gaussian or GaussianMixture
        Current training distribution; its dtype is the working dtype unless ``krr.dtype``.
    z : (N, d) tensor, optional
        Gaussian only: latent draws, the training inputs are ``x = m + L z``.
    x : (N, d) tensor, optional
        The training inputs themselves (any family). Give exactly one of ``z`` / ``x``.
    ridge : float
        Ridge ``eps`` (system ``K + N eps I``).
    krr : KRRSettings
        Bandwidth ``s``, kernel (it enters only through ``K``, ``k(V, X)``; the score is that
        of nu), label normalisation, dtypes and threads.

    Returns
    -------
    AdjointGradient
        The gradient of ``(1/2J) sum_j mean_l (y_jl - f(v_jl))^2`` in every parameter
        (score-function form with the draws held fixed, see module docstring).
    """
    ridge = check_positive_float(ridge, "ridge")
    check_type(krr, KRRSettings, "krr")
    dtype = krr.working_dtype(measure.dtype)
    family = family_for(measure)(dtype=dtype, spread=0.0)
    _check_family_kernel(family, krr)
    state = family.initial_state(measure)
    given = _given_inputs(measure, metatest, z, x, dtype)
    ws = _Workspace(metatest, krr, dtype=dtype, label_scale=_label_scale(metatest, krr),
                    eval_unseen=False)
    with torch_threads(krr.num_threads, work=ws.n_seen * given.shape[0] * (metatest.dim + 2)), \
            torch.no_grad():
        if z is not None:
            mean, tril = state
            draw = Draw(mean + given @ tril.T, given)
        else:
            draw = family.draw_at(state, given)
        y = _labels(problem, draw.x, dtype)
        grads, err, coef, adj, _, _ = _family_gradient(problem, ws, family, state, draw, y, ridge)
    named = dict(zip(family.param_names, grads))
    return AdjointGradient(named.get("mean"), named.get("scale_tril"), err, coef, adj, named)


def _given_inputs(measure: Any, metatest: MetaTest, z, x, dtype: torch.dtype) -> torch.Tensor:
    """The one of ``z`` / ``x`` given to :func:`adjoint_gradient`, (N, d) in ``dtype``."""
    if (z is None) == (x is None):
        raise ValueError("give exactly one of z (Gaussian latent draws) or x (training inputs)")
    if z is not None and not isinstance(measure, Gaussian):
        raise ValueError(f"z (latent draws) applies to a Gaussian only; give x for a "
                         f"{type(measure).__name__}")
    given = torch.as_tensor(z if z is not None else x).detach().to(dtype)
    if given.ndim != 2 or given.shape[1] != metatest.dim:
        raise ValueError(f"{'z' if z is not None else 'x'} must have shape (N, {metatest.dim}), "
                         f"got {tuple(given.shape)}")
    return given


def _check_family_kernel(family: TrainingFamily, krr: KRRSettings) -> None:
    if family.needs_inputs and krr.kernel != "gaussian":
        raise ValueError(f"the {family.name} family differentiates the Gaussian kernel; got "
                         f"kernel={krr.kernel!r}")


def _family_gradient(problem, ws: "_Workspace", family: TrainingFamily, state: tuple, draw: Draw,
                     y: torch.Tensor, ridge: float):
    """The family's gradient for one draw with labels ``y``: the adjoint step (and, for a
    family that moves its inputs, ``dJ/dx``) contracted with the score. Returns ``(grads,
    seen_error, coef, adjoint, right, pred_ratio)``; raises :class:`_FactorError`."""
    extras = {} if family.needs_inputs else None
    c, seen_err, coef, adjoint, right, ratio = _adjoint_step(ws, draw.x, y, ridge, extras)
    ig = None
    if family.needs_inputs:
        ig = _input_gradient(ws, draw.x, coef, adjoint, ridge, extras,
                             _label_gradient(problem, draw.x))
    grads = family.gradient(state, draw, AdjointQuantities(c, coef, adjoint, ig))
    return grads, seen_err, coef, adjoint, right, ratio


def _labels(problem: Callable, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    y = problem(x)
    y = torch.as_tensor(y).detach().to(dtype).reshape(-1)
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"problem must return one scalar label per input, got shape "
                         f"{tuple(y.shape)} for {x.shape[0]} inputs")
    if not bool(torch.isfinite(y).all()):
        n_bad = int((~torch.isfinite(y)).sum())
        raise ValueError(f"problem returned non-finite labels at {n_bad} training inputs; the "
                         "training distribution has probably moved to where G* is singular "
                         "(try a smaller lr)")
    return y


def bilevel_descent(problem: Callable, metatest: MetaTest, init: Any, *,
                    schedule: BilevelSchedule = BilevelSchedule(),
                    krr: KRRSettings = KRRSettings(),
                    control: StepControl = StepControl(),
                    generator: int | torch.Generator | None = None,
                    callback: Callable[[dict], Any] | None = None) -> BilevelResult:
    """Optimise a training distribution by bilevel gradient descent (SPEC §3).

    The family is that of ``init``: a :class:`~wheretolearn.measures.Gaussian` moves its mean
    and Cholesky factor (the paper's setting), a
    :class:`~wheretolearn.measures.GaussianMixture` its weights (as softmax logits), means and
    factors (issue 25; :mod:`~wheretolearn.design.bilevel_families`).

    Parameters
    ----------
    problem : Problem or callable
        Ground truth ``G*``: ``(N, d)`` -> ``(N,)``.
    metatest : MetaTest
        Seen split drives the adjoint step; unseen split is only reported.
    init : Gaussian or GaussianMixture
        Initial ``nu_theta``; never modified. A mixture needs at most ``n_train`` components.
    schedule : BilevelSchedule
        Steps ``T``, samples ``N`` per step, the cosine-annealed learning rate and ridge, and
        how often the unseen error is logged.
    krr : KRRSettings
        The inner KRR: bandwidth, kernel, label normalisation, dtypes and torch threads.
    control : StepControl
        Optimizer (SGD or Adam), trust region and backtracking (module docstring).
    generator : int, torch.Generator or None
        Source of the latent draws; same seed -> same run.
    callback : callable, optional
        Called with a copy of each step's record after the step.

    Returns
    -------
    BilevelResult
    """
    check_type(schedule, BilevelSchedule, "schedule")
    check_type(krr, KRRSettings, "krr")
    check_type(control, StepControl, "control")
    check_type(metatest, MetaTest, "metatest")
    family_cls = family_for(init)
    dt = krr.working_dtype(metatest.dtype)
    label_scale = _label_scale(metatest, krr)
    ws = _Workspace(metatest, krr, dtype=dt, label_scale=label_scale,
                    eval_unseen=bool(schedule.unseen_every))
    family = family_cls(dtype=dt, spread=ws.spread)
    family.check(init, dim=metatest.dim, n_train=schedule.n_train)
    _check_family_kernel(family, krr)
    gen = torch_generator(generator)
    options = _options_record(family, ws, schedule, krr, control, label_scale)
    if family.needs_inputs:
        options.update(_particle_options(problem, init, schedule.n_train))
    # dominant call per step: the (J L, N) seen kernel block, d + 2 multiply-adds per entry
    work = ws.n_seen * schedule.n_train * (metatest.dim + 2)
    with torch_threads(krr.num_threads, work=work) as used, torch.no_grad():
        options["num_threads"] = used
        return _Descent(problem, ws, family, schedule, control, options, callback).run(init, gen)


def _options_record(family: TrainingFamily, ws: _Workspace, schedule: BilevelSchedule,
                    krr: KRRSettings, control: StepControl, label_scale: float) -> dict:
    """The settings of a run as JSON-serialisable ``BilevelResult.options``."""
    return {"family": family.name, "n_train": schedule.n_train, "steps": schedule.steps,
            "lr": schedule.lr, "lr_end": schedule.lr_end, "bandwidth": krr.bandwidth,
            "ridge_start": schedule.ridge_start, "ridge_end": schedule.ridge_end,
            "optimizer": control.optimizer, "eval_unseen": schedule.unseen_every,
            "normalize_labels": krr.normalize_labels, "label_scale": label_scale,
            "dtype": str(ws.dtype).replace("torch.", ""),
            "factor_dtype": str(ws.factor_dtype).replace("torch.", ""),
            "num_threads": krr.num_threads, "max_move": control.max_move,
            "backtrack": control.backtrack, "jump": control.jump, "kernel": krr.kernel,
            "trust_radius": None if control.max_move is None else control.max_move * ws.spread}


def _particle_options(problem: Callable, init: Any, n_train: int) -> dict:
    """What ``dJ/dx`` holds (the labels' term needs a differentiable ``G*``) and how draws
    beyond the particles are made, for the record of a family that moves its inputs."""
    m = int(init.points.shape[0])
    return {"label_gradient": ("autograd" if getattr(problem, "differentiable", False)
                               else "none (G* not differentiable: kernel terms only)"),
            "particles": m,
            "smoothing": ("none (N == M: the particles themselves)" if m == n_train else
                          "the M particles plus N - M draws of a Gaussian KDE around them "
                          "(per-coordinate Silverman bandwidth of the current particles)")}


class _Descent:
    """The loop of :func:`bilevel_descent`: one :meth:`step` per iteration (steps 1-5 of the
    module docstring) and the state the step control carries between steps -- the current
    and the last accepted iterate, Adam's moments, the best iterate, the guard."""

    def __init__(self, problem: Callable, ws: _Workspace, family: TrainingFamily,
                 schedule: BilevelSchedule, control: StepControl, options: dict, callback):
        self.problem, self.ws, self.family = problem, ws, family
        self.schedule, self.control, self.options = schedule, control, options
        self.callback = callback
        self.guard = _Guard(control.jump)
        self.history: list[dict] = []
        self.total = self.grad_total = 0.0

    def run(self, init: Any, gen: torch.Generator) -> BilevelResult:
        """All ``schedule.steps`` steps from ``init``; the result."""
        state = self.state = self.previous = self.family.initial_state(init)
        self.adam = _Adam(*state) if self.control.optimizer == "adam" else None
        self.best = (math.inf, 0, tuple(t.clone() for t in state))
        self.last_clipped = False       # the update that produced this iterate hit the radius
        bad = None
        for step in range(self.schedule.steps):
            bad = self.step(step, gen)
        steps = self.schedule.steps
        return BilevelResult(initial=init.detach(), final=self.family.measure(self.state),
                             best=self.family.measure(self.best[2]), history=self.history,
                             seconds_per_step=self.total / steps,
                             grad_seconds_per_step=self.grad_total / steps,
                             best_step=self.best[1], options=self.options,
                             collapse=self.guard.summary(bad is not None
                                                         and not self.control.backtrack))

    def step(self, step: int, gen: torch.Generator) -> str | None:
        """One step: draw, gradient, reject or update, log. Returns the collapse reason."""
        t0 = time.perf_counter()
        lr_t, ridge_t = self.schedule.at(step)
        lr_t *= self.guard.lr_factor
        draw = self.family.draw(self.state, self.schedule.n_train, gen)
        record = {"step": step, "lr": lr_t, "ridge": ridge_t, "seen_error": math.nan,
                  "unseen_error": math.nan, "grad_norm": math.nan, "pred_ratio": math.nan,
                  "move": 0.0, "rejected": False, **self.family.describe(self.state)}
        bad, grads, coef, right = self._gradient(step, draw, ridge_t, record)
        overshoot = bad is None and self.guard.overshot(record["seen_error"], self.last_clipped)
        if self.control.backtrack and step > 0 and (bad is not None or overshoot):
            self._reject(record, overshoot)
        else:
            self._accept(step, record, grads, lr_t)
        t1 = time.perf_counter()
        self._log_unseen(step, record, coef, right)
        t2 = time.perf_counter()
        record["seconds"], record["grad_seconds"] = t2 - t0, t1 - t0
        self.total += t2 - t0
        self.grad_total += t1 - t0
        self.history.append(record)
        if self.callback is not None:
            self.callback(dict(record))
        return bad

    def _gradient(self, step: int, draw: Draw, ridge: float, record: dict):
        """Labels, adjoint step and the family's gradient of one draw; fills ``record``.
        Returns ``(bad, grads, coef, right)``: the collapse reason (None: a good iterate) and,
        when the KRR could be fitted, the gradient, coefficients and ``augment_right(x)``."""
        y, bad = _labels_or_reason(self.problem, draw.x, self.ws.dtype, step)
        if bad is not None:
            return self._collapse(step, bad), None, None, None
        try:
            grads, seen_err, coef, _, right, ratio = _family_gradient(
                self.problem, self.ws, self.family, self.state, draw, y, ridge)
        except _FactorError:
            if step == 0 or not self.control.backtrack:
                raise
            return self._collapse(step, "non_finite"), None, None, None
        grad_norm = math.sqrt(sum(float((g * g).sum()) for g in grads))
        record.update(seen_error=seen_err, grad_norm=grad_norm, pred_ratio=ratio)
        bad = self.guard.check(step, seen_err, ratio, grad_norm)
        return self._collapse(step, bad), grads, coef, right

    def _collapse(self, step: int, bad: str | None) -> str | None:
        """Record a collapse ``bad`` (None: none); a non-finite step that cannot be undone
        (step 0, or ``backtrack`` off) raises."""
        if bad == "non_finite" and (step == 0 or not self.control.backtrack):
            raise ValueError(f"bilevel step {step} is not finite: lower lr (got "
                             f"{self.schedule.lr:g}) or raise ridge_end")
        if bad is not None:
            self.guard.note(step, bad)
        return bad

    def _reject(self, record: dict, overshoot: bool) -> None:
        """Return to the last accepted iterate; halve the trust radius after an overshoot,
        else the learning rate; restart Adam."""
        record["rejected"] = True
        self.state = self.previous
        self.last_clipped = False
        if overshoot:
            self.guard.radius_factor = max(self.guard.radius_factor * 0.5, _MIN_RADIUS_FACTOR)
        else:
            self.guard.lr_factor *= 0.5
        if self.adam is not None:
            self.adam.reset()

    def _accept(self, step: int, record: dict, grads: tuple, lr: float) -> None:
        """Keep the current iterate (the best one so far if its seen error is the lowest)
        and take the update, shortened to the trust radius."""
        seen_err = record["seen_error"]
        if seen_err < self.best[0]:
            self.best = (seen_err, step, tuple(t.clone() for t in self.state))
        self.previous = self.state
        self.guard.accept(seen_err)
        radius = self.guard.radius(self.options["trust_radius"])
        direction = self.adam.direction(*grads) if self.adam is not None else grads
        upd = self.family.update(self.state, direction, lr, radius)
        self.state, record["move"], self.last_clipped = upd.state, upd.move, upd.clipped
        self.guard.clipped += self.last_clipped
        self.guard.floor(step, upd.floors)

    def _log_unseen(self, step: int, record: dict, coef, right) -> None:
        """The unseen error of this step's fit, every ``eval_unseen``-th step and at the last."""
        every = self.schedule.unseen_every
        if (self.ws.unseen_left is not None and right is not None and every
                and (step % every == 0 or step == self.schedule.steps - 1)):
            record["unseen_error"] = _unseen_error(self.ws, right, coef)


def _labels_or_reason(problem, x, dtype, step):
    """Labels, or ``(None, "non_finite")`` when ``G*`` is not finite at some input (after step
    0, where it is the caller's problem and raises)."""
    try:
        return _labels(problem, x, dtype), None
    except ValueError as exc:
        if step == 0 or "non-finite" not in str(exc):
            raise
        return None, "non_finite"


class _Guard:
    """Collapse detection and the learning-rate factor of the backtracking (module docstring)."""

    def __init__(self, jump: float):
        self.jump = jump
        self.lr_factor = 1.0
        self.start = None          # seen error of the initial iterate
        self.last = None           # seen error of the last accepted iterate
        self.events = 0
        self.shrinks = 0
        self.radius_factor = 1.0
        self.first = None
        self.reasons: set[str] = set()
        self.clipped = 0
        self.floors: dict[str, int] = {}
        self.first_floor = None

    def check(self, step: int, seen_err: float, ratio: float, grad_norm: float) -> str | None:
        """The collapse reason for this iterate, or None."""
        if not (math.isfinite(seen_err) and math.isfinite(grad_norm)):
            return "non_finite"
        if ratio < _VANISHING:
            return "vanishing_kernel"
        if (self.last is not None and seen_err > self.jump * self.last
                and seen_err > self.start):
            return "error_jump"
        return None

    def accept(self, seen_err: float) -> None:
        if self.start is None:
            self.start = seen_err
        self.last = seen_err

    def radius(self, base: float | None) -> float | None:
        """The trust radius now: ``base`` shrunk by every overshoot so far."""
        return None if base is None else base * self.radius_factor

    def overshot(self, seen_err: float, clipped: bool) -> bool:
        """A step cut to the trust radius that *raised* the seen error overshot: the radius
        was too large where the gradient is this steep."""
        if clipped and self.last is not None and seen_err > self.last:
            self.shrinks += 1
            return True
        if clipped:  # a cut step that helped: let the radius grow back
            self.radius_factor = min(1.0, 2.0 * self.radius_factor)
        return False

    def floor(self, step: int, names) -> None:
        """Count the family's floors an update hit (recorded, not rejected)."""
        for name in names:
            self.floors[name] = self.floors.get(name, 0) + 1
            self.first_floor = step if self.first_floor is None else self.first_floor

    def note(self, step: int, reason: str) -> None:
        self.events += 1
        self.first = step if self.first is None else self.first
        self.reasons.add(reason)

    def summary(self, ended_collapsed: bool) -> dict:
        return {"events": self.events, "first_step": self.first,
                "reasons": sorted(self.reasons), "lr_factor": self.lr_factor,
                "clipped_steps": int(self.clipped), "radius_shrinks": self.shrinks,
                "radius_factor": self.radius_factor, "collapsed": bool(ended_collapsed),
                "floors": {"counts": dict(self.floors), "first_step": self.first_floor}}
