"""``wheretolearn generate``: sample inputs, evaluate a problem in parallel, store to zarr.

Only parses and prints; the work is :func:`wheretolearn.datasets.generate_dataset`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from . import app
from ._common import cli_errors, load_toml

_CONFIG_KEYS = {"problem", "n", "out", "workers", "seed", "chunk", "scheduler", "overwrite",
                "options", "measure", "num_threads"}


def parse_key_values(items: list[str], what: str) -> dict[str, Any]:
    """``["a=1", "b=true", "c=text"]`` -> ``{"a": 1, "b": True, "c": "text"}`` (JSON values,
    else strings)."""
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{what} must look like key=value, got {item!r}")
        try:
            parsed[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            parsed[key.strip()] = raw
    return parsed


#: Type of each config key: one rule for TOML and flags (no coercion: ``n = "8"``,
#: ``n = 8.0``, ``n = true`` or ``overwrite = "yes"`` are errors).
_CONFIG_TYPES: dict[str, tuple[type, str]] = {
    "problem": (str, "a string"), "out": (str, "a string (path)"),
    "scheduler": (str, "a string (tcp://host:port)"), "n": (int, "an integer"),
    "workers": (int, "an integer"), "seed": (int, "an integer"), "chunk": (int, "an integer"),
    "num_threads": (int, "an integer"), "overwrite": (bool, "true or false"),
    "options": (dict, "a table"), "measure": (dict, "a table")}


#: Flag of each bounded config key (``SIZE_LIMITS["generate"]``).
_SIZE_FLAGS = {"n": "--n", "chunk": "--chunk", "workers": "--workers",
               "num_threads": "--num-threads"}


def _check_type(key: str, value: Any, config: Optional[Path]) -> None:
    kind, what = _CONFIG_TYPES[key]
    ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
    if not ok:
        raise ValueError(f"config key {key!r} in {str(config)!r} must be {what}, got {value!r}")


def _merge_config(config: Optional[Path], cli: dict[str, Any]) -> dict[str, Any]:
    """TOML values overridden by the command-line values that were given."""
    base = load_toml(config) if config is not None else {}
    unknown = sorted(set(base) - _CONFIG_KEYS)
    if unknown:
        raise ValueError(f"unknown config key {unknown[0]!r} in {str(config)!r}; allowed: "
                         f"{', '.join(sorted(_CONFIG_KEYS))}")
    for key, value in base.items():
        _check_type(key, value, config)
    merged = {**base, **{k: v for k, v in cli.items() if v is not None and k not in
                         ("options", "measure")}}
    merged["options"] = {**base.get("options", {}), **cli["options"]}
    merged["measure"] = {**base.get("measure", {}), **cli["measure"]}
    return merged


@app.command("generate")
@cli_errors
def generate(
    problem: Optional[str] = typer.Argument(
        None, help="Problem: a name (heat2d, burgers, ..., an installed plugin), an import "
        "path pkg.module:factory or file.py:factory, or external (a program; see "
        "docs/user_solver.md)."),
    n: Optional[int] = typer.Option(None, "--n",
        help="Number of samples (required: flag or config)."),
    out: Optional[Path] = typer.Option(None, "--out",
        help="Output store DIR.zarr (required: flag or config)."),
    workers: Optional[int] = typer.Option(
        None, "--workers", help="Dask LocalCluster workers (default 2; 0 = no Dask)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Base seed (default 0)."),
    chunk: Optional[int] = typer.Option(None, "--chunk",
        help="Samples per task / write (default: about 16 MiB of outputs, at most 64)."),
    scheduler: Optional[str] = typer.Option(
        None, "--scheduler", help="Address of a running Dask scheduler (default: none, a "
        "LocalCluster)."),
    option: list[str] = typer.Option([], "--option", "-o",
                                     help="Problem option key=value (repeatable)."),
    measure_param: list[str] = typer.Option([], "--measure-param", "-m",
                                            help="Input-measure parameter key=value (repeatable)."),
    config: Optional[Path] = typer.Option(None, "--config", help="TOML file with the same keys "
                                          "plus [options] and [measure] tables (default: none)."),
    overwrite: bool = typer.Option(False, "--overwrite",
                                   help="Replace an existing store with a different content."),
    num_threads: Optional[int] = typer.Option(
        None, "--num-threads", help="torch threads in this process and in each Dask worker "
        "(default: torch's)"),
    progress: bool = typer.Option(True, "--progress/--no-progress",
                                  help="show a progress bar"),
) -> None:
    """Generate a data set of (input, output) pairs for PROBLEM into a resumable zarr store."""
    cfg = _merge_config(config, {
        "problem": problem, "n": n, "out": out, "workers": workers, "seed": seed, "chunk": chunk,
        "scheduler": scheduler, "overwrite": overwrite or None, "num_threads": num_threads,
        "options": parse_key_values(option, "--option"),
        "measure": parse_key_values(measure_param, "--measure-param")})
    for required in ("problem", "n", "out"):
        if cfg.get(required) is None:
            raise ValueError(f"{required} is required (argument or config key)")
    from .._validation import SIZE_LIMITS, check_sizes

    check_sizes(cfg, SIZE_LIMITS["generate"], flags=_SIZE_FLAGS)
    from ..datasets import ComputeOptions, InputSampling, generate_dataset

    sampling = InputSampling(measure_params=cfg["measure"] or None, seed=cfg.get("seed", 0),
                             chunk=cfg.get("chunk"))
    compute = ComputeOptions(workers=cfg.get("workers", 2), scheduler=cfg.get("scheduler"),
                             num_threads=cfg.get("num_threads"), progress=progress)
    info = generate_dataset(cfg["problem"], cfg["n"], Path(cfg["out"]), options=cfg["options"],
                            sampling=sampling, compute=compute,
                            overwrite=bool(cfg.get("overwrite", False)))
    typer.echo(f"wrote {info.n} samples of {info.problem} to {info.path} "
               f"({len(info.computed_chunks)} chunks computed, {info.reused_chunks} reused, "
               f"{info.seconds:.1f} s); key {info.key[:16]}")
