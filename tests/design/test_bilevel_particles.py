"""Bilevel descent of particles (issue 25, item 2): the input gradient of the seen loss
against autograd and finite differences, a run that lowers the seen error, the smoothing that
draws more than M points, ``family = "best"`` choosing on the seen split, study / CLI /
``load_model`` for a particle run, and the errors for a bad M."""

import json

import pytest
import torch

from wheretolearn.design import BilevelSchedule, KRRSettings, bilevel_descent, make_metatest
from wheretolearn.design.bilevel import adjoint_gradient
from wheretolearn.design.bilevel_families import ParticleFamily, particle_start
from wheretolearn.design.bilevel_study import run_bilevel_study
from wheretolearn.measures import Gaussian
from wheretolearn.measures.empirical import (
    Empirical,
    ParticleMeasure,
    silverman_bandwidth,
)
from wheretolearn.problems import get_problem

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _seen_loss(problem, mt, x, s, eps, label_scale2=1.0, labels=True, y_fixed=None):
    """``J(X)`` written out in torch (dense solve), for autograd and finite differences."""
    n = x.shape[0]
    y = problem(x) if labels else y_fixed
    k = torch.exp(-torch.cdist(x, x) ** 2 / (2 * s * s))
    a = torch.linalg.solve(k + n * eps * torch.eye(n, dtype=x.dtype), y)
    v, yv = mt.seen_x.reshape(-1, x.shape[1]), mt.seen_y.reshape(-1)
    f = torch.exp(-torch.cdist(v, x) ** 2 / (2 * s * s)) @ a
    return 0.5 * ((yv - f) ** 2).mean() / label_scale2


@pytest.mark.parametrize("problem_name, dim", [("friedman1", 5), ("sobol-g", 2)])
def test_particle_gradient_matches_autograd_and_finite_differences(problem_name, dim):
    problem = get_problem(problem_name, dim=dim)
    mt = make_metatest(problem, n_measures=3, n_seen=15, n_unseen=5, seed=0, dtype=F64)
    g = torch.Generator().manual_seed(3)
    x = 0.5 + 0.4 * torch.randn(9, dim, generator=g, dtype=F64)
    s, eps = 1.3, 1e-3
    ls2 = float(mt.seen_y.square().mean())
    krr = KRRSettings(bandwidth=s, normalize_labels=True)
    out = adjoint_gradient(problem, mt, ParticleMeasure(x), x=x, ridge=eps, krr=krr)
    grad = out.grads["points"] / x.shape[0]          # the family returns M dJ/dx
    xa = x.clone().requires_grad_(True)
    (ref,) = torch.autograd.grad(_seen_loss(problem, mt, xa, s, eps, ls2), xa)
    torch.testing.assert_close(grad, ref, rtol=1e-9, atol=1e-14)
    # central finite differences in two coordinates
    h = 1e-6
    for i, k in ((0, 0), (5, dim - 1)):
        e = torch.zeros_like(x)
        e[i, k] = h
        fd = (_seen_loss(problem, mt, x + e, s, eps, ls2)
              - _seen_loss(problem, mt, x - e, s, eps, ls2)) / (2 * h)
        assert float(grad[i, k]) == pytest.approx(float(fd), rel=1e-5, abs=1e-11)
    # an Empirical init goes to the same family
    emp = adjoint_gradient(problem, mt, Empirical(x), x=x, ridge=eps, krr=krr)
    torch.testing.assert_close(emp.grads["points"], out.grads["points"])


def test_particle_gradient_without_label_term_when_problem_not_differentiable():
    problem = get_problem("friedman1", dim=5)
    mt = make_metatest(problem, n_measures=2, n_seen=10, n_unseen=5, seed=0, dtype=F64)
    x = 0.5 + 0.3 * torch.randn(7, 5, generator=torch.Generator().manual_seed(0), dtype=F64)

    def plain(u):   # not marked differentiable: only the kernel terms
        return problem(u)

    out = adjoint_gradient(plain, mt, ParticleMeasure(x), x=x, ridge=1e-3,
                           krr=KRRSettings(bandwidth=2.0))
    y = problem(x).detach()
    xa = x.clone().requires_grad_(True)
    (ref,) = torch.autograd.grad(_seen_loss(problem, mt, xa, 2.0, 1e-3, labels=False,
                                            y_fixed=y), xa)
    torch.testing.assert_close(out.grads["points"] / 7, ref, rtol=1e-9, atol=1e-14)


def test_particle_run_lowers_seen_error_and_records_the_method():
    problem = get_problem("sobol-g", dim=2)
    mt = make_metatest(problem, n_measures=3, n_seen=40, n_unseen=40, seed=0)
    init = particle_start(mt.seen_x, 32, generator=0)
    res = bilevel_descent(problem, mt, init, generator=0,
                          schedule=BilevelSchedule(n_train=32, steps=40, eval_unseen=False))
    seen = [h["seen_error"] for h in res.history]
    assert min(seen[1:]) < 0.8 * seen[0]
    assert isinstance(res.best, ParticleMeasure) and res.best.points.shape == (32, 2)
    assert res.options["family"] == "particles" and res.options["label_gradient"] == "autograd"
    assert res.options["smoothing"].startswith("none (N == M")
    # the trust region bounds the RMS move of every step
    assert max(h["move"] for h in res.history) <= res.options["trust_radius"] * (1 + 1e-9)
    # N > M: particles plus KDE draws, stated in the options
    res2 = bilevel_descent(problem, mt, init, generator=0,
                           schedule=BilevelSchedule(n_train=48, steps=3, eval_unseen=False))
    assert "Silverman" in res2.options["smoothing"]


def test_particle_measure_smoothing():
    x = torch.randn(20, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    pm = ParticleMeasure(x)
    assert torch.equal(pm.sample(20, generator=0), x)          # N == M: the particles
    big = pm.sample(50, generator=0)
    assert big.shape == (50, 3) and torch.equal(big[:20], x)   # N > M: particles + KDE
    assert not torch.equal(big[20:], x[:30])
    sub = pm.sample(5, generator=0)
    assert sub.shape == (5, 3) and len({tuple(r.tolist()) for r in sub}) == 5
    sm = pm.smoothing()
    assert sm["rule"] == "silverman" and sm["M"] == 20
    torch.testing.assert_close(torch.tensor(sm["bandwidth"], dtype=F64), silverman_bandwidth(x))
    back = ParticleMeasure.from_dict(pm.to_dict())
    assert torch.equal(back.points, x) and torch.equal(back.bandwidth, pm.bandwidth)
    torch.testing.assert_close(pm.cov, torch.cov(x.T, correction=0))


def test_particle_family_draw_gradient_scatter():
    fam = ParticleFamily(dtype=F64, spread=1.0)
    pts = torch.zeros(4, 2, dtype=F64)
    draw = fam.draw((pts,), 6, torch.Generator().manual_seed(0))
    assert draw.x.shape == (6, 2) and torch.equal(draw.x[:4], pts)

    class Q:
        input_grad = torch.ones(6, 2, dtype=F64)

    (g,) = fam.gradient((pts,), draw, Q())
    counts = 1 + torch.bincount(draw.latent, minlength=4).to(F64)
    torch.testing.assert_close(g, 4 * counts[:, None].expand(4, 2))
    upd = fam.update((pts,), (torch.tensor([[100.0, 0], [0, 0], [0, 0], [0, 0]], dtype=F64),),
                     1.0, 0.5)
    moved = upd.state[0].norm(dim=1)
    assert upd.clipped and upd.move == pytest.approx(0.5)
    assert float(moved.max()) <= 4 * 0.5 + 1e-12


TINY = dict(problem="sobol-g", dim=2, n_train=24, steps=4, eval_n=[24, 32], repeats=1,
            n_measures=3, n_seen=30, n_unseen=60, seed=1, baselines=["normal"])


def test_particle_study_records_smoothing_and_reloads(tmp_path):
    import wheretolearn as wtl
    from wheretolearn.design.bilevel_study import read_training_record

    out = tmp_path / "run"
    s = run_bilevel_study({**TINY, "family": "particles"}, out, progress=False).summary
    written = json.loads((out / "summary.json").read_text())
    assert (written["family"], written["particles"], written["particle_init"]) == (
        "particles", 24, "metatest")
    assert written["label_gradient"] == "autograd"
    assert written["smoothing"]["kind"] == "particles_plus_gaussian_kde"
    pts = torch.tensor(written["learned"]["points"], dtype=F64)
    assert pts.shape == (24, 2)
    assert (out / "figures" / "covariances.png").read_bytes()[:4] == b"\x89PNG"
    model = wtl.load_model(out)
    rec = read_training_record(out / "model.pt")
    assert rec["n"] == 32 and torch.equal(model.x_train_, rec["x"])
    # N = 32 > M = 24: the particles (float32 study dtype) plus 8 KDE draws
    torch.testing.assert_close(rec["x"][:24], pts.float().double())
    assert s["selection_seen_error"] is not None
    assert written["smoothing"]["rule"] == "silverman"


def test_particle_bandwidth_scales_the_evaluation_smoothing(tmp_path):
    """particle_bandwidth = f: the learned particles' KDE uses f x Silverman's bandwidth of
    the same particles (the descent itself is unchanged: same points as f = 1)."""
    from wheretolearn.measures.empirical import silverman_bandwidth

    runs = {}
    for f in (1.0, 0.5):
        out = tmp_path / f"run{f}"
        run_bilevel_study({**TINY, "family": "particles", "particle_bandwidth": f}, out,
                          progress=False)
        runs[f] = json.loads((out / "summary.json").read_text())
    assert runs[0.5]["learned"]["points"] == runs[1.0]["learned"]["points"]
    pts = torch.tensor(runs[1.0]["learned"]["points"], dtype=torch.float32)
    h = silverman_bandwidth(pts).double()
    torch.testing.assert_close(torch.tensor(runs[1.0]["smoothing"]["bandwidth"], dtype=F64), h,
                               rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(torch.tensor(runs[0.5]["smoothing"]["bandwidth"], dtype=F64),
                               0.5 * h, rtol=1e-6, atol=1e-9)
    assert runs[0.5]["smoothing"]["rule"] == "given"


@pytest.mark.parametrize("bad, match", [
    ({"family": "particles", "particles": 0}, "positive integer"),
    ({"family": "particles", "particles": 25}, "at most n_train = 24"),
    ({"particles": 10}, "applies to family = 'particles'"),
    ({"family": "particles", "particles": 20, "n_train": 200, "n_seen": 5},
     "at most the 15 pooled seen samples"),
    ({"family": "particles", "kernel": "laplace"}, "Gaussian kernel"),
    ({"particle_bandwidth": 0.5}, "particle_bandwidth applies to family = 'particles'"),
    ({"family": "particles", "particle_bandwidth": 0}, "greater than 0"),
])
def test_particle_config_errors(bad, match):
    from pydantic import ValidationError

    from wheretolearn.design.bilevel_study import BilevelStudyConfig

    with pytest.raises(ValidationError, match=match):
        BilevelStudyConfig(**{**TINY, **bad})


def test_particle_init_errors():
    x = torch.zeros(2, 5, 3)
    with pytest.raises(ValueError, match="at most the 10 pooled"):
        particle_start(x, 11)
    with pytest.raises(ValueError, match="needs the start Gaussian"):
        particle_start(x, 3, method="start")
    g = Gaussian(torch.zeros(3, dtype=F64), torch.eye(3, dtype=F64))
    assert particle_start(x, 4, method="start", start=g, generator=0).points.shape == (4, 3)
    problem = get_problem("sobol-g", dim=2)
    mt = make_metatest(problem, n_measures=2, n_seen=10, n_unseen=5, seed=0)
    with pytest.raises(ValueError, match="at most n_train"):
        bilevel_descent(problem, mt, particle_start(mt.seen_x, 12),
                        schedule=BilevelSchedule(n_train=10, steps=1))


def test_cli_particles_flags(tmp_path):
    from typer.testing import CliRunner

    from wheretolearn.cli import app

    cfg = tmp_path / "tiny.toml"
    cfg.write_text("n_train = 20\nsteps = 2\neval_n = [20]\nrepeats = 1\nn_measures = 2\n"
                   "n_seen = 30\nn_unseen = 60\nbaselines = ['normal']\n")
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["bilevel", "--problem", "sobol-g", "--config", str(cfg),
                                   "--family", "particles", "--particles", "16",
                                   "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "particles M=16" in res.output
    for bad_m, msg in (("0", "positive integer"), ("21", "at most n_train = 20")):
        bad = CliRunner().invoke(app, ["bilevel", "--problem", "sobol-g", "--config", str(cfg),
                                       "--family", "particles", "--particles", bad_m,
                                       "--out", str(tmp_path / f"bad{bad_m}")])
        assert bad.exit_code == 2 and msg in bad.output, bad.output


def test_best_family_chooses_on_the_seen_split(tmp_path, monkeypatch):
    """Seen and unseen errors ranked in opposite orders: 'best' follows the seen one."""
    from wheretolearn.design import bilevel_study as study

    seen = {"gaussian": 0.30, "mixture": 0.10, "particles": 0.20}
    unseen = {"gaussian": 0.01, "mixture": 0.50, "particles": 0.02}
    real = study._study

    def fake(cfg, out, **kw):
        if cfg.family == "best":
            return real(cfg, out, **kw)
        out.mkdir(parents=True)
        (out / "model.pt").write_bytes(cfg.family.encode())
        return {"family": cfg.family, "selection_seen_error": seen[cfg.family],
                "baselines": {"optimized": {"24": unseen[cfg.family]}}, "warnings": [],
                "figures": ["figures/covariances.png"], "out": str(out)}

    monkeypatch.setattr(study, "_study", fake)
    s = study.run_bilevel_study(study.BilevelStudyConfig(**TINY, family="best"),
                                tmp_path / "best", progress=False).summary
    assert s["family"] == "mixture" and s["family_selection"]["chosen"] == "mixture"
    assert s["family_selection"]["seen_error"] == seen
    assert s["figures"] == ["families/mixture/figures/covariances.png"]
    assert (tmp_path / "best" / "model.pt").read_bytes() == b"mixture"
    written = json.loads((tmp_path / "best" / "summary.json").read_text())
    assert written["family_searched"] == "best"


def test_best_family_runs_all_three(tmp_path):
    s = run_bilevel_study({**TINY, "family": "best", "steps": 2, "eval_n": [24]},
                          tmp_path / "best", progress=False).summary
    sel = s["family_selection"]
    assert set(sel["seen_error"]) == {"gaussian", "mixture", "particles"}
    assert sel["chosen"] == min(sel["seen_error"], key=sel["seen_error"].get)
    assert s["family"] == sel["chosen"]
    for fam in ("gaussian", "mixture", "particles"):
        assert (tmp_path / "best" / "families" / fam / "summary.json").is_file()
    assert (tmp_path / "best" / "model.pt").is_file()


def test_best_family_run_is_replaced_with_overwrite(tmp_path):
    """A ``family = "best"`` folder (sub-runs under ``families/<name>/``) is the project's
    own: ``overwrite`` replaces it; a file of the user's anywhere in it still refuses."""
    import pytest

    from wheretolearn._ownership import owner

    cfg = {**TINY, "family": "best", "steps": 2, "eval_n": [24]}
    out = tmp_path / "best"
    run_bilevel_study(cfg, out, progress=False)
    assert owner(out) == ("run", [])
    with pytest.raises(FileExistsError, match="--overwrite"):
        run_bilevel_study(cfg, out, progress=False)
    (out / "families" / "gaussian" / "summary.json").write_text("{}")  # stale, ours
    s = run_bilevel_study(cfg, out, progress=False, overwrite=True).summary
    assert json.loads((out / "families" / "gaussian" / "summary.json").read_text())
    assert s["family_selection"]["chosen"] in ("gaussian", "mixture", "particles")
    for extra in (out / "families" / "gaussian" / "notes.txt",
                  out / "families" / "gaussian" / "families" / "x" / "summary.json"):
        extra.parent.mkdir(parents=True, exist_ok=True)
        extra.write_text("mine")
        kind, foreign = owner(out)
        assert kind == "run" and foreign, extra
        with pytest.raises(FileExistsError, match="did not write"):
            run_bilevel_study(cfg, out, progress=False, overwrite=True)
        assert extra.read_text() == "mine"
        extra.unlink()
