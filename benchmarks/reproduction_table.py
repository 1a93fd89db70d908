"""Write the README / docs reproduction and robustness tables from the committed results.

Reads ``benchmarks/results/reproduction/<config>/trial*.json`` (one whole bilevel run each,
written by ``benchmarks/reproduce_bilevel.py``), joins the trials of each configuration with
:func:`wheretolearn.design.bilevel_study.aggregate_trials` and ``robustness.json``, and replaces the
text between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` markers in README.md and
docs/bilevel.md. So the numbers in the text always come from the files, and
``--check`` (used by the test suite) fails when they drift apart.

Usage::

    python benchmarks/reproduction_table.py            # rewrite the tables
    python benchmarks/reproduction_table.py --check    # exit 1 if any table is stale
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "reproduction"
CONFIGS = {  # config file -> row label
    "sobol_g": "Sobol G d2",
    "friedman1": "Friedman 1 d5",
    "friedman2": "Friedman 2 d5",
    "rkhs": "RKHS d10",
    "friedman2_adam": "Friedman 2 d5, Adam + normalised labels",
    "rkhs_barycenter": "RKHS d10, barycenter start",
    "sobol_g_mixture": "Sobol G d2, Gaussian mixture",
    "friedman1_mixture": "Friedman 1 d5, Gaussian mixture",
    "friedman2_mixture": "Friedman 2 d5, Gaussian mixture",
    "rkhs_mixture": "RKHS d10, Gaussian mixture",
    "sobol_g_particles": "Sobol G d2, particles",
    "friedman1_particles": "Friedman 1 d5, particles",
    "friedman2_particles": "Friedman 2 d5, particles",
    "rkhs_particles": "RKHS d10, particles",
}
#: Rows whose trials evaluate only their own distribution: their baseline cells are the
#: named configuration's trials with the same indices (a baseline's draws depend on the
#: seed, trial, name, N and repeat, never on the bilevel family).
BASELINES_FROM = {f"{name}_{family}": name for name in ("sobol_g", "friedman1", "friedman2",
                                                        "rkhs")
                  for family in ("mixture", "particles")}
COLUMNS = [("optimized", "optimised"), ("normal", "normal"), ("barycenter", "barycenter"),
           ("mixture", "mixture"), ("uniform", "uniform"), ("ncoreset", "nCoreSet"),
           ("acoreset", "aCoreSet (approx.)")]
TARGETS = (ROOT / "README.md", ROOT / "docs" / "bilevel.md")


def load_config(name: str) -> dict | None:
    """Aggregated summary of the trials of one configuration, or None without results."""
    from wheretolearn.design.bilevel_study import aggregate_trials

    files = sorted((RESULTS / name).glob("trial*.json"),
                   key=lambda p: int(p.stem.removeprefix("trial")))
    if not files:
        return None
    trials = [json.loads(p.read_text()) for p in files]
    if name in BASELINES_FROM:
        for t, path in zip(trials, files):
            _join_baselines(t, RESULTS / BASELINES_FROM[name] / path.name)
    return aggregate_trials(trials)


def _join_baselines(trial: dict, source: Path) -> None:
    """Fill the baseline cells ``trial`` lacks from the same trial of another configuration
    (same meta-test and evaluation seeds); checks that the two trials share them."""
    other = json.loads(source.read_text())
    for key in ("problem", "dim", "trial", "metatest", "eval_n", "repeats"):
        if trial[key] != other[key]:
            raise ValueError(f"{source}: {key} differs ({other[key]!r} vs {trial[key]!r}); "
                             "its baselines are not this trial's")
    for name, by_n in other["baselines"].items():
        if name not in trial["baselines"]:
            trial["baselines"][name] = by_n
            trial["baselines_ci"][name] = other["baselines_ci"][name]


def _cell(summary: dict, name: str, n: str, best: str) -> str:
    mean = summary["baselines"].get(name, {}).get(n)
    if mean is None:
        return "n/a"
    ci = summary["baselines_ci"][name][n]
    half = (ci["hi"] - ci["lo"]) / 2 if ci.get("n", 0) > 1 else None
    text = f"{mean:.3f}" + (f" ± {half:.3f}" if half is not None else "")
    return f"**{text}**" if name == best else text


def reproduction_table() -> str:
    head = ("| config | trials | error at N=250: start → end | "
            + " | ".join(label for _, label in COLUMNS) + " |")
    lines = [head, "|" + "---|" * (len(COLUMNS) + 3)]
    for name, label in CONFIGS.items():
        s = load_config(name)
        if s is None:
            continue
        n = "1024"
        present = [c for c, _ in COLUMNS if s["baselines"].get(c, {}).get(n) is not None]
        best = min(present, key=lambda c: s["baselines"][c][n])
        cells = [_cell(s, c, n, best) for c, _ in COLUMNS]
        if s.get("family") == "mixture":
            label = f"{label} (K = {s['components']})"
        elif s.get("family") == "particles":
            label = f"{label} (M = {s['particles']}; start → end at N = {s['n_train']})"
        lines.append(f"| {label} | {s['trials']} | {s['initial_error']:.3f} → "
                     f"{s['final_error']:.3f} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Unseen relative OOD error of KRR fitted on N = 1024 samples of each training "
                 "distribution: mean ± half-width of the 95 % Student-t interval over whole "
                 "runs (trials: different bilevel and evaluation seeds, meta-test family seed 0, "
                 "one evaluation draw per source and trial); best in bold. \"optimised\" is the "
                 "iterate with the lowest *seen* error. Gaussian-mixture rows (issue 25): K "
                 "chosen on the seen split (`mixture_selection.json`); their baseline cells "
                 "are the Gaussian row's trials (the same draws). Particle rows (issue 25): "
                 "M = 1024 particles (the training inputs themselves, started from the pooled "
                 "seen samples) trained and evaluated at N = M, so the N = 1024 fit uses the "
                 "particles exactly; baseline cells as for the mixture rows. Generated by "
                 "`benchmarks/reproduction_table.py` from "
                 "`benchmarks/results/reproduction/<config>/trial*.json`.")
    return "\n".join(lines)


#: Baseline columns a best-of-three row is compared with.
BASELINES = [(c, label) for c, label in COLUMNS if c != "optimized"]


def _mean_half(values: list[float]) -> tuple[float, float | None, float, float]:
    """``(mean, half-width or None, lo, hi)`` of the 95 % Student-t interval."""
    from wheretolearn.report.metrics import mean_ci95

    ci = mean_ci95(values)
    half = (ci["hi"] - ci["lo"]) / 2 if ci["n"] > 1 else None
    return ci["mean"], half, ci["lo"], ci["hi"]


def _text(mean: float, half: float | None) -> str:
    """Three decimals; four below 0.1, so that small errors keep two significant digits."""
    fmt = ".4f" if abs(mean) < 0.1 else ".3f"
    return f"{mean:{fmt}}" + (f" ± {half:{fmt}}" if half is not None else "")


def family_selection_table() -> str:
    path = RESULTS / "family_selection.json"
    if not path.exists():
        return "(run `python benchmarks/reproduce_bilevel.py family-selection`)"
    rows = json.loads(path.read_text())
    lines = [("| config | trials | seen-split pick (trials) | seen error at N=1024, mean over "
              "trials | unseen error of the pick | best baseline | pick beats every baseline |"),
             "|" + "---|" * 7]
    for name, r in rows.items():
        per = r["per_trial"]
        fams = list(r["families"])
        picks = {f: sum(t["chosen"] == f for t in per) for f in fams}
        pick_text = ", ".join(f"{f} {k}" for f, k in picks.items() if k)
        seen = ", ".join(f"{f} {sum(t['seen_error'][f] for t in per) / len(per):.4f}"
                         for f in fams)
        m, h, _, hi = _mean_half([t["chosen_unseen_error"] for t in per])
        trials = [json.loads((RESULTS / name / f"trial{t['trial']}.json").read_text())
                  for t in per]
        base = {c: _mean_half([tr["baselines"][c]["1024"] for tr in trials])
                for c, _ in BASELINES if all(c in tr["baselines"] for tr in trials)}
        best = min(base, key=lambda c: base[c][0])
        bm, bh, blo, _ = base[best]
        beats = ("yes, intervals apart" if hi < blo else "yes (means; intervals overlap)"
                 if m < bm else "**no**")
        pick_cell, base_cell = _text(m, h), _text(bm, bh)
        if m <= bm:
            pick_cell = f"**{pick_cell}**"
        else:
            base_cell = f"**{base_cell}**"
        lines.append(f"| {CONFIGS[name]} | {len(per)} | {pick_text} | {seen} | {pick_cell} | "
                     f"{dict(BASELINES)[best]} {base_cell} | {beats} |")
    lines.append("")
    lines.append("`family = \"best\"` applied to the committed trials (issue 25): in each trial "
                 "the family whose reported distribution has the lowest *seen* error at N = 1024 "
                 "(mean of the study's two start-check draws) is picked, and the pick's *unseen* "
                 "error (the trial file's, never used to pick) is averaged over trials: mean ± "
                 "half-width of the 95 % Student-t interval. Families compared are those with "
                 "committed trials (the rows above); the baselines are the Gaussian row's cells "
                 "over the same trials. Generated from "
                 "`benchmarks/results/reproduction/family_selection.json` "
                 "(`python benchmarks/reproduce_bilevel.py family-selection`).")
    return "\n".join(lines)


def larger_n_table(n: int = 4096) -> str:
    """The committed trials evaluated at N = ``n`` (``n<n>.json``): each family's reported
    distribution, the seen-split pick of ``family_selection.json`` and every baseline."""
    path, sel_path = RESULTS / f"n{n}.json", RESULTS / "family_selection.json"
    if not path.exists() or not sel_path.exists():
        return f"(run `python benchmarks/reproduce_bilevel.py evaluate-at --n {n}`)"
    rows, sel = json.loads(path.read_text()), json.loads(sel_path.read_text())
    smooth = _smoothing_cells(n)
    head = ["config", "trials", "seen-split pick (at N=1024)", f"pick at N={n}",
            "Gaussian", "mixture family", "particles (Silverman KDE)",
            "particles (KDE bandwidth chosen on seen)",
            *(label for _, label in BASELINES), "pick beats every baseline"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in (c for c in CONFIGS if c in rows and c in sel):
        r = rows[name]
        picks = {t["trial"]: t["chosen"] for t in sel[name]["per_trial"]}
        trials = [t for t in sorted(r["trials"], key=int) if int(t) in picks]
        if not trials:
            continue
        tuned = smooth.get(name, {})
        cells = [{**r["trials"][t]["errors"],
                  **({"optimized:particles-seen-bw": tuned[t]} if t in tuned else {})}
                 for t in trials]

        def stat(key, cells=cells):
            vals = [c.get(key) for c in cells]
            return None if any(v is None for v in vals) else _mean_half(vals)

        pick = _mean_half([c[_pick_key(picks[int(t)], c)] for t, c in zip(trials, cells)])
        fams = [stat(f"optimized:{f}") for f in ("gaussian", "mixture", "particles",
                                                  "particles-seen-bw")]
        base = {c: stat(c) for c, _ in BASELINES}
        present = {c: v for c, v in base.items() if v is not None}
        best = min(present, key=lambda c: present[c][0])
        m, _, _, hi = pick
        beats = ("yes, intervals apart" if hi < present[best][2] else
                 "yes (means; intervals overlap)" if m < present[best][0] else
                 f"**no** ({dict(BASELINES)[best]})")
        counts = {}
        for t in trials:
            counts[picks[int(t)]] = counts.get(picks[int(t)], 0) + 1
        fmt = lambda v, bold=False: ("n/a" if v is None else
                                     (f"**{_text(v[0], v[1])}**" if bold else _text(v[0], v[1])))
        lines.append("| " + " | ".join([
            CONFIGS[name], str(len(trials)), ", ".join(f"{f} {k}" for f, k in counts.items()),
            fmt(pick, bold=m <= present[best][0]), *(fmt(v) for v in fams),
            *(fmt(base[c], bold=(c == best and present[best][0] < m)) for c, _ in BASELINES),
            beats]) + " |")
    lines.append("")
    lines.append(f"Unseen relative OOD error of KRR fitted on N = {n} samples: the committed "
                 f"trials' distributions (rebuilt from the trial files) and every baseline, one "
                 f"draw per source and trial with the seeds a study with eval_n = [1024, {n}] "
                 f"uses; mean ± half-width of the 95 % Student-t interval over trials. The pick "
                 f"is each trial's seen-split choice at N = 1024 (table above), not re-chosen at "
                 f"N = {n}; the lower of the pick and the best baseline in bold. Particles at "
                 f"N = {n}: the M = 1024 particles plus {n - 1024} draws of their Gaussian KDE, "
                 f"with Silverman's bandwidth (the study's default) or with the multiple of it "
                 f"that gave the lowest *seen* error at N = {n} in each trial "
                 f"(`smoothing_selection.json`, `python benchmarks/reproduce_bilevel.py "
                 f"smoothing-selection CONFIG --n {n}`; same evaluation draws); where that "
                 f"column is filled, a trial whose pick is the particle family uses it. "
                 f"Generated from `benchmarks/results/reproduction/n{n}.json` (`python "
                 f"benchmarks/reproduce_bilevel.py evaluate-at CONFIG --n {n}`).")
    return "\n".join(lines)


def _smoothing_cells(n: int) -> dict[str, dict[str, float]]:
    """``{config: {trial: unseen error}}`` of the particle family with its KDE bandwidth chosen
    on the seen split at N = ``n`` (``smoothing_selection.json``), or {}."""
    path = RESULTS / "smoothing_selection.json"
    if not path.exists():
        return {}
    return {name: {t: row["chosen_unseen_error"] for t, row in r["trials"].items()}
            for name, r in json.loads(path.read_text()).items() if r["n"] == n}


def _pick_key(family: str, cells: dict) -> str:
    """The cell of a trial's picked family: the particle family with its seen-split KDE
    bandwidth where that was selected, else the family's cell."""
    if family == "particles" and "optimized:particles-seen-bw" in cells:
        return "optimized:particles-seen-bw"
    return f"optimized:{family}"


def robustness_table() -> str:
    path = RESULTS / "robustness.json"
    if not path.exists():
        return "(no robustness results yet)"
    rows = json.loads(path.read_text())
    lines = ["| configuration | d | lr | start (normal) | reported | not worse | steps cut by the "
             "trust region | rejected steps | start check |", "|" + "---|" * 9]
    for name, r in rows.items():
        c = r["collapse"]
        chk = r.get("start_check")
        check = ("off (older run)" if chk is None else
                 "kept the start" if chk["kept_start"] else "kept the iterate")
        # a kept start *is* the start distribution: the two columns differ by draws only
        not_worse = bool(chk and chk["kept_start"]) or r["reported_error_1024"] <= r["start_error_1024"]
        lines.append(f"| {name} | {r['settings']['dim']} | {r['settings']['lr']:g} | "
                     f"{r['start_error_1024']:.3g} | {r['reported_error_1024']:.3g} | "
                     f"{'yes' if not_worse else '**no**'} | "
                     f"{c.get('clipped_steps', 0)} | {c.get('events', 0)} | {check} |")
    lines.append("")
    lines.append("Unseen error of KRR at N = 1024 (mean of 3 draws) on the start N(m0 1, I) and "
                 "on the reported distribution, one run per row (meta-test seed 0 unless the "
                 "row says otherwise), 1000 steps with the default step control; \"start "
                 "check\": the study's final seen-split comparison with the start (rows run "
                 "before it existed say so); where it kept the start, the reported "
                 "distribution is the start and the two columns differ only by their "
                 "evaluation draws. Generated from "
                 "`benchmarks/results/reproduction/robustness.json`.")
    return "\n".join(lines)


def busy_table() -> str:
    path = ROOT / "benchmarks" / "results" / "bench_bilevel_busy.json"
    if not path.exists():
        return "(run `python benchmarks/bench_bilevel.py --busy`)"
    d = json.loads(path.read_text())
    lines = ["| threads | ms per step, no extra load | ms per step beside one busy process | "
             "speed-up vs 2 threads beside it |", "|---|---|---|---|"]
    for r in d["rows"]:
        lines.append(f"| {r['threads']} | {r['quiet_ms_median']:.1f} | {r['busy_ms_median']:.1f} | "
                     f"{r['busy_speedup_vs_2_threads']:.1f}x |")
    load = d["meta"]["load_average_before"][0]
    lines.append("")
    lines.append(f"Medians over {d['rounds']} interleaved rounds of {d['steps']} steps (Sobol G "
                 f"d = 2, N = 250, step including the unseen-error logging). The machine was "
                 f"shared with other jobs (1-minute load average {load:.1f} at the start), so "
                 f"compare the rows with each other, not with a quiet machine.")
    return "\n".join(lines)


def speed_table() -> str:
    """Step times of ``benchmarks/results/bench_bilevel.json`` (one run of
    ``benchmarks/bench_bilevel.py``): ours against the authors'-style reference, interleaved,
    and the mixture / particle steps beside the Gaussian's."""
    path = ROOT / "benchmarks" / "results" / "bench_bilevel.json"
    if not path.exists():
        return "(run `python benchmarks/bench_bilevel.py --threads 1`)"
    d = json.loads(path.read_text())
    h = d.get("headline_1_thread")
    if h is None:
        return "(rerun `python benchmarks/bench_bilevel.py --threads 1`: no interleaved headline)"
    rows = {(r["threads"], r["n_train"], r["n_seen"]): r for r in d["rows"]}
    lines = ["| 1 thread, Sobol G d2, J = 10, 500 seen + 4500 unseen per Q, float32 | ours | "
             "reference (authors' style) | reference / ours |", "|---|---|---|---|",
             f"| N = 250, step with seen + unseen error logged, median | "
             f"{h['ours_ms_median']:.1f} ms | {h['reference_ms_median']:.0f} ms | "
             f"**{h['ratio_median']:.1f}x** |",
             f"| N = 250, same, fastest step | {h['ours_ms_min']:.1f} ms | "
             f"{h['reference_ms_min']:.0f} ms | **{h['ratio_min']:.1f}x** |"]
    if "ours_unseen_every_10_ms_mean" in h:
        lines.append(f"| N = 250, option `eval_unseen=10` (unseen error every 10th step; the "
                     f"reference still every step), mean | {h['ours_unseen_every_10_ms_mean']:.1f}"
                     f" ms | {h['reference_ms_median']:.0f} ms | "
                     f"{h['ratio_unseen_every_10_vs_reference_every_step']:.1f}x |")
    for n in (250, 1000, 4000):
        r = rows.get((1, n, 500))
        if r is None:
            continue
        o, f = r["ours"], r["reference"]
        ref = (f"{f['grad_ms_min']:.1f} ms", f"{f['grad_ms_min'] / o['grad_ms_min']:.1f}x") \
            if f else ("not run", "")
        lines.append(f"| N = {n}, gradient step alone, fastest | {o['grad_ms_min']:.1f} ms | "
                     f"{ref[0]} | {ref[1]} |")
    fam = d.get("families")
    if fam:
        lines += ["", "| case | unseen logged | Gaussian (N = 250) | mixture K = 4 | ratio | "
                  "Gaussian (N = 1024) | particles M = 1024 | ratio |", "|" + "---|" * 8]
        for r in fam["rows"]:
            g, m = r["gaussian"], r["mixture K=4"]
            g2, pt = r["gaussian N=1024"], r["particles M=1024"]
            lines.append(f"| {r['case']} | {'yes' if r['eval_unseen'] else 'no'} | "
                         f"{g['total_ms']:.1f} ms | {m['total_ms']:.1f} ms | "
                         f"{r['ratio_total']:.2f}x | {g2['total_ms']:.1f} ms | "
                         f"{pt['total_ms']:.1f} ms | {r['particles_ratio_total']:.2f}x |")
    load = d["meta"]["load_average_before"][0]
    lines.append("")
    lines.append(f"One run of `python benchmarks/bench_bilevel.py --threads 1` "
                 f"(`benchmarks/results/bench_bilevel.json`): first table, ours and the "
                 f"reference interleaved over {h['rounds']} rounds ({h['steps_ours']} / "
                 f"{h['steps_reference']} steps per round): median over rounds of the "
                 f"per-round median step, and the fastest step; \"gradient step alone\" from "
                 f"the same run's "
                 f"per-N rows. Second table (same run): median ms per step over "
                 f"{fam['rounds'] if fam else 0} interleaved rounds, 1 thread. Shared 2-core "
                 f"machine (1-minute load average {load:.1f} at the start): compare cells of "
                 f"one table, not with other machines.")
    return "\n".join(lines)


def _replace(text: str, name: str, body: str) -> str:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if start not in text or end not in text:
        return text
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}\n{end}{tail}"


def render(text: str) -> str:
    text = _replace(text, "reproduction-table", reproduction_table())
    text = _replace(text, "family-selection-table", family_selection_table())
    text = _replace(text, "n4096-table", larger_n_table(4096))
    text = _replace(text, "busy-table", busy_table())
    text = _replace(text, "bench-bilevel-table", speed_table())
    return _replace(text, "robustness-table", robustness_table())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if a table is stale")
    args = ap.parse_args()
    stale = []
    for path in TARGETS:
        old = path.read_text()
        new = render(old)
        if new != old:
            stale.append(path)
            if not args.check:
                path.write_text(new)
    if args.check and stale:
        print("stale tables in: " + ", ".join(str(p.relative_to(ROOT)) for p in stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
