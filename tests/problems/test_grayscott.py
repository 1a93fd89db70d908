"""Tests for the Gray-Scott problem against independent truths: the kinetics ODE, an np.roll
stencil, exact invariants (trivial state, translations, reflections, mass balance) and
Pearson's regimes."""

import json
import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp
from typer.testing import CliRunner

from wheretolearn.cli import app
from wheretolearn.problems import check_online_contract, get_problem
from wheretolearn.problems.grayscott import PEARSON_SPACING, GrayScott, GrayScottPhysics

PATTERNED = [0.035, 0.065, 0.3]     # Pearson's spots/stripes region
DECAYED = [0.01, 0.07, 0.3]         # low feed, high kill: back to u = 1, v = 0


def _random_state(n: int, b: int = 1, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0.3, 1.0, (b, n, n)), rng.uniform(0.0, 0.3, (b, n, n))


def _roll_step(u, v, F, k, *, Du, Dv, dt, h):
    """One explicit-Euler step written independently with np.roll (periodic 5-point)."""
    def lap(w):
        return (np.roll(w, 1, -1) + np.roll(w, -1, -1) + np.roll(w, 1, -2)
                + np.roll(w, -1, -2) - 4 * w) / h**2
    uv2 = u * v * v
    return (u + dt * (Du * lap(u) - uv2 + F * (1 - u)),
            v + dt * (Dv * lap(v) + uv2 - (F + k) * v))


def test_contract_shapes_bounds_and_names():
    p = get_problem("grayscott", n=8, n_steps=3, every=5)
    assert p.input_shape == (3,) and p.output_shape == (3, 8, 8)
    assert p.parameter_names == ["F", "k", "size"]
    np.testing.assert_array_equal(p.parameter_bounds,
                                  [[0.01, 0.06], [0.04, 0.07], [0.1, 0.5]])
    np.testing.assert_array_equal(check_online_contract(p), p.parameter_bounds)
    steps = list(p.simulate(PATTERNED))
    assert [t for t, _ in steps] == [0, 1, 2]
    assert all(f.shape == (8, 8) and f.dtype == np.float32 for _, f in steps)
    c = p.coordinates()
    np.testing.assert_allclose(c["x"], PEARSON_SPACING * np.arange(8))
    np.testing.assert_allclose(c["t"], [5.0, 10.0, 15.0])
    assert math.isclose(get_problem("grayscott").side, 0.625)
    assert get_problem("grayscott", n=4, dtype="float64")(np.array([PATTERNED])).dtype \
        == np.float64


def test_flat_options_map_onto_the_physics_object():
    """``[study.options]`` keys Du, Dv, side, noise, noise_seed are GrayScottPhysics's
    fields: get_problem with them builds the same problem as the object does."""
    from wheretolearn.problems import problem_signature

    flat = get_problem("grayscott", n=8, every=3, Du=1e-5, Dv=5e-6, side=0.1, noise=0.02,
                       noise_seed=4, field="u")
    physics = GrayScottPhysics(Du=1e-5, Dv=5e-6, side=0.1, noise=0.02, noise_seed=4)
    direct = GrayScott(8, every=3, physics=physics, field="u")
    assert flat.options() == direct.options() and flat.physics == physics
    np.testing.assert_array_equal(flat(np.array([PATTERNED])), direct(np.array([PATTERNED])))
    assert GrayScott(8).physics.side == 8 * PEARSON_SPACING       # default side resolved
    assert list(problem_signature("grayscott").parameters) == [
        "n", "n_steps", "every", "dt", "Du", "Dv", "side", "noise", "noise_seed", "dtype",
        "field"]
    with pytest.raises(ValueError, match="side must be a finite number > 0, got -1"):
        GrayScottPhysics(side=-1)
    with pytest.raises(TypeError, match="physics must be a GrayScottPhysics"):
        GrayScott(8, physics={"Du": 1e-5})


def test_trivial_state_stays_exactly_fixed():
    for dtype in ("float32", "float64"):
        p = get_problem("grayscott", n=12, dtype=dtype)
        u, v = p.evolve(np.ones((2, 12, 12)), np.zeros((2, 12, 12)), [0.03, 0.05],
                        [0.06, 0.04], 500)
        assert np.all(u == 1.0) and np.all(v == 0.0)


def test_one_step_matches_an_independent_roll_stencil():
    n, h = 10, 0.01
    p = get_problem("grayscott", n=n, side=n * h, dt=0.7, Du=3e-5, Dv=1e-5, dtype="float64")
    u0, v0 = _random_state(n, b=2)
    F, k = np.array([0.02, 0.05]), np.array([0.06, 0.045])
    u1, v1 = p.evolve(u0, v0, F, k, 1)
    ur, vr = _roll_step(u0, v0, F[:, None, None], k[:, None, None],
                        Du=3e-5, Dv=1e-5, dt=0.7, h=h)
    np.testing.assert_allclose(u1, ur, rtol=0, atol=1e-14)
    np.testing.assert_allclose(v1, vr, rtol=0, atol=1e-14)


def _kinetics(t, y, F, k):
    u, v = y
    return [-u * v * v + F * (1 - u), u * v * v - (F + k) * v]


def _uniform(values: np.ndarray, n: int = 4) -> np.ndarray:
    return np.ones((len(values), n, n)) * np.asarray(values)[:, None, None]


def test_uniform_state_follows_the_kinetics_ode():
    # sample 0 tends to the blue uniform state, sample 1 decays to u = 1, v = 0
    F, k = np.array([0.06, 0.03]), np.array([0.04, 0.055])
    y0 = np.array([[0.5, 0.25], [0.4, 0.3]])
    t_end, chunks = 400.0, 4
    errors = []
    for dt in (1.0, 0.5):
        p = get_problem("grayscott", n=4, dt=dt, dtype="float64")
        u, v = _uniform(y0[:, 0]), _uniform(y0[:, 1])
        err = 0.0
        for c in range(1, chunks + 1):
            u, v = p.evolve(u, v, F, k, int(t_end / chunks / dt))
            assert np.all(u == u[:, :1, :1]) and np.all(v == v[:, :1, :1])   # stays uniform
            for b in range(2):
                ref = solve_ivp(_kinetics, (0, c * t_end / chunks), y0[b], args=(F[b], k[b]),
                                rtol=1e-11, atol=1e-13).y[:, -1]
                err = max(err, abs(u[b, 0, 0] - ref[0]), abs(v[b, 0, 0] - ref[1]))
        errors.append(err)
    assert 1e-3 < errors[0] < 3e-2               # explicit Euler: O(dt) ...
    assert 1.8 < errors[0] / errors[1] < 2.2      # ... first order
    # the same arithmetic as an explicit Euler of the ODE itself
    p = get_problem("grayscott", n=4, dtype="float64")
    y = y0.copy()
    for _ in range(300):
        y = y + np.array([_kinetics(0, yb, F[b], k[b]) for b, yb in enumerate(y)])
    u, v = p.evolve(_uniform(y0[:, 0]), _uniform(y0[:, 1]), F, k, 300)
    np.testing.assert_allclose(u[:, 0, 0], y[:, 0], rtol=1e-12)
    np.testing.assert_allclose(v[:, 0, 0], y[:, 1], rtol=1e-12)
    # long time: the analytic fixed points v* = F (1 + sqrt(1 - 4 (F + k)^2 / F)) / (2 (F + k)),
    # u* = (F + k) / v*, and the trivial state
    u, v = p.evolve(u, v, F, k, 3000)
    v_star = F[0] * (1 + math.sqrt(1 - 4 * (F[0] + k[0]) ** 2 / F[0])) / (2 * (F[0] + k[0]))
    np.testing.assert_allclose([u[0, 0, 0], v[0, 0, 0]], [(F[0] + k[0]) / v_star, v_star],
                               rtol=1e-12)
    np.testing.assert_allclose([u[1, 0, 0], v[1, 0, 0]], [1.0, 0.0], atol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_translation_equivariance_is_exact(dtype):
    p = get_problem("grayscott", n=16, dtype=dtype)
    u0, v0 = _random_state(16)
    shift = (3, -5)
    u1, v1 = p.evolve(u0, v0, 0.035, 0.065, 300)
    u2, v2 = p.evolve(np.roll(u0, shift, (1, 2)), np.roll(v0, shift, (1, 2)), 0.035, 0.065, 300)
    np.testing.assert_array_equal(u2, np.roll(u1, shift, (1, 2)))
    np.testing.assert_array_equal(v2, np.roll(v1, shift, (1, 2)))


def test_noise_free_pattern_keeps_the_square_symmetries():
    p = get_problem("grayscott", n=16, n_steps=2, every=300, noise=0.0)
    v = p(np.array([PATTERNED]))[0, -1]
    assert v.std() > 0
    np.testing.assert_array_equal(v, v.T)
    np.testing.assert_array_equal(v, np.roll(v[::-1], 1, 0))     # i -> n - i (mod n)


def test_mass_balance():
    n = 16
    p = get_problem("grayscott", n=n, dtype="float64")
    u0, v0 = _random_state(n, b=2, seed=1)
    # F = k = 0: reactions cancel in u + v and the periodic Laplacian sums to 0
    u, v = p.evolve(u0, v0, 0.0, 0.0, 1000)
    np.testing.assert_allclose((u + v).sum((1, 2)), (u0 + v0).sum((1, 2)), rtol=1e-12)
    assert abs(u - u0).max() > 1e-2                           # something did happen
    # one step in general: d sum(u + v) = dt sum(F (1 - u) - (F + k) v)
    F, k = np.array([0.03, 0.05]), np.array([0.06, 0.04])
    u1, v1 = p.evolve(u0, v0, F, k, 1)
    source = (F[:, None, None] * (1 - u0) - (F + k)[:, None, None] * v0).sum((1, 2))
    np.testing.assert_allclose((u1 + v1 - u0 - v0).sum((1, 2)), source, rtol=1e-10)


def test_initial_square_covers_its_area_exactly():
    p = get_problem("grayscott", n=64, noise=0.0, dtype="float64")
    u, v = p.initial_state(np.array([[0.03, 0.05, 0.25], [0.03, 0.05, 0.3]]))
    # area (size * n)^2 nodes, v = 1/4 inside, partial cells count their covered fraction
    np.testing.assert_allclose(v.sum((1, 2)), 0.25 * np.array([16.0, 19.2]) ** 2, rtol=1e-12)
    np.testing.assert_allclose(u + 2 * v, 1.0, rtol=1e-15)
    assert v[0].max() == 0.25 and v[0, 32, 32] == 0.25 and v[0, 0, 0] == 0.0
    assert v[0, 24, 32] == 0.125                  # the cell [23.5, 24.5] is half inside
    noisy = get_problem("grayscott", n=64).initial_state(np.array([[0.03, 0.05, 0.25]]))
    rel = noisy[0] / u[:1] - 1
    assert 0.009 < abs(rel).max() <= 0.01         # Pearson's 1 % noise


def test_patterned_and_decayed_regimes():
    p = get_problem("grayscott")                  # defaults: 64 x 64, 10^4 steps
    v_end = p(np.array([PATTERNED, DECAYED]))[:, -1]
    assert v_end[0].std() > 0.05                  # spots / stripes
    assert abs(v_end[1]).max() < 1e-3             # decayed to the trivial state


def test_deterministic_and_simulate_equals_batched_call():
    params = np.array([PATTERNED, [0.05, 0.062, 0.45], [0.02, 0.05, 0.1]])
    p = get_problem("grayscott", n=12, n_steps=4, every=50)
    out = p(params)
    again = get_problem("grayscott", n=12, n_steps=4, every=50)(params)
    np.testing.assert_array_equal(out, again)
    for i in range(3):
        np.testing.assert_array_equal(np.stack([f for _, f in p.simulate(params[i])]), out[i])
    out_t = p(torch.as_tensor(params))
    assert isinstance(out_t, torch.Tensor)
    np.testing.assert_array_equal(out_t.numpy(), out)
    other = get_problem("grayscott", n=12, n_steps=4, every=50, noise_seed=1)(params)
    assert not np.array_equal(other, out)


def test_snapshots_are_evolve_every_steps_of_the_initial_state():
    params = np.array([PATTERNED, [0.05, 0.062, 0.45]])
    for field, channel in (("v", 1), ("u", 0)):
        p = get_problem("grayscott", n=10, n_steps=3, every=40, dtype="float64", field=field)
        out = p(params)
        u, v = p.initial_state(params)
        for t in range(3):
            u, v = p.evolve(u, v, params[:, 0], params[:, 1], 40)
            np.testing.assert_array_equal(out[:, t], (u, v)[channel])
    with pytest.raises(ValueError, match="field must be one of v, u, got 'w'"):
        get_problem("grayscott", field="w")


def test_caller_arrays_not_modified():
    p = get_problem("grayscott", n=8, n_steps=2, every=3, dtype="float64")
    params = np.array([PATTERNED, DECAYED])
    before = params.copy()
    p(params)
    list(p.simulate(params[0]))
    np.testing.assert_array_equal(params, before)
    u0, v0 = _random_state(8)
    u_copy, v_copy = u0.copy(), v0.copy()
    u1, _ = p.evolve(u0, v0, 0.03, 0.06, 5)
    np.testing.assert_array_equal(u0, u_copy)
    np.testing.assert_array_equal(v0, v_copy)
    assert not np.shares_memory(u1, u0)


@pytest.mark.parametrize("params, message", [
    ([0.07, 0.05, 0.3], r"params\[0\] \(F\) = 0.07 is outside its allowed range \[0.01, 0.06\]"),
    ([0.03, 0.03, 0.3], r"params\[1\] \(k\) = 0.03 is outside .* \[0.04, 0.07\]"),
    ([0.03, 0.05, np.nan], (r"params\[2\] \(size\) = nan is not a finite number in its "
                            r"allowed range \[0.1, 0.5\]")),
    ([0.03, 0.05], r"shape \(3,\)"),
])
def test_bad_parameters_are_clear_errors(params, message):
    p = get_problem("grayscott", n=8, n_steps=1, every=1)
    with pytest.raises(ValueError, match=message):
        list(p.simulate(np.array(params)))


def test_bad_batch_and_options_are_clear_errors():
    p = get_problem("grayscott", n=8, n_steps=1, every=1)
    with pytest.raises(ValueError, match=r"params\[1, 0\] \(F\) = 0.0 is outside"):
        p(np.array([PATTERNED, [0.0, 0.05, 0.3]]))
    with pytest.raises(ValueError, match=r"params\[0, 1\] \(k\) = inf"):
        p(np.array([[0.03, np.inf, 0.3]]))
    with pytest.raises(ValueError, match=r"shape \(B, 3\)"):
        p(np.ones((2, 5)))
    with pytest.raises(ValueError, match="n must be at least 3"):
        get_problem("grayscott", n=2)
    with pytest.raises(ValueError, match=r"unstable: max\(Du, Dv\) dt / h\^2 = 0.839 > 1/4"):
        get_problem("grayscott", dt=4.0)
    with pytest.raises(ValueError, match="noise must be a finite number >= 0"):
        get_problem("grayscott", noise=-0.1)
    with pytest.raises(ValueError, match="F must be finite"):
        p.evolve(np.ones((1, 8, 8)), np.zeros((1, 8, 8)), np.nan, 0.05, 1)


def test_default_input_measure_samples_in_bounds():
    p = get_problem("grayscott", n=4, n_steps=1, every=1)
    x = np.asarray(p.default_input_measure().sample(500, generator=0))
    assert x.shape == (500, 3)
    b = p.parameter_bounds
    assert np.all(x >= b[:, 0]) and np.all(x <= b[:, 1])
    assert p(x[:3]).shape == (3, 1, 4, 4)


def test_online_study_and_generate_through_the_cli(tmp_path):
    import tomli_w

    from wheretolearn.problems import available_problems

    assert "grayscott" in available_problems(kind="online")
    cfg = {"study": {"problem": "grayscott", "n_simulations": 6, "seed": 1,
                     "options": {"n": 8, "n_steps": 5, "every": 20, "field": "u"}},
           "buffer": {"capacity": 30, "watermark": 10},
           "training": {"hidden": [16], "torch_threads": 1},
           "executor": {"workers": 1, "simulation_timeout": 30.0},
           "validation": {"n_val": 2, "every_batches": 10},
           "checkpoint": {"every_batches": 20}}
    path = tmp_path / "gs.toml"
    path.write_text(tomli_w.dumps(cfg))
    runner = CliRunner()
    res = runner.invoke(app, ["online", "run", str(path), "--out", str(tmp_path / "run"),
                              "--no-progress"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["simulations_completed"] == 6 and summary["simulations_failed"] == 0
    out = tmp_path / "gs.zarr"
    res = runner.invoke(app, ["generate", "grayscott", "--n", "2", "--out", str(out),
                              "--workers", "0", "-o", "n=8", "-o", "n_steps=2", "-o", "every=5",
                              "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "wrote 2 samples of grayscott" in res.output
