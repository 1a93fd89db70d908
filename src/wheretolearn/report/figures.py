"""Figures of a bilevel study (matplotlib, Agg backend, PNG files).

* ``error_vs_step``   -- seen / unseen relative OOD error per bilevel step (log y), as
  in the left column of paper Figs. 2 and 8.
* ``error_vs_n``      -- error of KRR fitted on N samples of the optimised distribution and
  of every baseline, with 95 % intervals (paper Fig. 2 centre, Fig. 10).
* ``covariances``     -- learned covariance beside the barycenter and mixture covariances
  (paper Figs. 9, 11, 13, 15): ellipses over the meta-test samples in 2-D, heatmaps for
  d > 2 plus the ellipses of the marginals on coordinates 1-2 (heatmaps only for d = 1). A learned Gaussian mixture
  is drawn as one ellipse per component (line width by weight), not by its total covariance.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["plot_error_vs_step", "plot_error_vs_n", "plot_covariances", "plot_study_figures"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_error_vs_step(history: Sequence[dict], path: str | Path, *, title: str = "") -> Path:
    """Seen and unseen error against step (log y). ``history``: records with ``step``,
    ``seen_error``, ``unseen_error``."""
    plt = _pyplot()
    steps = [h["step"] for h in history]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    window = max(1, len(history) // 40)
    for key, color in (("seen_error", "C0"), ("unseen_error", "C1")):
        vals = np.array([h.get(key, np.nan) for h in history], dtype=float)
        label = key.replace("_error", "")
        ax.plot(steps, vals, color=color, lw=0.6, alpha=0.45)
        # a running median shows the trend through the step-to-step sampling noise
        ax.plot(steps, _running_median(vals, window), color=color, lw=1.8,
                label=f"{label} (running median, {window} steps)")
    ax.set_yscale("log")
    ax.set_xlabel("bilevel step")
    ax.set_ylabel("relative OOD error")
    ax.set_title(title or "training history")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return _save(fig, path)


def _running_median(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing running median over ``window`` entries (NaNs ignored)."""
    if window <= 1 or values.size == 0:
        return values
    padded = np.concatenate([np.full(window - 1, np.nan), values])
    view = np.lib.stride_tricks.sliding_window_view(padded, window)
    with warnings.catch_warnings():  # all-NaN windows (unevaluated steps) give NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(view, axis=1)


def plot_error_vs_n(baselines: dict[str, dict[str, float]], baselines_ci: dict[str, dict[str, dict]],
                    path: str | Path, *, title: str = "") -> Path:
    """Error against N (log-log) for every source with 95 % interval bars."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, by_n in baselines.items():
        pts = sorted((int(n), v) for n, v in by_n.items() if v is not None)
        if not pts:
            continue
        ns = np.array([p[0] for p in pts], dtype=float)
        mean = np.array([p[1] for p in pts], dtype=float)
        ci = baselines_ci.get(name, {})
        lo = np.array([ci.get(str(int(n)), {}).get("lo", m) for n, m in zip(ns, mean)], dtype=float)
        hi = np.array([ci.get(str(int(n)), {}).get("hi", m) for n, m in zip(ns, mean)], dtype=float)
        yerr = np.vstack([np.clip(mean - lo, 0, None), np.clip(hi - mean, 0, None)])
        lw = 2.5 if name == "optimized" else 1.2
        ax.errorbar(ns, mean, yerr=yerr, marker="o", capsize=3, lw=lw, label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training samples N")
    ax.set_ylabel("relative OOD error (unseen)")
    ax.set_title(title or "error vs N")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def _ellipse(ax, mean: np.ndarray, cov: np.ndarray, **kw) -> None:
    """Draw the 2-sigma ellipse of ``N(mean, cov)`` (2-D)."""
    from matplotlib.patches import Ellipse

    vals, vecs = np.linalg.eigh(cov)
    vals = np.clip(vals, 0, None)
    angle = math.degrees(math.atan2(vecs[1, 1], vecs[0, 1]))
    ax.add_patch(Ellipse(mean, 4 * math.sqrt(vals[1]), 4 * math.sqrt(vals[0]), angle=angle,
                         fill=False, **kw))


def _ellipse_panel(ax, items, components, samples, colors, particles=None) -> None:
    """2-sigma ellipses on coordinates 1-2 (marginals) over the samples' coordinates 1-2;
    ``particles`` (name -> (M, d) array) are scattered instead of an ellipse."""
    particles = particles or {}
    if samples is not None:
        s = np.asarray(samples, float)
        s = s.reshape(-1, s.shape[-1])[:, :2]
        ax.scatter(s[:, 0], s[:, 1], s=2, c="0.7", alpha=0.4, label="meta-test samples")
    for i, (name, mean, cov) in enumerate(items):
        color = colors[i % len(colors)]
        parts = components.get(name)
        pts = particles.get(name)
        if pts is not None:
            p = np.asarray(pts, float)
            ax.scatter(p[:, 0], p[:, 1], s=4, color=color, alpha=0.7,
                       label=f"{name} ({p.shape[0]} particles)")
            ax.plot(*mean[:2], "x", color=color)
        elif parts:
            top = max(w for w, _, _ in parts)
            for j, (w, m, c) in enumerate(parts):
                _ellipse(ax, m[:2], c[:2, :2], color=color, lw=0.8 + 2.4 * w / top,
                         label=f"{name} ({len(parts)} components)" if j == 0 else None)
                ax.plot(*m[:2], "x", color=color)
        else:
            _ellipse(ax, mean[:2], cov[:2, :2], color=color, lw=2, label=name)
            ax.plot(*mean[:2], "x", color=color)
    ax.set_aspect("equal", adjustable="datalim")
    ax.autoscale_view()
    ax.legend(fontsize=7)


def plot_covariances(covs: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path, *,
                     samples: np.ndarray | None = None, title: str = "",
                     components: dict[str, list[tuple[float, np.ndarray, np.ndarray]]]
                     | None = None,
                     particles: dict[str, np.ndarray] | None = None) -> Path:
    """Learned vs barycenter vs mixture covariance.

    Parameters
    ----------
    covs : dict name -> (mean (d,), cov (d, d))
    samples : (M, d) array, optional
        Meta-test samples drawn under the ellipses (coordinates 1-2 when d > 2).
    components : dict name -> list of (weight, mean (d,), cov (d, d)), optional
        Mixtures among ``covs`` drawn component by component (ellipse width by weight).
    particles : dict name -> (M, d) array, optional
        Particle measures among ``covs``: their points are scattered (coordinates 1-2) over
        the meta-test samples instead of an ellipse.
    """
    plt = _pyplot()
    items = [(k, np.asarray(m, float), np.asarray(c, float)) for k, (m, c) in covs.items()]
    parts = {k: [(float(w), np.asarray(m, float), np.asarray(c, float)) for w, m, c in v]
             for k, v in (components or {}).items()}
    d = items[0][2].shape[0]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    if d == 2:
        fig, ax = plt.subplots(figsize=(5, 5))
        _ellipse_panel(ax, items, parts, samples, colors, particles)
        ax.set_title(title or "2-sigma ellipses")
    else:
        extra = int(d > 2)   # the marginals on coordinates 1-2 beside the heatmaps
        fig, axes = plt.subplots(1, len(items) + extra,
                                 figsize=(3.6 * (len(items) + extra), 3.4))
        axes = np.atleast_1d(axes)
        if extra:
            _ellipse_panel(axes[-1], items, parts, samples, colors, particles)
            axes[-1].set_title("2-sigma ellipses, coordinates 1-2")
            axes = axes[:-1]
        vmax = max(float(np.abs(c).max()) for _, _, c in items) or 1.0
        for ax, (name, _, cov) in zip(axes, items):
            im = ax.imshow(cov, cmap="RdBu_r", vmin=-vmax, vmax=vmax)
            ax.set_title(name)
            ax.set_xticks(range(d))
            ax.set_yticks(range(d))
            ax.set_xticklabels(range(1, d + 1))
            ax.set_yticklabels(range(1, d + 1))
        fig.colorbar(im, ax=list(axes), shrink=0.8)
        fig.suptitle(title or "covariance matrices")
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    p = Path(path)
    fig.savefig(p, dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return p


def plot_study_figures(run: Any, summary: dict, history: Sequence[dict], metatest: Any, *,
                       learned: Any, reference: dict[str, Any] | None = None) -> list[str]:
    """Draw the three figures of a bilevel study into ``run`` (a RunFolder).

    Parameters
    ----------
    learned : Gaussian, GaussianMixture or ParticleMeasure
        The reported training distribution (a mixture -- anything with ``weights``, ``means``
        and ``covs`` -- is drawn component by component; particles -- anything with
        ``points`` (M, d) -- are scattered over the meta-test samples).
    reference : dict name -> measure, optional
        Measures drawn beside it in the covariance figure (the study passes the barycenter and
        mixture it evaluated); each needs ``mean`` (d,) and ``cov`` (d, d).

    Returns the figure file names relative to the run folder.
    """
    tag = f"{summary['problem']} d={summary['dim']}"
    paths = [plot_error_vs_step(history, run.figure_path("error_vs_step"), title=tag),
             plot_error_vs_n(summary["baselines"], summary["baselines_ci"],
                             run.figure_path("error_vs_n"), title=tag)]
    covs = {"learned": _moments(learned)}
    covs.update({name: _moments(m) for name, m in (reference or {}).items() if m is not None})
    samples = metatest.seen_x.detach().double().numpy()
    components = {}
    if all(hasattr(learned, a) for a in ("weights", "means", "covs")):
        components["learned"] = list(zip(learned.weights.detach().double().tolist(),
                                          learned.means.detach().double().numpy(),
                                          learned.covs.detach().double().numpy()))
    particles = {}
    if hasattr(learned, "points") and getattr(learned.points, "ndim", 0) == 2:
        particles["learned"] = learned.points.detach().double().numpy()
    paths.append(plot_covariances(covs, run.figure_path("covariances"), samples=samples,
                                  title=tag, components=components, particles=particles))
    return [str(Path(p).relative_to(run.path)) for p in paths]


def _moments(measure: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, cov)`` of a measure as float64 numpy arrays."""
    return (measure.mean.detach().double().numpy(), measure.cov.detach().double().numpy())
