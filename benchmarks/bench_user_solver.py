"""Cost of streaming a user's program versus the built-in heat problem (issue 17).

The same heat simulation (``Heat2D``, n x n grid, ``n_steps`` steps, 1 torch thread) is run
three ways, side by side, ``--repeats`` times each, in one process:

* ``builtin``: ``Heat2D.simulate`` in this process (what the online worker iterates);
* ``files``: ``benchmarks/_heat_program.py`` as an external command (``ExternalCommandProblem``),
  one ``.npy`` per step written then renamed, picked up by polling the folder;
* ``client``: the same program sending steps over ``wheretolearn.client``.

Per run we record the time to the first step (includes the program's start: Python, numpy,
torch imports) and the time per step after the first ((t_last - t_first) / (n_steps - 1),
what the stream costs per step once running), and the launch cost of a numpy-only program
that writes a single step (``launch_numpy_program_s``: process start, imports, folder set-up
and clean-up). Overhead per step = external per-step time
minus builtin per-step time (medians). On a shared 2-core machine the numbers vary with the
load: compare the ratios measured in one run, not numbers across runs.

Usage::

    python benchmarks/bench_user_solver.py [--n 64] [--n-steps 100] [--repeats 5]
                                           [--out benchmarks/results/bench_user_solver.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _time_stream(steps) -> dict:
    t0 = time.perf_counter()
    stamps = [time.perf_counter() - t0 for _ in steps]
    return {"first": stamps[0], "per_step": (stamps[-1] - stamps[0]) / (len(stamps) - 1),
            "total": stamps[-1], "n": len(stamps)}


def run(n: int, n_steps: int, repeats: int) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from wheretolearn.problems import ExternalCommandProblem, SupervisionOptions
    from wheretolearn.problems.heat2d import PARAMETER_BOUNDS, Heat2D

    params = np.array([300.0, 100.0, 500.0, 200.0, 400.0])
    builtin = Heat2D(n=n, n_steps=n_steps)

    def external(mode: str) -> ExternalCommandProblem:
        return ExternalCommandProblem(
            ["{python}", str(HERE / "_heat_program.py"), mode,
             "{outdir}" if mode == "files" else "-", str(n), str(n_steps),
             "{p0}", "{p1}", "{p2}", "{p3}", "{p4}"],
            bounds=PARAMETER_BOUNDS, n_steps=n_steps, field_shape=[n, n],
            supervision=SupervisionOptions(protocol="client" if mode == "client" else "files",
                                           step_timeout=120))

    ways = {"builtin": lambda: builtin.simulate(params),
            "files": lambda: external("files").simulate(params),
            "client": lambda: external("client").simulate(params)}
    # the streams must carry the same numbers
    ref = np.stack([f for _, f in builtin.simulate(params)])
    for name in ("files", "client"):
        got = np.stack([f for _, f in ways[name]()])
        if not np.array_equal(got, ref):
            raise AssertionError(f"{name} stream differs from the built-in solver")
    runs: dict[str, list[dict]] = {k: [] for k in ways}
    for _ in range(repeats):                      # interleaved: same load for each way
        for name, make in ways.items():
            runs[name].append(_time_stream(make()))
    summary = {}
    for name, rs in runs.items():
        summary[name] = {"first_step_s": statistics.median(r["first"] for r in rs),
                         "per_step_ms": 1e3 * statistics.median(r["per_step"] for r in rs),
                         "total_s": statistics.median(r["total"] for r in rs)}
    # the bare cost of a launch: a numpy-only program that writes one step
    bare = ExternalCommandProblem(
        ["{python}", "-c", "import sys, numpy as np; np.save(sys.argv[1] + '/s_0.npy', "
         "np.zeros(1))", "{outdir}"], bounds=[[0.0, 1.0]], n_steps=1, field_shape=[1])
    launches = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        list(bare.simulate([0.5]))
        launches.append(time.perf_counter() - t0)
    summary["launch_numpy_program_s"] = statistics.median(launches)
    base = summary["builtin"]["per_step_ms"]
    for name in ("files", "client"):
        summary[name]["overhead_per_step_ms"] = summary[name]["per_step_ms"] - base
        summary[name]["per_step_ratio_to_builtin"] = summary[name]["per_step_ms"] / base
        summary[name]["start_overhead_s"] = (summary[name]["first_step_s"]
                                             - summary["builtin"]["first_step_s"])
    return {"n": n, "n_steps": n_steps, "repeats": repeats, "field_bytes": 4 * n * n,
            "summary": summary, "runs": runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--n-steps", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(HERE / "results" / "bench_user_solver.json"))
    a = ap.parse_args()
    result = run(a.n, a.n_steps, a.repeats)
    result["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version(),
                         "load_avg_1min": os.getloadavg()[0], "note": "shared 2-core machine, "
                         "other jobs running: compare ratios within this file"}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    for name, s in result["summary"].items():
        if not isinstance(s, dict):
            print(f"{name}: {s:.3f}")
            continue
        extra = (f", overhead {s['overhead_per_step_ms']:+.3f} ms/step, start "
                 f"+{s['start_overhead_s']:.2f} s" if name != "builtin" else "")
        print(f"{name:8s} first step {s['first_step_s']:.3f} s, {s['per_step_ms']:.3f} ms/step"
              + extra)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    sys.exit(main())
