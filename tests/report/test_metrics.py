"""Error metrics against hand computations (SPEC §1)."""

import math

import numpy as np
import pytest
import torch

from wheretolearn.report import (mean_ci95, per_sample_relative_errors, relative_ood_error,
                                 relative_ood_error_squared, tail_summary)


def test_relative_ood_error_hand_computed():
    truth = np.array([[1.0, 3.0], [2.0, 2.0]])
    pred = np.array([[1.0, 1.0], [2.0, 3.0]])
    # num = mean(0, 4) + mean(0, 1) = 2.5; den = mean(1, 9) + mean(4, 4) = 9
    assert relative_ood_error_squared(pred, truth) == pytest.approx(2.5 / 9)
    assert relative_ood_error(torch.from_numpy(pred), torch.from_numpy(truth)) == pytest.approx(
        math.sqrt(2.5 / 9))


def test_relative_ood_error_vector_outputs_and_ragged():
    truth = np.zeros((1, 2, 2))
    truth[0, 0] = [3.0, 4.0]
    truth[0, 1] = [0.0, 1.0]
    pred = truth.copy()
    pred[0, 0] = [0.0, 0.0]
    # num = mean(25, 0) = 12.5, den = mean(25, 1) = 13
    assert relative_ood_error_squared(pred, truth) == pytest.approx(12.5 / 13)
    # ragged: measure sizes differ, each measure weighted equally (mean within measure)
    t = [np.array([1.0, 1.0, 1.0, 1.0]), np.array([2.0])]
    p = [np.array([0.0, 1.0, 1.0, 1.0]), np.array([2.0])]
    assert relative_ood_error_squared(p, t) == pytest.approx(0.25 / (1 + 4))


def test_relative_ood_error_rejects_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        relative_ood_error(np.zeros((2, 3)), np.ones((2, 4)))
    # a scalar truth used to fail inside list() with "iteration over a 0-d array"
    with pytest.raises(ValueError, match="same shape"):
        relative_ood_error(np.zeros((2, 3)), 1.0)
    with pytest.raises(ValueError, match="zero"):
        relative_ood_error(np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="finite"):
        relative_ood_error(np.full((1, 2), np.nan), np.ones((1, 2)))


def test_per_sample_relative_errors():
    truth = np.array([[3.0, 4.0], [1.0, 0.0], [0.0, 0.0]])
    pred = np.array([[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    np.testing.assert_allclose(per_sample_relative_errors(pred, truth), [1.0, 1.0, 0.0])
    out = per_sample_relative_errors(pred, truth, batch_ndim=2)
    assert out.shape == (3, 2)
    np.testing.assert_allclose(out[0], [1.0, 1.0])
    assert out[1, 1] == np.inf
    with pytest.raises(ValueError, match="batch_ndim"):
        per_sample_relative_errors(pred, truth, batch_ndim=3)


def test_tail_summary():
    e = np.arange(101.0)  # 0..100: percentiles equal their rank
    s = tail_summary(e)
    assert s == {"mean": 50.0, "median": 50.0, "p95": 95.0, "p99": 99.0, "max": 100.0}
    with pytest.raises(ValueError, match="at least one"):
        tail_summary([])


def test_mean_ci95_t_interval():
    v = [1.0, 2.0, 3.0, 4.0]
    # mean 2.5, sd = sqrt(5/3), t_{0.975,3} = 3.182446305284263
    half = 3.182446305284263 * math.sqrt(5 / 3) / 2
    out = mean_ci95(v)
    assert out["n"] == 4 and out["mean"] == pytest.approx(2.5)
    assert out["lo"] == pytest.approx(2.5 - half) and out["hi"] == pytest.approx(2.5 + half)
    assert mean_ci95([0.7]) == {"mean": 0.7, "lo": 0.7, "hi": 0.7, "n": 1}
