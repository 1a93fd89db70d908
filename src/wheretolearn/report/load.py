"""``load_model(RUN_DIR)``: the trained surrogate of a finished run, ready to predict.

* an online run (``wheretolearn online``): :class:`OnlineSurrogate`, ``model(params, steps)
  -> fields`` in the simulation's units (the feature normalisation and the target scaling
  of training are applied inside), from the newest complete checkpoint;
* a bilevel run (``wheretolearn bilevel`` / ``demo``): the
  :class:`~wheretolearn.models.krr.KernelRidge` fitted on ``n`` samples of the learned
  Gaussian (default: the largest ``eval_n``), drawn with the seed of the study's first
  evaluation repeat of that source, so it is the model whose error the run reported there.

* an AMA run (``wheretolearn ama``): the final
  :class:`~wheretolearn.models.deeponet.DeepONet` of its first repeat (``model.pt``), in
  evaluation mode: ``model(u (B, *input_shape)) -> (B, *output_shape)`` on the problem's grid.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["OnlineSurrogate", "load_model"]


class OnlineSurrogate:
    """Trained online surrogate: ``(params, step) -> field``.

    Parameters
    ----------
    trainer : OnlineTrainer
        Holds the network and the target scaling.
    bounds : (d, 2) array
        Parameter bounds used for the feature normalisation.
    n_steps : int
        Time steps of one simulation (``step`` in ``0 .. n_steps - 1``).
    field_shape : tuple of int
        Shape of one step's field.
    parameter_names : list of str
    """

    def __init__(self, trainer: Any, bounds: np.ndarray, n_steps: int,
                 field_shape: tuple[int, ...], parameter_names: list[str]):
        self.trainer = trainer
        self.bounds = np.asarray(bounds, dtype=np.float64)
        self.n_steps = int(n_steps)
        self.field_shape = tuple(field_shape)
        self.parameter_names = list(parameter_names)

    @property
    def model(self) -> Any:
        """The underlying ``torch.nn.Module`` (normalised features -> scaled targets)."""
        return self.trainer.model

    def __call__(self, params: Any, steps: Any) -> np.ndarray:
        """Predict fields.

        Parameters
        ----------
        params : (B, d) or (d,) array
            Simulation parameters in the user's units (e.g. temperatures).
        steps : int or (B,) ints
            Time-step index in ``0 .. n_steps - 1`` (step ``k`` = the field after ``k + 1``
            solver steps).

        Returns
        -------
        (B, *field_shape) float32 ndarray (``(*field_shape,)`` for a single ``(d,)`` input).
        """
        from ..online.trainer import heat_features

        p = np.asarray(params, dtype=np.float64)
        single = p.ndim == 1
        p = np.atleast_2d(p)
        d = self.bounds.shape[0]
        if p.ndim != 2 or p.shape[1] != d:
            raise ValueError(f"params must have shape (B, {d}) or ({d},), got "
                             f"{np.shape(params)}")
        s = np.broadcast_to(np.asarray(steps), (p.shape[0],))
        if not np.issubdtype(s.dtype, np.integer) or s.min() < 0 or s.max() >= self.n_steps:
            raise ValueError(f"steps must be integers in 0..{self.n_steps - 1}, got {steps!r}")
        x = heat_features(p, s, bounds=self.bounds, n_steps=self.n_steps)
        out = self.trainer.predict(x).astype(np.float32).reshape(-1, *self.field_shape)
        return out[0] if single else out

    def __repr__(self) -> str:
        return (f"OnlineSurrogate(params {self.parameter_names}, steps 0..{self.n_steps - 1} "
                f"-> field {self.field_shape})")


def _kind(run: Path) -> str:
    import tomllib

    if not run.is_dir():
        raise ValueError(f"run folder {str(run)!r} does not exist or is not a folder")
    try:
        cfg = tomllib.loads((run / "config.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError):
        raise ValueError(f"{str(run)!r} is not a wheretolearn run folder (no readable "
                         "config.toml)") from None
    if "study" in cfg:
        return "online"
    if "problem" in cfg and (run / "summary.json").is_file():
        summary = json.loads((run / "summary.json").read_text())
        if "ama_loss" in summary:
            return "ama"
        if "learned" in summary:
            return "bilevel"
    raise ValueError(f"{str(run)!r}: load_model supports finished online, bilevel and AMA "
                     "run folders")


def _load_ama(run: Path) -> Any:
    from ..models.deeponet import DeepONet

    path = run / "model.pt"
    if not path.is_file():
        raise ValueError(f"AMA run folder {str(run)!r} has no model.pt to load")
    return DeepONet.load(path).eval()


def _load_online(run: Path) -> OnlineSurrogate:
    from ..online.checkpoint import CheckpointStore, load_checkpoint
    from ..online.config import load_online_config
    from ..online.trainer import OnlineTrainer
    from ..problems import check_online_contract, get_problem

    cfg = load_online_config(str(run / "config.toml"))
    found = CheckpointStore(run).load_latest()
    if found is not None:
        state = found[0]
    elif (run / "checkpoint.pt").is_file():              # a run folder of an older version
        state = load_checkpoint(run / "checkpoint.pt")
    else:
        raise ValueError(f"run folder {str(run)!r} has no checkpoint to load a model from")
    trainer = OnlineTrainer.from_state_dict(state["trainer"])
    spec = cfg.problem_spec()
    problem = get_problem(spec["name"], **spec["options"])
    bounds = check_online_contract(problem, bounds=cfg.sampler.bounds)
    return OnlineSurrogate(trainer, bounds, int(problem.n_steps),
                           tuple(problem.output_shape)[1:],
                           list(getattr(problem, "parameter_names", [])))


def _load_bilevel(run: Path, n: int | None) -> Any:
    import tomllib

    import torch

    from ..design.evaluation import name_key, source_seed
    from ..measures import Gaussian
    from ..models.krr import KernelRidge
    from ..problems import get_problem

    cfg = tomllib.loads((run / "config.toml").read_text())
    summary = json.loads((run / "summary.json").read_text())
    n = int(n if n is not None else max(cfg.get("eval_n") or summary["eval_n"]))
    # the learned Gaussian in the study's dtype: the same draws as its evaluation
    dtype = torch.float64 if cfg.get("dtype") == "float64" else torch.float32
    learned = Gaussian(torch.tensor(summary["learned"]["mean"], dtype=dtype),
                       torch.tensor(summary["learned"]["cov"], dtype=dtype), dtype=dtype)
    g = torch.Generator().manual_seed(source_seed(int(cfg.get("seed", 0)),
                                                  name_key("optimized"), n, 0))
    x = learned.sample(n, generator=g).detach().to(torch.float64)
    problem = get_problem(cfg["problem"], dim=int(cfg["dim"]))
    y = problem(x).detach()
    return KernelRidge(bandwidth=float(cfg["bandwidth"]), ridge=float(cfg.get("eval_ridge",
                                                                              1e-7)),
                       dtype=torch.float64).fit(x, y)


def load_model(run_dir: str | Path, *, n: int | None = None) -> Any:
    """The trained surrogate of the finished run in ``run_dir``.

    Parameters
    ----------
    run_dir : path
        A run folder written by ``wheretolearn online``, ``bilevel``/``demo`` or ``ama``.
    n : int, optional
        Bilevel only: training samples of the refitted KRR (default: the largest ``eval_n``).

    Returns
    -------
    OnlineSurrogate, KernelRidge or DeepONet
        Online: ``model(params (B, d), steps (B,)) -> (B, *field)`` in the simulation's
        units. Bilevel: a fitted KRR, ``model.predict(x (B, d)) -> (B,)``. AMA: the
        DeepONet, ``model(u (B, *input_shape)) -> (B, *output_shape)``.

    Examples
    --------
    >>> import wheretolearn
    >>> model = wheretolearn.load_model("runs/heat")             # doctest: +SKIP
    >>> field = model([300, 100, 500, 200, 400], steps=99)       # doctest: +SKIP
    """
    run = Path(run_dir)
    kind = _kind(run)
    if kind != "bilevel" and n is not None:
        raise ValueError("n applies only to bilevel run folders")
    if kind == "online":
        return _load_online(run)
    if kind == "ama":
        return _load_ama(run)
    return _load_bilevel(run, n)
