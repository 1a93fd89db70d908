"""The per-step unseen-error logging of the bilevel descent (45 000 kernel rows per step in the
paper setting) against an independent float64 computation and against the code before
numpy's ``exp2`` (``torch.mm`` + ``clamp_min_`` + ``torch.exp2`` in 1024-row chunks)."""

import math

import pytest
import torch

from wheretolearn.design import make_metatest
from wheretolearn.design.bilevel import KRRSettings, _unseen_error, _Workspace
from wheretolearn.models.krr import _exponent_floor, augment_right
from wheretolearn.problems import get_problem


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _previous(ws, right, coef):
    """The unseen error as computed before (``torch.exp2``), kept here as the reference."""
    c = coef.to(ws.dtype)
    parts = []
    for start in range(0, ws.unseen_left.shape[0], 1024):
        e = ws.unseen_left[start:start + 1024] @ right.T
        e.clamp_min_(_exponent_floor(e.dtype))
        parts.append(torch.exp2(e) @ c)
    diff = torch.cat(parts) - ws.unseen_y
    return math.sqrt(float(diff.double() @ diff.double()) / ws.unseen_den)


@pytest.mark.parametrize("name,dim,bandwidth,scale", [("sobol-g", 2, 1.0, 1.0),
                                                      ("sobol-g", 2, 1.0, 3.0),
                                                      ("rkhs", 10, 5.0, 1.0)])
def test_unseen_error_equals_float64_formula_and_previous_path(name, dim, bandwidth, scale):
    problem = get_problem(name, dim=dim)
    mt = make_metatest(problem, n_measures=10, n_seen=500, n_unseen=4500, seed=0)
    ws = _Workspace(mt, KRRSettings(bandwidth=bandwidth, factor_dtype=torch.float64),
                    dtype=torch.float32, label_scale=1.0, eval_unseen=True)
    g = torch.Generator().manual_seed(7)
    x = (torch.randn(250, dim, generator=g) * scale + 0.5)
    coef = torch.randn(250, generator=g, dtype=torch.float64) * 10.0
    with torch.no_grad():
        got = _unseen_error(ws, augment_right(x, bandwidth), coef)
        before = _previous(ws, augment_right(x, bandwidth), coef)
    # independent truth: explicit float64 distances, the whole (45000, 250) matrix at once
    u = mt.unseen_x.reshape(-1, dim).double()
    yu = mt.unseen_y.reshape(-1).double()
    k = torch.exp(-torch.cdist(u, x.double()) ** 2 / (2 * bandwidth ** 2))
    truth = float((yu - k @ coef).norm() / yu.norm())
    assert got == pytest.approx(truth, rel=2e-6)
    assert got == pytest.approx(before, rel=1e-6)
