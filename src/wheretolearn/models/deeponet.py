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

Normalisation (``normalize=True``, the default; issue 26): pointwise standardisation of the
inputs and outputs with statistics of the training split, held as buffers (``in_mean``,
``in_std``, ``out_mean``, ``out_std``) so that ``save`` / ``load`` / ``load_model`` keep
them. The model *as the user calls it* maps raw inputs to raw outputs::

    G(u)_q = out_mean_q + out_std_q * ( sum_i b_i((u - in_mean) / in_std) t_i(y_q) + b0 )

so every consumer (training loss, AMA's Lipschitz estimate and ``||G(0)||``, the meta-test
errors) sees the composed map. The statistics are the identity (mean 0, std 1) until
:meth:`DeepONet.fit_normalization` sets them; :func:`~wheretolearn.models.train_operator`
calls it on the training split of a model whose statistics are not fitted yet. The code is
shared with the FNO (:class:`~wheretolearn.models._normalisation.NormalisedOperator`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .._validation import as_tensor, check_nonnegative_int, check_positive_int, resolve_dtype
from ._normalisation import NormalisedOperator
from .mlp import ACTIVATIONS

__all__ = ["DeepONet"]

#: Constructor arguments a saved DeepONet records (``points`` travel with the weights).
_SAVED_KEYS = ("branch", "trunk", "output_shape", "activation", "dtype", "n_points", "normalize")

#: Floor of a pointwise std, as a fraction of the mean std over the points
#: (:meth:`~wheretolearn.models._normalisation.NormalisedOperator.fit_normalization`): 1 =
#: a point is never scaled up beyond the typical point. It keeps points that vary little or
#: not at all in the training data -- Darcy's boundary, where the output is 0 and the input
#: often one value -- from being scaled up: an input that moves there out of distribution
#: is scaled like a typical point, not blown up, and an output there stays near its mean;
#: points that vary more than the mean are standardised to unit spread. Measured
#: (benchmarks/bench_normalisation.py, Darcy 24 x 24, N = 200, two seeds): on the mixture
#: of the Q_j every floor from 1e-3 to 1 gives 0.016-0.017 (plain 0.043); on the initial
#: measure (every training input equal on the boundary) the unseen error is 46 / 5.5 /
#: 0.75 / 0.31 / 0.21 for floors 1e-3 / 1e-2 / 0.1 / 0.3 / 1 (plain 3.2).
STD_FLOOR = 1.0


def _layer_list(layers: Any, name: str) -> list[int]:
    if isinstance(layers, (str, bytes)) or not hasattr(layers, "__iter__"):
        raise TypeError(f"{name} must be a list of layer widths, got {layers!r}")
    widths = [check_positive_int(w, f"{name}[{i}]") for i, w in enumerate(layers)]
    if len(widths) < 2:
        raise ValueError(f"{name} must list at least the input and output widths, got {widths}")
    return widths


class DeepONet(NormalisedOperator):
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
    normalize : bool
        Standardise inputs and outputs pointwise with fitted statistics (module docstring;
        identity until :meth:`fit_normalization`). False: the plain network.

    Shapes: ``forward(u (B, *in)) -> (B, *output_shape)``; inputs are flattened to
    ``(B, n_in)``. Buffers ``in_mean``, ``in_std`` (n_in,), ``out_mean``, ``out_std`` (P,)
    and ``norm_fitted`` (a 0-d bool).
    """

    def __init__(self, branch: Sequence[int], trunk: Sequence[int], points: Any, *,
                 output_shape: Sequence[int] | None = None, activation: str = "relu",
                 dtype: Any = None, seed: int | None = None, normalize: bool = True) -> None:
        super().__init__()
        if not isinstance(normalize, bool):
            raise TypeError(f"normalize must be True or False, got {normalize!r}")
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
                        "n_points": int(pts.shape[0]), "normalize": normalize}
        g = None
        if seed is not None:
            g = torch.Generator().manual_seed(check_nonnegative_int(seed, "seed"))
        self.branch = self._mlp(branch, activation, dt, g)
        self.trunk = self._mlp(trunk, activation, dt, g)
        self.bias = nn.Parameter(torch.zeros((), dtype=dt))
        self.register_buffer("points", pts.clone())
        self._register_statistics((branch[0],), (int(pts.shape[0]),), dt)

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

    # ------------------------------------------------------------------ normalisation
    #: Per-point statistics, floored at :data:`STD_FLOOR` times the mean std.
    POOLED = False
    STD_FLOOR = STD_FLOOR

    def _fit_shapes(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if x.ndim < 1 or x.shape[0] < 1 or x[0].numel() != self.n_in:
            raise ValueError(f"x must have shape (n >= 1, ...) with {self.n_in} values per "
                             f"sample, got {tuple(x.shape)}")
        n_points = self._config["n_points"]
        if y.ndim < 1 or y.shape[0] != x.shape[0] or y[0].numel() != n_points:
            raise ValueError(f"y must have shape ({x.shape[0]}, ...) with {n_points} values "
                             f"per sample (one per point), got {tuple(y.shape)}")

    # ------------------------------------------------------------------ forward
    def features(self, u: torch.Tensor) -> torch.Tensor:
        """Branch features ``b((u - in_mean) / in_std)`` (B, p) of raw inputs (B, *in)
        (``b(u)`` when ``normalize`` is off)."""
        x = u.reshape(u.shape[0], -1)
        if x.shape[1] != self.n_in:
            raise ValueError(f"u must hold {self.n_in} values per sample, got shape {tuple(u.shape)}")
        return self.branch(self._standardise(x.to(device=self.bias.device, dtype=self.dtype)))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """``G(u)`` at every stored point: raw (B, *in) -> raw (B, *output_shape).

        ``z = einsum("bp,qp->bq", features(u), trunk(points)) + bias``: all B x P pairs in
        one product, the trunk evaluated once per call; with ``normalize``,
        ``out_mean + out_std * z`` (module docstring).
        """
        out = torch.einsum("bp,qp->bq", self.features(u), self.trunk(self.points)) + self.bias
        return self._destandardise(out).reshape(u.shape[0], *self.output_shape)

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
        (:data:`_SAVED_KEYS`). The config and the state dict must hold exactly what
        :meth:`save` writes: a file of an older layout (before normalisation: no
        ``normalize`` key, no statistics) or one with anything else is refused with a
        ``ValueError`` that names the missing or unknown entries.
        """
        try:
            blob = torch.load(Path(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 -- torch raises several types for foreign files
            raise ValueError(f"{str(path)!r} is not readable as a weights-only DeepONet "
                             f"checkpoint ({type(exc).__name__})") from None
        if not isinstance(blob, dict) or blob.get("kind") != "deeponet":
            raise ValueError(f"{str(path)!r} is not a DeepONet checkpoint")
        cfg = blob.get("config")
        if not isinstance(cfg, dict):
            raise ValueError(f"{str(path)!r}: config must be a dict of constructor arguments, "
                             f"got {type(cfg).__name__}")
        _check_entries(path, "config", cfg, _SAVED_KEYS)
        cfg = dict(cfg)
        n_points = check_positive_int(cfg.pop("n_points"), "n_points")
        model = cls(points=np.zeros((n_points, _layer_list(cfg["trunk"], "trunk")[0])), **cfg)
        state = blob.get("state_dict")
        if not isinstance(state, dict):
            raise ValueError(f"{str(path)!r}: state_dict must be a dict of tensors")
        _check_entries(path, "state_dict", state, tuple(model.state_dict()))
        model.load_state_dict(state)
        return model

    def extra_repr(self) -> str:
        c = self._config
        return (f"branch={c['branch']}, trunk={c['trunk']}, points={c['n_points']}, "
                f"{c['activation']}, normalize={c['normalize']}")


def _check_entries(path: str | Path, what: str, got: dict, want: Sequence[str]) -> None:
    """``ValueError`` naming the entries of ``got`` missing from or unknown to ``want``."""
    missing = [k for k in want if k not in got]
    unknown = sorted(str(k) for k in got if k not in want)
    if missing or unknown:
        parts = ([f"lacks {', '.join(missing)}"] if missing else []) + \
                ([f"holds unknown {', '.join(unknown)}"] if unknown else [])
        hint = (" (written by an older wheretolearn, whose layout is no longer read: train "
                "and save the model again)" if missing else "")
        raise ValueError(f"{str(path)!r}: the DeepONet {what} {' and '.join(parts)}; it must "
                         f"hold exactly {', '.join(want)}{hint}")
