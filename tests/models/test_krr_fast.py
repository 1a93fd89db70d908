"""Kernel blocks through the fast path (oneDNN product with the clamp fused, numpy's SIMD
``exp2``: ``wheretolearn.models.krr._clamped_exponents`` / ``_exp2_inplace``) against
independent float64 truth and against the previous ``torch.mm`` + ``torch.exp2`` path.

The bilevel study logs ``||y_U - k(U, X) a||`` over 45 000 unseen rows every step through
:func:`~wheretolearn.models.krr.kernel_from_augmented`; these tests pin that the faster path
computes the same numbers (to float32 rounding) as the formula it replaces.
"""

import math

import numpy as np
import pytest
import torch

from wheretolearn.models.krr import (_exp2_inplace, _exponent_floor, augment_left,
                                     augment_right, kernel_from_augmented)


def _points(seed=0, m=3000, n=250, d=2, spread=4.0):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(m, d, generator=g, dtype=torch.float64) * spread   # some pairs far apart
    x = torch.randn(n, d, generator=g, dtype=torch.float64) + 0.5
    return v, x


def _plain(a_left, b_right):
    """The path before the fast one: ``torch.mm``, ``clamp_min_``, ``torch.exp2``."""
    e = a_left @ b_right.T
    e.clamp_min_(_exponent_floor(e.dtype))
    return torch.exp2(e)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exp2_matches_float64_truth(dtype):
    e = torch.linspace(-126.0, 3.0, 200_001, dtype=dtype)
    truth = torch.exp2(e.double())           # exact inputs: 2^e in float64 is the reference
    got = _exp2_inplace(e.clone())
    rel = ((got.double() - truth) / truth).abs().max().item()
    assert rel < (3e-7 if dtype == torch.float32 else 1e-15)


def test_exp2_in_place_and_autograd_fallback():
    e = torch.tensor([0.0, 1.0, -2.5])
    out = _exp2_inplace(e)
    assert out is e and torch.allclose(e, torch.tensor([1.0, 2.0, 2.0 ** -2.5]))
    leaf = torch.tensor([0.5, -1.0], requires_grad=True)
    y = _exp2_inplace(leaf * 1.0)       # tracked by autograd: Tensor.exp2_, differentiable
    y.sum().backward()
    assert torch.allclose(leaf.grad, math.log(2.0) * torch.exp2(leaf.detach()))


@pytest.mark.parametrize("bandwidth", [1.0, 0.3])
def test_kernel_block_equals_previous_path_and_truth(bandwidth):
    v, x = _points()
    truth = torch.exp(-torch.cdist(v, x) ** 2 / (2 * bandwidth ** 2))       # explicit distances
    floor = 2.0 ** _exponent_floor(torch.float32)
    a_left = augment_left(v.float(), bandwidth)
    b_right = augment_right(x.float(), bandwidth)
    with torch.no_grad():
        fast = kernel_from_augmented(a_left, b_right)                     # no out: fast path
        plain = _plain(a_left, b_right)
        into = kernel_from_augmented(a_left, b_right, out=torch.empty(len(v), len(x)))
    assert fast.shape == (3000, 250) and fast.dtype == torch.float32
    # same exponents (bitwise on the benchmark machine), the two exp2 within a few ulp
    np.testing.assert_allclose(fast.numpy(), plain.numpy(), rtol=3e-7, atol=0)
    np.testing.assert_allclose(into.numpy(), plain.numpy(), rtol=3e-7, atol=0)
    # against float64 truth: the float32 exponent carries a few ulp of its terms, ~1e-7
    # (|v|^2 + |x|^2) / s^2 (measured largest: 2.3e-7 (1 + that sum) on this case, both paths)
    big = truth > floor
    err = ((fast.double() - truth).abs() / truth)[big]
    sq = ((v * v).sum(1)[:, None] + (x * x).sum(1)[None, :]) / bandwidth ** 2
    assert bool((err <= 4e-7 * (1.0 + sq[big])).all())
    # far pairs sit at the floor 2^-126, as before
    assert torch.equal(fast[~big], torch.full_like(fast[~big], floor))
    assert int((~big).sum()) > 0


def test_matvec_of_fast_blocks_equals_float64_matvec():
    """The quantity the bilevel logging forms: ``k(V, X) a`` in 1024-row chunks."""
    v, x = _points(seed=3, m=5000)
    a = torch.randn(250, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    truth = torch.exp(-torch.cdist(v, x) ** 2 / 2.0) @ a
    a_left, b_right = augment_left(v.float(), 1.0), augment_right(x.float(), 1.0)
    with torch.no_grad():
        got = torch.cat([torch.mv(kernel_from_augmented(a_left[i:i + 1024], b_right), a.float())
                         for i in range(0, 5000, 1024)])
    scale = (torch.exp(-torch.cdist(v, x) ** 2 / 2.0) @ a.abs()).max().item()
    assert (got.double() - truth).abs().max().item() < 2e-6 * scale


def test_fast_product_only_where_float32_products_stay_exact():
    """The oneDNN path runs only for float32, untracked, full-precision products; otherwise
    the caller falls back to ``torch.mm`` (None)."""
    from wheretolearn.models import krr

    v, x = _points(m=64, n=16)
    a32, b32 = augment_left(v.float(), 1.0), augment_right(x.float(), 1.0)
    assert krr._clamped_exponents(a32.double(), b32.double(), -1022.0) is None
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")      # user allows bf16 products
        assert krr._clamped_exponents(a32, b32, -126.0) is None
    finally:
        torch.set_float32_matmul_precision(before)
    if krr._ONEDNN_LINEAR is not None:
        got = krr._clamped_exponents(a32, b32, -126.0)
        np.testing.assert_allclose(got.numpy(), (a32 @ b32.T).clamp_min(-126.0).numpy(),
                                   rtol=1e-6, atol=1e-5)
