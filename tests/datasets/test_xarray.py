"""Every problem's store opens with ``xarray.open_zarr(path)`` (issue 16 item 4): named
dimensions, coordinates attached, units and long names, provenance in the attributes,
values identical to the project's own reader."""

import warnings

import numpy as np
import pytest

from wheretolearn.datasets import ComputeOptions, InputSampling, generate_dataset, open_dataset
from wheretolearn.problems import available_problems, get_problem

xr = pytest.importorskip("xarray")

#: Small options per problem: (options, expected input dims, expected output dims).
SMALL = {
    "heat2d": ({"n": 6, "n_steps": 4, "output_every": 2},
               ("sample", "parameter"), ("sample", "t", "y", "x")),
    "grayscott": ({"n": 6, "n_steps": 2, "every": 3},
                  ("sample", "parameter"), ("sample", "t", "y", "x")),
    "burgers": ({"n": 16, "n_steps": 5}, ("sample", "x"), ("sample", "x")),
    "darcy": ({"n": 8}, ("sample", "x", "y"), ("sample", "x", "y")),
    "ntd": ({"n": 6}, ("sample", "boundary"), ("sample", "boundary")),
    "radiative": ({"n": 7, "n_angles": 4}, ("sample", "x", "y"), ("sample", "x", "y")),
    "sobol-g": ({}, ("sample", "dim"), ("sample",)),
    "friedman1": ({}, ("sample", "dim"), ("sample",)),
    "friedman2": ({}, ("sample", "dim"), ("sample",)),
    "rkhs": ({}, ("sample", "dim"), ("sample",)),
}


def test_every_problem_with_an_input_measure_is_covered():
    for name in available_problems():
        if name in SMALL:
            continue
        try:
            get_problem(name).default_input_measure()
        except Exception:       # needs required options (e.g. a command) or has no measure
            continue
        pytest.fail(f"problem {name!r} generates data sets: add it to SMALL")


@pytest.mark.parametrize("name", sorted(SMALL))
def test_store_round_trips_through_xarray(tmp_path, name):
    if name not in available_problems():
        pytest.skip(f"{name!r} not registered")
    options, in_dims, out_dims = SMALL[name]
    try:
        get_problem(name, **options).default_input_measure()
    except NotImplementedError:
        pytest.skip(f"{name!r} has no default input measure")
    path = tmp_path / f"{name}.zarr"
    generate_dataset(name, 3, path, options=options, sampling=InputSampling(chunk=2),
                     compute=ComputeOptions(workers=0, progress=False))
    with warnings.catch_warnings():
        warnings.simplefilter("error")           # consolidated: no fallback warning
        ds = xr.open_zarr(path)
    ours = open_dataset(path)
    assert ds["inputs"].dims == in_dims and ds["outputs"].dims == out_dims
    np.testing.assert_array_equal(ds["inputs"].values, ours["inputs"])
    np.testing.assert_array_equal(ds["outputs"].values, ours["outputs"])
    for var in ("inputs", "outputs"):
        assert ds[var].attrs["long_name"] and "units" in ds[var].attrs
    for dim in set(in_dims + out_dims) - {"sample"}:
        assert dim in ds.coords, dim                               # coordinates attached
    np.testing.assert_array_equal(ds["sample"].values, np.arange(3))
    assert ds.attrs["problem"] == name and ds.attrs["key"] == ours["attrs"]["key"]
    assert ds.attrs["created_by"] == "wheretolearn" and ds.attrs["complete"] is True
    assert ds.attrs["dimension_order"]["outputs"] == list(out_dims)
    for coord, values in ours["coords"].items():
        if coord in ds.coords and ds[coord].ndim == 1 and coord != "boundary":
            np.testing.assert_allclose(ds[coord].values, values)


def test_heat2d_parameters_are_named_and_the_grid_is_y_then_x(tmp_path):
    path = tmp_path / "h.zarr"
    generate_dataset("heat2d", 2, path, options={"n": 5, "n_steps": 2},
                     compute=ComputeOptions(workers=0, progress=False))
    ds = xr.open_zarr(path)
    p = get_problem("heat2d", n=5, n_steps=2)
    assert list(ds["parameter"].values) == list(p.parameter_names)
    c = p.coordinates()
    np.testing.assert_allclose(ds["y"].values, c["y"])
    np.testing.assert_allclose(ds["t"].values, c["t"])
    # select by name: the initial temperature of sample 1, the field at the last step
    t_init = float(ds["inputs"].sel(sample=1, parameter="T_init"))
    assert t_init == pytest.approx(open_dataset(path)["inputs"][1, 0])
    assert ds["outputs"].attrs["units"] == "K"
