"""Shared test configuration."""

import os

import pytest
import torch

# Tests run on 2 cores (CI); keep torch from oversubscribing.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def tmp_run_dir(tmp_path):
    """A path for a run folder that does not exist yet."""
    return tmp_path / "run"
