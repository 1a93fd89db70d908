"""Markdown tables of the committed sampler comparisons (issue 23 protocol).

Reads ``benchmarks/results/online_compare_<name>.json`` -- the ``compare.json`` that
``wheretolearn online compare ... --out DIR`` writes, copied there -- and prints, for each,
the table ``compare`` itself printed: per validation group (interior first), each sampler's
error averaged over paired seeds and the geometric-mean ratio uniform / sampler with its
95 % bootstrap interval. The README and docs/online.md quote this output.

    python benchmarks/online_compare_tables.py [NAME ...]     # default: every result
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from wheretolearn.online.compare import comparison_table

RESULTS = Path(__file__).resolve().parent / "results"


def table(name: str) -> str:
    payload = json.loads((RESULTS / f"online_compare_{name}.json").read_text())
    if "protocol" not in payload:                 # a comparison of the earlier protocol
        return f"## {name}\n\n(earlier protocol: no per-group table)\n"
    proto = payload["protocol"]
    head = (f"## {name}: {proto['n_simulations']} simulations, {len(proto['seeds'])} paired "
            f"seeds, config {payload.get('config')}")
    return head + "\n\n" + comparison_table(payload["summary"], payload) + "\n"


def main(names: list[str]) -> None:
    names = names or sorted(p.stem.removeprefix("online_compare_")
                            for p in RESULTS.glob("online_compare_*.json"))
    print("\n".join(table(n) for n in names))


if __name__ == "__main__":
    main(sys.argv[1:])
