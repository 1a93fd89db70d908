"""Seconds per bilevel step: this implementation vs a straightforward reference (SPEC §3).

Setting: Sobol G, d = 2, J = 10 meta-test measures with 500 seen + 4500 unseen samples each,
float32, per-step logging of the seen and unseen error. Reported per configuration:

* ``total``: one step including the seen (5000 rows) and unseen (45000 rows) error;
* ``grad``: the gradient step alone (sampling, labels, KRR, adjoint, update).

The *reference* is written the way the authors' code works: autograd for the score
(``log_prob`` + ``backward``), kernel matrices from ``torch.cdist``, the seen predictions by a
solve against a matrix (``(K + N eps I)^{-1} k(X, V)``, 5000 columns) and the unseen error from
the full ``(45000, N)`` kernel matrix times ``a``. Both run in the same process.

Wall time on a shared machine is noisy; the script also reports CPU time per step, which for
one thread approximates the wall time on a quiet machine.

``headline_1_thread``: the N = 250 row again with ours and the reference interleaved round by
round (same load for both; the ratio the issue-25 target is stated in), and, for information,
ours with the unseen error logged every 10th step only (``eval_unseen=10``, an option; the
default and the headline ratio log every step).

``families`` (also in the default run's JSON): the Gaussian step beside the Gaussian-mixture step (K = 4, k-means start) in
the same process, interleaved round by round (issue 25 target: mixture step within 3x of the
Gaussian step), on Sobol G d = 2 (the setting above) and the RKHS function d = 10, N = 250,
one thread, with and without the per-step unseen-error logging. The particle family (M = 1024
particles, so N = 1024) is timed beside a Gaussian step at the same N = 1024, and its
closed-form input gradient beside torch autograd through a float64 graph of the same KRR
solve (``particle_gradient``).

Usage::

    python benchmarks/bench_bilevel.py [--steps 40] [--threads 1 2] [--out PATH] [--quick]
    python benchmarks/bench_bilevel.py --busy [--steps 40] [--rounds 3]   # thread policy
    python benchmarks/bench_bilevel.py --families [--steps 40] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import torch

from wheretolearn.design import (BilevelSchedule, KRRSettings, bilevel_descent, make_metatest,
                                 mixture_start)
from wheretolearn.design.bilevel import adjoint_gradient, cosine_schedule
from wheretolearn.design.bilevel_families import particle_start
from wheretolearn.measures import DIAG_CLAMP, Gaussian
from wheretolearn.problems import get_problem

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "bench_bilevel.json"


# ---------------------------------------------------------------------------- reference
def _sq_kernel(a: torch.Tensor, b: torch.Tensor, s: float) -> torch.Tensor:
    return torch.exp(-torch.cdist(a, b) ** 2 / (2 * s * s))


def reference_step(problem, mt, mean, tril, z, *, ridge, bandwidth=1.0, eval_unseen=True):
    """One step the way the authors' code does it.

    Returns ``(grads, seen_error, unseen_error, seconds_of_the_gradient_part)``.
    """
    t0 = time.perf_counter()
    n, d = z.shape
    m = mean.clone().requires_grad_(True)
    L = tril.clone().requires_grad_(True)
    x = (m + z @ L.T).detach()
    y = problem(x)
    v, yv = mt.seen_x.reshape(-1, d), mt.seen_y.reshape(-1)
    k = _sq_kernel(x, x, bandwidth)
    chol = torch.linalg.cholesky(k + n * ridge * torch.eye(n))
    kxv = _sq_kernel(x, v, bandwidth)                       # (N, M_seen)
    sol = torch.cholesky_solve(kxv, chol)                   # solve against M_seen columns
    resid = yv - sol.T @ y
    r = kxv @ resid / v.shape[0]
    p = n * torch.cholesky_solve(r[:, None], chol)[:, 0]
    a = torch.cholesky_solve(y[:, None], chol)[:, 0]
    weight = ((k @ a - y) * p).detach() / n
    logp = Gaussian(m, scale_tril=L).log_prob(x)
    gm, gl = torch.autograd.grad(weight @ logp, (m, L))
    t1 = time.perf_counter()
    seen_err = float(resid.norm() / yv.norm())
    unseen_err = math.nan
    if eval_unseen:
        u, yu = mt.unseen_x.reshape(-1, d), mt.unseen_y.reshape(-1)
        with torch.no_grad():  # full (45000, N) kernel matrix, then one product
            unseen_err = float((yu - _sq_kernel(u, x, bandwidth) @ a).norm() / yu.norm())
    return (gm, torch.tril(gl)), seen_err, unseen_err, t1 - t0


def reference_run(problem, mt, init, *, n_train, steps, lr, nominal_steps=1000,
                  eval_unseen=True, seed=0):
    """``steps`` SGD steps of the reference; ridge/lr follow a ``nominal_steps`` schedule."""
    gen = torch.Generator().manual_seed(seed)
    mean, tril = init.mean.clone(), init.scale_tril.clone()
    walls, grads = [], []
    cpu0 = time.process_time()
    for step in range(steps):
        t0 = time.perf_counter()
        ridge = cosine_schedule(1e-3, 1e-7, step, nominal_steps)
        z = torch.randn(n_train, mt.dim, generator=gen)
        (gm, gl), _, _, tg = reference_step(problem, mt, mean, tril, z, ridge=ridge,
                                            eval_unseen=eval_unseen)
        lr_t = cosine_schedule(lr, 0.0, step, nominal_steps)
        with torch.no_grad():
            mean = mean - lr_t * gm
            tril = tril - lr_t * gl
            diag = torch.diagonal(tril)
            diag.masked_fill_(diag <= 0, DIAG_CLAMP)
        walls.append(time.perf_counter() - t0)
        grads.append(tg)
    cpu = time.process_time() - cpu0
    return {**_stats(walls, grads), "cpu_total_ms": 1e3 * cpu / steps}


def _stats(walls: list[float], grads: list[float]) -> dict:
    """Mean and minimum per-step times in ms (the minimum approximates an idle machine)."""
    return {"total_ms": 1e3 * sum(walls) / len(walls), "grad_ms": 1e3 * sum(grads) / len(grads),
            "total_ms_min": 1e3 * min(walls), "grad_ms_min": 1e3 * min(grads)}


# ---------------------------------------------------------------------------- ours
def ours_run(problem, mt, init, *, n_train, steps, lr, eval_unseen=True, seed=0,
             num_threads="current"):
    """``num_threads``: "current" = the count set by the caller, None = the package's
    default policy, or an int."""
    cpu0 = time.process_time()
    nt = torch.get_num_threads() if num_threads == "current" else num_threads
    res = bilevel_descent(problem, mt, init,
                          schedule=BilevelSchedule(n_train=n_train, steps=steps, lr=lr,
                                                   eval_unseen=eval_unseen),
                          krr=KRRSettings(num_threads=nt), generator=seed)
    cpu = time.process_time() - cpu0
    return {**_stats([h["seconds"] for h in res.history], [h["grad_seconds"] for h in res.history]),
            "cpu_total_ms": 1e3 * cpu / steps,
            "unseen_error_first_last": [res.history[0]["unseen_error"],
                                        res.history[-1]["unseen_error"]]}


def gradient_agreement(problem, mt, init, n_train=250) -> float:
    """Relative difference of our adjoint gradient and the reference's (same draw, float32)."""
    z = torch.randn(n_train, mt.dim, generator=torch.Generator().manual_seed(1))
    ours = adjoint_gradient(problem, mt, init, z, ridge=1e-3)
    (gm, gl), *_ = reference_step(problem, mt, init.mean, init.scale_tril, z, ridge=1e-3,
                                  eval_unseen=False)
    a = torch.cat([ours.grad_mean, ours.grad_scale_tril.reshape(-1)]).double()
    b = torch.cat([gm, gl.reshape(-1)]).double()
    return float((a - b).norm() / b.norm())


# ---------------------------------------------------------------------------- driver
def _steps_for(n: int, steps: int) -> int:
    return max(3, steps * 250 // n) if n > 250 else steps


def headline(steps: int, rounds: int) -> dict:
    """The N = 250 Sobol G row, ours and the reference interleaved ``rounds`` times: per round
    a ``steps``-step run of ours, then ``steps // 4`` reference steps, then a run of ours with
    the unseen error logged every 10th step only (``eval_unseen=10``, an option, for
    information). Per round the median step of each; reported: the median over rounds of those
    medians, the fastest step overall, and the ratios reference / ours of both. (Alternating
    single steps instead was tried: each short run of ours then starts with caches the
    reference's 45 000 x 250 matrix has evicted and fresh buffers, unlike a real run.)"""
    problem = get_problem("sobol-g", dim=2)
    init = Gaussian(torch.full((2,), 0.5), torch.eye(2))
    mt = make_metatest(problem, n_measures=10, n_seen=500, n_unseen=4500, seed=0)
    nt = torch.get_num_threads()
    ours, ref, sparse = [], [], []
    for r in range(rounds):
        res = bilevel_descent(problem, mt, init, schedule=BilevelSchedule(n_train=250, steps=steps),
                              krr=KRRSettings(num_threads=nt), generator=r)
        ours.append(sorted(h["seconds"] for h in res.history))
        ref.append(sorted(_reference_walls(problem, mt, init, steps=max(4, steps // 4), seed=r)))
        res = bilevel_descent(problem, mt, init,
                              schedule=BilevelSchedule(n_train=250, steps=steps, eval_unseen=10),
                              krr=KRRSettings(num_threads=nt), generator=r)
        sparse.append(res.seconds_per_step)
    med = lambda rows: 1e3 * sorted(w[len(w) // 2] for w in rows)[len(rows) // 2]
    low = lambda rows: 1e3 * min(w[0] for w in rows)
    every10 = 1e3 * sorted(sparse)[len(sparse) // 2]
    return {"ours_ms_median": med(ours), "ours_ms_min": low(ours),
            "reference_ms_median": med(ref), "reference_ms_min": low(ref),
            "ratio_median": med(ref) / med(ours), "ratio_min": low(ref) / low(ours),
            "ours_unseen_every_10_ms_mean": every10,
            "ratio_unseen_every_10_vs_reference_every_step": med(ref) / every10,
            "rounds": rounds, "steps_ours": steps, "steps_reference": max(4, steps // 4),
            "note": "Sobol G d=2, N=250, J=10, 500 seen + 4500 unseen per Q, float32, seen + "
                    "unseen error logged every step; median over rounds of the per-round "
                    "median step, and the fastest step of all rounds"}


def _reference_walls(problem, mt, init, *, steps: int, seed: int) -> list[float]:
    """Seconds per step of :func:`reference_run` (N = 250, lr 1e-2, unseen error logged)."""
    gen = torch.Generator().manual_seed(seed)
    mean, tril = init.mean.clone(), init.scale_tril.clone()
    walls = []
    for step in range(steps):
        t0 = time.perf_counter()
        z = torch.randn(250, mt.dim, generator=gen)
        (gm, gl), *_ = reference_step(problem, mt, mean, tril, z,
                                      ridge=cosine_schedule(1e-3, 1e-7, step, 1000))
        lr_t = cosine_schedule(1e-2, 0.0, step, 1000)
        mean, tril = mean - lr_t * gm, tril - lr_t * gl
        diag = torch.diagonal(tril)
        diag.masked_fill_(diag <= 0, DIAG_CLAMP)
        walls.append(time.perf_counter() - t0)
    return walls


def run(steps: int, threads: list[int], quick: bool) -> dict:
    problem = get_problem("sobol-g", dim=2)
    init = Gaussian(torch.full((2,), 0.5), torch.eye(2))
    mt = make_metatest(problem, n_measures=10, n_seen=500, n_unseen=4500, seed=0)
    rows = []
    n_values = (250, 1000) if quick else (250, 1000, 4000)
    seen_values = (250, 500) if quick else (250, 500, 1000, 2000)
    for nt in threads:
        torch.set_num_threads(nt)
        for n in n_values:
            k = _steps_for(n, steps)
            ours = ours_run(problem, mt, init, n_train=n, steps=k, lr=1e-2)
            # the reference solves against 5000 columns: O(N^2 M) per step, which at N = 4000
            # means minutes per step on 2 cores, so it is only run up to N = 1000
            ref = (reference_run(problem, mt, init, n_train=n, steps=max(2, k // 4), lr=1e-2)
                   if n <= 1000 else None)
            rows.append({"threads": nt, "vary": "n_train", "n_train": n, "n_seen": 500,
                         "n_unseen": 4500, "steps": k, "ours": ours, "reference": ref})
        for ls in seen_values:
            if ls == 500:
                continue  # the n_train = 250 row above
            mt_l = make_metatest(problem, n_measures=10, n_seen=ls, n_unseen=9 * ls, seed=0)
            ours = ours_run(problem, mt_l, init, n_train=250, steps=steps, lr=1e-2)
            ref = reference_run(problem, mt_l, init, n_train=250, steps=max(2, steps // 4),
                                lr=1e-2)
            rows.append({"threads": nt, "vary": "n_seen", "n_train": 250, "n_seen": ls,
                         "n_unseen": 9 * ls, "steps": steps, "ours": ours, "reference": ref})
    return {"rows": rows, "gradient_rel_diff_vs_reference": gradient_agreement(problem, mt, init)}


def _spin() -> None:  # pragma: no cover - runs in the neighbour process
    while True:
        pass


def busy_neighbour(steps: int, rounds: int) -> dict:
    """Step time beside one process that keeps one core busy, for the default thread policy,
    one thread and two threads, interleaved round by round in one run (so the three see
    the same machine load)."""
    import multiprocessing as mp

    problem = get_problem("sobol-g", dim=2)
    init = Gaussian(torch.full((2,), 0.5), torch.eye(2))
    mt = make_metatest(problem, n_measures=10, n_seen=500, n_unseen=4500, seed=0)
    modes = {"default policy": None, "1 thread": 1, "2 threads": 2}
    out: dict = {m: {"quiet": [], "busy": []} for m in modes}
    torch.set_num_threads(2)
    for _ in range(rounds):
        for state in ("quiet", "busy"):
            neighbour = mp.get_context("fork").Process(target=_spin, daemon=True)
            if state == "busy":
                neighbour.start()
                time.sleep(0.5)
            try:
                for mode, nt in modes.items():
                    r = ours_run(problem, mt, init, n_train=250, steps=steps, lr=1e-2,
                                 num_threads=nt)
                    out[mode][state].append(r["total_ms"])
            finally:
                if state == "busy":
                    neighbour.terminate()
                    neighbour.join()
    rows = []
    for mode, by in out.items():
        q, b = sorted(by["quiet"]), sorted(by["busy"])
        rows.append({"threads": mode, "quiet_ms_median": q[len(q) // 2],
                     "busy_ms_median": b[len(b) // 2], "quiet_ms": by["quiet"],
                     "busy_ms": by["busy"]})
    two = next(r for r in rows if r["threads"] == "2 threads")
    for r in rows:
        r["busy_speedup_vs_2_threads"] = two["busy_ms_median"] / r["busy_ms_median"]
    return {"rows": rows, "steps": steps, "rounds": rounds,
            "note": "Sobol G d=2, N=250, J=10, 500 seen + 4500 unseen per Q, float32; "
                    "ms per step incl. seen + unseen error; 'busy' = beside one process "
                    "spinning on one core; the machine is shared with other jobs (see load)"}


def family_rows(steps: int, rounds: int) -> dict:
    """ms per step of the Gaussian and the K = 4 mixture, interleaved (same load), 1 thread."""
    torch.set_num_threads(1)
    cases = {"sobol-g d=2": ("sobol-g", 2, 1.0, 1e-2), "rkhs d=10": ("rkhs", 10, 5.0, 5.0)}
    rows = []
    for label, (name, dim, bandwidth, lr) in cases.items():
        problem = get_problem(name, dim=dim)
        mt = make_metatest(problem, n_measures=10, n_seen=500, n_unseen=4500, seed=0)
        gauss = Gaussian(torch.full((dim,), 0.5), torch.eye(dim))
        inits = {"gaussian": (gauss, 250),
                 "mixture K=4": (mixture_start(mt.seen_x, 4, method="kmeans", generator=0), 250),
                 "gaussian N=1024": (gauss, 1024),
                 "particles M=1024": (particle_start(mt.seen_x, 1024, generator=0), 1024)}
        times: dict = {(f, e): [] for f in inits for e in (True, False)}
        for _ in range(rounds):
            for eval_unseen in (True, False):
                for fam, (init, n_train) in inits.items():
                    schedule = BilevelSchedule(n_train=n_train, steps=steps, lr=lr,
                                               eval_unseen=eval_unseen)
                    res = bilevel_descent(problem, mt, init, schedule=schedule,
                                          krr=KRRSettings(bandwidth=bandwidth, num_threads=1),
                                          generator=0)
                    times[(fam, eval_unseen)].append(
                        (sorted(h["seconds"] for h in res.history)[steps // 2],
                         sorted(h["grad_seconds"] for h in res.history)[steps // 2]))
        for eval_unseen in (True, False):
            cell = {}
            for fam in inits:
                tot = sorted(t for t, _ in times[(fam, eval_unseen)])[rounds // 2]
                grad = sorted(g for _, g in times[(fam, eval_unseen)])[rounds // 2]
                cell[fam] = {"total_ms": 1e3 * tot, "grad_ms": 1e3 * grad}
            g, m = cell["gaussian"], cell["mixture K=4"]
            g2, p = cell["gaussian N=1024"], cell["particles M=1024"]
            rows.append({"case": label, "eval_unseen": eval_unseen, **cell,
                         "ratio_total": m["total_ms"] / g["total_ms"],
                         "ratio_grad": m["grad_ms"] / g["grad_ms"],
                         "particles_ratio_total": p["total_ms"] / g2["total_ms"],
                         "particles_ratio_grad": p["grad_ms"] / g2["grad_ms"]})
        if label == "rkhs d=10":
            particle_grad = particle_gradient_timing(problem, mt, bandwidth, rounds)
    return {"rows": rows, "steps": steps, "rounds": rounds, "particle_gradient": particle_grad,
            "note": "median over steps of one run, then median over interleaved rounds; "
                    "N = 250 (gaussian, mixture K=4) or 1024 (gaussian N=1024, particles "
                    "M=1024), J = 10, 500 seen + 4500 unseen per Q, float32, 1 thread"}


def particle_gradient_timing(problem, mt, bandwidth: float, rounds: int) -> dict:
    """ms of ``dJ/dX`` at M = 1024 particles: the closed form (``adjoint_gradient``, factor
    dtype float64) against torch autograd through a float64 dense graph of the same solve."""
    from wheretolearn.design.bilevel import adjoint_gradient
    from wheretolearn.measures.empirical import ParticleMeasure

    x = particle_start(mt.seen_x, 1024, generator=0).points.double()
    mt64 = mt.to(torch.float64) if hasattr(mt, "to") else mt
    v, yv = mt64.seen_x.reshape(-1, x.shape[1]).double(), mt64.seen_y.reshape(-1).double()
    ridge, s2 = 1e-3, 2 * bandwidth ** 2

    def autograd_grad():
        xa = x.clone().requires_grad_(True)
        n = xa.shape[0]
        k = torch.exp(-torch.cdist(xa, xa) ** 2 / s2) + n * ridge * torch.eye(n, dtype=x.dtype)
        a = torch.cholesky_solve(problem(xa)[:, None], torch.linalg.cholesky(k))[:, 0]
        f = torch.exp(-torch.cdist(v, xa) ** 2 / s2) @ a
        (g,) = torch.autograd.grad(0.5 * ((yv - f) ** 2).mean(), xa)
        return g

    closed, auto = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        gc = adjoint_gradient(problem, mt64, ParticleMeasure(x), x=x, ridge=ridge,
                              krr=KRRSettings(bandwidth=bandwidth)).grads["points"] / x.shape[0]
        closed.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ga = autograd_grad()
        auto.append(time.perf_counter() - t0)
    rel = float((gc - ga).norm() / ga.norm())
    return {"closed_form_ms": 1e3 * sorted(closed)[rounds // 2],
            "autograd_ms": 1e3 * sorted(auto)[rounds // 2], "relative_difference": rel,
            "setting": "rkhs d=10, M = 1024, 5000 seen rows, float64, 1 thread, median"}


def _family_table(result: dict) -> str:
    lines = [(f"{'case':<12} {'unseen':>6} | {'gaussian total':>14} {'grad':>7} | "
              f"{'mixture K=4 total':>17} {'grad':>7} | {'ratio total':>11} {'grad':>6}")]
    for r in result["rows"]:
        g, m = r["gaussian"], r["mixture K=4"]
        lines.append(f"{r['case']:<12} {'yes' if r['eval_unseen'] else 'no':>6} | "
                     f"{g['total_ms']:>14.2f} {g['grad_ms']:>7.2f} | {m['total_ms']:>17.2f} "
                     f"{m['grad_ms']:>7.2f} | {r['ratio_total']:>10.2f}x {r['ratio_grad']:>5.2f}x")
    lines.append("")
    lines.append(f"{'case':<12} {'unseen':>6} | {'gaussian N=1024':>15} {'grad':>7} | "
                 f"{'particles M=1024':>16} {'grad':>7} | {'ratio total':>11} {'grad':>6}")
    for r in result["rows"]:
        g, p = r["gaussian N=1024"], r["particles M=1024"]
        lines.append(f"{r['case']:<12} {'yes' if r['eval_unseen'] else 'no':>6} | "
                     f"{g['total_ms']:>15.2f} {g['grad_ms']:>7.2f} | {p['total_ms']:>16.2f} "
                     f"{p['grad_ms']:>7.2f} | {r['particles_ratio_total']:>10.2f}x "
                     f"{r['particles_ratio_grad']:>5.2f}x")
    pg = result.get("particle_gradient")
    if pg:
        lines.append(f"particle gradient dJ/dX (rkhs, M = 1024, float64): closed form "
                     f"{pg['closed_form_ms']:.1f} ms, autograd {pg['autograd_ms']:.1f} ms "
                     f"(relative difference {pg['relative_difference']:.1e})")
    lines.append("ms per step (median); grad = the step without the unseen-error logging")
    return "\n".join(lines)


def _headline_text(h: dict) -> str:
    return (f"interleaved, 1 thread, N = 250 ({h['rounds']} rounds of {h['steps_ours']} / "
            f"{h['steps_reference']} steps): ours "
            f"{h['ours_ms_median']:.2f} ms (min {h['ours_ms_min']:.2f}), reference "
            f"{h['reference_ms_median']:.1f} ms (min {h['reference_ms_min']:.1f}): "
            f"{h['ratio_median']:.1f}x by medians, {h['ratio_min']:.1f}x by minima; option "
            f"eval_unseen=10 (not the default): {h['ours_unseen_every_10_ms_mean']:.2f} ms "
            f"per step on average")


def _table(result: dict) -> str:
    head = (f"{'thr':>3} {'N':>5} {'seen/Q':>6} {'unseen/Q':>8} | {'ours total':>16} "
            f"{'ours grad':>15} {'cpu':>7} | {'ref total':>17} {'ref grad':>15} {'cpu':>7} |"
            f" {'ratio':>6}")
    lines = [head, "-" * len(head)]

    def cell(t: dict, key: str) -> str:
        return f"{t[key]:>7.1f} ({t[key + '_min']:>6.1f})"

    for r in result["rows"]:
        o, f = r["ours"], r["reference"]
        ref = (f"{cell(f, 'total_ms'):>17} {cell(f, 'grad_ms'):>15} {f['cpu_total_ms']:>7.1f} | "
               f"{f['total_ms_min'] / o['total_ms_min']:>5.1f}x" if f else f"{'(not run)':>41} |")
        lines.append(f"{r['threads']:>3} {r['n_train']:>5} {r['n_seen']:>6} {r['n_unseen']:>8} | "
                     f"{cell(o, 'total_ms'):>16} {cell(o, 'grad_ms'):>15} "
                     f"{o['cpu_total_ms']:>7.1f} | " + ref)
    lines.append("ms per step: mean (minimum over steps); total = step incl. seen + unseen error "
                 "logging; grad = gradient step alone; cpu = process CPU time per step; ratio = "
                 "reference / ours of the minimum totals")
    lines.append(f"gradient agreement with the reference (float32, one draw): relative "
                 f"difference {result['gradient_rel_diff_vs_reference']:.2e}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="steps per configuration (N=250)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--quick", action="store_true", help="fewer configurations")
    parser.add_argument("--busy", action="store_true",
                        help="only the thread-policy rows beside a busy process "
                             "(writes bench_bilevel_busy.json)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds (headline, families, --busy)")
    parser.add_argument("--families", action="store_true",
                        help="only the Gaussian vs mixture (K = 4) step times (writes "
                             "bench_bilevel_families.json)")
    args = parser.parse_args()
    load_before = os.getloadavg()
    if args.families:
        result = family_rows(args.steps, args.rounds)
        result["meta"] = {"torch": torch.__version__, "cpu_count": os.cpu_count(),
                          "load_average_before": load_before,
                          "load_average_after": os.getloadavg()}
        print(_family_table(result))
        out = args.out.with_name("bench_bilevel_families.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
        print(f"wrote {out}")
        return
    if args.busy:
        result = busy_neighbour(args.steps, args.rounds)
        result["meta"] = {"torch": torch.__version__, "cpu_count": os.cpu_count(),
                          "load_average_before": load_before,
                          "load_average_after": os.getloadavg()}
        for r in result["rows"]:
            print(f"{r['threads']:>15}: quiet {r['quiet_ms_median']:7.1f} ms  beside a busy "
                  f"process {r['busy_ms_median']:7.1f} ms  ({r['busy_speedup_vs_2_threads']:.1f}x "
                  f"vs 2 threads)")
        out = args.out.with_name("bench_bilevel_busy.json")
        out.write_text(json.dumps(result, indent=2))
        print(f"wrote {out}")
        return
    t0 = time.perf_counter()
    torch.set_num_threads(1)
    head = headline(args.steps, 1 if args.quick else args.rounds)
    result = run(args.steps, args.threads, args.quick)
    result["headline_1_thread"] = head
    torch.set_num_threads(1)
    result["families"] = family_rows(args.steps, 1 if args.quick else args.rounds)
    result["meta"] = {"torch": torch.__version__, "python": platform.python_version(),
                      "cpu_count": os.cpu_count(), "machine": platform.machine(),
                      "load_average_before": load_before, "load_average_after": os.getloadavg(),
                      "seconds": time.perf_counter() - t0, "steps": args.steps,
                      "problem": "sobol-g d=2, J=10, float32"}
    print(_table(result))
    print(_headline_text(head))
    print(_family_table(result["families"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
