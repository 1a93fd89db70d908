"""Data-set content keys include the storage dtype; measure_params reach every measure that
has ``with_params`` (issue 15 §4)."""

import math

import numpy as np
import pytest
import torch

from wheretolearn.datasets import (ComputeOptions, InputSampling, find_or_generate, open_dataset,
                                   resolve_measure)
from wheretolearn.measures import LogNormalField, NtDInputMeasure, Uniform
from wheretolearn.problems import get_problem


def test_float64_request_does_not_return_cached_float32_data(tmp_path):
    problem = get_problem("sobol-g", dim=2)
    box32 = Uniform(torch.zeros(2), torch.ones(2), dtype="float32")
    box64 = Uniform(torch.zeros(2), torch.ones(2), dtype="float64")
    local = ComputeOptions(workers=0)
    a = find_or_generate(tmp_path, problem, 8, sampling=InputSampling(measure=box32),
                         compute=local)
    b = find_or_generate(tmp_path, problem, 8, sampling=InputSampling(measure=box64),
                         compute=local)
    assert a.path != b.path                      # used to be the same store
    assert open_dataset(a.path)["inputs"].dtype == np.float32
    x64 = open_dataset(b.path)["inputs"]
    assert x64.dtype == np.float64
    # a float64 draw keeps digits a float32 round trip loses
    assert np.any(x64 != x64.astype(np.float32).astype(np.float64))


def test_measure_params_for_ntd_and_lognormal_measures():
    ntd = resolve_measure(get_problem("ntd", n=9), measure_params={"omega": 1.0})
    assert isinstance(ntd, NtDInputMeasure) and math.isclose(float(ntd.omega), 1.0)
    rad = get_problem("radiative", n=9, n_angles=4)
    field = resolve_measure(rad, measure_params={"alpha": 3.0})
    assert isinstance(field, LogNormalField) and float(field.log_field.alpha) == 3.0
    with pytest.raises(ValueError, match="unknown parameter 'nope'"):
        resolve_measure(get_problem("ntd", n=9), measure_params={"nope": 1.0})
