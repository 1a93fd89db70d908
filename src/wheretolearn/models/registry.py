"""Neural operators built by name (issue 26), as neuraloperator builds its models.

A *model spec* names one of two things:

1. a model registered in :data:`MODELS` (``"deeponet"``, ``"fno"``; a package may add its own
   with :func:`register_model`);
2. a user's factory by import path, ``"package.module:factory"`` or
   ``"path/to/file.py:factory"`` (the same forms as user problems,
   :mod:`wheretolearn.problems.plugins`).

Every factory is called as ``factory(grid, *, seed, dtype, **init_args)`` and returns a
``torch.nn.Module`` that maps inputs ``(B, *grid.input_shape)`` to outputs ``(B,
*grid.output_shape)``; ``grid`` (:class:`ModelGrid`) describes the problem's discretisation
(shapes and the output coordinates). :func:`build_model` runs the factory with the global
random state forked and seeded (so a factory that ignores ``seed`` is still seeded) and
records ``(name, grid, init_args, dtype)`` on the model (``model.model_spec``);
:func:`save_model` writes that record next to the weights, so :func:`load_saved_model`
rebuilds the model without the study's configuration -- neuraloperator's checkpoints keep
the constructor arguments the same way. Init arguments must therefore be plain data (numbers,
strings, booleans, None, lists and dicts of them), as a TOML file gives them.

A checkpoint is data, not code (issue 24 item 2): :func:`load_saved_model` rebuilds only the
models registered by this package by itself; a checkpoint naming user code is refused unless
the caller trusts it (``trust=True``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .._validation import check_nonnegative_int, resolve_dtype

__all__ = ["MODELS", "MODEL_PRESETS", "ModelGrid", "ModelEntry", "register_model",
           "available_models", "build_model", "save_model", "load_saved_model",
           "preset_init_args", "is_builtin_model", "UntrustedModelError"]

#: ``kind`` of a checkpoint written by :func:`save_model` (a DeepONet keeps its own format).
CHECKPOINT_KIND = "wheretolearn.model"
_CHECKPOINT_KEYS = ("kind", "name", "grid", "points", "init_args", "dtype", "state_dict")
_PACKAGE = "wheretolearn.models."


class UntrustedModelError(ValueError):
    """A checkpoint names user code (``name``, an import path) and the caller did not say it
    trusts the file."""

    def __init__(self, name: str, path: Path):
        self.name, self.path = name, path
        super().__init__(f"{str(path)!r} names user code (model {name!r}); loading it would "
                         f"import that code: pass trust=True if you trust who wrote the file")


@dataclass(frozen=True)
class ModelGrid:
    """What a model factory knows of the problem.

    Attributes
    ----------
    input_shape : tuple of int
        Shape of one input (e.g. ``(n, n)`` for Darcy, ``(4 n - 4,)`` for NtD).
    output_shape : tuple of int
        Shape of one output.
    points : (prod(output_shape), d) float64 array
        Coordinates of the output values (a DeepONet's trunk inputs).
    problem : str
        The problem's name, for messages.
    """

    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    points: np.ndarray
    problem: str = "the problem"

    def __post_init__(self) -> None:
        for name in ("input_shape", "output_shape"):
            shape = tuple(getattr(self, name))
            if not shape or any(isinstance(s, bool) or int(s) != s or s < 1 for s in shape):
                raise ValueError(f"{name} must be a non-empty tuple of positive ints, got "
                                 f"{getattr(self, name)!r}")
            object.__setattr__(self, name, tuple(int(s) for s in shape))
        pts = np.asarray(self.points, dtype=np.float64)
        size = math.prod(self.output_shape)
        if pts.ndim != 2 or pts.shape[0] != size:
            raise ValueError(f"points must have shape ({size}, d) (one row per output value "
                             f"of shape {list(self.output_shape)}), got {pts.shape}")
        object.__setattr__(self, "points", pts)

    def record(self) -> dict:
        """The grid as plain data (``points`` as a float64 tensor), for a checkpoint."""
        return {"input_shape": list(self.input_shape), "output_shape": list(self.output_shape),
                "problem": str(self.problem)}

    @classmethod
    def from_record(cls, rec: dict, points: Any) -> "ModelGrid":
        if not isinstance(rec, dict) or set(rec) != {"input_shape", "output_shape", "problem"}:
            raise ValueError(f"a model grid record holds input_shape, output_shape and "
                             f"problem; got {sorted(rec) if isinstance(rec, dict) else rec!r}")
        pts = points.numpy() if isinstance(points, torch.Tensor) else points
        return cls(tuple(rec["input_shape"]), tuple(rec["output_shape"]), pts,
                   str(rec["problem"]))


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its factory and ``fits(grid) -> reason or None``."""

    name: str
    factory: Callable[..., torch.nn.Module]
    fits: Callable[[ModelGrid], str | None] | None = None
    description: str = ""

    def why_not(self, grid: ModelGrid) -> str | None:
        return None if self.fits is None else self.fits(grid)


#: Registered models by name.
MODELS: dict[str, ModelEntry] = {}


def register_model(name: str, *, fits: Callable[[ModelGrid], str | None] | None = None,
                   description: str = "") -> Callable:
    """Decorator: register ``factory(grid, *, seed, dtype, **init_args) -> nn.Module`` as
    ``name``. ``fits(grid)`` returns why the model cannot serve a grid (None: it can)."""
    from ..problems.plugins import is_import_spec

    if not isinstance(name, str) or not name or is_import_spec(name):
        raise ValueError(f"a model name must be a non-empty string without ':', got {name!r}")

    def deco(factory: Callable) -> Callable:
        old = MODELS.get(name)
        if old is not None and old.factory is not factory:
            raise ValueError(f"model {name!r} is already registered (by "
                             f"{old.factory.__module__}.{old.factory.__qualname__})")
        MODELS[name] = ModelEntry(name, factory, fits, description)
        return factory

    return deco


def is_builtin_model(name: Any) -> bool:
    """Whether ``name`` is a model registered by a module of :mod:`wheretolearn.models`
    (rebuilding it runs only the package's code)."""
    entry = MODELS.get(name) if isinstance(name, str) else None
    return entry is not None and getattr(entry.factory, "__module__", "").startswith(_PACKAGE)


def available_models(grid: ModelGrid | None = None) -> list[str]:
    """Registered model names (those that fit ``grid`` when given)."""
    return [n for n, e in MODELS.items() if grid is None or e.why_not(grid) is None]


def _entry(spec: str) -> ModelEntry:
    """The registered model or the user's factory ``spec`` names (imports user code)."""
    from ..problems.plugins import canonical_spec, is_import_spec, load_factory

    if not isinstance(spec, str):
        raise TypeError(f"model must be a registered name or an import path, got {spec!r}")
    if spec in MODELS:
        return MODELS[spec]
    if not is_import_spec(spec):
        raise ValueError(f"unknown model {spec!r}; choose one of {', '.join(MODELS)} or a "
                         "factory by import path 'package.module:factory' / "
                         "'file.py:factory'")
    spec = canonical_spec(spec)
    try:
        factory = load_factory(spec)
    except ValueError as exc:   # plugins words its errors for problems
        raise ValueError(f"model {spec!r}: {str(exc).removeprefix(f'problem {spec!r}: ')}") \
            from exc.__cause__
    return ModelEntry(spec, factory, None, "user factory")


def _plain(value: Any, where: str) -> Any:
    """``value`` if it is plain data a weights-only checkpoint can hold, else TypeError."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _plain(v, f"{where}.{k}") for k, v in value.items()}
    raise TypeError(f"model init argument {where} must be plain data (number, string, bool, "
                    f"None, list or dict), got {type(value).__name__}")


def _cast(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Floating parameters and buffers to ``dtype`` (complex ones to its complex type)."""
    complex_dt = torch.complex64 if dtype == torch.float32 else torch.complex128
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            want = dtype if t.is_floating_point() else complex_dt if t.is_complex() else None
            if want is not None and t.dtype != want:
                t.data = t.data.to(want)


def build_model(spec: str, grid: ModelGrid, *, seed: int | None = None, dtype: Any = None,
                **init_args: Any) -> torch.nn.Module:
    """A fresh model ``(B, *grid.input_shape) -> (B, *grid.output_shape)``.

    Parameters
    ----------
    spec : str
        A registered name (:func:`available_models`) or a user factory
        ``"package.module:factory"`` / ``"file.py:factory"`` (imported: name only code you
        trust).
    grid : ModelGrid
    seed : int, optional
        Passed to the factory, which then runs with the global random state forked and
        seeded with it (the caller's random state is left as it was; None: unseeded).
    dtype : "float32" (default) or "float64"
    **init_args
        The model's constructor arguments (plain data; recorded in ``model.model_spec``).

    Raises
    ------
    ValueError
        Unknown name, a model that does not fit the grid (the message names the problem and
        the models that fit), or a factory that returns no ``torch.nn.Module`` of the
        grid's output shape.
    """
    if not isinstance(grid, ModelGrid):
        raise TypeError(f"grid must be a ModelGrid, got {type(grid).__name__}")
    entry = _entry(spec)
    reason = entry.why_not(grid)
    if reason is not None:
        raise ValueError(f"model {entry.name!r} does not fit problem {grid.problem!r}: "
                         f"{reason}; models that fit it: "
                         f"{', '.join(available_models(grid)) or 'none registered'}")
    args = _plain(dict(init_args), "init_args")
    dt = resolve_dtype(dtype)
    dt_name = str(dt).removeprefix("torch.")
    if seed is not None:
        seed = check_nonnegative_int(seed, "seed")
    if seed is None:
        model = entry.factory(grid, seed=None, dtype=dt_name, **args)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = entry.factory(grid, seed=seed, dtype=dt_name, **args)
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"model {entry.name!r}: the factory returned a "
                         f"{type(model).__name__}, not a torch.nn.Module")
    _cast(model, dt)
    model.model_spec = {"name": entry.name, "init_args": args, "dtype": dt_name,
                        "grid": grid.record(), "points": grid.points}
    return model


def save_model(model: torch.nn.Module, path: str | Path) -> Path:
    """Write ``model`` with what rebuilds it; returns the path.

    A :class:`~wheretolearn.models.DeepONet` keeps its own format (``DeepONet.save``);
    any other model must come from :func:`build_model` and is written as ``{"kind", "name",
    "grid", "points", "init_args", "dtype", "state_dict"}`` (``torch.save``; tensors and
    plain containers only).
    """
    from .deeponet import DeepONet

    p = Path(path)
    if isinstance(model, DeepONet):
        return model.save(p)
    spec = getattr(model, "model_spec", None)
    if not isinstance(spec, dict):
        raise ValueError(f"save_model needs a model built by build_model (it records how to "
                         f"rebuild it), got a {type(model).__name__} without model_spec")
    torch.save({"kind": CHECKPOINT_KIND, "name": spec["name"], "grid": spec["grid"],
                "points": torch.as_tensor(spec["points"], dtype=torch.float64),
                "init_args": spec["init_args"], "dtype": spec["dtype"],
                "state_dict": model.state_dict()}, p)
    return p


def load_saved_model(path: str | Path, *, trust: bool = False) -> torch.nn.Module:
    """Rebuild a model written by :func:`save_model` (or ``DeepONet.save``), weights loaded,
    in evaluation mode.

    The file is read weights-only. A model registered by this package is rebuilt from the
    recorded arguments alone; one that names user code (an import path) is imported only with
    ``trust=True``, else refused with a ``ValueError`` that says so.
    """
    from .deeponet import DeepONet

    p = Path(path)
    try:
        blob = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- torch raises several types for foreign files
        raise ValueError(f"{str(p)!r} is not readable as a weights-only model checkpoint "
                         f"({type(exc).__name__})") from None
    kind = blob.get("kind") if isinstance(blob, dict) else None
    if kind == "deeponet":
        return DeepONet.load(p).eval()
    if kind != CHECKPOINT_KIND:
        raise ValueError(f"{str(p)!r} is not a wheretolearn model checkpoint")
    if set(blob) != set(_CHECKPOINT_KEYS):
        raise ValueError(f"{str(p)!r}: a model checkpoint holds exactly "
                         f"{', '.join(_CHECKPOINT_KEYS)}; got {sorted(blob)}")
    name = blob["name"]
    if not is_builtin_model(name):
        from ..problems.plugins import is_import_spec

        if not (isinstance(name, str) and is_import_spec(name)):
            raise ValueError(f"{str(p)!r} names model {name!r}, which is neither registered "
                             f"by wheretolearn nor an import path")
        if not trust:
            raise UntrustedModelError(name, p)
    if not isinstance(blob["init_args"], dict):
        raise ValueError(f"{str(p)!r}: init_args must be a dict")
    grid = ModelGrid.from_record(blob["grid"], blob["points"])
    model = build_model(name, grid, dtype=blob["dtype"], **blob["init_args"])
    model.load_state_dict(blob["state_dict"])
    return model.eval()


# ----------------------------------------------------------------------------- built-ins
#: Init arguments of the built-in models per AMA preset (``ci``: seconds on a CPU; ``small``:
#: minutes; ``paper``: the SPEC's DeepONet, and the FNO of the FNO paper's Darcy example).
#: The small FNO has 3 Fourier layers: at an equal CPU budget on Darcy 24 x 24 it reached a
#: lower error than 4 (benchmarks/bench_models.py, issue 26).
MODEL_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "deeponet": {
        "ci": {"branch_hidden": [64, 64], "trunk_hidden": [64, 64], "width": 32},
        "small": {"branch_hidden": [128, 128], "trunk_hidden": [128, 128], "width": 64},
        "paper": {"branch_hidden": [256, 256, 128], "trunk_hidden": [128, 128, 128],
                  "width": 200},
    },
    "fno": {
        "ci": {"n_modes": 6, "hidden_channels": 8, "n_layers": 2},
        "small": {"n_modes": 12, "hidden_channels": 32, "n_layers": 3},
        "paper": {"n_modes": 12, "hidden_channels": 32, "n_layers": 4},
    },
}


def preset_init_args(name: str, preset: str, grid: ModelGrid | None = None) -> dict[str, Any]:
    """Init arguments of built-in model ``name`` at ``preset`` (``{}`` for other models);
    with ``grid``, FNO modes are capped at the grid's size."""
    args = dict(MODEL_PRESETS.get(name, {}).get(preset, {}))
    if name == "fno" and grid is not None and isinstance(args.get("n_modes"), int):
        args["n_modes"] = [min(args["n_modes"], s) for s in grid.input_shape]
    return args


@register_model("deeponet",
                description="DeepONet: branch MLP on the flattened input, trunk MLP on the "
                            "output coordinates (SPEC §4)")
def deeponet(grid: ModelGrid, *, seed: int | None, dtype: str,
             branch_hidden: Sequence[int] = (128, 128), trunk_hidden: Sequence[int] = (128, 128),
             width: int = 64, activation: str = "relu", normalize: bool = True):
    """``DeepONet([prod(input_shape), *branch_hidden, width], [d, *trunk_hidden, width])`` on
    the grid's output points."""
    from .deeponet import DeepONet

    branch = [math.prod(grid.input_shape), *branch_hidden, width]
    trunk = [grid.points.shape[1], *trunk_hidden, width]
    return DeepONet(branch, trunk, grid.points, output_shape=grid.output_shape,
                    activation=activation, dtype=dtype, seed=seed, normalize=normalize)


def _fno_fits(grid: ModelGrid) -> str | None:
    from .fno import fno_shape_problem

    return fno_shape_problem(grid.input_shape, grid.output_shape)


@register_model("fno", fits=_fno_fits,
                description="Fourier neural operator (neuraloperator), field to field on one "
                            "grid; needs the extra wheretolearn[fno]")
def fno(grid: ModelGrid, *, seed: int | None, dtype: str, normalize: bool = True,
        **architecture: Any):
    """:class:`~wheretolearn.models.fno.FNO` on the grid; ``architecture``: the fields of
    :class:`~wheretolearn.models.fno.FNOArchitecture` as plain data (``n_modes``,
    ``hidden_channels``, ...), as a TOML table and a checkpoint's ``init_args`` give them."""
    from .fno import FNO, FNOArchitecture

    return FNO(grid.input_shape, FNOArchitecture.from_options(architecture),
               normalize=normalize, dtype=dtype, seed=seed)
