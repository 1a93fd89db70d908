"""Kernel ridge regression with the Gaussian (squared-exponential) or Laplace kernel.

Paper §4.1 / SM D.2 Lemma D.4, SPEC §3 step 2:

    k(x, x') = exp(-||x - x'||^2 / (2 s^2))      (kernel = "gaussian", default)
    k(x, x') = exp(-||x - x'|| / s)              (kernel = "laplace"; the paper also fits with it)
    a = (K + N eps I)^{-1} y            (K = k(X, X), Cholesky factorisation)
    f(v) = k(v, X) a

which minimises ``(1/2N) sum_i (f(x_i) - y_i)^2 + (eps/2) ||f||_H^2`` over the RKHS.

Evaluation at many points ``v`` never forms more than ``chunk_rows`` kernel rows at a time
and uses one matrix product per chunk: with ``A = [v / s^2, -||v||^2 / (2 s^2), 1]`` and
``B = [x, 1, -||x||^2 / (2 s^2)]`` the exponent ``-||v - x||^2 / (2 s^2)`` is ``A B^T``
(kept in base 2, see :func:`augment_left`). Chunks of 1024 rows x N = 250 columns stay in
the L2 cache, which was fastest in our measurements.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import torch

from .._validation import (as_tensor, check_finite, check_positive_float, check_positive_int,
                           resolve_dtype)

__all__ = ["KERNELS", "gaussian_kernel", "laplace_kernel", "kernel_matrix", "kernel_matvec",
           "augment_left", "augment_right", "kernel_from_augmented", "regularised_cholesky",
           "check_kernel", "KernelRidge"]

#: Kernels the KRR model, the bilevel step and the study accept.
KERNELS = ("gaussian", "laplace")

# Below this many (n * m * d) elements the kernel is built from explicit differences, which
# avoids the cancellation of the ||x||^2 + ||y||^2 - 2 x.y expansion.
_DIRECT_LIMIT = 2 ** 22
_LOG2E = math.log2(math.e)


def _check_pair(x: torch.Tensor, y: torch.Tensor, bandwidth: float) -> float:
    """The bandwidth ``s > 0`` after checking that ``x`` (n, d) and ``y`` (m, d) share ``d``."""
    s = check_positive_float(bandwidth, "bandwidth")
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must be (n, d) and (m, d) with the same d, got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    return s


def gaussian_kernel(x: torch.Tensor, y: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """Gaussian kernel matrix ``k(x_i, y_j) = exp(-||x_i - y_j||^2 / (2 s^2))``.

    Parameters
    ----------
    x : (n, d) tensor
    y : (m, d) tensor
    bandwidth : float
        Length scale ``s > 0``.

    Returns
    -------
    (n, m) tensor, differentiable in ``x`` and ``y``.
    """
    s = _check_pair(x, y, bandwidth)
    if x.shape[0] * y.shape[0] * x.shape[1] <= _DIRECT_LIMIT:
        sq = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    else:
        sq = ((x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * x @ y.T).clamp_min(0.0)
    return torch.exp(sq / (-2.0 * s * s))


def laplace_kernel(x: torch.Tensor, y: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """Laplace kernel matrix ``k(x_i, y_j) = exp(-||x_i - y_j|| / s)``.

    Parameters
    ----------
    x : (n, d) tensor
    y : (m, d) tensor
    bandwidth : float
        Length scale ``s > 0``.

    Returns
    -------
    (n, m) tensor (explicit differences: no cancellation at ``x = y``).
    """
    s = _check_pair(x, y, bandwidth)
    return torch.exp(-torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist") / s)


def check_kernel(kernel: Any) -> str:
    """``kernel`` if it is one of :data:`KERNELS`, else a ValueError naming it."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
    return kernel


def kernel_matrix(x: torch.Tensor, y: torch.Tensor, bandwidth: float,
                  kernel: str = "gaussian") -> torch.Tensor:
    """``k(x, y)`` (n, m) for ``kernel`` in :data:`KERNELS`."""
    fn = gaussian_kernel if check_kernel(kernel) == "gaussian" else laplace_kernel
    return fn(x, y, bandwidth)


def augment_left(v: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """``log2(e) [v / s^2, -||v||^2 / (2 s^2), 1]``, shape (M, d + 2): evaluation-point factor.

    The exponent is kept in base 2 because ``torch.exp2`` is about 4x faster than
    ``torch.exp`` on CPU (measured with torch 2.13, AVX512).
    """
    s2 = bandwidth * bandwidth
    return _LOG2E * torch.cat([v / s2, (v * v).sum(1, keepdim=True) / (-2.0 * s2),
                               torch.ones_like(v[:, :1])], dim=1)


def augment_right(x: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """``[x, 1, -||x||^2 / (2 s^2)]``, shape (N, d + 2): the training-point factor."""
    s2 = bandwidth * bandwidth
    return torch.cat([x, torch.ones_like(x[:, :1]), (x * x).sum(1, keepdim=True) / (-2.0 * s2)],
                     dim=1)


_NUMPY_CODES = {torch.float32: "f", torch.float64: "d"}


@functools.lru_cache(maxsize=None)
def _numpy_exp2_is_simd(code: str) -> bool:
    """Whether numpy runs ``exp2`` for dtype ``code`` ("f" / "d") in a SIMD loop on this CPU.

    numpy >= 2 reports its dispatch (``numpy.lib.introspect.opt_func_info``); its AVX512
    (``X86_V4``) loop took 0.22 ns per float32 element against 0.31 ns for ``torch.exp2``
    (Sleef) on the 2-core AMD EPYC of ``benchmarks/bench_bilevel.py``, with a largest relative
    error of 1.0e-7 against float64 on [-126, 0] (torch: 7.1e-8). The ``baseline`` loop is
    scalar libm, slower than torch: then torch is used.
    """
    try:
        from numpy.lib.introspect import opt_func_info
        current = opt_func_info(func_name="^exp2$")["exp2"][code + code]["current"]
    except (ImportError, KeyError, TypeError):
        return False
    return bool(current) and not str(current).startswith("baseline")


def _exp2_inplace(e: torch.Tensor) -> torch.Tensor:
    """``e <- 2^e`` in place, returns ``e``. Through numpy's SIMD loop where numpy has one for
    this CPU and dtype (see :func:`_numpy_exp2_is_simd`), else ``torch.exp2``; the two agree to
    about one ulp. Tensors that autograd tracks take ``Tensor.exp2_`` (differentiable).

    Clamp ``e`` at :func:`_exponent_floor` first: numpy's loop takes a slow path for exponents
    below it (subnormal results; 2.0 ms instead of 0.05 ms for a 1024 x 250 block, measured).
    """
    code = _NUMPY_CODES.get(e.dtype)
    if (code is not None and e.device.type == "cpu" and not e.requires_grad
            and e.is_contiguous() and _numpy_exp2_is_simd(code)):
        arr = e.numpy()
        with np.errstate(over="ignore"):   # inf as torch.exp2 gives it, without a warning
            np.exp2(arr, out=arr)
        return e
    return e.exp2_()


def _exponent_floor(dtype: torch.dtype) -> float:
    """The clamp of :func:`kernel_from_augmented`: ``log2`` of the smallest normal number
    (-126 in float32, -1022 in float64)."""
    return math.log2(torch.finfo(dtype).tiny)


def _onednn_op():
    try:
        return torch.ops.mkldnn._linear_pointwise if torch.backends.mkldnn.is_available() else None
    except (AttributeError, RuntimeError):
        return None


_ONEDNN_LINEAR = _onednn_op()


def _onednn_fp32_exact() -> bool:
    """True unless the user allowed reduced-precision float32 products (bf16 / tf32)."""
    if torch.get_float32_matmul_precision() != "highest":
        return False
    matmul = getattr(torch.backends.mkldnn, "matmul", None)
    return getattr(matmul, "fp32_precision", "none") in ("none", "ieee")


def _clamped_exponents(a_left: torch.Tensor, b_right: torch.Tensor,
                       floor: float) -> torch.Tensor | None:
    """``max(A B^T, floor)`` (M, N) in one oneDNN call (linear kernel, the clamp fused as its
    ``hardtanh`` post-op), or None where that path does not apply: not float32, on a device,
    tracked by autograd, a torch build without oneDNN, or reduced-precision float32 products
    allowed by the user.

    Why (benchmark machine, AMD EPYC, AVX512, 1 thread): MKL's ``sgemm`` with inner dimension
    d + 2 = 4 takes 0.27 ns per entry and the clamp another 0.05 ns; oneDNN 0.17 ns for both,
    plus ~25 us more per call. Over a whole logged bilevel step (5000 + 45 000 kernel rows in
    1024-row calls) that was 7-8 % less CPU time than ``torch.mm`` + ``clamp_min_``, measured
    interleaved; the products agreed bitwise on every block checked
    (``tests/models/test_krr_fast.py`` allows float32 rounding).
    """
    global _ONEDNN_LINEAR
    tracked = torch.is_grad_enabled() and (a_left.requires_grad or b_right.requires_grad)
    if (_ONEDNN_LINEAR is None or a_left.dtype != torch.float32
            or b_right.dtype != torch.float32 or a_left.device.type != "cpu"
            or b_right.device.type != "cpu" or tracked or not _onednn_fp32_exact()):
        return None
    try:
        return _ONEDNN_LINEAR(a_left.contiguous(), b_right.contiguous(), None, "hardtanh",
                              [floor, 3.0e38], "")
    except RuntimeError:  # declared by this torch build but not runnable: stop trying
        _ONEDNN_LINEAR = None
        return None


def kernel_from_augmented(a_left: torch.Tensor, b_right: torch.Tensor, *,
                          out: torch.Tensor | None = None,
                          kernel: str = "gaussian") -> torch.Tensor:
    """Kernel block ``2^(A B^T) = exp(-||v - x||^2 / (2 s^2))`` from :func:`augment_left` and
    :func:`augment_right`, shape (M, N), written into ``out`` when given. With
    ``kernel="laplace"`` the same factors (built with ``s``) give ``exp(-||v - x|| / s)``:
    ``||v - x|| = s sqrt(-2 A B^T / log2 e)``.

    Exponents are clamped from below at the smallest normal exponent of the dtype (-126 in
    float32, :func:`_exponent_floor`): kernel values below ``2^-126`` are irrelevant, and
    subnormal numbers made ``exp2`` and the products after it 3-4x slower on far-apart points
    (measured). Rounding can make an exponent slightly positive (~1e-7 ||v||^2 / s^2 in
    float32); such values are left as they are.

    Speed: without ``out``, a float32 Gaussian block takes product and clamp in one oneDNN
    call (:func:`_clamped_exponents`); otherwise ``torch.mm`` and ``clamp_min_``. ``2^e`` is
    taken in place by :func:`_exp2_inplace` (numpy's SIMD loop where numpy has one: 0.22
    against 0.31 ns per float32 entry).
    """
    floor = _exponent_floor(a_left.dtype)
    e = None
    if out is None and kernel == "gaussian":
        e = _clamped_exponents(a_left, b_right, floor)
    if e is None:
        e = torch.mm(a_left, b_right.T, out=out) if out is not None else a_left @ b_right.T
        if kernel == "laplace":
            # e = log2(e) (-||v - x||^2 / (2 s^2)): back to ||v - x|| / s, then to the base-2
            # exponent of exp(-||v - x|| / s)
            e.mul_(-2.0 / _LOG2E).clamp_min_(0.0).sqrt_().mul_(-_LOG2E)
        e.clamp_min_(floor)
    return _exp2_inplace(e)


def kernel_matvec(v: torch.Tensor, x: torch.Tensor, coef: torch.Tensor, *, bandwidth: float,
                  chunk_rows: int = 1024, kernel: str = "gaussian") -> torch.Tensor:
    """``k(v, x) @ coef`` without forming the full (M, N) kernel matrix.

    Parameters
    ----------
    v : (M, d) tensor
        Evaluation points.
    x : (N, d) tensor
        Kernel centres (training inputs).
    coef : (N,) tensor
    bandwidth : float
    chunk_rows : int
        Rows of ``k(v, x)`` formed at a time (cache-sized blocks).
    kernel : "gaussian" | "laplace"

    Returns
    -------
    (M,) tensor in the dtype of ``v``.
    """
    chunk_rows = check_positive_int(chunk_rows, "chunk_rows")
    kernel = check_kernel(kernel)
    b = augment_right(x.to(v.dtype), bandwidth)
    c = coef.to(v.dtype)
    out = torch.empty(v.shape[0], dtype=v.dtype, device=v.device)
    buf = torch.empty(min(chunk_rows, v.shape[0]), b.shape[0], dtype=v.dtype, device=v.device)
    with torch.no_grad():
        for start in range(0, v.shape[0], chunk_rows):
            blk = augment_left(v[start:start + chunk_rows], bandwidth)
            k = kernel_from_augmented(blk, b, out=buf[:blk.shape[0]], kernel=kernel)
            torch.mv(k, c, out=out[start:start + chunk_rows])
    return out


class KernelRidge:
    """Kernel ridge regression with the Gaussian or Laplace kernel (scikit-learn style).

    Parameters
    ----------
    bandwidth : float
        Kernel length scale ``s``.
    kernel : "gaussian" | "laplace"
        ``exp(-||x - x'||^2 / (2 s^2))`` (default) or ``exp(-||x - x'|| / s)``.
    ridge : float
        Regularisation ``eps``; the system solved is ``(K + N eps I) a = y``.
    dtype : "float32" | "float64" | torch.dtype, optional
        Working dtype of predictions. ``None`` follows the training inputs (float32 for
        non-floating input).
    factor_dtype : "float32" | "float64" | torch.dtype
        Dtype of the kernel matrix, its Cholesky factor and the coefficients. float64 by
        default: float32 Cholesky of Gaussian kernel matrices fails for ``N eps`` below about
        1e-4 (FACTS.md), while float64 costs little at these sizes.
    chunk_rows : int
        Rows of the evaluation kernel formed at a time in :meth:`predict`.

    Attributes
    ----------
    coef_ : (N,) tensor
        Coefficients ``a`` (``factor_dtype``).
    x_train_ : (N, d) tensor
        Copy of the training inputs (``factor_dtype``).
    cholesky_ : (N, N) tensor
        Lower Cholesky factor of ``K + N eps I``.
    """

    def __init__(self, *, bandwidth: float = 1.0, ridge: float = 1e-7, dtype: Any = None,
                 factor_dtype: Any = "float64", chunk_rows: int = 1024, kernel: str = "gaussian"):
        self.bandwidth = check_positive_float(bandwidth, "bandwidth")
        self.kernel = check_kernel(kernel)
        self.ridge = check_positive_float(ridge, "ridge", allow_zero=True)
        self.dtype = None if dtype is None else resolve_dtype(dtype)
        self.factor_dtype = resolve_dtype(factor_dtype)
        self.chunk_rows = check_positive_int(chunk_rows, "chunk_rows")

    def fit(self, x, y) -> "KernelRidge":
        """Fit ``a = (K + N eps I)^{-1} y`` by Cholesky.

        Parameters
        ----------
        x : (N, d) array-like
        y : (N,) array-like

        Raises
        ------
        ValueError
            On shape mismatch, non-finite inputs or labels, or when ``K + N eps I`` is not
            numerically positive definite (the message suggests a larger ridge).
        """
        xt = as_tensor(x, "x")
        yt = as_tensor(y, "y")
        if xt.ndim != 2 or xt.shape[0] < 1:
            raise ValueError(f"x must have shape (N, d) with N >= 1, got {tuple(xt.shape)}")
        if yt.ndim != 1 or yt.shape[0] != xt.shape[0]:
            raise ValueError(f"y must have shape ({xt.shape[0]},) to match x, "
                             f"got {tuple(yt.shape)}")
        check_finite(xt.detach(), "x")
        check_finite(yt.detach(), "y")
        fx = xt.detach().to(self.factor_dtype).clone()
        fy = yt.detach().to(self.factor_dtype)
        n = fx.shape[0]
        chol = regularised_cholesky(kernel_matrix(fx, fx, self.bandwidth, self.kernel),
                                    n * self.ridge, ridge=self.ridge)
        # fitted attributes are set only once the factorisation succeeded: a failed refit
        # leaves the previous fit whole (it used to switch dtype_ and keep the old coef_)
        self.dtype_ = self.dtype or (xt.dtype if xt.dtype in (torch.float32, torch.float64)
                                     else torch.float32)
        self.x_train_ = fx
        self.cholesky_ = chol
        self.coef_ = torch.cholesky_solve(fy[:, None], chol)[:, 0]
        self.n_features_in_ = fx.shape[1]
        return self

    def predict(self, v) -> torch.Tensor:
        """Predictions ``f(v) = k(v, X) a``.

        Parameters
        ----------
        v : (M, d) array-like

        Returns
        -------
        (M,) tensor in the working dtype.
        """
        if not hasattr(self, "coef_"):
            raise ValueError("this KernelRidge is not fitted yet; call fit(x, y) first")
        vt = as_tensor(v, "v")
        if vt.ndim != 2 or vt.shape[1] != self.n_features_in_:
            raise ValueError(f"v must have shape (M, {self.n_features_in_}), got {tuple(vt.shape)}")
        check_finite(vt.detach(), "v")
        return kernel_matvec(vt.detach().to(self.dtype_), self.x_train_, self.coef_,
                             bandwidth=self.bandwidth, chunk_rows=self.chunk_rows,
                             kernel=self.kernel)

    def __repr__(self) -> str:
        return (f"KernelRidge(bandwidth={self.bandwidth}, ridge={self.ridge}, "
                f"kernel={self.kernel!r}, dtype={self.dtype}, factor_dtype={self.factor_dtype})")


def regularised_cholesky(kernel: torch.Tensor, shift: float, *, ridge: float) -> torch.Tensor:
    """Lower Cholesky factor of ``kernel + shift I`` (a new tensor; ``kernel`` is not modified).

    Raises ``ValueError`` naming ``ridge`` when the factorisation fails.
    """
    mat = kernel + shift * torch.eye(kernel.shape[0], dtype=kernel.dtype, device=kernel.device)
    chol, info = torch.linalg.cholesky_ex(mat)
    if int(info) != 0:
        raise ValueError(f"Cholesky factorisation of K + N*ridge*I failed in {kernel.dtype} "
                         f"(leading minor {int(info)} of {kernel.shape[0]} is not positive "
                         f"definite) with ridge={ridge:g}; use a larger ridge, float64, or "
                         "remove duplicate training inputs")
    return chol
