"""Markdown tables of the committed sampler comparisons (issue 23 protocol).

Reads ``benchmarks/results/online_compare_<name>.json`` -- the ``compare.json`` that
``wheretolearn online compare ... --out DIR`` writes, copied there -- and prints, for each,
the table ``compare`` itself printed: per validation group (interior first), each sampler's
error averaged over paired seeds and the geometric-mean ratio uniform / sampler with its
95 % bootstrap interval. The README and docs/online.md quote this output.

    python benchmarks/online_compare_tables.py [NAME ...]     # default: every result
    python benchmarks/online_compare_tables.py --headline interior heat grayscott
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


def headline(names: list[str], group: str = "interior") -> str:
    """One row per (comparison, sampler other than uniform): the geometric-mean ratios
    uniform / sampler [95 % interval] of ``group``'s mean, P99, CVaR0.99 and max."""
    metrics = ("mean", "p99", "cvar99", "max")
    lines = ["| comparison | sampler | " + " | ".join(metrics) + " |",
             "|---|---|" + "---|" * len(metrics)]
    for name in names:
        payload = json.loads((RESULTS / f"online_compare_{name}.json").read_text())
        entries = payload.get("summary", {}).get(group)
        if entries is None:
            continue
        for sampler, stats in entries.items():
            if sampler == "uniform":
                continue
            cells = [f"x{stats[m]['ratio']:.2f} [{stats[m]['lo']:.2f}, {stats[m]['hi']:.2f}]"
                     for m in metrics]
            lines.append(f"| {name} | {sampler} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(args: list[str]) -> None:
    """``[--headline GROUP] [NAME ...]``: the full tables, or the one-table summary."""
    group = None
    if args[:1] == ["--headline"]:
        group, args = args[1], args[2:]
    names = args or sorted(p.stem.removeprefix("online_compare_")
                           for p in RESULTS.glob("online_compare_*.json"))
    print(headline(names, group) if group else "\n".join(table(n) for n in names))


if __name__ == "__main__":
    main(sys.argv[1:])
