"""Figures of an AMA study (see :func:`wheretolearn.design.ama_study.run_ama_study`).

* ``ama_history.png``: relative root OOD error and relative AMA loss against iteration
  (mean and 95 % interval over repeats);
* ``error_vs_n.png``: OOD error against N of fresh models trained on each source the guard
  compares (learned, initial, barycenter, mixture);
* ``predictions.png``: one unseen sample, the models after iteration 0 and after the last
  iteration, and their pointwise errors;
* ``learned_vs_family.png``: the learned parameter against the meta-test parameters (a pool
  problem, Burgers: the KLE spectra of the initial, learned and fitted test distributions);
* ``particle_flow.png`` (particle AMA, radiative transport; instead of
  ``learned_vs_family.png``): ``J`` along the Wasserstein gradient flow of every AMA
  iteration (accepted steps), and the step size ``eta`` per iteration;
* ``compare_vs_n.png`` (pool problems): error against N of every method of the per-N table,
  the distribution sources and the active-learning baselines (paper Fig. 6 right).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .figures import _pyplot, _save

__all__ = ["plot_ama_figures"]


def _band(ax, x, cis, label, color):
    mean = np.array([c["mean"] for c in cis])
    lo = np.array([c["lo"] for c in cis])
    hi = np.array([c["hi"] for c in cis])
    ax.plot(x, mean, "o-", color=color, label=label)
    ax.fill_between(x, lo, hi, color=color, alpha=0.2)


def _history(run, summary: dict) -> str:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    it = np.arange(len(summary["ood_error"]))
    _band(axes[0], it, summary["ood_error_ci"], "in-loop model", "C1")
    axes[0].set_ylabel("in-loop model: relative OOD error")
    _band(axes[1], it, summary["relative_ama_loss_ci"], "J / J_0", "C0")
    axes[1].set_ylabel("relative AMA loss J / J_0")
    for ax in axes:
        ax.set_xlabel("AMA iteration")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(f"{summary['problem']} ({summary['preset']}): mean and 95 % interval over "
                 f"{summary['repeats']} repeats")
    return _save(fig, run.figure_path("ama_history")).name


def _error_vs_n(run, summary: dict) -> str:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ns = summary["eval_n"]
    for i, (name, by_n) in enumerate(summary["baselines_ci"].items()):
        _band(ax, ns, [by_n[str(n)] for n in ns], name, f"C{i}")
    ax.set_xscale("log")
    ax.set_xlabel("training samples N")
    ax.set_ylabel("relative root OOD error (unseen)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return _save(fig, run.figure_path("error_vs_n")).name


def _predictions(run, setup, metatest, result) -> str:
    plt = _pyplot()
    x = metatest.unseen_x[0, :1]
    truth = metatest.unseen_y[0, 0].double().numpy()
    with torch.no_grad():
        preds = {"iteration 0": result.initial_model(x)[0].double().cpu().numpy(),
                 "final": result.model(x)[0].double().cpu().numpy()}
    if truth.ndim > 2:                                   # user problems: any output shape
        truth = truth.reshape(-1)
        preds = {k: v.reshape(-1) for k, v in preds.items()}
    if truth.ndim == 1:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        s = np.arange(truth.size)
        axes[0].plot(s, truth, "k-", label="truth")
        for name, p in preds.items():
            axes[0].plot(s, p, "--", label=name)
            axes[1].plot(s, np.abs(p - truth), label=name)
        axes[0].set_title("unseen sample of Q_1")
        axes[1].set_title("pointwise |error|")
        for ax in axes:
            ax.set_xlabel("boundary node (clockwise)" if setup.name == "ntd" else "output node")
            ax.legend()
    else:
        fig, axes = plt.subplots(1, 5, figsize=(17, 3.4))
        panels = [("truth", truth)] + [(n, p) for n, p in preds.items()] + \
            [(f"|error| {n}", np.abs(p - truth)) for n, p in preds.items()]
        for ax, (name, img) in zip(axes, panels):
            im = ax.imshow(img.T, origin="lower", extent=(0, 1, 0, 1))
            ax.set_title(name)
            fig.colorbar(im, ax=ax, shrink=0.8)
    return _save(fig, run.figure_path("predictions")).name


def _first(value: Any) -> Any:
    """The location component of a (possibly vector) parameter or its name."""
    return value[0] if isinstance(value, (list, tuple)) else value


def _learned_vs_family(run, summary: dict) -> str:
    """The learned location parameter (the first component of a vector theta: omega or the
    Darcy mean) against the meta-test parameters; a learned spectrum is in summary.json."""
    plt = _pyplot()
    params = summary["metatest"]["params"]
    learned = summary["learned"]
    par = _first(learned["parameter"])
    other = "tau" if par == "omega" else "alpha"
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    if all(par in p and other in p for p in params):
        ax.scatter([p[par] for p in params], [p[other] for p in params], color="C7",
                   label="meta-test Q_j")
    else:                                   # a user family that reports other parameters
        ax.text(0.5, 0.5, "meta-test parameters not reported", transform=ax.transAxes,
                ha="center", color="C7")
    ax.axvline(_first(learned["initial"]), color="C1", ls="--", label=f"initial {par}")
    for i, v in enumerate(learned["values"]):
        ax.axvline(_first(v), color="C0", lw=1.5, label=f"learned {par}" if i == 0 else None)
    ax.set_xlabel(par)
    ax.set_ylabel(other)
    ax.legend(fontsize=8)
    ax.set_title("learned training distribution against the family")
    return _save(fig, run.figure_path("learned_vs_family")).name


def _spectra(run, summary: dict, setup, metatest) -> str:
    """``sqrt(lambda_k)`` per KLE term of the initial, learned (every repeat) and fitted test
    distributions (a pool problem's ``Q`` is diagonal in the same basis)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    q = metatest.measures[0].sqrt_eigenvalues.detach().double().numpy()
    k = np.arange(1, q.size + 1)
    ax.plot(k, q, ".", color="C7", ms=3, label="Q fitted to the pool")
    learned = summary["learned"]
    for i, m in enumerate(learned["measures"]):
        if isinstance(m, dict) and "sqrt_eigenvalues" in m:
            ax.plot(k, m["sqrt_eigenvalues"], "-", color="C0", lw=1,
                    label="learned" if i == 0 else None)
    init = setup.build(setup.theta0).sqrt_eigenvalues.detach().double().numpy()
    ax.plot(k, init, "--", color="C1", label="initial")
    ax.set_yscale("log")
    ax.set_xlabel("KLE term (cos k, sin k)")
    ax.set_ylabel("sqrt eigenvalue")
    ax.legend(fontsize=8)
    ax.set_title("training spectra against the fitted test distribution")
    return _save(fig, run.figure_path("learned_vs_family")).name


def _compare(run, summary: dict) -> str:
    """Error against N of every method of ``summary["compare"]`` (paper Fig. 6 right)."""
    plt = _pyplot()
    table = summary["compare"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ns = table["schedule"]
    for i, (name, by_n) in enumerate(table["methods"].items()):
        ls = "-" if table["kind"][name] == "distribution" else "--"
        cis = [by_n[str(n)] for n in ns]
        mean = np.array([c["mean"] for c in cis])
        ax.plot(ns, mean, "o" + ls, color=f"C{i}", label=name, ms=4)
        ax.fill_between(ns, [c["lo"] for c in cis], [c["hi"] for c in cis], color=f"C{i}",
                        alpha=0.15)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training samples N")
    ax.set_ylabel("relative root OOD error (held-out rows)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{summary['problem']} ({summary['preset']}): mean and 95 % interval over "
                 f"{table['trials']} trials", fontsize=9)
    return _save(fig, run.figure_path("compare_vs_n")).name


def _particle_flow(run, summary: dict) -> str:
    """``J`` along the particle flow (repeat 0; one segment per AMA iteration, each starting
    at the retrained model's ``J``) and ``eta`` per iteration."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    start = 0
    for k, traj in enumerate(summary["particle_j"][0]):
        x = np.arange(start, start + len(traj))
        axes[0].plot(x, traj, "o-", ms=3, color=f"C{k % 10}", label=f"iteration {k + 1}")
        start += len(traj)
    axes[0].set_xlabel("accepted flow step (all iterations)")
    axes[0].set_ylabel("J (model fixed within an iteration)")
    axes[0].legend(fontsize=7)
    eta = [e for e in summary["particle_eta"][0] if e is not None]
    axes[1].semilogy(np.arange(1, len(eta) + 1), eta, "s-")
    axes[1].set_xlabel("AMA iteration")
    axes[1].set_ylabel("step size eta at the end of the flow")
    for ax in axes:
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"{summary['problem']} (knudsen {summary['knudsen']:g}, "
                 f"{summary['particle_start']} start): particle gradient flow, repeat 0")
    return _save(fig, run.figure_path("particle_flow")).name


def plot_ama_figures(run: Any, summary: dict, setup: Any, metatest: Any, result: Any) -> list[str]:
    """Draw the figures into ``run`` (a RunFolder); return their file names."""
    run.figure_path("x").parent.mkdir(parents=True, exist_ok=True)
    pooled = "compare" in summary
    last = (_spectra(run, summary, setup, metatest) if pooled
            else _particle_flow(run, summary) if "particle_j" in summary
            else _learned_vs_family(run, summary))
    names = [_history(run, summary), _error_vs_n(run, summary),
             _predictions(run, setup, metatest, result), last]
    if pooled:
        names.append(_compare(run, summary))
    return [f"figures/{name}" for name in names]
