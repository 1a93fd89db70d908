"""Fully connected network: the surrogate of Melissa's heat example (SPEC §5).

``MLP(6, n*n)`` is ``Linear(6, 256) - ReLU - Linear(256, 256) - ReLU - Linear(256, n*n)``.
``.config`` holds the constructor arguments, stored next to the weights in checkpoints so a
model can be rebuilt without the study configuration (``MLP.from_config(cfg)``).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from .._validation import check_nonnegative_int, check_positive_int, resolve_dtype

__all__ = ["MLP", "ACTIVATIONS"]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU, "elu": nn.ELU,
}


class MLP(nn.Module):
    """Multi-layer perceptron ``in_features -> hidden... -> out_features``.

    Parameters
    ----------
    in_features, out_features : int >= 1
    hidden : sequence of int >= 1
        Widths of the hidden layers (may be empty: one linear map).
    activation : str
        One of :data:`ACTIVATIONS`, applied after every hidden layer (not after the last).
    dtype : "float32" (default) or "float64"
    seed : int, optional
        Seeds the weight initialisation (PyTorch's default scheme) without touching the
        global random state; ``None`` uses the global generator. Not part of
        :attr:`config` (checkpoints store the weights themselves).

    Shapes: ``forward(x (B, in_features)) -> (B, out_features)``.
    """

    def __init__(self, in_features: int, out_features: int, hidden: Sequence[int] = (256, 256),
                 activation: str = "relu", *, dtype: Any = None, seed: int | None = None) -> None:
        super().__init__()
        in_features = check_positive_int(in_features, "in_features")
        out_features = check_positive_int(out_features, "out_features")
        if isinstance(hidden, (str, bytes)) or not hasattr(hidden, "__iter__"):
            raise TypeError(f"hidden must be a sequence of positive integers, got {hidden!r}")
        hidden = [check_positive_int(h, f"hidden[{i}]") for i, h in enumerate(hidden)]
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, "
                             f"got {activation!r}")
        torch_dtype = resolve_dtype(dtype)
        self._config = {"in_features": in_features, "out_features": out_features,
                        "hidden": hidden, "activation": activation,
                        "dtype": str(torch_dtype).removeprefix("torch.")}
        widths = [in_features, *hidden, out_features]
        layers: list[nn.Module] = []
        with torch.random.fork_rng(enabled=seed is not None, devices=[]):
            if seed is not None:
                torch.manual_seed(check_nonnegative_int(seed, "seed"))
            for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
                layers.append(nn.Linear(a, b, dtype=torch_dtype))
                if i < len(widths) - 2:
                    layers.append(ACTIVATIONS[activation]())
        self.net = nn.Sequential(*layers)

    @property
    def config(self) -> dict:
        """Constructor arguments (JSON-serialisable): ``MLP.from_config(m.config)`` rebuilds it."""
        return {**self._config, "hidden": list(self._config["hidden"])}

    @classmethod
    def from_config(cls, config: dict) -> "MLP":
        """Build an (untrained) MLP from :attr:`config`; unknown keys raise ``TypeError``."""
        return cls(**config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, in_features) -> (B, out_features)."""
        if x.ndim != 2 or x.shape[1] != self._config["in_features"]:
            raise ValueError(f"x must have shape (B, {self._config['in_features']}), "
                             f"got {tuple(x.shape)}")
        return self.net(x)

    def extra_repr(self) -> str:
        c = self._config
        return f"{c['in_features']} -> {c['hidden']} -> {c['out_features']}, {c['activation']}"
