#!/usr/bin/env python3
"""A user's simulation code: 1-D advection-diffusion, one ``.npy`` file per time step.

    u_t + a u_x = D u_xx     on the periodic interval [0, 1),
    u(x, 0) = exp(-(x - x0)^2 / (2 w^2))     (w = WIDTH = 0.1)

Three parameters: velocity ``a``, diffusivity ``D``, bump centre ``x0``. Solved exactly
in Fourier space (each mode k decays and travels: ``exp(-(D k^2 + i a k) t)``), so the
script needs numpy only. Step ``s`` (0-based) is the solution at ``t = (s + 1) dt``,
written to ``OUT/step_<s>.npy`` by writing a hidden temporary file and renaming it into
place (a reader never sees half a file). This is the shape of program wheretolearn
launches as ``[study] command``: it knows nothing about wheretolearn.

Usage: python solver.py --velocity A --diffusivity D --center X0 --out DIR
       [--steps 20] [--nx 64] [--dt 0.02]
"""

import argparse
import os

import numpy as np

#: Width ``w`` of the initial bump.
WIDTH = 0.1


def solve(velocity: float, diffusivity: float, center: float, *, nx: int, steps: int,
          dt: float):
    """Yield ``(step, u)`` with ``u`` the (nx,) solution at ``t = (step + 1) dt``."""
    x = np.arange(nx) / nx
    d = (x - center + 0.5) % 1.0 - 0.5                  # periodic distance to the centre
    u_hat = np.fft.rfft(np.exp(-d**2 / (2 * WIDTH**2)))
    k = 2 * np.pi * np.fft.rfftfreq(nx, d=1.0 / nx)
    decay = np.exp(-(diffusivity * k**2 + 1j * velocity * k) * dt)
    for step in range(steps):
        u_hat = u_hat * decay
        yield step, np.fft.irfft(u_hat, n=nx)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--velocity", type=float, required=True)
    ap.add_argument("--diffusivity", type=float, required=True)
    ap.add_argument("--center", type=float, required=True)
    ap.add_argument("--out", required=True, help="folder for the step files")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--nx", type=int, default=64)
    ap.add_argument("--dt", type=float, default=0.02)
    a = ap.parse_args()
    if a.diffusivity <= 0:
        ap.error(f"--diffusivity must be positive, got {a.diffusivity}")
    for step, u in solve(a.velocity, a.diffusivity, a.center, nx=a.nx, steps=a.steps,
                         dt=a.dt):
        tmp = os.path.join(a.out, f".step_{step:05d}.npy.tmp")
        with open(tmp, "wb") as fh:
            np.save(fh, u.astype(np.float32))
        os.replace(tmp, os.path.join(a.out, f"step_{step:05d}.npy"))


if __name__ == "__main__":
    main()
