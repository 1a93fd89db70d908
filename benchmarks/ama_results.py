"""Reproduce the AMA results table of the README (``small`` presets, several repeats).

``run`` executes ``wheretolearn ama --preset small`` for each problem (1 torch thread; start it
under ``nice -n 10`` on a shared machine) and stores the summary without its per-iteration
history in ``benchmarks/results/ama_small_<problem>.json`` (``--family mixture``:
``ama_small_<problem>_mixture.json``, the mixture training family). ``write RUN_DIR`` stores a
study run from the CLI (e.g. a ``--preset paper`` repeat) as ``ama_<preset>_<problem>.json``.
``table`` prints the markdown table of the README from those files (mean and 95 % interval
over repeats; a single repeat has no interval), and for a pool problem (Burgers) the per-N
table of every method (the AMA-learned distribution against active learning on the same pool,
``--compare``), and for radiative transport (particle AMA) the reductions of the relative OOD
error per Knudsen number and start (``radiative_table``).

Usage::

    nice -n 10 python benchmarks/ama_results.py run [--repeats 3] [--problems ntd darcy]
        [--family single|mixture]
    nice -n 5 python benchmarks/ama_results.py run --problems burgers --compare qbc coreset random
    nice -n 5 python benchmarks/ama_results.py run --problems radiative --knudsen 0.125 2 8
        [--particle-start both]
    python benchmarks/ama_results.py write RUN_DIR
    python benchmarks/ama_results.py table
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = RESULTS.parent.parent


def run(problems: list[str], repeats: int, family: str = "single",
        compare: list[str] | None = None, knudsen: list[float] | None = None,
        particle_start: str = "both") -> None:
    from wheretolearn.design.ama_study import resolve_ama_config, run_ama_study

    for problem in problems:
        radiative = problem == "radiative"
        for eps in (knudsen or [0.125]) if radiative else [None]:
            cfg = resolve_ama_config({"problem": problem, "preset": "small", "repeats": repeats,
                                      "num_threads": 1, "family": family,
                                      "compare": compare if problem == "burgers" else None,
                                      "knudsen": eps,
                                      "particle_start": particle_start if radiative else None})
            with tempfile.TemporaryDirectory() as tmp:
                summary = run_ama_study(cfg, Path(tmp) / "run", progress=False).summary
            write(summary)


def _tail(summary: dict) -> str:
    """File-name suffix: the family (mixture), or radiative's Knudsen number (and its start
    when the study ran one start only)."""
    if "knudsen" in summary:
        starts = summary.get("starts") or {}
        one = "" if len(starts) > 1 else f"_{summary['particle_start']}"
        return f"_eps{summary['knudsen']:g}{one}"
    return "" if summary.get("family", "single") == "single" else f"_{summary['family']}"


def write(summary: dict) -> Path:
    """Store a study summary (without its history) under its problem and family."""
    summary = {k: v for k, v in summary.items() if k not in ("history", "out", "figures")}
    summary["starts"] = {st: {k: v for k, v in sm.items() if k != "figures"}
                         for st, sm in (summary.get("starts") or {}).items()}
    if not summary["starts"]:
        summary.pop("starts")
    tail = _tail(summary)
    path = RESULTS / f"ama_{summary.get('preset', 'small')}_{summary['problem']}{tail}.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {path}")
    return path


def _cell(c: dict) -> str:
    if c["lo"] == c["hi"]:      # one repeat: no interval
        return f"{c['mean']:.3f} (1 run)"
    return f"{c['mean']:.3f} [{c['lo']:.3f}, {c['hi']:.3f}]"


def _vec(v) -> str:
    return "(" + ", ".join(f"{x:.2f}" for x in v) + ")" if isinstance(v, list) else f"{v:.3f}"


SOURCES = ("learned", "initial", "barycenter", "mixture")


def _result_files() -> list[Path]:
    """Study summaries with a guard (``recommended``): small presets first, then paper runs."""
    paths = sorted(RESULTS.glob("ama_small_*.json")) + sorted(RESULTS.glob("ama_paper_*.json"))
    return [p for p in paths if "recommended" in json.loads(p.read_text())]


def table() -> str:
    """The README / docs table: fresh models per source (unseen error, mean [95 % CI] over
    repeats), the guard's recommendation, the in-loop J and how often theta moved."""
    lines = ["| problem (grid) | family | N | learned (AMA) | initial | W2 barycenter | "
             "mixture of Q_j | recommended (margin) | J / J_0 at the end | theta moved "
             "(iterations per repeat) | wall s per run |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for path in _result_files():
        s = json.loads(path.read_text())
        b, rec = s["baselines_ci"], s["recommended"]
        for n in s["eval_n"]:
            cells = " | ".join(_cell(b[src][str(n)]) if src in b else "-" for src in SOURCES)
            grid = f"{s['grid']} points" if "compare" in s else f"{s['grid']}x{s['grid']}"
            lines.append(
                f"| {s['problem']} ({grid}, {s['preset']}) | "
                f"{s.get('family', 'single')} | "
                f"{n} | {cells} | "
                f"{rec['source']} ({rec['margin']:.3f}) | {s['relative_ama_loss'][-1]:.3f} | "
                f"{s.get('theta_moved_iterations')} | {s['seconds'] / s['repeats']:.0f} |")
    return "\n".join(lines)


def learned_table() -> str:
    """Learned parameters per repeat (natural units) for the docs."""
    lines = ["| problem | repeat | learned parameters | stop |", "|---|---|---|---|"]
    for path in _result_files():
        s = json.loads(path.read_text())
        for r, (m, why) in enumerate(zip(s["learned"]["measures"], s["learned"]["stop_reason"])):
            if isinstance(m, dict) and m.get("kind") == "field_particles":
                lines.append(f"| {s['problem']} (knudsen {s['knudsen']:g}, "
                             f"{s['particle_start']} start) | {r} | {m['M']} particles of "
                             f"{m['d']} coefficients, rms {m['coefficient_rms']:.3g}, mean "
                             f"norm {m['mean_coefficient_norm']:.3g} | {why} |")
                continue
            if isinstance(m, dict) and m.get("kind") == "spectrum_mixture":
                moved = max(abs(a - b) for a, b in zip(s["learned"]["values"][r],
                                                        s["learned"]["initial"]))
                lines.append(f"| {s['problem']} (mixture) | {r} | {len(m['components'])} "
                             f"components, {m.get('bound')} bound, max move from the Q_j "
                             f"{moved:.3g} | {why} |")
                continue
            keys = [k for k in ("omega", "m", "sigma", "tau", "alpha", "offset_sd") if k in m]
            lines.append(f"| {s['problem']} | {r} | "
                         f"{', '.join(f'{k} = {m[k]:.3g}' for k in keys)} | {why} |")
    return "\n".join(lines)


def _radiative_files() -> list[Path]:
    return [p for p in _result_files() if "reductions" in json.loads(p.read_text())]


def _mean_ci(values: list[float]) -> str:
    from wheretolearn.report.metrics import mean_ci95

    if len(values) < 2:
        return f"{values[0]:.4f} (1 run)"
    c = mean_ci95(values)
    return f"{c['mean']:.4f} [{c['lo']:.4f}, {c['hi']:.4f}]"


def radiative_table() -> str:
    """Particle AMA on radiative transport: per Knudsen number and start, the reduction of the
    relative OOD error from the start (in-loop model, squared and root, paper F.19), the fresh
    models' errors learned vs mixture of Q per N (mean [95 % CI] over repeats), wall minutes
    and CPU seconds per run (one start and one repeat: its AMA run and its share of the
    guard; the start's total divided by the repeats)."""
    lines = ["| knudsen | start | repeats | in-loop reduction, squared | in-loop reduction, root | "
             "N | fresh: learned | fresh: start | fresh: mixture of Q | learned / mixture | "
             "fresh reduction, squared | wall min per run | CPU s per run |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for path in sorted(_radiative_files(), key=lambda p: json.loads(p.read_text())["knudsen"]):
        s = json.loads(path.read_text())
        for start, st in (s.get("starts") or {s["particle_start"]: s}).items():
            red = st["reductions"]
            loop = red["in_loop"]
            b = st["baselines_ci"]
            wall = st.get("seconds_start", s["seconds"]) / 60 / s["repeats"]
            cpu = st.get("cpu_seconds_start", s.get("cpu_seconds", float("nan"))) / s["repeats"]
            for i, n in enumerate(st["eval_n"]):
                f = red["fresh"][str(n)]
                head = (f"| {s['knudsen']:g} | {start} | {s['repeats']} | {loop['squared']:.1%} | "
                        f"{loop['root']:.1%}" if i == 0 else "| | | | |")
                tail = f"{wall:.1f} | {cpu:.0f} |" if i == 0 else " | |"
                lines.append(f"{head} | {n} | {_mean_ci(b['learned'][str(n)]['values'])} | "
                             f"{_mean_ci(b['initial'][str(n)]['values'])} | "
                             f"{_mean_ci(b['mixture'][str(n)]['values'])} | "
                             f"{f['learned_over_mixture']:.3f} | {f['squared']:.1%} | {tail}")
    return "\n".join(lines)


def compare_table() -> str:
    """Pool problems (Burgers): every method per N (unseen held-out error, mean [95 % CI] over
    trials), then the learned distribution minus each method (Welch 95 % interval)."""
    out = []
    for path in _result_files():
        s = json.loads(path.read_text())
        t = s.get("compare")
        if not t:
            continue
        ns = [str(n) for n in t["schedule"]]
        out.append(f"{s['problem']} ({s['grid']} points, {s['preset']}, {t['trials']} trials; "
                   f"{path.name})")
        out.append("")
        out.append("| method | " + " | ".join(f"N = {n}" for n in ns) + " |")
        out.append("|---|" + "---|" * len(ns))
        for name, by_n in t["methods"].items():
            out.append(f"| {name} | " + " | ".join(_cell(by_n[n]) for n in ns) + " |")
        out.append("")
        out.append("| learned minus | " + " | ".join(f"N = {n}" for n in ns) + " |")
        out.append("|---|" + "---|" * len(ns))
        for name, by_n in t["versus"].items():
            out.append(f"| {name} | " + " | ".join(
                f"{by_n[n]['diff']:+.3f} [{by_n[n]['lo']:+.3f}, {by_n[n]['hi']:+.3f}] "
                f"{by_n[n]['verdict']}" for n in ns) + " |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--repeats", type=int, default=3)
    r.add_argument("--problems", nargs="+", default=["ntd", "darcy"])
    r.add_argument("--family", choices=["single", "mixture"], default="single")
    r.add_argument("--compare", nargs="*", default=None,
                   help="burgers: active-learning baselines (qbc coreset random)")
    r.add_argument("--knudsen", nargs="+", type=float, default=None,
                   help="radiative: Knudsen numbers, one study each (default 0.125)")
    r.add_argument("--particle-start", choices=["paper", "mixture", "both"], default="both")
    w = sub.add_parser("write", help="store the summary.json of a finished study folder")
    w.add_argument("run_dir", type=Path)
    t = sub.add_parser("table")
    t.add_argument("--write", action="store_true",
                   help="also replace the tables between the ama-table markers of README.md "
                        "and docs/ama.md")
    args = ap.parse_args()
    if args.cmd == "run":
        import torch

        torch.set_num_threads(1)
        run(args.problems, args.repeats, args.family, args.compare, args.knudsen,
            args.particle_start)
    elif args.cmd == "write":
        write(json.loads((args.run_dir / "summary.json").read_text()))
    print(table())
    print()
    print(learned_table())
    print()
    print(compare_table())
    print()
    print(radiative_table())
    if args.cmd == "table" and args.write:
        write_docs()


#: Where the generated tables live: (file, marker, tables).
DOCS = ((ROOT / "README.md", "ama-table", ("table",)),
        (ROOT / "docs" / "ama.md", "ama-table", ("table", "learned_table")),
        (ROOT / "README.md", "ama-radiative", ("radiative_table",)),
        (ROOT / "README.md", "ama-compare", ("compare_table",)),
        (ROOT / "docs" / "ama.md", "ama-radiative", ("radiative_table",)))


def write_docs() -> None:
    """Replace the text between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``."""
    for path, name, parts in DOCS:
        text = path.read_text()
        start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
        if start not in text or end not in text:
            raise SystemExit(f"{path}: markers {start} ... {end} not found")
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        body = "\n\n".join(globals()[part]() for part in parts)
        path.write_text(f"{head}{start}\n{body}\n{end}{tail}")
        print(f"wrote {path} ({name})")


if __name__ == "__main__":
    main()
