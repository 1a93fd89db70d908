"""Tests of the ask/tell parameter samplers (SPEC §5)."""

import json

import numpy as np
import pytest
from scipy.stats import qmc

from wheretolearn.online.sampler_registry import SAMPLERS, make_sampler
from wheretolearn.online.samplers import (HaltonSampler, LHSSampler, ParameterSampler,
                                          UniformSampler)

BOUNDS = np.array([[100.0, 500.0], [-1.0, 1.0], [0.0, 1e-3]])
NAMES = sorted(SAMPLERS)


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_sequence_and_different_seed_differs(name):
    a = make_sampler(name, BOUNDS, seed=7).ask(40)
    b = make_sampler(name, BOUNDS, seed=7).ask(40)
    c = make_sampler(name, BOUNDS, seed=8).ask(40)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


@pytest.mark.parametrize("name", NAMES)
def test_sequence_independent_of_how_it_is_split_into_asks(name):
    whole = make_sampler(name, BOUNDS, seed=1).ask(250)
    s = make_sampler(name, BOUNDS, seed=1)
    parts = [s.ask(k) for k in (1, 0, 3, 96, 1, 149)]
    np.testing.assert_array_equal(np.vstack(parts), whole)
    assert s.n_drawn == 250


@pytest.mark.parametrize("name", NAMES)
def test_restore_continues_the_exact_sequence(name):
    s = make_sampler(name, BOUNDS, seed=11)
    s.ask(137)  # crosses an LHS block boundary (block 100) mid-block
    state = json.loads(json.dumps(s.state_dict()))  # must survive JSON
    expected = s.ask(90)
    restored = make_sampler(name, BOUNDS, seed=0)
    restored.load_state_dict(state)
    assert restored.n_drawn == 137 and restored.seed == 11
    np.testing.assert_array_equal(restored.ask(90), expected)


def test_a_state_of_an_older_layout_is_refused_by_name():
    state = make_sampler("uniform", BOUNDS, seed=11).state_dict()
    del state["boundary_share"]
    with pytest.raises(ValueError, match="lacks 'boundary_share'.*older wheretolearn"):
        make_sampler("uniform", BOUNDS, seed=0).load_state_dict(state)


@pytest.mark.parametrize("name", NAMES)
def test_points_respect_bounds_and_fill_them(name):
    x = make_sampler(name, BOUNDS, seed=2).ask(512)
    assert x.shape == (512, 3) and x.dtype == np.float64
    low, high = BOUNDS[:, 0], BOUNDS[:, 1]
    assert np.all(x >= low) and np.all(x < high)
    # the spread covers (almost) the whole box in every dimension
    span = (x.max(0) - x.min(0)) / (high - low)
    assert np.all(span > 0.95)


def test_unseeded_sampler_stores_a_seed_that_reproduces_it():
    s = make_sampler("uniform", BOUNDS)
    first = s.ask(5)
    again = make_sampler("uniform", BOUNDS, seed=s.seed).ask(5)
    np.testing.assert_array_equal(first, again)


def test_generator_seed_is_accepted_and_deterministic():
    a = make_sampler("halton", BOUNDS, seed=np.random.default_rng(4)).ask(6)
    b = make_sampler("halton", BOUNDS, seed=np.random.default_rng(4)).ask(6)
    np.testing.assert_array_equal(a, b)


def test_lhs_each_stratum_hit_once_per_dimension_per_block():
    k = 50
    s = LHSSampler(BOUNDS, seed=5, block_size=k)
    x = s.ask(3 * k)
    u = (x - BOUNDS[:, 0]) / (BOUNDS[:, 1] - BOUNDS[:, 0])
    for block in u.reshape(3, k, 3):
        strata = np.floor(block * k).astype(int)
        for j in range(3):
            np.testing.assert_array_equal(np.sort(strata[:, j]), np.arange(k))


def test_halton_prefix_is_stratified_in_base_2_and_3():
    # Scrambled Halton: every prefix of length 2^m has one point in each of the 2^m dyadic
    # intervals of dimension 0; prefix 3^m likewise in base 3 for dimension 1.
    x = HaltonSampler([[0.0, 1.0]] * 2, seed=9).ask(81)
    np.testing.assert_array_equal(np.sort(np.floor(x[:64, 0] * 64)), np.arange(64))
    np.testing.assert_array_equal(np.sort(np.floor(x[:81, 1] * 81)), np.arange(81))
    # and its discrepancy beats i.i.d. uniform draws of the same size by a wide margin
    u = UniformSampler([[0.0, 1.0]] * 2, seed=9).ask(81)
    assert qmc.discrepancy(x) < 0.3 * qmc.discrepancy(u)


def test_sobol_first_power_of_two_is_balanced():
    x = make_sampler("sobol", [[0.0, 1.0]] * 2, seed=3).ask(32)
    for j in range(2):
        np.testing.assert_array_equal(np.sort(np.floor(x[:, j] * 32)), np.arange(32))


def test_uniform_marginals_pass_a_ks_test():
    from scipy.stats import kstest
    x = make_sampler("uniform", [[2.0, 6.0]], seed=0).ask(2000)[:, 0]
    assert kstest(x, "uniform", args=(2.0, 4.0)).pvalue > 1e-3


@pytest.mark.parametrize("bounds, match", [
    ([[0.0, 1.0], [2.0, 2.0]], "dimension 1"),
    ([[0.0, 1.0], [3.0, 2.0]], "dimension 1"),
    ([[0.0, np.inf]], "finite"),
    ([[np.nan, 1.0]], "finite"),
    ([0.0, 1.0], r"shape \(d, 2\)"),
    (np.zeros((2, 3)), r"shape \(d, 2\)"),
])
def test_bad_bounds_are_rejected_naming_the_problem(bounds, match):
    with pytest.raises(ValueError, match=match):
        make_sampler("uniform", bounds, seed=0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="sampler must be one of"):
        make_sampler("ogas", BOUNDS)
    s = make_sampler("lhs", BOUNDS, seed=0)
    with pytest.raises(ValueError, match="k must be"):
        s.ask(-1)
    with pytest.raises(ValueError, match="sim_ids must have shape"):
        s.ask(2, sim_ids=[1, 2, 3])
    with pytest.raises(ValueError, match="block_size"):
        LHSSampler(BOUNDS, block_size=0)
    with pytest.raises(ValueError, match="seed"):
        make_sampler("uniform", BOUNDS, seed=-3)
    with pytest.raises(ValueError, match="not 'uniform'"):
        s2 = make_sampler("uniform", BOUNDS, seed=0)
        s2.load_state_dict(s.state_dict())


def test_tell_validates_and_static_samplers_ignore_it():
    s = make_sampler("halton", BOUNDS, seed=0)
    ref = make_sampler("halton", BOUNDS, seed=0)
    assert not s.adaptive
    s.tell([1, 2], [0, 5], [0.3, 0.1])
    s.simulation_finished(1, completed=True)
    np.testing.assert_array_equal(s.ask(4, sim_ids=[0, 1, 2, 3]), ref.ask(4))
    with pytest.raises(ValueError, match="same length"):
        s.tell([1, 2], [0], [0.3, 0.1])
    with pytest.raises(ValueError, match="losses must be finite"):
        s.tell([1], [0], [np.nan])


def test_caller_bounds_are_not_aliased_or_mutated():
    b = BOUNDS.copy()
    s = make_sampler("uniform", b, seed=0)
    b[0, 1] = 1e9
    assert s.bounds[0, 1] == 500.0
    assert not s.bounds.flags.writeable
    np.testing.assert_array_equal(BOUNDS[0], [100.0, 500.0])


def test_a_subclass_needs_only_draw_and_reset():
    # The Breed/AMIS sampler plugs in by overriding ask/tell; the base keeps only bounds,
    # seed and n_drawn, so a minimal subclass works with the shared state machinery.
    class Corner(ParameterSampler):
        name = "corner"

        def _reset(self):
            pass

        def _draw_unit(self, k):
            return np.zeros((k, self.dim))

    s = Corner(BOUNDS, seed=1)
    np.testing.assert_array_equal(s.ask(2), np.tile(BOUNDS[:, 0], (2, 1)))
    # boundary_share (issue 23) is part of every sampler's state: a resume keeps the design.
    assert set(s.state_dict()) == {"name", "seed", "n_drawn", "bounds", "boundary_share"}
    # every hook the engine calls is declared with a no-op default (issue 27, item 3)
    assert not s.adaptive
    s.tell([0, 1], [0, 0], [1.0, 2.0])
    s.simulation_finished(0, completed=False)
    assert s.importance_weights() is None and s.weights_for([0, 1]) is None
    assert s.metrics() == {}
    assert s.write_report("/nonexistent", []) is None                # writes nothing


def test_the_engine_never_probes_a_sampler_with_hasattr_or_getattr():
    """The sampler contract is declared on ParameterSampler: no module of the online
    package asks ``hasattr(sampler, ...)`` / ``getattr(sampler, ..., default)``."""
    import ast
    from pathlib import Path

    import wheretolearn.online as online

    found = []
    for path in sorted(Path(online.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in ("hasattr", "getattr") and node.args
                    and "sampler" in ast.unparse(node.args[0])):
                found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    assert not found, found


# -- boundary_share (issue 23, item 3): a share of face and corner points -----------------------

@pytest.mark.parametrize("name", NAMES)
def test_boundary_share_puts_every_mth_point_on_the_boundary_and_leaves_the_others(name):
    plain = make_sampler(name, BOUNDS, seed=4).ask(60)
    s = make_sampler(name, BOUNDS, seed=4, boundary_share=1 / 6)
    x = s.ask(60)
    low, high = BOUNDS[:, 0], BOUNDS[:, 1]
    on = (x == low) | (x == high)                                   # exactly on a bound
    rows = np.flatnonzero(on.any(axis=1))
    # every 6th simulation (positions 5, 11, ..., 59), and only those
    np.testing.assert_array_equal(rows, np.arange(5, 60, 6))
    np.testing.assert_array_equal(s.boundary_mask(0, 60), np.isin(np.arange(60), rows))
    keep = np.setdiff1d(np.arange(60), rows)
    np.testing.assert_array_equal(x[keep], plain[keep])             # a separate stream
    assert np.all((x >= low) & (x <= high))
    assert np.all(x[keep] < high)                                   # only snapped ones reach high


def test_boundary_points_snap_each_coordinate_with_probability_one_half():
    d = 4
    s = make_sampler("uniform", [[0.0, 1.0]] * d, seed=0, boundary_share=1.0)
    u = s.ask(4000)
    snapped = (u == 0.0) | (u == 1.0)
    assert snapped.any(axis=1).all()                                 # always on the boundary
    # P(coordinate snapped) = 1/2 conditioned on at least one: (1/2) / (1 - 2^-d)
    assert snapped.mean() == pytest.approx(0.5 / (1 - 2.0 ** -d), abs=0.02)
    assert (u[snapped] == 1.0).mean() == pytest.approx(0.5, abs=0.03)  # low or high alike
    corners = snapped.all(axis=1).mean()
    assert corners == pytest.approx(2.0 ** -d / (1 - 2.0 ** -d), abs=0.015)
    free = u[~snapped]
    assert free.min() > 0 and free.max() < 1


@pytest.mark.parametrize("name", NAMES)
def test_boundary_share_is_in_the_state_and_resume_continues_exactly(name):
    s = make_sampler(name, BOUNDS, seed=11, boundary_share=0.25)
    s.ask(37)
    state = json.loads(json.dumps(s.state_dict()))
    assert state["boundary_share"] == 0.25
    expected = s.ask(45)
    restored = make_sampler(name, BOUNDS, seed=0)                    # share 0: the state wins
    restored.load_state_dict(state)
    assert restored.boundary_share == 0.25
    np.testing.assert_array_equal(restored.ask(45), expected)


def test_boundary_share_rounds_to_every_mth_and_is_validated():
    s = make_sampler("halton", BOUNDS, seed=0, boundary_share=0.3)   # round(1 / 0.3) = 3
    assert s.boundary_every == 3
    np.testing.assert_array_equal(np.flatnonzero(s.boundary_mask(0, 12)), [2, 5, 8, 11])
    assert make_sampler("uniform", BOUNDS, seed=0).boundary_every == 0
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="boundary_share"):
            make_sampler("uniform", BOUNDS, seed=0, boundary_share=bad)
