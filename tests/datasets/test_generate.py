"""Tests for zarr data-set generation: content, provenance, seeding, resume, caching, errors."""

import numpy as np
import pytest
import zarr

from wheretolearn import __version__
from wheretolearn.datasets import generate as gen_module
from wheretolearn.datasets import (ComputeOptions, InputSampling, chunk_seed, find_or_generate,
                                   generate_dataset, open_dataset)
from wheretolearn.measures import Empirical, Mixture, Uniform
from wheretolearn.problems import get_problem

BURGERS = {"n": 32, "n_steps": 20}
LOCAL = ComputeOptions(workers=0, progress=False)   # in this process, no bar


@pytest.fixture(scope="module")
def dask_run(tmp_path_factory):
    """One real LocalCluster run with 2 workers (shared by the tests that need it)."""
    out = tmp_path_factory.mktemp("dask") / "b.zarr"
    info = generate_dataset("burgers", 11, out, options=BURGERS,
                            sampling=InputSampling(seed=5, chunk=3),
                            compute=ComputeOptions(workers=2, progress=False))
    return info, open_dataset(out)


def test_dask_run_has_shapes_provenance_and_true_outputs(dask_run):
    info, data = dask_run
    assert data["inputs"].shape == (11, 32) and data["outputs"].shape == (11, 32)
    assert info.n_chunks == 4 and info.computed_chunks == [0, 1, 2, 3]
    attrs = data["attrs"]
    assert attrs["problem"] == "burgers" and attrs["seed"] == 5 and attrs["chunk"] == 3
    assert attrs["options"]["n_steps"] == 20 and attrs["options"]["nu"] == 0.1
    assert attrs["measure"]["type"] == "GaussianRandomField" and attrs["measure"]["alpha"] == 3.0
    assert attrs["version"] == __version__ and attrs["complete"] is True
    assert attrs["key"] == info.key and len(info.key) == 64
    np.testing.assert_allclose(data["coords"]["x"], 2 * np.pi * np.arange(32) / 32)
    assert np.all(zarr.open_group(info.path, mode="r")["completed"][...])
    # outputs are G*(inputs), evaluated independently here
    direct = get_problem("burgers", **BURGERS)(data["inputs"])
    np.testing.assert_allclose(data["outputs"], direct, rtol=1e-6, atol=1e-6)
    # inputs are the measure's draws with the per-chunk generators
    import torch
    mu = get_problem("burgers", **BURGERS).default_input_measure()
    chunk2 = mu.sample(3, generator=torch.Generator().manual_seed(chunk_seed(5, 2)))
    np.testing.assert_array_equal(data["inputs"][6:9], chunk2.numpy())


def test_same_seed_same_arrays_regardless_of_workers(dask_run, tmp_path):
    _, data = dask_run
    info = generate_dataset("burgers", 11, tmp_path / "w0.zarr", options=BURGERS,
                            sampling=InputSampling(seed=5, chunk=3), compute=LOCAL)
    local = open_dataset(info.path)
    np.testing.assert_array_equal(local["inputs"], data["inputs"])
    np.testing.assert_array_equal(local["outputs"], data["outputs"])
    assert info.key == dask_run[0].key
    other = generate_dataset("burgers", 11, tmp_path / "s6.zarr", options=BURGERS,
                             sampling=InputSampling(seed=6, chunk=3), compute=LOCAL)
    assert other.key != info.key
    assert not np.allclose(open_dataset(other.path)["inputs"], local["inputs"])


def _count_calls(monkeypatch):
    calls = []
    real = gen_module._evaluate_chunk

    def counting(problem, x):
        calls.append(x.shape[0])
        return real(problem, x)

    monkeypatch.setattr(gen_module, "_evaluate_chunk", counting)
    return calls


def test_resume_recomputes_only_chunks_missing_from_the_record(tmp_path, monkeypatch):
    out = tmp_path / "r.zarr"
    first = generate_dataset("burgers", 10, out, options=BURGERS,
                             sampling=InputSampling(chunk=3), compute=LOCAL)
    before = open_dataset(out)
    g = zarr.open_group(str(out), mode="r+")
    g["completed"][1] = False
    g["completed"][3] = False
    g["outputs"][3:6] = 0.0        # as if chunk 1's write had been interrupted
    calls = _count_calls(monkeypatch)
    again = generate_dataset("burgers", 10, out, options=BURGERS,
                             sampling=InputSampling(chunk=3), compute=LOCAL)
    assert again.computed_chunks == [1, 3] and again.reused_chunks == 2
    assert calls == [3, 1]         # chunk 3 is the short last one
    after = open_dataset(out)
    np.testing.assert_array_equal(after["outputs"], before["outputs"])
    assert again.key == first.key


def test_interrupted_run_continues_without_recomputing(tmp_path, monkeypatch):
    out = tmp_path / "i.zarr"
    real = gen_module._evaluate_chunk
    calls = []

    def crash_on_third(problem, x):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("simulated crash")
        return real(problem, x)

    monkeypatch.setattr(gen_module, "_evaluate_chunk", crash_on_third)
    with pytest.raises(RuntimeError, match="simulated crash") as err:
        generate_dataset("burgers", 12, out, options=BURGERS, sampling=InputSampling(chunk=3),
                         compute=LOCAL)
    # nothing at ``out``: the finished chunks wait in a hidden staging store, named in a note
    assert not out.exists()
    (partial,) = [p for p in tmp_path.iterdir() if p.name.startswith(".i.zarr.partial-")]
    assert str(partial) in err.value.__notes__[0] and "2 of 4 chunks" in err.value.__notes__[0]
    assert zarr.open_group(str(partial), mode="r").attrs["complete"] is False
    assert np.isnan(zarr.open_group(str(partial), mode="r")["outputs"][6:]).all()
    monkeypatch.setattr(gen_module, "_evaluate_chunk", real)
    info = generate_dataset("burgers", 12, out, options=BURGERS,
                            sampling=InputSampling(chunk=3), compute=LOCAL)
    assert info.computed_chunks == [2, 3] and not partial.exists()
    fresh = generate_dataset("burgers", 12, tmp_path / "f.zarr", options=BURGERS,
                             sampling=InputSampling(chunk=3), compute=LOCAL)
    np.testing.assert_array_equal(open_dataset(out)["outputs"], open_dataset(fresh.path)["outputs"])


def test_find_or_generate_reuses_by_content_key(tmp_path, monkeypatch):
    local = ComputeOptions(workers=0)
    a = find_or_generate(tmp_path, "burgers", 4, options=BURGERS,
                         sampling=InputSampling(seed=1), compute=local)
    calls = _count_calls(monkeypatch)
    b = find_or_generate(tmp_path, "burgers", 4, options=BURGERS,
                         sampling=InputSampling(seed=1), compute=local)
    assert b.path == a.path and b.computed_chunks == [] and calls == []
    c = find_or_generate(tmp_path, "burgers", 4, options=BURGERS,
                         sampling=InputSampling(seed=2), compute=local)
    assert c.path != a.path and calls == [1, 1, 1, 1]   # default chunk: at most n / 8


def test_heat2d_dataset_and_measure_params(tmp_path):
    info = generate_dataset("heat2d", 5, tmp_path / "h.zarr",
                            options={"n": 8, "n_steps": 10, "output_every": 5},
                            sampling=InputSampling(
                                measure_params={"low": [200.0] * 5, "high": [300.0] * 5},
                                chunk=2),
                            compute=LOCAL)
    data = open_dataset(info.path)
    assert data["inputs"].shape == (5, 5) and data["outputs"].shape == (5, 2, 8, 8)
    assert data["inputs"].min() >= 200 and data["inputs"].max() <= 300
    assert data["attrs"]["measure"]["low"] == [200.0] * 5
    np.testing.assert_allclose(data["coords"]["t"], [0.05, 0.1])
    direct = get_problem("heat2d", n=8, n_steps=10, output_every=5)(data["inputs"])
    np.testing.assert_allclose(data["outputs"], direct, rtol=1e-6)
    assert zarr.open_group(info.path, mode="r")["outputs"].chunks[0] == 2


@pytest.mark.parametrize("kwargs, match", [
    ({"problem": "nope"}, "unknown problem"),
    ({"n": 0}, "n must be a positive integer"),
    ({"options": {"foo": 1}}, "unknown option 'foo'"),
    ({"options": {"n": -3}}, "n must be a positive integer"),
    ({"sampling": {"measure_params": {"beta": 1.0}}}, "unknown measure parameter 'beta'"),
    ({"sampling": {"chunk": 0}}, "chunk must be a positive integer"),
    ({"sampling": {"seed": -1}}, "seed must be a non-negative integer"),
    ({"compute": {"workers": -1}}, "workers must be a non-negative integer"),
    ({"compute": {"num_threads": 0}}, "num_threads must be a positive integer"),
])
def test_bad_input_raises_and_writes_nothing(tmp_path, kwargs, match):
    args = {"problem": "burgers", "n": 4, "options": BURGERS, **kwargs}
    out = tmp_path / "bad.zarr"
    with pytest.raises(ValueError, match=match):
        sampling = InputSampling(**args.pop("sampling", {}))
        compute = ComputeOptions(**{"workers": 0, "progress": False, **args.pop("compute", {})})
        generate_dataset(args.pop("problem"), args.pop("n"), out, sampling=sampling,
                         compute=compute, **args)
    assert not out.exists()


def test_existing_store_with_other_content_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "x.zarr"
    generate_dataset("burgers", 3, out, options=BURGERS, compute=LOCAL)
    with pytest.raises(FileExistsError, match="different data set"):
        generate_dataset("burgers", 3, out, options=BURGERS, sampling=InputSampling(seed=9),
                         compute=LOCAL)
    info = generate_dataset("burgers", 3, out, options=BURGERS, sampling=InputSampling(seed=9),
                            compute=LOCAL, overwrite=True)
    assert open_dataset(out)["attrs"]["seed"] == 9 and info.computed_chunks == [0, 1, 2]


@pytest.mark.parametrize("name, options", [
    ("darcy", {"n": 12}), ("ntd", {"n": 12}), ("radiative", {"n": 9, "n_angles": 4}),
    ("sobol-g", {}),
])
def test_other_registered_problems_go_through_the_same_path(tmp_path, name, options):
    from wheretolearn.problems import available_problems

    if name not in available_problems():
        pytest.skip(f"problem {name!r} not registered")
    info = generate_dataset(name, 3, tmp_path / f"{name}.zarr", options=options, compute=LOCAL)
    data = open_dataset(info.path)
    problem = get_problem(name, **options)
    assert data["inputs"].shape == (3, *problem.input_shape)
    assert data["outputs"].shape == (3, *problem.output_shape)
    np.testing.assert_allclose(data["outputs"], problem(data["inputs"]), rtol=1e-5, atol=1e-6)


def test_running_scheduler_address_gives_the_same_data(dask_run, tmp_path):
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0") as cluster:
        info = generate_dataset(
            "burgers", 11, tmp_path / "s.zarr", options=BURGERS,
            sampling=InputSampling(seed=5, chunk=3),
            compute=ComputeOptions(scheduler=cluster.scheduler_address, progress=False))
    np.testing.assert_array_equal(open_dataset(info.path)["outputs"], dask_run[1]["outputs"])
    assert info.key == dask_run[0].key


@pytest.mark.parametrize("make", [
    lambda shift: Mixture([Uniform(shift, shift + 1.0, dim=2)] * 2),
    lambda shift: Empirical(np.full((3, 2), shift)),
])
def test_content_key_tells_apart_mixtures_and_empirical_measures(tmp_path, make):
    # both used to be recorded by a repr without their parameters, so a second, different
    # measure silently reused the first one's cached inputs and outputs
    a = find_or_generate(tmp_path, "sobol-g", 2, sampling=InputSampling(measure=make(0.0)),
                         compute=LOCAL)
    b = find_or_generate(tmp_path, "sobol-g", 2, sampling=InputSampling(measure=make(5.0)),
                         compute=LOCAL)
    assert b.path != a.path and b.computed_chunks
    assert not np.array_equal(open_dataset(a.path)["inputs"], open_dataset(b.path)["inputs"])
