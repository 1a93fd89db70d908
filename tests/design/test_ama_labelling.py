"""AMA labelling off-process: Dask workers and the online engine's cluster layer give the
same pairs as in-process labelling of the same content key."""

import pytest
import torch

from wheretolearn.design.ama_problems import ama_setup
from wheretolearn.design.ama_study import AMAStudyConfig, _labelling_backend
from wheretolearn.design.labelling import Labeller


@pytest.mark.slow  # starts a LocalCluster through the online engine (~5-20 s)
def test_cluster_layer_labels_the_same_pairs_as_in_process(tmp_path):
    s = ama_setup("darcy", n=8)
    nu = s.build(0.4)
    x0, y0 = Labeller(s.problem, cache_dir=tmp_path / "a").label(nu, 12, 3)
    cfg = AMAStudyConfig(problem="darcy", n=8, cluster={"kind": "local"}, workers=1)
    with _labelling_backend(cfg) as (cache, workers, scheduler):
        assert scheduler is not None and cache is not None
        lab = Labeller(s.problem, cache_dir=cache, workers=workers, scheduler=scheduler)
        x1, y1 = lab.label(nu, 12, 3)
        assert lab.n_labelled == 12
    assert torch.equal(x0, x1) and torch.equal(y0, y1)
    # and the pairs are the solver's outputs on the inputs
    torch.testing.assert_close(y1, s.problem(x1.double()).float(), rtol=1e-4, atol=1e-7)


def test_dask_labelling_needs_a_cache_folder():
    s = ama_setup("ntd", n=6)
    try:
        Labeller(s.problem, workers=2)
    except ValueError as exc:
        assert "cache_dir" in str(exc)
    else:
        raise AssertionError("expected ValueError")
