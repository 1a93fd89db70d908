"""Training of neural operators on ``(u, G*(u))`` pairs (SPEC §4, paper SM F.3-F.4).

Loss: mean relative L2 error ``mean_b ||G(u_b) - y_b||_q / ||y_b||_q`` with ``||.||_q`` the
quadrature L2 norm of the output grid (plain Euclidean norm when no weights are given).
Adam with an inverse-time-decay learning rate ``lr / (1 + rate * step / decay_steps)``,
minibatches drawn without replacement each epoch from a seeded generator, a held-out split
evaluated every ``eval_every`` steps, early stopping after ``patience`` evaluations without
improvement and restore of the best weights *seen during this call* (the starting weights are
not a candidate, so a warm start on new data never silently restores the old weights; their
held-out loss is reported as ``initial_val_loss`` for callers that want to keep or revert). A
second call on the same model continues from its weights (warm start / retrain rounds).

Normalisation statistics (a model with ``needs_normalization``, e.g. a fresh
:class:`~wheretolearn.models.DeepONet` with ``normalize=True``): fitted on the *training
split* of this call (never the held-out pairs), before the first step. A model whose
statistics are already fitted keeps them -- warm retraining on new data (AMA's retrain rounds)
must not refit, because the weights represent a function only together with the statistics
they were trained with: refitting would change the model before training and make
``initial_val_loss`` (the reference AMA keeps or reverts against) describe a different
function. A fresh initialisation (a new model, or a fresh state dict loaded into one) carries
unfitted statistics and so gets them from its own training split. The loss is always computed
on raw outputs: the model maps raw inputs to raw outputs.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch

from .._validation import (as_tensor, check_nonnegative_int, check_positive_float,
                           check_positive_int, check_type, torch_generator)

__all__ = ["TrainConfig", "TrainResult", "first_real_parameter", "relative_l2_loss",
           "train_operator"]


@dataclass
class TrainConfig:
    """Hyper-parameters of :func:`train_operator` (defaults: the paper's Adam 1e-3).

    Attributes
    ----------
    steps : int
        Adam steps (paper: 5000).
    lr : float
        Initial learning rate.
    decay_steps, decay_rate : int, float
        Inverse-time decay ``lr / (1 + decay_rate * step / decay_steps)``; rate 0 = constant.
    batch_size : int
        Minibatch size (capped at the training-set size).
    val_fraction : float
        Fraction of the pairs held out for early stopping (paper: 200 of 1000).
    eval_every : int
        Steps between held-out evaluations.
    patience : int
        Evaluations without improvement before stopping (0: never stop early).
    weight_decay : float
        Adam's L2 penalty.
    """

    steps: int = 5000
    lr: float = 1e-3
    decay_steps: int = 1000
    decay_rate: float = 0.0
    batch_size: int = 128
    val_fraction: float = 0.2
    eval_every: int = 50
    patience: int = 20
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        check_positive_int(self.steps, "steps")
        check_positive_float(self.lr, "lr")
        check_positive_int(self.decay_steps, "decay_steps")
        check_positive_float(self.decay_rate, "decay_rate", allow_zero=True)
        check_positive_int(self.batch_size, "batch_size")
        check_positive_int(self.eval_every, "eval_every")
        check_nonnegative_int(self.patience, "patience")
        check_positive_float(self.weight_decay, "weight_decay", allow_zero=True)
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    """Outcome of one :func:`train_operator` call.

    ``history``: records ``{"step", "train_loss", "val_loss"}`` at each evaluation;
    ``best_val_loss`` is the held-out loss of the restored weights (the training loss when
    nothing is held out); ``initial_val_loss`` that of the starting weights on the same
    split; ``steps`` the steps actually taken.
    """

    best_val_loss: float
    best_step: int
    steps: int
    seconds: float
    history: list[dict] = field(default_factory=list)
    initial_val_loss: float = float("inf")


def first_real_parameter(model: torch.nn.Module) -> torch.Tensor | None:
    """The model's first floating-point parameter (its dtype and device are the model's), or
    None: the complex spectral weights of an FNO, registered first, do not name them."""
    return next((p for p in model.parameters() if p.is_floating_point()), None)


def relative_l2_loss(pred: torch.Tensor, target: torch.Tensor,
                     weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over samples of ``||pred_b - target_b||_q / ||target_b||_q``.

    ``pred``, ``target``: (B, *out); ``weights``: out-shaped quadrature weights or None.
    """
    diff = (pred - target).reshape(pred.shape[0], -1)
    ref = target.reshape(target.shape[0], -1)
    if weights is not None:
        w = weights.reshape(1, -1).to(pred.dtype)
        num, den = (w * diff ** 2).sum(1), (w * ref ** 2).sum(1)
    else:
        num, den = (diff ** 2).sum(1), (ref ** 2).sum(1)
    return (num.sqrt() / den.sqrt().clamp_min(torch.finfo(pred.dtype).tiny)).mean()


def _split(n: int, val_fraction: float, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(n, generator=g)
    n_val = int(round(val_fraction * n))
    if n_val >= n:
        n_val = n - 1
    return perm[n_val:], perm[:n_val]


def train_operator(model: torch.nn.Module, x: Any, y: Any, *, config: TrainConfig | None = None,
                   weights: Any = None, seed: Any = 0, progress: Any = None,
                   callback: Callable[[dict], None] | None = None) -> TrainResult:
    """Fit ``model`` to pairs ``(x, y)`` in place (relative L2 loss, Adam, early stopping).

    Parameters
    ----------
    model : torch.nn.Module
        Maps (B, *in) to (B, *out), e.g. :class:`~wheretolearn.models.DeepONet`; trained from
        its current weights (warm start) and left with the best held-out weights. A model
        whose ``needs_normalization`` is True gets ``model.fit_normalization(x_train,
        y_train)`` on the training split first (module docstring).
    x : (n, *in) tensor; y : (n, *out) tensor
        Training pairs (cast to the model's dtype; never modified).
    config : TrainConfig, optional
        Default ``TrainConfig()``; a retrain round of ``k`` steps passes
        ``dataclasses.replace(config, steps=k)``.
    weights : out-shaped tensor, optional
        Quadrature weights of the output norm in the loss.
    seed : int or torch.Generator
        Seeds the split and the minibatch order.
    progress : callable, optional
        ``progress(advance=k, info=str)`` hook for a progress bar (called every evaluation).
    callback : callable, optional
        Receives each history record.

    Returns
    -------
    TrainResult
    """
    cfg = config or TrainConfig()
    check_type(cfg, TrainConfig, "config")
    n_steps = cfg.steps
    first = first_real_parameter(model)
    dtype, device = first.dtype, first.device
    xt = as_tensor(x, "x", dtype=dtype).to(device)
    yt = as_tensor(y, "y", dtype=dtype).to(device)
    if xt.shape[0] != yt.shape[0] or xt.shape[0] < 2:
        raise ValueError(f"x and y must hold the same number (>= 2) of samples, got "
                         f"{xt.shape[0]} and {yt.shape[0]}")
    w = None if weights is None else as_tensor(weights, "weights", dtype=dtype).to(device)
    g = torch_generator(seed)
    tr, va = (i.to(device) for i in _split(xt.shape[0], cfg.val_fraction, g))
    x_tr, y_tr = xt[tr], yt[tr]
    x_va, y_va = (xt[va], yt[va]) if va.numel() else (x_tr, y_tr)
    if getattr(model, "needs_normalization", False):   # a fresh normalising model
        model.fit_normalization(x_tr, y_tr)
    bs = min(cfg.batch_size, x_tr.shape[0])
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 1.0 / (1.0 + cfg.decay_rate * s / cfg.decay_steps))

    def held_out() -> float:
        with torch.no_grad():
            return float(relative_l2_loss(model(x_va), y_va, w))

    t0 = time.perf_counter()
    initial = held_out()
    best, best_state, best_step, stale = float("inf"), None, 0, 0
    history: list[dict] = []
    order, pos, running, count = torch.randperm(x_tr.shape[0], generator=g), 0, 0.0, 0
    step = 0
    for step in range(1, n_steps + 1):
        if pos + bs > order.numel():
            order, pos = torch.randperm(x_tr.shape[0], generator=g), 0
        idx = order[pos:pos + bs].to(device)
        pos += bs
        loss = relative_l2_loss(model(x_tr[idx]), y_tr[idx], w)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running, count = running + float(loss.detach()), count + 1
        if step % cfg.eval_every == 0 or step == n_steps:
            val = held_out()
            rec = {"step": step, "train_loss": running / count, "val_loss": val}
            running, count = 0.0, 0
            history.append(rec)
            if callback is not None:
                callback(rec)
            if progress is not None:
                progress(advance=cfg.eval_every if step % cfg.eval_every == 0
                         else step % cfg.eval_every, info=f"val {val:.4f}")
            if val < best:
                best, best_state, best_step, stale = val, copy.deepcopy(model.state_dict()), step, 0
            else:
                stale += 1
                if cfg.patience and stale >= cfg.patience:
                    break
    if best_state is not None:
        model.load_state_dict(best_state)
    return TrainResult(best_val_loss=best, best_step=best_step, steps=step,
                       seconds=time.perf_counter() - t0, history=history,
                       initial_val_loss=initial)
