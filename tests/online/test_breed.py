"""Tests of the Breed adaptive sampler (SPEC §5): fitness, parents, bounds, schedule, queue,
importance weights, ESS trigger and exact resume."""

import json

import numpy as np
import pytest
from scipy.special import ndtr

from wheretolearn.online.breed import (BreedMutation, BreedOptions, BreedParents,
                                       BreedResampling, BreedSampler, BreedSchedule,
                                       child_density, effective_sample_size, normalised_fitness,
                                       r_schedule)
from wheretolearn.online.checkpoint import load_checkpoint, save_checkpoint
from wheretolearn.online.sampler_registry import make_sampler

BOUNDS = np.array([[100.0, 500.0], [0.0, 2.0]])


def _sampler(*, seed=3, n_simulations=None, **flat):
    opts = dict(min_finished=0, period=1000, min_steps=1, window=50, queue_size=10,
                min_candidates=1)
    opts.update(flat)
    return BreedSampler(BOUNDS, BreedOptions.from_flat(opts), seed=seed,
                        n_simulations=n_simulations)


def _unit_sampler(seed, *, boundary_share=0.0, **flat):
    """A sampler on the unit square that resamples on request (``resample()``)."""
    opts = dict(min_finished=0, period=1000, min_steps=1, window=60, queue_size=50,
                min_candidates=1)
    opts.update(flat)
    return BreedSampler(np.tile([0.0, 1.0], (2, 1)), BreedOptions.from_flat(opts), seed=seed,
                        boundary_share=boundary_share)


def test_fitness_is_mean_deviation_from_batch_mean_keyed_by_sim_and_step():
    # The paper's fitness (batch baseline, mean deviation); the defaults changed in issue 23
    # (step baseline, 0.9-quantile: tested below), the bookkeeping per (sim, step) did not.
    s = _sampler(min_steps=2, fitness_baseline="batch", fitness_quantile="mean")
    s.ask(3)
    s.tell([0, 0, 1, 2], [0, 1, 0, 0], [1.0, 3.0, 2.0, 6.0])      # mean 3
    # deviations: (0,0) -2, (0,1) 0, (1,0) -1, (2,0) +3
    np.testing.assert_allclose(s.fitness([0, 1, 2]), [-1.0, -1.0, 3.0])
    s.tell([0, 1], [1, 1], [4.0, 2.0])                              # mean 3: (0,1) +1 overwrites
    np.testing.assert_allclose(s.fitness([0, 1, 2]), [(-2 + 1) / 2, (-1 - 1) / 2, 3.0])
    ids, _, fit = s.candidates()                                     # min_steps = 2: 0 and 1
    assert ids.tolist() == [0, 1]
    np.testing.assert_allclose(fit, [-0.5, -1.0])
    assert np.isnan(s.fitness([7])[0])


def test_candidates_come_from_the_sliding_window():
    s = _sampler(window=4)
    s.ask(10)
    s.tell(np.arange(10), np.zeros(10), np.arange(10.0))
    ids, u, _ = s.candidates()
    assert ids.tolist() == [6, 7, 8, 9]
    assert u.shape == (4, 2)


def test_normalised_fitness_and_ess():
    np.testing.assert_allclose(normalised_fitness([1.0, 2.0, 4.0]), [0, 1 / 4, 3 / 4])
    np.testing.assert_allclose(normalised_fitness([2.0, 2.0]), [0.5, 0.5])
    assert effective_sample_size([1, 1, 1, 1]) == pytest.approx(4.0)
    assert effective_sample_size([1, 0, 0, 0]) == pytest.approx(1.0)
    assert effective_sample_size([3, 1]) == pytest.approx(16 / 10)
    # selection power p: (f - min f)^p normalised; p = 2 on gaps 0, 1, 3 gives 0, 1/10, 9/10
    np.testing.assert_allclose(normalised_fitness([1.0, 2.0, 4.0], 2.0), [0, 0.1, 0.9])
    np.testing.assert_allclose(normalised_fitness([2.0, 2.0], 3.0), [0.5, 0.5])


def test_selection_power_sharpens_the_parent_choice_of_a_resampling():
    probs = {}
    for p in (1.0, 3.0):
        s = _sampler(window=4, selection_power=p, min_candidates=2)
        s.ask(4)
        s.tell(np.arange(4), np.zeros(4), np.array([0.0, 1.0, 2.0, 4.0]))
        assert s.resample()
        probs[p] = s._proposals[-1]["probs"]
    np.testing.assert_allclose(probs[1.0], [0, 1 / 7, 2 / 7, 4 / 7])
    np.testing.assert_allclose(probs[3.0], np.array([0, 1, 8, 64]) / 73)
    with pytest.raises(ValueError, match="selection_power"):
        _sampler(selection_power=0.0)


def test_parents_are_chosen_with_probability_proportional_to_normalised_fitness():
    s = _sampler(sigma=1e-4)
    parents = np.array([[0.2, 0.2], [0.5, 0.5], [0.8, 0.8]])
    probs = normalised_fitness([0.0, 1.0, 3.0])                       # 0, 1/4, 3/4
    children, _ = s._breed(parents, probs, 20000)
    nearest = np.argmin(((children[:, None] - parents[None]) ** 2).sum(-1), axis=1)
    freq = np.bincount(nearest, minlength=3) / 20000
    assert freq[0] == 0.0
    # binomial standard deviation ~0.003: 5 of them
    np.testing.assert_allclose(freq, probs, atol=0.015)


def test_out_of_bounds_children_shrink_sigma_then_copy_the_parent():
    corner = np.array([[0.0, 0.0]])
    # At the exact corner each try lands inside with probability 1/4 whatever sigma is,
    # so after 3 tries (1 - 1/4)^3 of the children are copies of the parent. (children =
    # "retry", the paper's rule; the default is reflection since issue 23.)
    s = _sampler(sigma=0.05, max_tries=3, children="retry")
    kids, copied = s._breed(corner, np.ones(1), 20000)
    copies = np.all(kids == 0.0, axis=1).mean()
    assert copied.mean() == copies
    assert copies == pytest.approx(0.75 ** 3, abs=0.015)
    inside = kids[~np.all(kids == 0.0, axis=1)]
    assert np.all((inside >= 0) & (inside < 1))
    # Near a wall the retries succeed with a smaller sigma: no copies, all inside.
    s2 = _sampler(sigma=0.5, max_tries=10, children="retry")
    kids2, _ = s2._breed(np.array([[0.02, 0.5]]), np.ones(1), 5000)
    assert np.all((kids2 >= 0) & (kids2 < 1))
    assert not np.any(np.all(kids2 == [0.02, 0.5], axis=1))


def test_child_density_integrates_to_the_probability_of_not_copying():
    # Exact: the continuous part has mass 1 - prod_i (1 - m_i) with m_i the box mass at s_i.
    parent, sigma, shrink, tries = np.array([[0.1, 0.7]]), 0.3, 0.3, 4
    m = [np.prod(ndtr((1 - parent[0]) / s) - ndtr(-parent[0] / s))
         for s in sigma * shrink ** np.arange(tries)]
    expected = 1.0 - np.prod(1.0 - np.array(m))
    g = (np.arange(1000) + 0.5) / 1000
    grid = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    kw = dict(sigma=sigma, children="retry", shrink=shrink, max_tries=tries)
    dens = child_density(grid, parent, [1.0], **kw)
    assert dens.mean() == pytest.approx(expected, rel=2e-3)
    assert child_density(np.array([[1.2, 0.5]]), parent, [1.0], **kw)[0] == 0.0


def test_r_schedule_ramps_linearly_and_first_generation_is_never_bred():
    assert r_schedule(0, 0.5, 0.7, 3) == 0.0
    np.testing.assert_allclose([r_schedule(g, 0.5, 0.7, 3) for g in range(1, 7)],
                               [0.5, 0.5 + 0.2 / 3, 0.5 + 0.4 / 3, 0.7, 0.7, 0.7])
    assert r_schedule(1, 0.0, 0.7, 0) == 0.7
    s = _sampler(r_start=0.2, r_end=0.6, r_break=2, queue_size=10)
    s.ask(20)
    assert not s._bred.any()                                          # generation 0
    for g, n_bred in ((1, 2), (2, 4), (3, 6), (4, 6)):
        s.tell(np.arange(len(s._sim)), np.zeros(len(s._sim)), np.arange(len(s._sim)) * 1.0)
        assert s.resample() and s.generation == g
        before = int(s._bred.sum())
        s.ask(10)
        assert int(s._bred.sum()) - before == n_bred


def test_resampling_needs_finished_simulations_and_the_period():
    s = _sampler(min_finished=3, period=5)
    s.ask(5)
    for _ in range(10):
        s.tell([0, 1], [0, 0], [1.0, 2.0])
    assert s.generation == 0                                          # nobody finished
    for i in range(3):
        s.simulation_finished(i)
    s.simulation_finished(4, completed=False)                         # failures do not count
    assert s.n_finished == 3
    s.tell([0, 1], [0, 0], [1.0, 2.0])
    assert s.generation == 1                                          # 11 batches >= 5
    for _ in range(4):
        s.tell([0, 1], [0, 0], [1.0, 2.0])
    assert s.generation == 1                                          # 4 since then
    s.tell([0, 1], [0, 0], [1.0, 2.0])
    assert s.generation == 2


def test_submitted_simulations_are_never_changed_and_the_queue_is_redrawn():
    s = _sampler(queue_size=8, r_start=1.0, r_end=1.0)
    handed = s.ask(5)
    queued = s._queue_u.copy()                                        # 3 not yet submitted
    s.tell(np.arange(5), np.zeros(5), [0.0, 0.0, 0.0, 0.0, 5.0])
    assert s.resample()
    low, span = BOUNDS[:, 0], BOUNDS[:, 1] - BOUNDS[:, 0]
    d = s.diagnostics()["draws"]
    np.testing.assert_array_equal(np.array(d["params"]), handed)      # unchanged
    assert len(s._queue_u) == 0                                       # the old queue is gone
    nxt = (s.ask(3) - low) / span
    assert not np.allclose(nxt, queued)
    # R = 1: every new one is a child of the only parent with positive fitness (sim 4)
    parent = (handed[4] - low) / span
    assert np.all(np.abs(nxt - parent) < 6 * 0.1)


def _lean_to_corner(s, *, rounds, k, power=1):
    """``rounds`` generations of ``k`` draws each, the last 60 told a loss ``(u0 + u1)^power``
    (hard near the corner (1, 1)), then a resampling: the proposal leans to that corner."""
    for _ in range(rounds):
        u = s.ask(k)
        ids = np.arange(len(s._sim) - k, len(s._sim))
        s.tell(ids[-60:], np.zeros(60), u[-60:].sum(1) ** power)
        s.resample()


def test_importance_weights_integrate_to_the_right_value():
    # Adaptive proposals lean to the corner (1, 1): the unweighted mean of u is biased (~0.66),
    # the deterministic-mixture weighted one estimates the uniform integrals (standard error
    # of each estimate ~0.012 with 4500 draws).
    s = _unit_sampler(5, r_start=0.8, r_end=0.8, sigma=0.1)
    _lean_to_corner(s, rounds=8, k=500)
    s.ask(500)
    ids, w = s.importance_weights()
    assert len(w) == 4500 and np.all(w > 0)
    x = np.array(s.diagnostics()["draws"]["params"])
    f = {"one": np.ones(len(x)), "u0": x[:, 0], "u0u1": x[:, 0] * x[:, 1],
         "sq": (x ** 2).sum(1)}
    exact = {"one": 1.0, "u0": 0.5, "u0u1": 0.25, "sq": 2 / 3}
    tol = {"one": 0.05, "u0": 0.025, "u0u1": 0.02, "sq": 0.04}
    for k, v in f.items():
        assert np.mean(w * v) == pytest.approx(exact[k], abs=tol[k]), k
    assert x[:, 0].mean() - 0.5 > 0.1                                 # the draws are biased
    assert np.mean(x ** 2, axis=0).sum() - 2 / 3 > 0.1
    assert s.weights_for(ids[:3]).shape == (3,)
    assert s.weights_for([10**6])[0] == 1.0


def test_ess_trigger_resamples_when_fitness_concentrates():
    s = _sampler(trigger="ess", ess_threshold=0.5, min_period=2, period=10**6)
    s.ask(20)
    spread = np.linspace(0.0, 1.0, 20)                                # ESS fraction ~0.75
    for _ in range(3):
        s.tell(np.arange(20), np.zeros(20), spread)
    assert s.generation == 0 and s.last_ess_fraction > 0.5
    peaked = np.zeros(20)
    peaked[7] = 10.0                                                  # one hard simulation
    s.tell(np.arange(20), np.zeros(20), peaked)
    assert s.generation == 1 and s.metrics()["sampler_fitness_ess"] < 0.5


@pytest.mark.parametrize("extra", [{}, {"boundary_share": 0.25, "children": "retry",
                                       "fitness_quantile": "mean", "n_simulations": 40}])
def test_exact_resume_through_a_checkpoint(tmp_path, extra):
    def drive(sampler, rng, n):
        out = []
        for _ in range(n):
            k = len(sampler._sim)
            out.append(sampler.ask(2, sim_ids=[k, k + 1]))
            ids = rng.integers(max(0, k - 10), k + 2, size=10)
            sampler.tell(ids, rng.integers(0, 4, 10), rng.random(10) + 0.1 * (ids % 3))
            sampler.simulation_finished(int(ids[0]))
        return np.concatenate(out)

    options = BreedOptions(
        mutation=BreedMutation(children=extra.get("children", "reflect")),
        schedule=BreedSchedule(r_start=0.5, r_end=1.0, r_break=2),
        resampling=BreedResampling(period=3, min_finished=2),
        parents=BreedParents(window=8, min_steps=1, min_candidates=2,
                             fitness_quantile=extra.get("fitness_quantile", 0.9)),
        queue_size=4)
    a = make_sampler("breed", BOUNDS, seed=9, options=options,
                     **{k: v for k, v in extra.items() if k in ("boundary_share",
                                                                  "n_simulations")})
    drive(a, np.random.default_rng(0), 12)
    assert a.generation >= 2
    save_checkpoint(tmp_path / "c.pt", {"sampler": a.state_dict()})
    cont = drive(a, np.random.default_rng(1), 15)
    b = make_sampler("breed", BOUNDS, seed=0)
    b.load_state_dict(load_checkpoint(tmp_path / "c.pt")["sampler"])
    resumed = drive(b, np.random.default_rng(1), 15)
    np.testing.assert_array_equal(resumed, cont)
    assert json.dumps(b.state_dict()) == json.dumps(a.state_dict())


def test_bad_options_name_the_option():
    with pytest.raises(ValueError, match="sigma"):
        BreedMutation(sigma=1.5)
    with pytest.raises(ValueError, match="trigger"):
        BreedResampling(trigger="sometimes")
    with pytest.raises(ValueError, match="base"):
        BreedOptions(base="breed")
    with pytest.raises(TypeError, match="window"):
        BreedParents(window=2.5)
    with pytest.raises(ValueError, match="queue_size"):
        BreedOptions(queue_size=0)
    with pytest.raises(TypeError, match="mutation must be a BreedMutation"):
        BreedOptions(mutation={"sigma": 0.1})
    with pytest.raises(TypeError, match="options must be a BreedOptions"):
        BreedSampler(BOUNDS, {"sigma": 0.1})
    with pytest.raises(TypeError, match="nonsense"):
        BreedOptions.from_flat({"nonsense": 1})
    with pytest.raises(TypeError):
        make_sampler("breed", BOUNDS, sigma=0.1)          # options go in BreedOptions


def test_step_baseline_removes_the_time_step_from_the_fitness():
    # Sims 0 and 1 are equally hard but were trained at an easy / a hard step; sim 2 is
    # twice as hard at both. The batch baseline ranks by step, the step baseline by sim.
    ids, steps, losses = [0, 1, 2, 2], [0, 1, 0, 1], [10.0, 1.0, 20.0, 2.0]
    fits = {}
    for baseline in ("batch", "step"):
        s = _sampler(fitness_baseline=baseline)
        s.ask(3)
        for _ in range(30):
            s.tell(ids, steps, losses)
        fits[baseline] = s.fitness([0, 1, 2])
    assert fits["batch"][0] - fits["batch"][1] > 5.0                  # the step dominates
    f = fits["step"]
    assert f[0] == pytest.approx(f[1], abs=1e-6) and f[2] > f[0] + 0.5
    with pytest.raises(ValueError, match="fitness_baseline"):
        _sampler(fitness_baseline="epoch")


def test_resampling_waits_for_min_candidates():
    s = _sampler(min_candidates=3, period=1)
    s.ask(5)
    s.tell([0, 1], [0, 0], [1.0, 2.0])                       # 2 candidates: wait
    assert s.generation == 0 and not s.resample()
    s.tell([2, 3], [0, 0], [1.0, 2.0])                       # 4 candidates: resample
    assert s.generation == 1 and s._proposals[-1]["n_candidates"] == 4


# -- issue 23: seed pairing, per-batch weights, schedule, defaults, reflection, quantile ----------

@pytest.mark.parametrize("base", ["uniform", "halton", "sobol", "lhs"])
def test_breed_generation_zero_is_the_plain_base_sampler_at_the_same_seed(base):
    # Paired seeds: Breed at seed s shares its generation 0 with the base sampler at seed s
    # (its own parent / child draws come from a separate stream derived from s).
    b = make_sampler("breed", BOUNDS, seed=7, options=BreedOptions(base=base))
    np.testing.assert_array_equal(b.ask(23), make_sampler(base, BOUNDS, seed=7).ask(23))
    bs = make_sampler("breed", BOUNDS, seed=7, options=BreedOptions(base=base),
                      boundary_share=1 / 6)
    np.testing.assert_array_equal(
        bs.ask(23), make_sampler(base, BOUNDS, seed=7, boundary_share=1 / 6).ask(23))


def test_new_defaults_follow_the_review():
    s = BreedSampler(BOUNDS, seed=0)
    o = s.options
    # measured in issue 23: the paper's R schedule and batch baseline, the 0.9 quantile
    assert o.schedule == BreedSchedule(r_start=0.5, r_end=0.7, r_break=3)
    assert o.parents.fitness_baseline == "batch" and o.parents.fitness_quantile == 0.9
    assert o.mutation.children == "reflect" and o.weight_cap == 10.0
    assert s.n_simulations is None


def test_flat_keys_map_one_to_one_onto_the_option_groups():
    flat = BreedOptions().flat()
    assert tuple(flat) == BreedOptions.KEYS
    assert BreedOptions.from_flat(flat) == BreedOptions()
    o = BreedOptions.from_flat({"sigma": 0.05, "r_end": 0.9, "trigger": "ess", "window": 7,
                                "queue_size": 3})
    assert o == BreedOptions(mutation=BreedMutation(sigma=0.05),
                             schedule=BreedSchedule(r_end=0.9),
                             resampling=BreedResampling(trigger="ess"),
                             parents=BreedParents(window=7), queue_size=3)
    assert {k: v for k, v in o.flat().items() if v != flat[k]} == {
        "sigma": 0.05, "r_end": 0.9, "trigger": "ess", "window": 7, "queue_size": 3}


def test_weights_for_are_normalised_per_batch_and_capped():
    # Mixture weights here range over a factor ~80 (bred draws crowd the corner (1, 1));
    # a cap of 1.5 x the batch mean is active in most batches of 10.
    s = _unit_sampler(5, r_start=0.9, r_end=0.9, sigma=0.05, weight_cap=1.5)
    _lean_to_corner(s, rounds=4, k=300, power=4)
    s.ask(300)
    ids, raw = s.importance_weights()
    assert raw.max() / raw.min() > 50
    rng = np.random.default_rng(0)
    capped = 0
    for _ in range(200):
        batch = rng.choice(ids, size=10)
        w = s.weights_for(batch)
        assert w.mean() == pytest.approx(1.0, rel=1e-12)
        assert w.max() <= 1.5 * (1 + 1e-12) and w.min() > 0
        r = raw[batch]                          # the order of the mixture weights is kept
        assert np.all(np.diff(w[np.argsort(r, kind="stable")]) >= -1e-12)
        if r.max() / r.mean() > 1.5:
            capped += 1
            assert w.max() == pytest.approx(1.5)
        else:                                   # below the cap: raw weight / batch mean
            np.testing.assert_allclose(w, r / r.mean())
    assert capped > 100
    assert s.weights_for([10**6]).tolist() == [1.0]                 # not drawn here: weight 1


@pytest.mark.parametrize("w, cap", [([1, 1, 1, 1], 2.0), ([100, 1, 1, 1, 1, 0], 3.0),
                                    ([5, 4, 1e-3, 1e-3], 1.5), ([0, 0, 0], 10.0),
                                    ([0, 0, 7, 0], 2.0)])
def test_cap_weights_mean_one_and_bounded(w, cap):
    from wheretolearn.online.breed import cap_weights

    v = cap_weights(np.asarray(w, float), cap)
    if np.count_nonzero(w) * cap >= len(w):
        assert v.mean() == pytest.approx(1.0) and v.max() <= cap * (1 + 1e-12)
    elif np.count_nonzero(w) == 0:
        np.testing.assert_array_equal(v, np.ones(len(w)))           # nothing to re-weight
    else:                                                           # cap wins over mean 1
        assert v.max() == pytest.approx(cap) and v.mean() < 1
    with pytest.raises(ValueError, match="weight_cap"):
        cap_weights(np.ones(3), 0.5)


def _drive_ensemble(s, n_sims, batches_per_sim=5):
    """The engine's pattern: ask one simulation, tell a few batches; then the final drain."""
    gens = []
    for i in range(n_sims):
        s.ask(1, sim_ids=[i])
        s.simulation_finished(i)
        for _ in range(batches_per_sim):
            ids = np.arange(max(0, i - 5), i + 1)
            s.tell(ids, np.zeros(len(ids)), ids % 3 + 0.1)
        gens.append(s.generation)
    for _ in range(200):                                             # drain: no more asks
        s.tell([0, 1, 2], [0, 0, 0], [1.0, 2.0, 3.0])
    return gens


def test_no_resampling_once_the_last_simulation_was_requested():
    kw = dict(period=5, min_finished=1, min_steps=1, window=10, min_candidates=1)
    free = _sampler(**kw)
    _drive_ensemble(free, 20)
    bounded = _sampler(n_simulations=20, **kw)
    gens = _drive_ensemble(bounded, 20)
    assert free.generation > gens[-1] + 30                           # the old waste
    assert gens[-1] >= 3 and bounded.generation == gens[-2] == gens[-1]  # none after sim 19
    assert not bounded.resample()                                   # refused by hand too
    assert bounded.metrics()["sampler_generation"] == gens[-1]
    with pytest.raises(ValueError, match="n_simulations"):
        _sampler(n_simulations=0)


def test_reflected_children_of_a_parent_at_the_bound_are_half_normal():
    from scipy.stats import halfnorm, kstest

    s = _sampler(sigma=0.1)
    kids, copied = s._breed(np.array([[0.0, 0.5]]), np.ones(1), 20000)
    assert not copied.any() and np.all((kids >= 0) & (kids <= 1))
    assert kstest(kids[:, 0], halfnorm(scale=0.1).cdf).pvalue > 1e-3
    assert kstest(kids[:, 1] - 0.5, "norm", args=(0, 0.1)).pvalue > 1e-3
    # near the upper bound the mass beyond it is folded back
    kids_hi, _ = s._breed(np.array([[0.97, 1.0]]), np.ones(1), 20000)
    assert np.all(kids_hi <= 1) and (kids_hi[:, 1] < 1).all()
    assert kstest(1.0 - kids_hi[:, 1], halfnorm(scale=0.1).cdf).pvalue > 1e-3


@pytest.mark.parametrize("parent, sigma", [([0.0, 0.95], 0.3), ([0.5, 0.5], 1.0),
                                           ([1.0, 0.02], 0.05)])
def test_reflected_child_density_integrates_to_one_and_matches_the_draws(parent, sigma):
    par = np.array([parent])
    g = (np.arange(1000) + 0.5) / 1000
    grid = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    dens = child_density(grid, par, [1.0], sigma=sigma)              # children="reflect"
    assert dens.mean() == pytest.approx(1.0, rel=2e-3)
    assert child_density(np.array([[1.2, 0.5]]), par, [1.0], sigma=sigma)[0] == 0.0
    # histogram of the sampler's children against the density on a 5 x 5 grid of cells
    kids, _ = _sampler(sigma=sigma)._breed(par, np.ones(1), 100000)
    hist = np.histogram2d(kids[:, 0], kids[:, 1], bins=5, range=[[0, 1], [0, 1]])[0] / 1e5
    cells = dens.reshape(5, 200, 5, 200).mean(axis=(1, 3)) / 25      # mass per cell
    np.testing.assert_allclose(hist, cells, atol=4e-3)


def test_retry_children_remain_available():
    s = _sampler(children="retry", sigma=0.05, max_tries=3)
    kids, copied = s._breed(np.array([[0.0, 0.0]]), np.ones(1), 4000)
    assert copied.mean() == pytest.approx(0.75 ** 3, abs=0.03)
    with pytest.raises(ValueError, match="children"):
        _sampler(children="mirror")


def test_fitness_is_an_upper_quantile_of_the_recorded_deviations():
    s = _sampler(fitness_baseline="batch", fitness_quantile=0.9)
    s.ask(2)
    # sim 0: deviations -1 at 9 steps and +9 at one step; sim 1: mirrored deviations
    for t in range(10):
        s.tell([0, 1], [t, t], [9.0, 11.0] if t else [19.0, 1.0])
    dev0 = np.array([9.0] + [-1.0] * 9)
    np.testing.assert_allclose(s.fitness([0, 1]), [np.quantile(dev0, 0.9),
                                                   np.quantile(-dev0, 0.9)])
    m = _sampler(fitness_baseline="batch", fitness_quantile="mean")
    m.ask(2)
    for t in range(10):
        m.tell([0, 1], [t, t], [9.0, 11.0] if t else [19.0, 1.0])
    np.testing.assert_allclose(m.fitness([0, 1]), [0.0, 0.0], atol=1e-12)
    for bad in (0.0, 1.5, "median"):
        with pytest.raises(ValueError, match="fitness_quantile"):
            _sampler(fitness_quantile=bad)


def test_weights_with_a_boundary_share_target_the_base_design():
    # Target = the base design: (1 - 1/4) uniform + 1/4 boundary points. The weighted
    # draws estimate its boundary share and interior integrals despite the bred lean.
    s = _unit_sampler(2, r_start=0.7, r_end=0.7, sigma=0.1, boundary_share=0.25)
    _lean_to_corner(s, rounds=6, k=500)
    _, w = s.importance_weights()
    x = np.array(s.diagnostics()["draws"]["params"])
    on = ((x == 0) | (x == 1)).any(axis=1)
    assert on.mean() < 0.2                                       # bred points dilute it
    assert np.mean(w) == pytest.approx(1.0, abs=0.05)
    assert np.mean(w * on) == pytest.approx(0.25, abs=0.03)
    assert np.mean(w * ~on * x[:, 0]) == pytest.approx(0.75 * 0.5, abs=0.03)
    with pytest.raises(ValueError, match="boundary_share"):
        BreedSampler(BOUNDS, boundary_share=0.9)


def test_a_state_from_before_issue_23_is_refused_with_a_clear_error():
    # Such a state lacks the issue 23 options, the boundary flags and the step means.
    a = _sampler(children="retry", fitness_quantile="mean")
    a.ask(5)
    state = json.loads(json.dumps(a.state_dict()))
    assert list(state["options"]) == [*BreedOptions.KEYS, "n_simulations"]   # flat, as before
    b = make_sampler("breed", BOUNDS, seed=0)
    b.load_state_dict(state)
    assert b.options == a.options and json.dumps(b.state_dict()) == json.dumps(a.state_dict())
    for key in ("children", "fitness_quantile", "weight_cap", "n_simulations"):
        del state["options"][key]
    del state["boundary_share"], state["draws"]["boundary"], state["queue"]["boundary"]
    with pytest.raises(ValueError, match=r"older wheretolearn \(before issue 23\)") as err:
        make_sampler("breed", BOUNDS, seed=0).load_state_dict(state)
    for key in ("children", "boundary_share", "draws.boundary", "queue.boundary"):
        assert key in str(err.value)
