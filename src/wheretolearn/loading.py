"""``load_model(RUN_DIR)``: the trained surrogate of a finished run, ready to predict.

* an online run (``wheretolearn online run``): :class:`OnlineSurrogate`,
  ``model(params, steps) -> fields`` in the simulation's units (the feature normalisation
  and the target scaling of training are applied inside), from the newest complete
  checkpoint;
* a bilevel run (``wheretolearn bilevel`` / ``demo``): the
  :class:`~wheretolearn.models.krr.KernelRidge` fitted on ``n`` samples of the learned
  Gaussian (default: the largest ``eval_n``), drawn with the seed of the study's first
  evaluation repeat of that source, so it is the model whose error the run reported there;
* an AMA run (``wheretolearn ama``): the final model of its first repeat (``model.pt``; a
  :class:`~wheretolearn.models.deeponet.DeepONet`, an :class:`~wheretolearn.models.fno.FNO`
  or any model of :mod:`wheretolearn.models.registry`), in evaluation mode: ``model(u (B,
  *input_shape)) -> (B, *output_shape)`` on the problem's grid.

A run folder is data, not code (issue 24 item 2): it may come from someone else, so the
model is rebuilt from what the run recorded -- the online checkpoint (network arguments,
weights, steps, field shape, bounds, parameter names), the bilevel ``model.pt`` (the final
KRR's training set), the AMA ``model.pt`` (the model's registry name, constructor arguments
and weights), all read with ``torch.load(weights_only=True)`` -- and never imports the
problem the folder names. The one exception is a bilevel model of another size ``n`` than
the recorded one: its training set is labelled by the problem, which is imported only when
it is built in, or with ``trust=True`` when it is user code (an import path, a file, a
plugin, a command). A folder of an older layout that lacks those records (a bilevel folder
without ``model.pt``, an online folder with a single ``checkpoint.pt`` or a checkpoint
without the surrogate's record) is refused with a ``ValueError`` naming what is missing.

This module sits at the top of the package: it reads the run folders of :mod:`.online`
and :mod:`.design`, which :mod:`.report` (below them) must not import.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["OnlineSurrogate", "load_model"]

#: How to go on with a folder that names user code.
_TRUST_HINT = "load_model(..., trust=True) imports it if you trust who wrote the folder"


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
        self.field_shape = tuple(int(s) for s in field_shape)
        self.parameter_names = [str(n) for n in parameter_names]

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
        from .online.trainer import normalised_step_features

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
        x = normalised_step_features(p, s, bounds=self.bounds, n_steps=self.n_steps)
        out = self.trainer.predict(x).astype(np.float32).reshape(-1, *self.field_shape)
        return out[0] if single else out

    def __repr__(self) -> str:
        return (f"OnlineSurrogate(params {self.parameter_names}, steps 0..{self.n_steps - 1} "
                f"-> field {self.field_shape})")


def _older_layout(run: Path, missing: str) -> ValueError:
    """The error for a folder written by an older version, which lacks ``missing``."""
    return ValueError(f"run folder {str(run)!r} has no {missing}: it was written by an older "
                      f"wheretolearn, whose run folders are no longer read; run the study "
                      f"again")


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


# -- AMA ------------------------------------------------------------------------------------
def _load_ama(run: Path, trust: bool) -> Any:
    """The model of ``model.pt``: recorded arguments and weights only (a model named by an
    import path is user code: rebuilt only with ``trust``)."""
    from .models.registry import UntrustedModelError, load_saved_model
    from .problems.trust import user_code_message

    path = run / "model.pt"
    if not path.is_file():
        raise ValueError(f"AMA run folder {str(run)!r} has no model.pt to load")
    try:
        return load_saved_model(path, trust=trust)
    except UntrustedModelError as exc:
        raise ValueError(user_code_message(run, f"model = {exc.name!r}",
                                           f"rebuilding its model.pt would import that code; "
                                           f"{_TRUST_HINT}")) from None


# -- online ---------------------------------------------------------------------------------
def _online_state(run: Path) -> dict:
    """The newest complete checkpoint's state (weights-only load)."""
    from .online.checkpoint import CheckpointStore

    found = CheckpointStore(run).load_latest()
    if found is not None:
        return found[0]
    if (run / "checkpoint.pt").is_file():
        raise _older_layout(run, f"complete checkpoint under {CheckpointStore.DIRNAME}/ "
                                 f"(only a single checkpoint.pt)")
    raise ValueError(f"run folder {str(run)!r} has no checkpoint to load a model from")


def _load_online(run: Path) -> OnlineSurrogate:
    from .online.trainer import OnlineTrainer

    state = _online_state(run)
    rec = state.get("surrogate")
    if rec is None:
        raise _older_layout(run, "surrogate record (n_steps, field shape, bounds, parameter "
                                 "names) in its checkpoint")
    trainer = OnlineTrainer.from_state_dict(state["trainer"])
    return OnlineSurrogate(trainer, np.asarray(rec["bounds"], dtype=np.float64),
                           int(rec["n_steps"]), tuple(rec["field_shape"]),
                           list(rec["parameter_names"]))


# -- bilevel --------------------------------------------------------------------------------
def _bilevel_labels(run: Path, cfg: dict, x: Any, trust: bool, why: str) -> Any:
    """``problem(x)`` for a refit at a size the run did not record (``why``): through the
    registry alone when the problem is built in, importing user code only with ``trust``."""
    from .problems import get_problem
    from .problems.trust import is_builtin_problem, user_code_message

    name = cfg["problem"]
    if not (is_builtin_problem(name) or trust):
        raise ValueError(user_code_message(run, f"problem = {name!r}",
                                           f"the run recorded no {why}, so loading it would "
                                           f"import that code; {_TRUST_HINT}"))
    # a built-in name is built through the registry alone (get_problem imports nothing)
    return get_problem(name, dim=int(cfg["dim"]))(x).detach()


def _load_bilevel(run: Path, n: int | None, trust: bool) -> Any:
    import tomllib

    import torch

    from .design.bilevel_study import final_training_inputs, read_training_record
    from .models.krr import KernelRidge

    cfg = tomllib.loads((run / "config.toml").read_text())
    summary = json.loads((run / "summary.json").read_text())
    rec = read_training_record(run / "model.pt")
    if rec is None:
        raise _older_layout(run, "model.pt (the training set of its final model)")
    n = int(n if n is not None else max(cfg.get("eval_n") or summary["eval_n"]))
    if rec["n"] == n:
        x, y = rec["x"], rec["y"]
        hyper = {"bandwidth": float(rec["bandwidth"]), "ridge": float(rec["ridge"]),
                 "kernel": str(rec["kernel"])}
    else:
        hyper = {"bandwidth": float(cfg["bandwidth"]),
                 "ridge": float(cfg.get("eval_ridge", 1e-7)),
                 "kernel": str(cfg.get("kernel", "gaussian"))}
        x = final_training_inputs(summary["learned"], n, seed=int(cfg.get("seed", 0)),
                                  trial=int(cfg.get("trial_offset", 0)),
                                  dtype=cfg.get("dtype", "float32"))
        y = _bilevel_labels(run, cfg, x, trust, f"training set of N={n} (it recorded "
                                                f"N={rec['n']})")
    return KernelRidge(**hyper, dtype=torch.float64).fit(x, y)


def load_model(run_dir: str | Path, *, n: int | None = None, trust: bool = False) -> Any:
    """The trained surrogate of the finished run in ``run_dir``.

    Parameters
    ----------
    run_dir : path
        A run folder written by ``wheretolearn online run``, ``bilevel``/``demo`` or ``ama``.
    n : int, optional
        Bilevel only: training samples of the refitted KRR (default: the largest ``eval_n``,
        whose training set the run recorded).
    trust : bool
        Allow importing the problem the folder names when the run did not record what the
        model needs (a bilevel ``n`` other than the recorded one) and that problem is user
        code, or the model of an AMA run that used a user's model factory (``model =
        "pkg.mod:factory"``). Default False: such a folder is refused with a
        ``ValueError``; built-in problems and models never need it.

    Returns
    -------
    OnlineSurrogate, KernelRidge, DeepONet, FNO or another registry model
        Online: ``model(params (B, d), steps (B,)) -> (B, *field)`` in the simulation's
        units. Bilevel: a fitted KRR, ``model.predict(x (B, d)) -> (B,)``. AMA: the
        model, ``model(u (B, *input_shape)) -> (B, *output_shape)``.

    Examples
    --------
    >>> import wheretolearn
    >>> model = wheretolearn.load_model("runs/heat")             # doctest: +SKIP
    >>> field = model([300, 100, 500, 200, 400], steps=99)       # doctest: +SKIP
    """
    if not isinstance(trust, bool):
        raise TypeError(f"trust must be True or False, got {trust!r}")
    run = Path(run_dir)
    kind = _kind(run)
    if kind != "bilevel" and n is not None:
        raise ValueError("n applies only to bilevel run folders")
    if kind == "online":
        return _load_online(run)
    if kind == "ama":
        return _load_ama(run, trust)
    return _load_bilevel(run, n, trust)
