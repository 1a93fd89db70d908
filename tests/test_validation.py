"""Tests of the public-boundary helpers in wheretolearn._validation."""

import numpy as np
import pytest
import torch

from wheretolearn._validation import as_tensor, check_bounds
from wheretolearn.measures import Empirical, Gaussian, Uniform


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_as_tensor_does_not_share_memory_with_numpy_input(dtype):
    a = np.zeros(3, dtype=dtype)
    t = as_tensor(a, "a", dtype=torch.float32 if dtype == np.float32 else torch.float64)
    a[0] = 5.0
    assert float(t[0]) == 0.0


def test_as_tensor_keeps_tensor_identity_and_graph():
    x = torch.zeros(3, requires_grad=True)
    assert as_tensor(x, "x") is x


def test_measures_do_not_follow_later_writes_to_callers_numpy_arrays():
    mean, pts, low = np.zeros(2, np.float32), np.ones((4, 2), np.float32), np.zeros(2, np.float32)
    g, e, u = Gaussian(mean, np.eye(2, dtype=np.float32)), Empirical(pts), Uniform(low, 1.0)
    mean[:], pts[:], low[:] = 7.0, 7.0, 0.5
    assert torch.equal(g.mean, torch.zeros(2))
    assert torch.equal(e.points, torch.ones(4, 2))
    assert torch.equal(u.low, torch.zeros(2))


def test_as_tensor_names_argument_on_bad_input():
    with pytest.raises(TypeError, match="points must be array-like"):
        as_tensor(object(), "points")


@pytest.mark.parametrize("low, high, where", [(1.0, 0.0, "low=1.0 >= high=0.0 in dimension 0"),
                                              ([0.0, 2.0], [1.0, 2.0],
                                               "low=2.0 >= high=2.0 in dimension 1")])
def test_check_bounds_names_the_offending_dimension(low, high, where):
    # scalars used to fail inside numpy ("Calling nonzero on 0d arrays is not allowed")
    with pytest.raises(ValueError, match=f"bounds must satisfy low < high.*{where}"):
        check_bounds(low, high)


def test_check_bounds_accepts_scalars_and_vectors():
    check_bounds(0.0, 1.0)
    check_bounds(np.zeros(3), np.ones(3))
