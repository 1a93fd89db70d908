"""Names, coordinates and units of a data-set store, so that ``xarray.open_zarr`` reads it.

Every array of a store carries zarr v3 ``dimension_names`` and CF-style attributes
(``long_name``, ``units``, ``description``); coordinate variables sit next to ``inputs`` and
``outputs`` at the root of the store, so ``xr.open_zarr(path)`` gives a Dataset like::

    <xarray.Dataset>  (heat2d, n = 8, 4 output times)
    Dimensions:    (sample: 5, parameter: 5, t: 4, y: 8, x: 8, chunk: 3)
    Coordinates:   sample, parameter (T_init ... T_top), t, y, x
    Data variables: inputs (sample, parameter), outputs (sample, t, y, x), completed (chunk)
    Attributes:    problem, options, measure, seed, n, chunk, key, version, created, ...

Grid conventions (docs/problems.md): ``darcy`` and ``radiative`` fields are ``v[i, j] =
v(x_i, y_j)`` (first index = x); a ``heat2d`` field is ``T[t, i, j]`` at ``y_i``, ``x_j``
(rows bottom to top); ``burgers`` is periodic on ``[0, 2 pi)``; ``ntd`` values sit on the
boundary nodes in the order of ``coords/points`` (arclength parameter ``s``). All problems
are nondimensional (units ``"1"``) except ``heat2d`` temperatures (``"K"``, Melissa's
example). A problem without an entry here (a user's problem) gets dimensions
``input_dim_k`` / ``output_dim_k``, or those of ``problem.dataset_layout()`` when it defines
one (returning a :class:`DatasetLayout`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

__all__ = ["DatasetLayout", "dataset_layout"]

Coord = tuple[tuple[str, ...], Any, dict]


@dataclasses.dataclass
class DatasetLayout:
    """Dimension names and attributes of ``inputs`` / ``outputs`` and the coordinate
    variables (``name -> (dims, values, attrs)``) of one problem's store."""

    input_dims: tuple[str, ...]
    output_dims: tuple[str, ...]
    input_attrs: dict
    output_attrs: dict
    coords: dict[str, Coord]
    global_attrs: dict = dataclasses.field(default_factory=dict)


def _axis(name: str, values: Any, long_name: str, units: str = "1") -> Coord:
    return ((name,), np.asarray(values), {"long_name": long_name, "units": units})


def _grid_xy(problem: Any) -> dict[str, Coord]:
    c = problem.coordinates()
    return {"x": _axis("x", c["x"], "x coordinate of the grid node"),
            "y": _axis("y", c["y"], "y coordinate of the grid node")}


def _layout_heat2d(problem: Any) -> DatasetLayout:
    c = problem.coordinates()
    names = list(problem.parameter_names)
    coords = {"parameter": (("parameter",), np.asarray(names, dtype=str),
                            {"long_name": "input parameter (initial and wall temperatures)"}),
              "t": _axis("t", c["t"], "time of the output step", "1"),
              "y": _axis("y", c["y"], "y coordinate of the interior node"),
              "x": _axis("x", c["x"], "x coordinate of the interior node")}
    return DatasetLayout(
        ("sample", "parameter"), ("sample", "t", "y", "x"),
        {"long_name": "initial and wall temperatures", "units": "K"},
        {"long_name": "temperature field", "units": "K",
         "description": "T[t, i, j] at y_i (rows bottom to top), x_j, after step t"},
        coords)


def _layout_burgers(problem: Any) -> DatasetLayout:
    c = problem.coordinates()
    return DatasetLayout(
        ("sample", "x"), ("sample", "x"),
        {"long_name": "initial velocity u0(x)", "units": "1"},
        {"long_name": "velocity u(x, t_final)", "units": "1"},
        {"x": _axis("x", c["x"], "periodic grid point on [0, 2 pi)")})


def _layout_field(problem: Any, in_name: str, out_name: str) -> DatasetLayout:
    return DatasetLayout(
        ("sample", "x", "y"), ("sample", "x", "y"),
        {"long_name": in_name, "units": "1", "description": "v[i, j] = v(x_i, y_j)"},
        {"long_name": out_name, "units": "1", "description": "v[i, j] = v(x_i, y_j)"},
        _grid_xy(problem))


def _layout_ntd(problem: Any) -> DatasetLayout:
    c = problem.coordinates()
    coords = {"boundary": _axis("boundary", c["s"],
                                "boundary parameter s (clockwise from (0, 1))")}
    return DatasetLayout(
        ("sample", "boundary"), ("sample", "boundary"),
        {"long_name": "boundary current g = a du/dn", "units": "1"},
        {"long_name": "mean-free Dirichlet trace u", "units": "1"},
        coords)


def _layout_scalar(problem: Any) -> DatasetLayout:
    dim = problem.input_shape[0]
    return DatasetLayout(
        ("sample", "dim"), ("sample",),
        {"long_name": "input point", "units": "1"},
        {"long_name": f"{problem.name} value", "units": "1"},
        {"dim": _axis("dim", np.arange(dim), "input coordinate index")})


_LAYOUTS = {
    "heat2d": _layout_heat2d,
    "burgers": _layout_burgers,
    "darcy": lambda p: _layout_field(p, "log-permeability log a(x, y)", "pressure u(x, y)"),
    "radiative": lambda p: _layout_field(p, "scattering coefficient a(x, y)",
                                         "density rho(x, y)"),
    "ntd": _layout_ntd,
}


def _generic(in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> DatasetLayout:
    in_dims = ("sample", *(f"input_dim_{k}" for k in range(len(in_shape))))
    out_dims = ("sample", *(f"output_dim_{k}" for k in range(len(out_shape))))
    return DatasetLayout(in_dims, out_dims, {"long_name": "input"}, {"long_name": "output"}, {})


def dataset_layout(problem: Any, in_shape: tuple[int, ...],
                   out_shape: tuple[int, ...]) -> DatasetLayout:
    """The :class:`DatasetLayout` of ``problem``'s store (``in_shape`` / ``out_shape``: one
    sample's input and output shapes). Falls back to generic names when the problem's own
    layout does not match the shapes."""
    own = getattr(problem, "dataset_layout", None)
    make = (lambda p: own()) if callable(own) else _LAYOUTS.get(problem.name)
    if make is None:
        if len(out_shape) == 0 and len(in_shape) == 1:
            make = _layout_scalar
    layout = make(problem) if make is not None else _generic(in_shape, out_shape)
    if (len(layout.input_dims) != 1 + len(in_shape)
            or len(layout.output_dims) != 1 + len(out_shape)):
        layout = _generic(in_shape, out_shape)
    pairs = [*zip(layout.input_dims[1:], in_shape), *zip(layout.output_dims[1:], out_shape)]
    sizes = dict(pairs)
    if any(sizes[d] != s for d, s in pairs):           # one name, two lengths
        layout = _generic(in_shape, out_shape)
    coords = {name: c for name, c in layout.coords.items()
              if all(sizes.get(d) == s for d, s in zip(c[0], np.shape(c[1])))}
    layout.coords = coords
    layout.global_attrs = {"Conventions": "CF-1.8",
                           "title": f"wheretolearn data set: {problem.name}",
                           "dimension_order": {"inputs": list(layout.input_dims),
                                               "outputs": list(layout.output_dims)}}
    return layout
