"""An online study: simulations stream into a buffer while a surrogate trains (SPEC §5).

:func:`run_online_study` creates a run folder, starts the cluster and the
:class:`~wheretolearn.online.executor.EnsembleExecutor` (simulations -> buffer, in
background threads) and trains in the calling thread until the ensemble is done and the
buffer drained (or ``max_seconds`` / ``max_batches`` is reached). Everything needed to go
on -- model, optimiser, buffer content, sampler state, ledger, counters -- is checkpointed
atomically every ``checkpoint.every_batches`` batches and at the end;
:func:`resume_online_study` continues an interrupted study from its folder.

Run folder (a :class:`~wheretolearn.report.runfolder.RunFolder`: created with its
``config.toml`` in one rename after the configuration validated, then written in place,
:meth:`~wheretolearn.report.runfolder.RunFolder.reopen`, and kept while the study runs)::

    config.toml      resolved configuration
    metrics.jsonl    one line per ``log_every`` batches: batch, loss (mean since the last
                     line), lr, buffer_fill, samples_received, simulations done/running/failed,
                     and val_* when validation ran
    checkpoints/NNNNNN/   the last two complete checkpoints, each published by one rename:
                     checkpoint.pt (everything, with the surrogate's record: n_steps, field
                     shape, bounds, parameter names, so ``load_model`` needs no problem),
                     ledger.json (every simulation, attempt and
                     received step at that checkpoint) and manifest.json (sizes, SHA-256)
    ledger.json      the final ledger (written at the end, with summary.json)
    summary.json     final numbers (see :func:`OnlineStudy.summary`)
    figures/online_training.png   training loss and validation error vs batch
    sampler.json     Breed only: every draw (params, generation, bred, fitness, importance
                     weight) and every proposal (generation, batch, R, ESS)
    figures/breed_*.png   Breed only: sampled parameters per generation vs uniform, fitness
                     vs parameters, R and ESS over batches (see :mod:`.breed_report`)

Consistency of a checkpoint: the snapshot of buffer, ledger and sampler is taken under the
executor's receive lock and the sampler lock (a step is in both buffer and ledger or in
neither; the sampler has drawn exactly the ledger's simulations) and the trainer state in
the training thread, so a resumed study neither trains on a received step as new twice nor
loses one: steps received after the checkpoint are not in its ledger and are produced again
by the relaunched simulations.
"""

from __future__ import annotations

import logging
import math
import os
import resource
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .._validation import check_type
from ..report.runfolder import RunFolder, StudyResult
from .config import OnlineStudyConfig
from .ledger import SimulationLedger

__all__ = ["OnlineStudy", "run_online_study", "resume_online_study", "validation_set",
           "surrogate_record"]

_CHECKPOINT = "checkpoint.pt"
_LOG_EVERY = 10
log = logging.getLogger(__name__)


def validation_set(problem: Any, bounds: np.ndarray, *, n_val: int, seed: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Held-out simulations generated up front (SPEC §5: 10 with their own seed).

    Parameters are uniform on ``bounds`` (d, 2). Returns ``params (V, d)``,
    ``x (V * n_steps, F)`` features (see ``normalised_step_features``) and
    ``y (V * n_steps, n * n)`` float32 fields, one row per (simulation, step).
    """
    from .trainer import normalised_step_features

    rng = np.random.default_rng(seed)
    params = rng.uniform(bounds[:, 0], bounds[:, 1], size=(n_val, bounds.shape[0]))
    fields = np.asarray(problem(params), dtype=np.float32)         # (V, T, n, n)
    n_steps = fields.shape[1]
    steps = np.tile(np.arange(n_steps), n_val)
    x = normalised_step_features(np.repeat(params, n_steps, axis=0), steps, bounds=bounds,
                                 n_steps=n_steps)
    return params, x, fields.reshape(n_val * n_steps, -1)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class OnlineStudy:
    """One online study bound to a run folder.

    Parameters
    ----------
    config : OnlineStudyConfig
    run_dir : path
        The run folder (must exist; :meth:`create` / :meth:`open` make or read it).
    progress : callable ``(dict) -> None``, optional
        Called about four times a second with :meth:`status`.

    Use :meth:`create` for a new study and :meth:`open` to resume one.
    """

    def __init__(self, config: OnlineStudyConfig, run_dir: str | Path, *,
                 progress: Callable[[dict], None] | None = None):
        self.config = config
        self.run_dir = Path(run_dir)
        self.progress = progress
        self._resume_state: dict | None = None
        self.stopped_reason: str | None = None

    # ------------------------------------------------------------------ folders
    @classmethod
    def create(cls, config: OnlineStudyConfig, out: str | Path, **kw: Any) -> "OnlineStudy":
        """Make the run folder ``out`` (absent or empty) with its ``config.toml``: it
        appears in one rename (:class:`~wheretolearn.report.runfolder.RunFolder`); the
        study then writes into it in place (:meth:`RunFolder.reopen`), so that it can be
        resumed from there."""
        out = Path(out)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise FileExistsError(f"output folder {str(out)!r} already exists and is not "
                                  "empty; choose another --out (or resume it)")
        with RunFolder(out) as folder:
            folder.write_config_toml(config.model_dump())
        return cls(config, out, **kw)

    @classmethod
    def open(cls, run_dir: str | Path, *, trust: bool = False, **kw: Any) -> "OnlineStudy":
        """Reopen a run folder written by :meth:`create` for :meth:`run` to resume it.

        A folder whose ``config.toml`` names code (a problem that is not built-in, a
        command, a cluster's ``python`` / ``address`` / job directives) is refused unless
        ``trust``: resuming it would run that code (see
        :meth:`~wheretolearn.online.config.OnlineStudyConfig.user_code`).
        """
        from .checkpoint import CheckpointStore
        from .config import check_run_trusted, load_online_config

        run_dir = Path(run_dir)
        if not (run_dir / "config.toml").is_file():
            raise ValueError(f"{str(run_dir)!r} is not an online run folder (no config.toml)")
        config = load_online_config(str(run_dir / "config.toml"))
        if not trust:
            check_run_trusted(run_dir, config)
        study = cls(config, run_dir, **kw)
        store = CheckpointStore(run_dir)
        store.clean_staging()
        found = store.load_latest()
        if found is not None:
            study._resume_state = found[0]
        elif (run_dir / _CHECKPOINT).is_file():
            raise ValueError(f"{str(run_dir)!r} holds a top-level {_CHECKPOINT}, the layout of "
                             "an older wheretolearn, which this version does not resume; "
                             "start the study again")
        return study

    # ------------------------------------------------------------------ set-up
    def _build(self) -> None:
        from ..models.mlp import MLP
        from ..problems import check_online_contract, get_problem
        from .buffers import make_buffer
        from .sampler_registry import make_sampler
        from .trainer import OnlineTrainer, target_scaling

        cfg = self.config
        import torch

        torch.set_num_threads(self._torch_threads())
        # Workers rebuild the problem from this spec (import path / plugin name + options).
        self.problem_spec = cfg.problem_spec()
        self.problem = get_problem(self.problem_spec["name"], **self.problem_spec["options"])
        bounds = check_online_contract(self.problem, bounds=cfg.sampler.bounds)
        self.n_steps = int(self.problem.n_steps)
        if bounds.shape != (self.problem.input_shape[0], 2):
            raise ValueError(f"sampler bounds must have shape ({self.problem.input_shape[0]}, 2),"
                             f" got {bounds.shape}")
        self.bounds = bounds
        seed = cfg.study.seed
        self.sampler = make_sampler(cfg.sampler.name, bounds, seed=(
            cfg.sampler.seed if cfg.sampler.seed is not None else seed + 1),
            **cfg.sampler.options(n_steps=self.n_steps, capacity=cfg.buffer.capacity,
                                  watermark=cfg.buffer.watermark,
                                  n_simulations=cfg.study.n_simulations))  # Breed: no late gens
        self.buffer = make_buffer(cfg.buffer.kind, cfg.buffer.capacity,
                                  watermark=cfg.buffer.watermark, seed=seed + 2,
                                  **cfg.buffer.options())
        self.ledger = SimulationLedger(self.n_steps)
        _, self.x_val, self.y_val = validation_set(self.problem, bounds,
                                                   n_val=cfg.validation.n_val,
                                                   seed=cfg.validation.seed)
        n_out = int(self.y_val.shape[1])
        import torch

        torch.manual_seed(seed)  # same seed -> same initial weights
        self.model = MLP(self.x_val.shape[1], n_out, hidden=tuple(cfg.training.hidden))
        t = cfg.training
        # The problem's declared field range (heat: maximum principle), else the held-out one.
        shift, scale = target_scaling(self.problem, bounds, self.y_val)
        self.trainer = OnlineTrainer(self.model, t.adam_schedule(), y_shift=shift,
                                     y_scale=scale)
        self.sampler_lock = threading.Lock()
        self.counters = {"samples_duplicated": 0, "train_seconds": 0.0, "idle_seconds": 0.0,
                         "validation_seconds": 0.0, "checkpoint_seconds": 0.0,
                         "trainer_wall_seconds": 0.0, "warmup_seconds": 0.0,
                         "samples_trained": 0, "seconds": 0.0, "sessions": 0,
                         "metrics_lines": 0, "last_loss": None, "last_val": None}
        self._delivered: dict[int, bytearray] = {}
        self._history: list[dict] = []
        self.folder = RunFolder.reopen(self.run_dir)      # written in place, resumable
        if self._resume_state is not None:
            self._restore(self._resume_state)
        else:
            # Killed before its first checkpoint: start again from nothing.
            self.folder.truncate_metrics(0)

    def _torch_threads(self) -> int:
        """``[training] torch_threads``, else the cores the local workers leave free.

        Local Dask workers keep one core each busy; more torch threads than free cores make
        every batch wait for preempted threads (measured on 2 cores with 2 workers: 15 ms
        per batch with 1 thread, over 500 ms with 2).
        """
        cfg = self.config
        if cfg.training.torch_threads:
            return cfg.training.torch_threads
        cores = os.cpu_count() or 1
        if cfg.cluster.kind == "local":
            cores -= cfg.executor.workers
        return max(1, cores)

    def _restore(self, state: dict) -> None:
        missing = sorted({"n_steps", "trainer", "buffer", "sampler", "ledger", "counters",
                          "delivered"} - set(state))
        if missing:
            raise ValueError(f"checkpoint lacks {missing}: it was written by an older "
                             "wheretolearn, which this version does not resume; start the "
                             "study again")
        if state["n_steps"] != self.n_steps:
            raise ValueError("checkpoint does not match the run folder's config.toml "
                             f"(n_steps {state.get('n_steps')} vs {self.n_steps})")
        self.trainer.load_state_dict(state["trainer"])
        self.buffer.load_state_dict(state["buffer"])
        self.sampler.load_state_dict(state["sampler"])
        self.ledger.load_state_dict(state["ledger"])
        self.counters.update(state["counters"])
        self.ledger.interrupt_running()
        # Our own record of what reached the buffer, not the ledger's: a ledger that lost a
        # step would otherwise hide the duplicate it lets through.
        self._delivered = {int(k): bytearray.fromhex(v) for k, v in state["delivered"].items()}
        # Lines written after the checkpoint describe batches that will be redone.
        self._history = self.folder.truncate_metrics(int(self.counters["metrics_lines"]))

    # ------------------------------------------------------------------ streaming
    def _on_sample(self, sim_id: int, step: int, params: np.ndarray, field: np.ndarray,
                   timeout: float) -> bool:
        """Receiver thread: one new step -> Sample -> buffer (False when the buffer is full)."""
        from .buffers import Sample
        from .trainer import normalised_step_features

        x = normalised_step_features(params[None], np.array([step]), bounds=self.bounds,
                                     n_steps=self.n_steps)[0]
        if not self.buffer.put(Sample(sim_id, step, x, field.reshape(-1)), timeout=timeout):
            return False
        bits = self._delivered.setdefault(sim_id, bytearray((self.n_steps + 7) // 8))
        if bits[step >> 3] & (1 << (step & 7)):
            # What the buffer received, kept apart from what the ledger accepted (and
            # checkpointed on its own): a dedup bug of the ledger shows here. Must stay 0.
            self.counters["samples_duplicated"] += 1
        bits[step >> 3] |= 1 << (step & 7)
        return True

    # ------------------------------------------------------------------ checkpoint
    def _snapshot(self, executor: Any) -> dict:
        lock = executor.receive_lock if executor is not None else threading.Lock()
        # The sampler lock too (taken first, as the monitor does when it draws a simulation):
        # a sampler that drew for a simulation its ledger lacks would skip that draw on resume.
        with self.sampler_lock, lock:
            buffer_state = self.buffer.state_dict()
            weights = self.sampler.importance_weights()
            if weights is not None:
                self.ledger.set_weights(*weights)
            ledger_state = self.ledger.state_dict()
            duplicated = self.counters["samples_duplicated"]
            delivered = {str(k): v.hex() for k, v in self._delivered.items()}
            sampler_state = self.sampler.state_dict()
        counters = dict(self.counters, samples_duplicated=duplicated,
                        seconds=self._elapsed())
        return {"version": 1, "n_steps": self.n_steps, "trainer": self.trainer.state_dict(),
                "model_config": getattr(self.model, "config", None), "buffer": buffer_state,
                "sampler": sampler_state, "ledger": ledger_state, "counters": counters,
                "delivered": delivered, "surrogate": surrogate_record(self.problem, self.bounds)}

    def checkpoint(self, executor: Any = None, *, background: bool = False) -> None:
        """Publish a checkpoint folder ``checkpoints/NNNNNN/`` (checkpoint.pt + ledger.json +
        manifest, one rename; see :class:`~wheretolearn.online.checkpoint.CheckpointStore`).

        ``background=True``: the snapshot is taken (and copied) here, the writing happens
        in a background thread; call ``self._writer.wait()`` before relying on it.
        """
        from .checkpoint import CheckpointStore, CheckpointWriter, snapshot_state

        writer = getattr(self, "_writer", None)
        if writer is None:
            writer = self._writer = CheckpointWriter(CheckpointStore(self.run_dir))
        state = snapshot_state(self._snapshot(executor))
        info = {"batch": int(self.trainer.batches_seen)}
        writer.submit(state, ledger_json=state["ledger"], info=info)
        if not background:
            writer.wait()

    def _elapsed(self) -> float:
        return self._seconds_before + (time.monotonic() - self._t_session)

    # ------------------------------------------------------------------ metrics
    def _append_metrics(self, record: dict) -> None:
        self.folder.append_metrics(record)
        self.counters["metrics_lines"] += 1
        self._history.append(record)

    def status(self) -> dict:
        """Live numbers: simulations done/running/failed, samples, buffer fill, loss."""
        c = self.ledger.counts()
        return {"simulations_total": self.config.study.n_simulations,
                "simulations_completed": c["completed"], "simulations_running": c["running"],
                "simulations_failed": c["failed"], "simulations_pending": c["pending"],
                "simulations_redrawn": sum(r.replaced_by is not None for r in self.ledger),
                "samples_received": self.ledger.samples_received,
                "buffer_fill": len(self.buffer), "buffer_capacity": self.buffer.capacity,
                "batches": self.trainer.batches_seen, "loss": self.counters["last_loss"],
                "val_error": self.counters["last_val"], "seconds": self._elapsed()}

    # ------------------------------------------------------------------ main loop
    def run(self, *, max_seconds: float | None = None) -> dict:
        """Run (or continue) the study; return the summary (also written to summary.json).

        ``max_seconds`` (default ``[study] max_seconds``) limits this session's wall time;
        the study then stops with a checkpoint and can be resumed.
        """
        from ..cluster import check_scheduler_reachable, open_cluster
        from .executor import EnsembleExecutor, ExecutorHooks

        cfg = self.config
        if cfg.cluster.kind == "address":
            check_scheduler_reachable(cfg.cluster.address)
        self._build()
        self._seconds_before = float(self.counters["seconds"])
        self._t_session = time.monotonic()
        self.counters["sessions"] += 1
        max_seconds = max_seconds if max_seconds is not None else cfg.study.max_seconds
        ex_cfg = cfg.executor
        # Batch clusters with TLS: the workers' copy of the credentials goes to a hidden
        # folder of the run (on the shared filesystem), removed when the cluster closes.
        with open_cluster(cfg.cluster, n_workers=ex_cfg.workers,
                          shared_temp_directory=self.run_dir / ".dask-tls") as handle:
            executor = EnsembleExecutor(
                handle.client, self.problem_spec, self.ledger, self.sampler,
                plan=ex_cfg.plan(cfg.study.n_simulations),
                hooks=ExecutorHooks(self._on_sample, on_event=self._on_event,
                                    sampler_lock=self.sampler_lock, cluster_handle=handle),
                faults=ex_cfg.fault_injection(cfg.study.seed), streaming=ex_cfg.streaming())
            executor.start()
            try:
                self._train(executor, max_seconds)
                if self.progress is not None:
                    self.progress(self.status())
            except KeyboardInterrupt:
                # Keep what was done: a consistent checkpoint once the executor stopped.
                executor.stop(interrupt=True)
                self.checkpoint(None)
                raise
            finally:
                executor.stop(interrupt=self.stopped_reason != "completed")
            if executor.error is not None:
                raise executor.error
            self.cluster_info = handle.info()
        return self._finish()

    def _on_event(self, event: dict) -> None:
        log.info("simulation %(sim_id)s attempt %(attempt)s: %(outcome)s -> %(action)s", event)

    def _train(self, executor: Any, max_seconds: float | None) -> None:
        cfg = self.config
        bs = cfg.training.batch_size
        max_batches = cfg.training.max_batches
        min_batches = cfg.training.min_batches
        trainer = self.trainer
        losses: list[float] = []
        last_progress = 0.0
        started = trainer.batches_seen > 0
        while True:
            if executor.error is not None:
                self.stopped_reason = "error"
                return
            if executor.done.is_set() and not self.buffer.closed and not (
                    min_batches is not None and trainer.batches_seen < min_batches
                    and self.buffer.ready(bs)):
                self.buffer.close()
            if max_seconds is not None and time.monotonic() - self._t_session >= max_seconds:
                self.stopped_reason = "max_seconds"
                return
            if max_batches is not None and trainer.batches_seen >= max_batches:
                self.stopped_reason = "max_batches"
                return
            t0 = time.monotonic()
            batch = self.buffer.get_batch(bs, timeout=0.1)
            t1 = time.monotonic()
            # Wall-time split of the trainer once training started (the wait for the
            # watermark is "warmup"): train steps, validation, checkpoints, waiting, other.
            self.counters["idle_seconds" if started else "warmup_seconds"] += t1 - t0
            if started:
                self.counters["trainer_wall_seconds"] += t1 - t0
            if batch is None:
                self.stopped_reason = "completed"
                return
            if self.progress is not None and t1 - last_progress > 0.25:
                last_progress = t1
                self.progress(self.status())
            if not batch:
                continue
            started = True
            self._train_iteration(executor, batch, losses, t1)

    def _train_iteration(self, executor: Any, batch: list, losses: list[float],
                         t1: float) -> None:
        """One training step (and what follows it: validation, metrics, checkpoint) on a
        batch that arrived at ``t1`` (monotonic seconds)."""
        cfg, trainer = self.config, self.trainer
        out = trainer.train_batch(batch, weights=self._loss_weights(batch))
        if self.sampler.adaptive:
            key = ("per_sample_nrmse" if cfg.sampler.fitness_loss == "nrmse"
                   else "per_sample_loss")
            with self.sampler_lock:
                self.sampler.tell(out["sim_ids"], out["steps"], out[key])
        self.counters["train_seconds"] += time.monotonic() - t1
        self.counters["samples_trained"] += len(batch)
        losses.append(float(out["loss"]))
        self.counters["last_loss"] = losses[-1]
        self._after_batch(executor, losses)
        self.counters["trainer_wall_seconds"] += time.monotonic() - t1

    def _loss_weights(self, batch: list) -> np.ndarray | None:
        """Importance weights (B,) of the batch's simulations with ``[sampler] weighted``
        (Breed: unbiased training for the base design; mean 1 over the batch, capped at
        ``weight_cap`` times it), else None."""
        if not self.config.sampler.weighted:
            return None
        with self.sampler_lock:
            return self.sampler.weights_for([s.sim_id for s in batch])

    def _validation_due(self) -> bool:
        """Whether validation time so far is within ``[validation] max_fraction`` of the
        trainer's wall time (the first check always runs)."""
        frac, c = self.config.validation.max_fraction, self.counters
        return frac is None or c["validation_seconds"] <= frac * c["trainer_wall_seconds"]

    def _after_batch(self, executor: Any, losses: list[float]) -> None:
        cfg = self.config
        b = self.trainer.batches_seen
        val = None
        if b % cfg.validation.every_batches == 0 and self._validation_due():
            t0 = time.monotonic()
            val = self.trainer.validate(self.x_val, self.y_val)
            self.counters["last_val"] = float(val["mean"])
            self.counters["validation_seconds"] += time.monotonic() - t0
        if b % _LOG_EVERY == 0 or val is not None:
            c = self.ledger.counts()
            rec = {"batch": b, "loss": float(np.mean(losses)), "lr": self.trainer.lr,
                   "buffer_fill": len(self.buffer),
                   "samples_received": self.ledger.samples_received,
                   "simulations_completed": c["completed"], "simulations_running": c["running"],
                   "simulations_failed": c["failed"], "seconds": round(self._elapsed(), 3),
                   **{f"trainer_{k}_seconds": round(self.counters[f"{k}_seconds"], 4)
                      for k in ("train", "validation", "checkpoint", "idle")}}
            if val is not None:
                rec.update({f"val_{k}": float(v) for k, v in val.items()})
            with self.sampler_lock:
                rec.update(self.sampler.metrics())
            self._append_metrics(rec)
            losses.clear()
        if b % cfg.checkpoint.every_batches == 0:
            t0 = time.monotonic()       # snapshot + copy here; the writing is in background
            self.checkpoint(executor, background=True)
            self.counters["checkpoint_seconds"] += time.monotonic() - t0

    # ------------------------------------------------------------------ end
    def _finish(self) -> dict:
        val = self.trainer.validate(self.x_val, self.y_val)
        self.counters["last_val"] = float(val["mean"])
        self._append_metrics({"batch": self.trainer.batches_seen, "final": True,
                              **{f"val_{k}": float(v) for k, v in val.items()}})
        self.checkpoint(None)
        self.ledger.save_json(self.folder.file("ledger.json"))
        summary = self.summary(val)
        self.folder.write_summary(summary)
        self._figure()
        with self.sampler_lock:
            self.sampler.write_report(self.folder.path, self._history)
        # every path the run wrote: ``--overwrite`` may replace exactly these, nothing else
        self.folder.commit()
        return summary

    def summary(self, val: dict) -> dict:
        """Final numbers for ``summary.json``.

        Trainer wall time counts from the first batch (after the watermark was first
        reached) to the end, everything included; ``trainer_time`` splits it into training
        steps (``train``), ``validation``, ``checkpoint`` (snapshot in the training thread;
        the files are written in background), ``waiting`` for the buffer and ``other``
        (metrics, progress), in seconds and as fractions of it; ``warmup`` is the wait for
        the watermark before. ``trainer_samples_per_second`` = samples trained / trainer
        wall time; ``trainer_idle_fraction`` = waiting / trainer wall time.
        """
        c = self.counters
        wall = c["trainer_wall_seconds"]
        parts = {"train": c["train_seconds"], "validation": c["validation_seconds"],
                 "checkpoint": c["checkpoint_seconds"], "waiting": c["idle_seconds"]}
        parts["other"] = max(0.0, wall - sum(parts.values()))
        split = {"wall_seconds": wall, "warmup_seconds": c["warmup_seconds"],
                 "seconds": parts,
                 "fractions": {k: v / wall if wall > 0 else 0.0 for k, v in parts.items()},
                 "checkpoint_write_seconds": getattr(getattr(self, "_writer", None),
                                                     "seconds_writing", 0.0)}
        out = {"stopped": self.stopped_reason, **self.ledger.summary(),
               "samples_duplicated": int(c["samples_duplicated"]),
               "val_error": {k: float(val[k]) for k in ("mean", "median", "p95", "p99", "max")},
               "val_loss": float(val.get("loss", math.nan)),
               "batches": self.trainer.batches_seen, "samples_trained": int(c["samples_trained"]),
               "trainer_samples_per_second": c["samples_trained"] / wall if wall > 0 else 0.0,
               "trainer_idle_fraction": c["idle_seconds"] / wall if wall > 0 else 0.0,
               "trainer_time": split,
               "seconds": self._elapsed(), "sessions": int(c["sessions"]),
               "torch_threads": self._torch_threads(),
               "peak_rss_mb": _peak_rss_mb(), "buffer": self.buffer.stats(),
               "cluster": getattr(self, "cluster_info", None)}
        return out

    def _figure(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = [r for r in self._history if "loss" in r]
        vals = [r for r in self._history if "val_mean" in r]
        fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
        if rows:
            ax[0].semilogy([r["batch"] for r in rows], [max(r["loss"], 1e-30) for r in rows])
        ax[0].set(xlabel="batch", ylabel="training loss (MSE)", title="training loss")
        if vals:
            for key in ("val_mean", "val_p99", "val_max"):
                ax[1].semilogy([r["batch"] for r in vals], [r[key] for r in vals],
                               label=key[4:])
            ax[1].legend()
        ax[1].set(xlabel="batch", ylabel="relative L2 error", title="validation error")
        fig.tight_layout()
        fig.savefig(self.folder.figure_path("online_training"), dpi=100)
        plt.close(fig)


def surrogate_record(problem: Any, bounds: Any) -> dict:
    """What ``load_model`` needs besides the trainer to rebuild an online surrogate without
    the problem (a run folder is data, never code): ``n_steps``, ``field_shape`` (one step's
    field), ``bounds`` (d, 2) of the feature normalisation and ``parameter_names``."""
    return {"n_steps": int(problem.n_steps),
            "field_shape": [int(s) for s in problem.output_shape[1:]],
            "bounds": np.asarray(bounds, dtype=np.float64).tolist(),
            "parameter_names": [str(n) for n in getattr(problem, "parameter_names", [])]}


def run_online_study(config: OnlineStudyConfig, out_dir: str | Path, *,
                     progress: Callable[[dict], None] | None = None,
                     max_seconds: float | None = None) -> StudyResult:
    """Run a new online study into the run folder ``out_dir``; return its
    :class:`~wheretolearn.report.runfolder.StudyResult` (config, summary, run folder)."""
    check_type(config, OnlineStudyConfig, "config")
    if config.cluster.kind == "address":
        from ..cluster import check_scheduler_reachable

        check_scheduler_reachable(config.cluster.address)
    from .preflight import check_max_seconds, preflight

    check_max_seconds(max_seconds)
    preflight(config, out_dir)      # everything checkable before the run folder exists
    study = OnlineStudy.create(config, out_dir, progress=progress)
    try:
        return StudyResult(study.config, study.run(max_seconds=max_seconds), study.run_dir)
    except ValueError:
        # Bad input found only once the study starts (e.g. the batch system refused the job
        # script): nothing resumable was written, so leave no half-written run folder.
        from .checkpoint import CheckpointStore

        if CheckpointStore(study.run_dir).latest() is None:
            shutil.rmtree(study.run_dir, ignore_errors=True)
        raise


def resume_online_study(run_dir: str | Path, *, progress: Callable[[dict], None] | None = None,
                        max_seconds: float | None = None, trust: bool = False) -> StudyResult:
    """Continue the study in ``run_dir`` from its last checkpoint; return its
    :class:`~wheretolearn.report.runfolder.StudyResult`.

    ``trust``: the folder may name code to run (a user problem, a command, ...; see
    :meth:`OnlineStudy.open`); without it such a folder is refused before anything runs.
    """
    from .preflight import check_max_seconds

    check_max_seconds(max_seconds)
    study = OnlineStudy.open(run_dir, progress=progress, trust=trust)
    return StudyResult(study.config, study.run(max_seconds=max_seconds), study.run_dir)
