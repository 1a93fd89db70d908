"""Fourier neural operator on a regular grid, field to field (neuraloperator's ``FNO``).

``FNO(grid_shape, FNOArchitecture(n_modes=..., hidden_channels=..., n_layers=...))`` wraps
``neuralop.models.FNO`` (Li et al., "Fourier Neural Operator for Parametric Partial
Differential Equations", ICLR 2021; the library of the field, pinned as the optional extra
``wheretolearn[fno]``) so that it has the package's model contract: ``model(u (B, *grid))
-> (B, *grid)``, one input and one output channel on the same grid of 1 to 3 dimensions
(Darcy: the log-conductivity field to the pressure field; NtD: the Neumann data to the
Dirichlet trace along the closed boundary, a periodic 1-D signal). neuraloperator appends
the grid coordinates as extra input channels (``positional_embedding``) and lifts, applies
``n_layers`` Fourier layers (``n_modes`` Fourier modes kept per dimension) and projects;
:class:`FNOArchitecture` holds those layer settings (neuraloperator's constructor arguments).

Normalisation (``normalize=True``, the default): the input and the output are standardised
with one mean and one standard deviation each (per channel, as neuraloperator's
``UnitGaussianNormalizer`` does for its Darcy example), fitted on the training split by
:func:`~wheretolearn.models.train_operator` through :meth:`FNO.fit_normalization`. Scalar
statistics keep the operator independent of the grid; the model as called maps raw inputs
to raw outputs, so the AMA bound's Lipschitz estimate and ``||G(0)||`` see the composed map
(the code is shared with the DeepONet:
:class:`~wheretolearn.models._normalisation.NormalisedOperator`).

neuraloperator is imported only when an FNO is built, so the package works without it;
building one without the extra raises :class:`MissingExtraError` (an ``ImportError``) that
names the extra.

neuraloperator 2.0.0 computes its spectral layers in complex64 (a hard-coded buffer), so
the FNO runs in float32 only; float64 inputs are cast (as :class:`DeepONet` casts inputs to
its dtype).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Sequence

import torch

from .._validation import check_nonnegative_int, check_positive_int, resolve_dtype
from ._normalisation import NormalisedOperator

__all__ = ["FNO", "FNOArchitecture", "FNO_EXTRA", "MissingExtraError", "import_neuralop",
           "fno_shape_problem"]

#: The optional dependency that provides the FNO.
FNO_EXTRA = "pip install 'wheretolearn[fno]'  (neuraloperator==2.0.0)"

#: neuraloperator's ``_init_kwargs`` (functions and classes) land in its ``state_dict`` under
#: this key; they are not weights, and a weights-only checkpoint cannot hold them.
_NEURALOP_METADATA = "_metadata"


class MissingExtraError(ImportError, ValueError):
    """An optional dependency is not installed. An ``ImportError`` for Python callers, and a
    ``ValueError`` (a user-input error) for the command line, which prints it as one line."""


def import_neuralop() -> Any:
    """``neuralop.models``, or :class:`MissingExtraError` naming the extra to install."""
    try:
        import neuralop.models as models
    except ImportError as exc:
        raise MissingExtraError(f"the FNO needs neuraloperator, which is not installed: "
                                f"{FNO_EXTRA} ({type(exc).__name__}: {exc})") from exc
    return models


def _modes(n_modes: int | tuple[int, ...], grid_shape: tuple[int, ...]) -> list[int]:
    """``n_modes`` (an int for every dimension, or one per dimension, as
    :class:`FNOArchitecture` validated them), checked against the grid: one count per
    dimension, at most ``size`` modes along a full dimension and ``size`` along the last
    one, whose real FFT keeps ``size // 2 + 1`` coefficients of which neuraloperator uses
    ``n_modes // 2 + 1``."""
    d = len(grid_shape)
    modes = [n_modes] * d if isinstance(n_modes, int) else list(n_modes)
    if len(modes) != d:
        raise ValueError(f"n_modes must give one count per grid dimension ({d} for grid "
                         f"{list(grid_shape)}), got {modes}")
    for i, (m, s) in enumerate(zip(modes, grid_shape)):
        if m > s:
            raise ValueError(f"n_modes[{i}] = {m} exceeds the grid's {s} points along that "
                             f"dimension (grid {list(grid_shape)})")
    return modes


@dataclass(frozen=True)
class FNOArchitecture:
    """The layers of an :class:`FNO` (neuraloperator's ``FNO`` arguments; defaults: the FNO
    paper's Darcy example).

    Attributes
    ----------
    n_modes : int or tuple of int
        Fourier modes kept per dimension (an int: the same for every dimension); at most the
        grid size along each dimension, checked against the grid by :class:`FNO`
        (neuraloperator: keep below the Nyquist frequency).
    hidden_channels : int
        Width of the Fourier layers.
    n_layers : int
        Number of Fourier layers.
    lifting_channel_ratio, projection_channel_ratio : int
        Widths of the lifting and projection MLPs, as multiples of ``hidden_channels``
        (neuraloperator's defaults: 2).
    domain_padding : float, optional
        Fraction in [0, 1) of zero padding added to each dimension before the Fourier layers
        (for non-periodic problems; None: none).
    positional_embedding : bool
        Append the grid coordinates (``[0, 1]`` per dimension) as input channels.
    """

    n_modes: int | tuple[int, ...] = 12
    hidden_channels: int = 32
    n_layers: int = 4
    lifting_channel_ratio: int = 2
    projection_channel_ratio: int = 2
    domain_padding: float | None = None
    positional_embedding: bool = True

    def __post_init__(self) -> None:
        m = self.n_modes
        if isinstance(m, (list, tuple)):
            modes: Any = tuple(check_positive_int(v, f"n_modes[{i}]") for i, v in enumerate(m))
        elif isinstance(m, int) and not isinstance(m, bool):
            modes = check_positive_int(m, "n_modes")
        else:
            raise TypeError(f"n_modes must be an int or a list of ints (one per grid "
                            f"dimension), got {m!r}")
        object.__setattr__(self, "n_modes", modes)
        for name in ("hidden_channels", "n_layers", "lifting_channel_ratio",
                     "projection_channel_ratio"):
            object.__setattr__(self, name, check_positive_int(getattr(self, name), name))
        pad = self.domain_padding
        if pad is not None and not (isinstance(pad, (int, float)) and not isinstance(pad, bool)
                                    and 0 <= pad < 1):
            raise ValueError(f"domain_padding must be None or a fraction in [0, 1), got {pad!r}")
        object.__setattr__(self, "domain_padding", None if pad is None else float(pad))
        if not isinstance(self.positional_embedding, bool):
            raise TypeError(f"positional_embedding must be True or False, got "
                            f"{self.positional_embedding!r}")

    @classmethod
    def from_options(cls, options: dict) -> "FNOArchitecture":
        """From plain data (a TOML table, a checkpoint's init arguments); an unknown key is a
        ``ValueError`` naming the known ones."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(k for k in options if k not in known)
        if unknown:
            raise ValueError(f"unknown FNO option {', '.join(map(repr, unknown))}; the FNO "
                             f"takes {', '.join(known)} and normalize")
        return cls(**options)


class FNO(NormalisedOperator):
    """Fourier neural operator ``u (B, *grid) -> G(u) (B, *grid)`` (neuraloperator's FNO).

    Parameters
    ----------
    grid_shape : sequence of int
        Shape of one input and one output field (1 to 3 dimensions).
    architecture : FNOArchitecture, optional
        Modes, widths and layers (default ``FNOArchitecture()``); ``n_modes`` must fit the
        grid.
    normalize : bool
        Standardise input and output with scalar statistics of the training split.
    dtype : "float32"
        The only dtype neuraloperator 2.0.0's spectral layers support.
    seed : int, optional
        Seeds the initialisation without touching the global random state.

    Shapes: ``forward(u (B, *grid_shape)) -> (B, *grid_shape)`` in the model's dtype.
    """

    #: One mean and one std per field (grid-independent statistics).
    POOLED = True

    def __init__(self, grid_shape: Sequence[int], architecture: FNOArchitecture | None = None,
                 *, normalize: bool = True, dtype: Any = None,
                 seed: int | None = None) -> None:
        super().__init__()
        shape = tuple(check_positive_int(s, f"grid_shape[{i}]")
                      for i, s in enumerate(grid_shape))
        if not 1 <= len(shape) <= 3:
            raise ValueError(f"the FNO maps fields on grids of 1 to 3 dimensions, got grid "
                             f"shape {list(shape)}")
        arch = FNOArchitecture() if architecture is None else architecture
        if not isinstance(arch, FNOArchitecture):
            raise TypeError(f"architecture must be an FNOArchitecture, got "
                            f"{type(arch).__name__}")
        modes = _modes(arch.n_modes, shape)
        if not isinstance(normalize, bool):
            raise TypeError(f"normalize must be True or False, got {normalize!r}")
        dt = resolve_dtype(dtype)
        if dt != torch.float32:
            raise ValueError(f"the FNO computes in float32 (neuraloperator 2.0.0's spectral "
                             f"layers are complex64), got dtype {str(dt).removeprefix('torch.')}")
        self._config = {"grid_shape": list(shape), **asdict(arch), "n_modes": modes,
                        "normalize": normalize}
        models = import_neuralop()
        kwargs = dict(n_modes=tuple(modes), in_channels=1, out_channels=1,
                      hidden_channels=arch.hidden_channels, n_layers=arch.n_layers,
                      lifting_channel_ratio=arch.lifting_channel_ratio,
                      projection_channel_ratio=arch.projection_channel_ratio,
                      positional_embedding="grid" if arch.positional_embedding else None,
                      domain_padding=arch.domain_padding)
        if seed is None:
            net = models.FNO(**kwargs)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(check_nonnegative_int(seed, "seed"))
                net = models.FNO(**kwargs)
        self.net = net
        self._register_statistics((), (), dt)

    # ------------------------------------------------------------------ config
    @property
    def config(self) -> dict:
        """Constructor arguments as plain data, the architecture's fields flat (``dtype`` and
        ``seed`` aside)."""
        c = self._config
        return {**c, "grid_shape": list(c["grid_shape"]), "n_modes": list(c["n_modes"])}

    @property
    def architecture(self) -> FNOArchitecture:
        """The layers, ``n_modes`` given per dimension."""
        return FNOArchitecture(**{f.name: self._config[f.name] for f in fields(FNOArchitecture)})

    @property
    def grid_shape(self) -> tuple[int, ...]:
        return tuple(self._config["grid_shape"])

    @property
    def dtype(self) -> torch.dtype:
        return self.in_mean.dtype

    def _fit_shapes(self, x: torch.Tensor, y: torch.Tensor) -> None:
        want = ", ".join(map(str, self.grid_shape))
        for name, t in (("x", x), ("y", y)):
            if t.ndim < 1 or t.shape[0] < 1 or tuple(t.shape[1:]) != self.grid_shape:
                raise ValueError(f"{name} must have shape (n >= 1, {want}), got {tuple(t.shape)}")

    # ------------------------------------------------------------------ forward
    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """``G(u)``: (B, *grid_shape) -> (B, *grid_shape)."""
        if tuple(u.shape[1:]) != self.grid_shape:
            raise ValueError(f"u must have shape (B, {', '.join(map(str, self.grid_shape))}), "
                             f"got {tuple(u.shape)}")
        x = self._standardise(u.to(device=self.in_mean.device, dtype=self.dtype))
        return self._destandardise(self.net(x.unsqueeze(1)).squeeze(1))

    # ------------------------------------------------------------------ persistence
    def state_dict(self, *args: Any, **kwargs: Any) -> dict:
        """Weights and buffers only: neuraloperator's own ``_metadata`` entry (its
        constructor arguments, functions included) is left out; :attr:`config` is what a
        checkpoint records."""
        sd = super().state_dict(*args, **kwargs)
        sd.pop(_NEURALOP_METADATA, None)
        return sd

    def extra_repr(self) -> str:
        c = self._config
        return (f"grid={c['grid_shape']}, modes={c['n_modes']}, width={c['hidden_channels']}, "
                f"layers={c['n_layers']}, normalize={c['normalize']}")

    def n_parameters(self) -> int:
        """Real parameters (a complex weight counts twice)."""
        return sum(p.numel() * (2 if p.is_complex() else 1) for p in self.parameters())


def fno_shape_problem(input_shape: Sequence[int], output_shape: Sequence[int]) -> str | None:
    """Why an FNO cannot map ``input_shape`` to ``output_shape`` (None: it can)."""
    a, b = tuple(input_shape), tuple(output_shape)
    if a != b:
        return (f"the FNO maps a field to a field on the same grid, but the input shape "
                f"{list(a)} differs from the output shape {list(b)}")
    if not 1 <= len(a) <= 3:
        return f"the FNO needs a grid of 1 to 3 dimensions, got shape {list(a)}"
    if math.prod(a) < 2:
        return f"the FNO needs a grid of at least 2 points, got shape {list(a)}"
    return None
