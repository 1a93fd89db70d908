"""A stand-in for a user's solver, for the tests of external commands.

    python fake_solver.py MODE OUTDIR N_STEPS P0 [ATTEMPT]

Step ``s`` holds ``P0 * (s + 1)`` in every entry of a (3,) field, so tests know the truth.
MODE: ok | npz | direct (written in place, slowly, no rename) | crash | hang | malformed |
short | wrongshape | client | client-crash | client-silent (3 silent connections stay
open until the engine drops them) | crash-once | hang-once (the last two fail on
attempt 1 only) | mixed (by $WHERETOLEARN_SIM_ID mod 5: 1 crash-once, 2 hang-once,
3 malformed-once, 4 short-once, else ok).
"""

import os
import socket
import subprocess
import sys
import time

import numpy as np

mode, out, n, p0 = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
attempt = int(sys.argv[5]) if len(sys.argv) > 5 else 1
FAIL_AT = 2
if mode == "mixed":
    mode = {1: "crash-once", 2: "hang-once", 3: "malformed-once",
            4: "short-once"}.get(int(os.environ["WHERETOLEARN_SIM_ID"]) % 5, "ok")


def field(s):
    return np.full(3, p0 * (s + 1))


def put(s, arr, ext="npy"):
    tmp = os.path.join(out, f".tmp_{s}.{ext}")
    if ext == "npz":
        np.savez(tmp, field=arr, other=np.zeros(1))
    else:
        np.save(tmp, arr)
    os.replace(tmp, os.path.join(out, f"step_{s:03d}.{ext}"))


if mode.startswith("client"):
    sys.path.insert(0, os.environ["WTL_SRC"])
    from wheretolearn.client import connect

    silent = []
    if mode == "client-silent":      # connect and say nothing, before the real client
        host, _, port = os.environ["WHERETOLEARN_ADDRESS"].rpartition(":")
        silent = [socket.create_connection((host, int(port))) for _ in range(3)]
    with connect() as c:
        for s in range(n):
            if mode == "client-crash" and s == FAIL_AT:
                raise RuntimeError(f"client boom at step {s}")
            c.send(s, field(s))
    for sock in silent:              # keep them open until the engine closes them
        sock.settimeout(120)
        try:
            sock.recv(1)
        except OSError:
            pass
    sys.exit(0)

for s in range(n):
    if s == FAIL_AT and (mode in ("crash", "hang", "malformed", "short", "wrongshape")
                         or (mode.endswith("-once") and attempt == 1)):
        if mode.startswith("crash"):
            print("solver: diverged (residual nan)", file=sys.stderr)
            print(f"fatal error at step {s}", file=sys.stderr)
            sys.exit(3)
        if mode.startswith("hang"):
            # a child in the same process group must die with us
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
            tmp = os.path.join(out, "..", ".child.pid.tmp")    # whole or absent, never empty
            with open(tmp, "w") as fh:
                fh.write(str(child.pid))
            os.replace(tmp, os.path.join(out, "..", "child.pid"))
            time.sleep(600)
        if mode.startswith("malformed"):
            with open(os.path.join(out, ".bad"), "wb") as fh:
                fh.write(b"this is not an npy file at all" * 4)
            os.replace(os.path.join(out, ".bad"), os.path.join(out, f"step_{s:03d}.npy"))
            time.sleep(600)
        if mode.startswith("short"):
            sys.exit(0)
        if mode == "wrongshape":
            put(s, np.zeros((2, 2)))
            time.sleep(600)
    if mode == "npz":
        put(s, field(s), "npz")
    elif mode == "direct":
        with open(os.path.join(out, f"step_{s:03d}.npy"), "wb") as fh:
            np.lib.format.write_array_header_1_0(
                fh, np.lib.format.header_data_from_array_1_0(field(s)))
            fh.flush()
            time.sleep(0.05)
            fh.write(field(s).tobytes())
    else:
        put(s, field(s))
