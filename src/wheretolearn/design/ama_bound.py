"""The AMA objective ``J(nu, G) = part1 + part2 * part3`` (paper Prop. 3.1 / eq. 4.7, SPEC §4)
and Lipschitz-constant estimates for it.

One norm is used for every term: the quadrature L2 norm ``||v||_q^2 = sum_i q_i v_i^2`` of
the grid (the trapezoid weights of the KLE basis for inputs, the same weights on the output
grid). So errors, ``m2``, ``W2`` and ``||G(0)||`` are all L2 norms of functions, independent
of the grid resolution up to discretisation error.

    part1 = E_{u~nu} ||G*(u) - G(u)||_q^2
    part2 = sqrt( mean_j (L+L')^2 [ 4 (L+L')^2 (m2(nu) + m2(Q_j)) + 16 (||G*(0)||^2 + ||G(0)||^2) ] )
    part3 = sqrt( mean_j W2(nu, Q_j)^2 )

``L`` (ground truth) and ``L'`` (model) are estimated by :func:`estimate_lipschitz`: the
largest Jacobian operator norm (``||.||_q -> ||.||_q``) found by power iteration over given
input samples, times a safety factor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from .._validation import (as_tensor, check_positive_float, check_positive_int, check_type,
                           torch_generator)

__all__ = ["BoundValue", "BoundConstants", "ama_bound", "mixture_component_bound",
           "w2_squared_to_family", "second_moment", "LipschitzEstimate", "LipschitzOptions",
           "estimate_lipschitz", "quadrature_norm_sq"]


def quadrature_norm_sq(v: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """``||v_b||_q^2`` per sample: v (B, *shape), weights (*shape) or None (Euclidean) -> (B,)."""
    flat = v.reshape(v.shape[0], -1)
    if weights is None:
        return (flat ** 2).sum(1)
    return (weights.reshape(1, -1).to(v.dtype) * flat ** 2).sum(1)


def _w2_view(measure: Any) -> Any:
    """The object W2 is computed on: an NtD boundary measure's Gaussian field (paper F.16)."""
    from ..measures import GaussianRandomField

    inner = getattr(measure, "field", None)
    return inner if isinstance(inner, GaussianRandomField) else measure


def w2_squared_to_family(nu: Any, family: Sequence[Any]) -> torch.Tensor:
    """``W2(nu, Q_j)^2`` for every ``Q_j``, shape (J,): closed form between KLE fields on one
    basis, exact OT (POT ``emd2``) between empirical measures (differentiable in ``nu``)."""
    from ..measures import wasserstein2_squared

    if hasattr(nu, "w2_squared_to"):                    # the AMA family (SpectrumField)
        return torch.stack([nu.w2_squared_to(q) for q in family])
    a = _w2_view(nu)
    return torch.stack([wasserstein2_squared(a, _w2_view(q)) for q in family])


def second_moment(measure: Any) -> torch.Tensor:
    """``m2 = E ||u||_q^2`` of a measure (closed form for fields, sample mean for empirical)."""
    return measure.second_moment()


@dataclass
class BoundValue:
    """The three parts of ``J`` and its value (tensors; differentiable where inputs are)."""

    value: torch.Tensor
    part1: torch.Tensor
    part2: torch.Tensor
    part3: torch.Tensor

    def to_dict(self) -> dict[str, float]:
        return {k: float(getattr(self, k).detach()) for k in ("value", "part1", "part2", "part3")}


@dataclass(frozen=True)
class BoundConstants:
    """The constants of the bound's factor ``c(nu, Q)`` that stay fixed during an AMA run.

    ``c(nu, Q)^2 = (L+L')^2 [4 (L+L')^2 (m2(nu) + m2(Q)) + 16 (||G*(0)||^2 + ||G(0)||^2)]``
    (paper Prop. 3.1).

    Attributes
    ----------
    lipschitz_true, lipschitz_model : float >= 0
        ``L`` (ground truth) and ``L'`` (model).
    g0_true_sq, g0_model_sq : float >= 0 or scalar tensor
        ``||G*(0)||_q^2`` and ``||G(0)||_q^2``.
    """

    lipschitz_true: float
    lipschitz_model: float
    g0_true_sq: Any
    g0_model_sq: Any

    def __post_init__(self) -> None:
        for name in ("lipschitz_true", "lipschitz_model"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        for name in ("g0_true_sq", "g0_model_sq"):
            value = getattr(self, name)
            v = float(value.detach()) if isinstance(value, torch.Tensor) and value.numel() == 1 \
                else value
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
                raise ValueError(f"{name} must be a number >= 0 or a scalar tensor, got "
                                 f"{value!r}")

    def factor_sq(self, m2_nu: torch.Tensor, m2_q: torch.Tensor) -> torch.Tensor:
        """``c(nu, Q)^2`` for second moments ``m2_nu`` and ``m2_q`` (broadcast)."""
        s = (self.lipschitz_true + self.lipschitz_model) ** 2
        return s * (4.0 * s * (m2_nu + m2_q) + 16.0 * (self.g0_true_sq + self.g0_model_sq))


def ama_bound(part1: torch.Tensor, *, m2_nu: torch.Tensor, m2_family: torch.Tensor,
              w2sq: torch.Tensor, constants: BoundConstants) -> BoundValue:
    """``J = part1 + part2 * part3`` (SPEC §4) from its ingredients.

    Parameters
    ----------
    part1 : scalar tensor, ``E_nu ||G* - G||_q^2``
    m2_nu : scalar tensor; m2_family : (J,) tensor, second moments ``m2(Q_j)``
    w2sq : (J,) tensor, ``W2(nu, Q_j)^2``
    constants : BoundConstants
        ``L``, ``L'``, ``||G*(0)||_q^2`` and ``||G(0)||_q^2``.
    """
    part2 = torch.sqrt(constants.factor_sq(m2_nu, m2_family).mean())
    part3 = torch.sqrt(w2sq.mean().clamp_min(0))
    return BoundValue(part1 + part2 * part3, part1, part2, part3)


def mixture_component_bound(errors: torch.Tensor, component: torch.Tensor, *,
                            m2_components: torch.Tensor, m2_family: torch.Tensor,
                            w2sq: torch.Tensor, constants: BoundConstants) -> BoundValue:
    """``J`` of a mixture ``nu = (1/K) sum_k nu_k`` through its *components* (the
    ``"component"`` bound of the mixture family; issue 21).

    The paper's bound holds for every pair of measures: ``E_Q e <= E_{nu_k} e + c(nu_k, Q)
    W2(nu_k, Q)`` with ``e = ||G* - G||_q^2`` and ``c(nu, Q)^2 = (L+L')^2 [4 (L+L')^2 (m2(nu)
    + m2(Q)) + 16 (||G*(0)||^2 + ||G(0)||^2)]``. So each ``Q_j`` may be bounded through any
    component ``k(j)``; with the assignment ``k(j) = argmin_k [p1_k + c_jk W2_jk]`` (chosen
    on detached values, then held fixed for the gradient) and Cauchy-Schwarz over ``j``::

        mean_j E_{Q_j} e <= mean_j p1_k(j) + sqrt(mean_j c_j,k(j)^2) sqrt(mean_j W2_j,k(j)^2)
                          = part1 + part2 * part3

    an upper bound of the OOD error like the single-family ``J`` (``p1_k`` the mean error on
    the fixed draws of component ``k``: the same kind of sample estimate as ``part1``). A
    component with no draws is never assigned. ``part3`` is ``sqrt(max(., 1e-300))`` so that
    its gradient stays finite where a component sits exactly on its ``Q_j`` (the value grows
    by at most ``1e-150``: still an upper bound).

    Parameters
    ----------
    errors : (n,) tensor, ``||G*(u_i) - G(u_i)||_q^2`` on the fixed draws
    component : (n,) long tensor, the component of each draw
    m2_components : (K,) tensor; m2_family : (J,) tensor
    w2sq : (K, J) tensor, ``W2(nu_k, Q_j)^2``
    constants : BoundConstants
        ``L``, ``L'``, ``||G*(0)||_q^2`` and ``||G(0)||_q^2``.
    """
    k = w2sq.shape[0]
    counts = torch.bincount(component, minlength=k).to(errors.dtype)
    p1 = torch.zeros(k, dtype=errors.dtype).index_add(0, component, errors) / counts.clamp_min(1)
    c2 = constants.factor_sq(m2_components[:, None], m2_family[None, :])   # (K, J)
    with torch.no_grad():
        per = p1[:, None] + torch.sqrt(c2 * w2sq.clamp_min(0))
        per = torch.where(counts[:, None] > 0, per, torch.full_like(per, float("inf")))
        assign = per.argmin(0)                                               # (J,)
    cols = torch.arange(w2sq.shape[1])
    part1 = p1[assign].mean()
    part2 = torch.sqrt(c2[assign, cols].mean())
    part3 = torch.sqrt(w2sq[assign, cols].mean().clamp_min(1e-300))
    return BoundValue(part1 + part2 * part3, part1, part2, part3)


# ------------------------------------------------------------------------ Lipschitz
@dataclass
class LipschitzEstimate:
    """A Lipschitz constant estimate.

    ``value = safety * max_b sigma_b`` with ``sigma_b`` the power-iteration estimate of the
    Jacobian's operator norm at sample ``b`` (``fixed`` True when given by the user).
    """

    value: float
    max_norm: float
    safety: float
    n_samples: int
    iterations: int
    fixed: bool = False
    norms: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = {"value": self.value, "max_jacobian_norm": self.max_norm, "safety": self.safety,
             "n_samples": self.n_samples, "iterations": self.iterations, "fixed": self.fixed}
        if self.norms:
            d["median_jacobian_norm"] = float(torch.tensor(self.norms).median())
        return d

    @classmethod
    def fixed_value(cls, value: float) -> "LipschitzEstimate":
        v = check_positive_float(value, "lipschitz", allow_zero=True)
        return cls(value=v, max_norm=v, safety=1.0, n_samples=0, iterations=0, fixed=True)


def _jvp(fn: Callable, x: torch.Tensor, v: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "forward":
        return torch.func.jvp(fn, (x,), (v,))[1]
    # central finite difference in float64 (for maps without forward-mode AD, e.g. a solver
    # with a custom adjoint): step relative to the sample's size
    scale = x.reshape(x.shape[0], -1).abs().amax(1).clamp_min(1.0)
    eps = (1e-4 * scale).reshape(-1, *([1] * (x.ndim - 1)))
    with torch.no_grad():
        diff = fn(x + eps * v) - fn(x - eps * v)
        return diff / (2 * eps.reshape(-1, *([1] * (diff.ndim - 1))))


def _vjp(fn: Callable, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    xr = x.detach().requires_grad_(True)
    with torch.enable_grad():
        out = fn(xr)
        (g,) = torch.autograd.grad(out, xr, grad_outputs=u.to(out.dtype))
    return g


#: How :func:`estimate_lipschitz` computes ``J v``.
JVP_MODES = ("forward", "fd", "fd-random", "linearised")


@dataclass(frozen=True)
class LipschitzOptions:
    """How :func:`estimate_lipschitz` estimates the Jacobian norms.

    Attributes
    ----------
    iterations : int >= 1
        Power iterations per sample (random directions for ``jvp="fd-random"``).
    safety : float >= 1
        Factor on the largest norm found (the supremum over inputs is approximated by a
        maximum over samples).
    jvp : "forward" | "fd" | "fd-random" | "linearised"
        ``J v`` by forward-mode autograd, a central difference, random difference quotients
        without an adjoint, or ``fn.linearise(x) -> (jvp, vjp)`` (see
        :func:`estimate_lipschitz`).
    batch : int >= 1
        Samples per power-iteration batch.
    """

    iterations: int = 30
    safety: float = 1.5
    jvp: str = "forward"
    batch: int = 64

    def __post_init__(self) -> None:
        object.__setattr__(self, "iterations", check_positive_int(self.iterations, "iterations"))
        object.__setattr__(self, "safety", check_positive_float(self.safety, "safety"))
        if self.safety < 1:
            raise ValueError(f"safety must be >= 1, got {self.safety}")
        if self.jvp not in JVP_MODES:
            raise ValueError(f"jvp must be 'forward', 'fd', 'fd-random' or 'linearised', got "
                             f"{self.jvp!r}")
        object.__setattr__(self, "batch", check_positive_int(self.batch, "batch"))


def estimate_lipschitz(fn: Callable[[torch.Tensor], torch.Tensor], samples: torch.Tensor, *,
                       input_weights: Any = None, output_weights: Any = None,
                       options: LipschitzOptions | None = None,
                       generator: Any = 0) -> LipschitzEstimate:
    """Estimate a Lipschitz constant of ``fn`` as ``safety * max_b ||J(x_b)||_{q->q}``.

    Power iteration on ``K_b^T K_b`` with ``K_b = W_out^{1/2} J(x_b) W_in^{-1/2}`` (the
    Jacobian as an operator between the quadrature-normed spaces): ``J v`` by forward-mode
    autograd (``jvp="forward"``) or a central difference (``jvp="fd"``, for maps such as
    the Darcy solver whose gradient is an adjoint ``autograd.Function``), ``J^T u`` by
    reverse-mode autograd (the adjoint). A black box with neither (``jvp="fd-random"``, e.g.
    a user solver that is not differentiable) gets the largest difference quotient
    ``||J v||_q / ||v||_q`` over ``iterations`` random directions ``v`` per sample instead of
    the power iteration: a cruder lower bound of the same norm. All samples iterate
    together (``fn`` must map a batch sample by sample). The estimate is a lower bound of each ``||J(x_b)||`` that
    increases with the iterations; the supremum over inputs is approximated by the
    maximum over ``samples`` -- hence the safety factor.

    Parameters
    ----------
    fn : callable, (B, *in) -> (B, *out)
    samples : (n, *in) tensor
    input_weights, output_weights : in / out-shaped tensors or None (Euclidean)
    options : LipschitzOptions, optional
        Iterations, safety factor, ``jvp`` mode and batch size (default
        ``LipschitzOptions()``). ``jvp="linearised"`` needs ``fn.linearise(x) -> (jvp,
        vjp)`` (Darcy: each sample's matrix factored once for all power iterations, both
        products reuse the factors).
    generator : seed or torch.Generator for the start vectors
    """
    opts = LipschitzOptions() if options is None else options
    check_type(opts, LipschitzOptions, "options")
    iterations, safety, jvp, batch = opts.iterations, opts.safety, opts.jvp, opts.batch
    if jvp == "linearised" and not hasattr(fn, "linearise"):
        raise ValueError("jvp='linearised' needs fn.linearise(x) -> (jvp, vjp)")
    x_all = as_tensor(samples, "samples")
    g = torch_generator(generator)
    win = None if input_weights is None else as_tensor(input_weights, "input_weights",
                                                       dtype=x_all.dtype)
    wout = None if output_weights is None else as_tensor(output_weights, "output_weights")
    norms: list[float] = []
    for lo in range(0, x_all.shape[0], batch):
        x = x_all[lo:lo + batch].detach()
        inv_root = 1.0 if win is None else win.clamp_min(torch.finfo(x.dtype).tiny).rsqrt()
        v = torch.randn(x.shape, generator=g, dtype=x.dtype)
        v = v / v.reshape(v.shape[0], -1).norm(dim=1).reshape(-1, *([1] * (x.ndim - 1)))
        sigma = torch.zeros(x.shape[0], dtype=torch.float64)
        lin = fn.linearise(x) if jvp == "linearised" else None     # one factorisation
        for _ in range(iterations):
            if lin is not None:
                jv = lin[0](v * inv_root)
            else:
                jv = _jvp(fn, x, v * inv_root, "fd" if jvp == "fd-random" else jvp)
            wo = None if wout is None else wout.to(jv.dtype)
            z = jv if wo is None else jv * wo.sqrt()
            sigma = torch.maximum(sigma, z.reshape(z.shape[0], -1).norm(dim=1).double().detach())
            if jvp == "fd-random":               # no adjoint: a fresh random direction
                v = torch.randn(x.shape, generator=g, dtype=x.dtype)
                v = v / v.reshape(v.shape[0], -1).norm(dim=1).reshape(-1, *([1] * (x.ndim - 1)))
                continue
            u_out = z if wo is None else z * wo.sqrt()
            back = (lin[1](u_out) if lin is not None else _vjp(fn, x, u_out)) * inv_root
            nrm = back.reshape(back.shape[0], -1).norm(dim=1).clamp_min(1e-300)
            v = (back / nrm.reshape(-1, *([1] * (x.ndim - 1)))).detach()
        norms.extend(sigma.tolist())
    mx = max(norms)
    return LipschitzEstimate(value=safety * mx, max_norm=mx, safety=safety, n_samples=len(norms),
                             iterations=iterations, norms=norms)


def lipschitz_or_fixed(value: Any, estimate: Callable[[], LipschitzEstimate]) -> LipschitzEstimate:
    """``"auto"`` -> ``estimate()``; a number -> a fixed (reported) constant."""
    if isinstance(value, str):
        if value != "auto":
            raise ValueError(f"lipschitz must be 'auto' or a number >= 0, got {value!r}")
        return estimate()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"lipschitz must be 'auto' or a number >= 0, got {value!r}")
    return LipschitzEstimate.fixed_value(float(value))
