"""Shared test configuration."""


import pytest
import torch

# Tests run on 2 cores (CI) next to Dask worker processes: with 2 OpenMP threads the small
# LAPACK calls (250x250 Cholesky, 2x2 triu) busy-wait and run 10-100x slower under load.
torch.set_num_threads(1)


@pytest.fixture
def tmp_run_dir(tmp_path):
    """A path for a run folder that does not exist yet."""
    return tmp_path / "run"
