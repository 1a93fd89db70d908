"""DeepONet with Cartesian-product evaluation (SPEC §4, paper SM E.1).

``G(u)(y) = sum_{i<p} b_i(u) t_i(y) + b0``: a *branch* MLP ``b`` on the discretised input
function ``u`` (flattened, ``branch[0]`` values) and a *trunk* MLP ``t`` on query
coordinates ``y`` (``trunk[0]`` numbers per point), both ending in ``p`` features, joined by
one ``einsum`` over all (input, query) pairs -- as DeepXDE's ``DeepONetCartesianProd``.
Hidden layers use the activation; the last layer of each net is linear. Weights are
Glorot-normal (``std = sqrt(2 / (fan_in + fan_out))``), biases 0.

The query points (``problem.coordinates()["points"]``) are stored in the model (a buffer),
so ``model(u)`` returns the whole output field; ``save`` / ``load`` keep the constructor
arguments next to the weights.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .._validation import as_tensor, check_nonnegative_int, check_positive_int, resolve_dtype
from .mlp import ACTIVATIONS

__all__ = ["DeepONet"]

#: Constructor arguments a saved DeepONet records (``points`` travel with the weights).
_SAVED_KEYS = ("branch", "trunk", "output_shape", "activation", "dtype", "n_points")


def _layer_list(layers: Any, name: str) -> list[int]:
    if isinstance(layers, (str, bytes)) or not hasattr(layers, "__iter__"):
        raise TypeError(f"{name} must be a list of layer widths, got {layers!r}")
    widths = [check_positive_int(w, f"{name}[{i}]") for i, w in enumerate(layers)]
    if len(widths) < 2:
        raise ValueError(f"{name} must list at least the input and output widths, got {widths}")
    return widths


class DeepONet(nn.Module):
    """Branch/trunk DeepONet evaluated on a fixed set of query points.

    Parameters
    ----------
    branch : list of int
        Layer widths of the branch net, ``[n_in, hidden..., p]`` (``n_in`` = number of
        values of one discretised input, e.g. 508 for NtD, 64*64 for Darcy).
    trunk : list of int
        Layer widths of the trunk net, ``[d_y, hidden..., p]`` with the same ``p``.
    points : (P, d_y) array-like
        Query coordinates, one row per output value (``problem.coordinates()["points"]``).
    output_shape : tuple of int, optional
        Shape of one output (``prod == P``); default ``(P,)``.
    activation : str
        Hidden activation (one of :data:`wheretolearn.models.mlp.ACTIVATIONS`; paper: relu).
    dtype : "float32" (default) or "float64"
    seed : int, optional
        Seeds the Glorot initialisation without touching the global random state.

    Shapes: ``forward(u (B, *in)) -> (B, *output_shape)``; inputs are flattened to
    ``(B, n_in)``.
    """

    def __init__(self, branch: Sequence[int], trunk: Sequence[int], points: Any, *,
                 output_shape: Sequence[int] | None = None, activation: str = "relu",
                 dtype: Any = None, seed: int | None = None) -> None:
        super().__init__()
        branch, trunk = _layer_list(branch, "branch"), _layer_list(trunk, "trunk")
        if branch[-1] != trunk[-1]:
            raise ValueError(f"branch and trunk must end in the same width p, got {branch[-1]} "
                             f"and {trunk[-1]}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        dt = resolve_dtype(dtype)
        pts = as_tensor(np.asarray(points, dtype=np.float64), "points", dtype=dt)
        if pts.ndim != 2 or pts.shape[1] != trunk[0]:
            raise ValueError(f"points must have shape (P, {trunk[0]}) (trunk[0] coordinates per "
                             f"point), got {tuple(pts.shape)}")
        shape = (int(pts.shape[0]),) if output_shape is None else tuple(int(s) for s in output_shape)
        if math.prod(shape) != pts.shape[0]:
            raise ValueError(f"output_shape {shape} must hold one value per point "
                             f"({pts.shape[0]} points)")
        self._config = {"branch": branch, "trunk": trunk, "output_shape": list(shape),
                        "activation": activation, "dtype": str(dt).removeprefix("torch."),
                        "n_points": int(pts.shape[0])}
        g = None
        if seed is not None:
            g = torch.Generator().manual_seed(check_nonnegative_int(seed, "seed"))
        self.branch = self._mlp(branch, activation, dt, g)
        self.trunk = self._mlp(trunk, activation, dt, g)
        self.bias = nn.Parameter(torch.zeros((), dtype=dt))
        self.register_buffer("points", pts.clone())

    @staticmethod
    def _mlp(widths: list[int], activation: str, dtype: torch.dtype,
             generator: torch.Generator | None) -> nn.Sequential:
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            lin = nn.Linear(a, b, dtype=dtype)
            with torch.no_grad():
                std = math.sqrt(2.0 / (a + b))   # Glorot (Xavier) normal
                lin.weight.copy_(torch.randn(b, a, generator=generator, dtype=dtype) * std)
                lin.bias.zero_()
            layers.append(lin)
            if i < len(widths) - 2:
                layers.append(ACTIVATIONS[activation]())
        return nn.Sequential(*layers)

    # ------------------------------------------------------------------ config
    @property
    def config(self) -> dict:
        """Constructor arguments except ``points`` (a buffer, saved with the weights)."""
        c = self._config
        return {**c, "branch": list(c["branch"]), "trunk": list(c["trunk"]),
                "output_shape": list(c["output_shape"])}

    @property
    def n_in(self) -> int:
        return self._config["branch"][0]

    @property
    def output_shape(self) -> tuple[int, ...]:
        return tuple(self._config["output_shape"])

    @property
    def dtype(self) -> torch.dtype:
        return self.bias.dtype

    # ------------------------------------------------------------------ forward
    def features(self, u: torch.Tensor) -> torch.Tensor:
        """Branch features ``b(u)`` (B, p) of inputs (B, *in)."""
        x = u.reshape(u.shape[0], -1)
        if x.shape[1] != self.n_in:
            raise ValueError(f"u must hold {self.n_in} values per sample, got shape {tuple(u.shape)}")
        return self.branch(x.to(device=self.bias.device, dtype=self.dtype))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """``G(u)`` at every stored point: (B, *in) -> (B, *output_shape).

        ``einsum("bp,qp->bq", branch(u), trunk(points)) + bias``: all B x P pairs in one
        product, the trunk evaluated once per call.
        """
        out = torch.einsum("bp,qp->bq", self.features(u), self.trunk(self.points)) + self.bias
        return out.reshape(u.shape[0], *self.output_shape)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Write ``{"config", "state_dict"}`` with ``torch.save``; returns the path."""
        p = Path(path)
        torch.save({"kind": "deeponet", "config": self.config, "state_dict": self.state_dict()}, p)
        return p

    @classmethod
    def load(cls, path: str | Path) -> "DeepONet":
        """Rebuild a model written by :meth:`save` (no study configuration needed).

        The file is read weights-only (tensors and plain containers, no pickled objects)
        and the model is built from the recorded constructor arguments alone
        (:data:`_SAVED_KEYS`); anything else in the file is refused by name.
        """
        try:
            blob = torch.load(Path(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 -- torch raises several types for foreign files
            raise ValueError(f"{str(path)!r} is not readable as a weights-only DeepONet "
                             f"checkpoint ({type(exc).__name__})") from None
        if not isinstance(blob, dict) or blob.get("kind") != "deeponet":
            raise ValueError(f"{str(path)!r} is not a DeepONet checkpoint")
        cfg = blob.get("config")
        if not isinstance(cfg, dict) or set(cfg) != set(_SAVED_KEYS):
            got = sorted(cfg) if isinstance(cfg, dict) else type(cfg).__name__
            raise ValueError(f"{str(path)!r}: config must hold exactly "
                             f"{', '.join(_SAVED_KEYS)}; got {got}")
        cfg = dict(cfg)
        n_points = check_positive_int(cfg.pop("n_points"), "n_points")
        model = cls(points=np.zeros((n_points, _layer_list(cfg["trunk"], "trunk")[0])), **cfg)
        model.load_state_dict(blob["state_dict"])
        return model

    def extra_repr(self) -> str:
        c = self._config
        return f"branch={c['branch']}, trunk={c['trunk']}, points={c['n_points']}, {c['activation']}"
