"""The built-in heat solver as a stand-alone program, for bench_user_solver.py.

    python _heat_program.py files OUTDIR N N_STEPS T0 T1 T2 T3 T4
    python _heat_program.py client -    N N_STEPS T0 T1 T2 T3 T4

Computes exactly what ``Heat2D(n=N, n_steps=N_STEPS).simulate(params)`` yields and hands
each step over as an external program would: a ``.npy`` file per step (written to a
hidden name, then renamed) or ``wheretolearn.client`` messages.
"""

import os
import sys

import numpy as np


def main() -> None:
    mode, out, n, n_steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    params = np.array([float(v) for v in sys.argv[5:10]])
    import torch

    torch.set_num_threads(1)
    from wheretolearn.problems.heat2d import Heat2D

    steps = Heat2D(n=n, n_steps=n_steps).simulate(params)
    if mode == "client":
        from wheretolearn.client import connect

        with connect() as c:
            for step, field in steps:
                c.send(step, field)
        return
    for step, field in steps:
        tmp = os.path.join(out, f".step_{step:05d}.npy.tmp")
        with open(tmp, "wb") as fh:
            np.save(fh, field)
        os.replace(tmp, os.path.join(out, f"step_{step:05d}.npy"))


if __name__ == "__main__":
    main()
