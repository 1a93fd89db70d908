#!/usr/bin/env python3
"""The same 1-D advection-diffusion loop, streaming in situ with ``wheretolearn.client``.

For a Python simulation that is not shaped as a ``Problem``: keep your loop, add three
lines. wheretolearn launches this script (``[study.options] protocol = "client"``) with
the address and the simulation's ids in its environment; run by hand, it computes and
discards (``connect(required=False)``).

Usage: python solver_client.py --velocity A --diffusivity D --center X0
       [--steps 20] [--nx 64] [--dt 0.02]
"""

import argparse

from solver import solve  # the user's own numerics, unchanged

from wheretolearn.client import connect


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("--velocity", "--diffusivity", "--center"):
        ap.add_argument(name, type=float, required=True)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--nx", type=int, default=64)
    ap.add_argument("--dt", type=float, default=0.02)
    a = ap.parse_args()
    with connect(required=False) as c:
        for step, u in solve(a.velocity, a.diffusivity, a.center, nx=a.nx, steps=a.steps,
                             dt=a.dt):
            c.send(step, u)


if __name__ == "__main__":
    main()
