"""Data sets of ``(input, G*(input))`` pairs stored in zarr, generated in parallel with Dask.

``generate_dataset(problem, n, out)`` samples inputs from the problem's default input
measure (or a given one), evaluates the problem in chunks and writes a resumable zarr store;
``find_or_generate(cache_dir, ...)`` reuses a store with the same content key. Options:
:class:`InputSampling` (measure, seed, chunk: what fixes the data) and
:class:`ComputeOptions` (Dask workers or scheduler, threads, progress bar).
"""

from .generate import (ComputeOptions, DamagedStoreError, DatasetInfo, InputSampling,
                       check_scheduler, chunk_seed, content_key, find_or_generate,
                       generate_dataset, open_dataset, resolve_measure)
from .layout import DatasetLayout, dataset_layout

__all__ = ["ComputeOptions", "DamagedStoreError", "DatasetInfo", "DatasetLayout", "InputSampling",
           "check_scheduler", "chunk_seed",
           "content_key", "dataset_layout", "find_or_generate", "generate_dataset",
           "open_dataset", "resolve_measure"]
