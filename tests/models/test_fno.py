"""The FNO (neuraloperator) behind the package's model contract (issue 26 item 2): shapes in 1
and 2 dimensions, seeded initialisation, normalisation fitted by ``train_operator``,
weights-only checkpoints, the missing-extra error, and the AMA bound's Lipschitz estimate
against the explicit Jacobian."""

import sys

import numpy as np
import pytest
import torch

pytest.importorskip("neuralop", reason="the FNO needs the extra wheretolearn[fno]")

from wheretolearn.design.ama_bound import LipschitzOptions, estimate_lipschitz  # noqa: E402
from wheretolearn.models import TrainConfig, train_operator  # noqa: E402
from wheretolearn.models.fno import FNO, FNOArchitecture, MissingExtraError  # noqa: E402
from wheretolearn.models.registry import (ModelGrid, build_model, load_saved_model,  # noqa: E402
                                          save_model)


def _grid2(n=8):
    xs = np.linspace(0, 1, n)
    pts = np.stack(np.meshgrid(xs, xs, indexing="ij"), -1).reshape(-1, 2)
    return ModelGrid((n, n), (n, n), pts, "darcy")


def test_shapes_in_one_and_two_dimensions():
    m1 = FNO((20,), FNOArchitecture(n_modes=5, hidden_channels=4, n_layers=2), seed=0)
    assert m1(torch.randn(3, 20)).shape == (3, 20)
    m2 = FNO((8, 6), FNOArchitecture(n_modes=[4, 3], hidden_channels=4, n_layers=1), seed=0)
    out = m2(torch.randn(2, 8, 6, dtype=torch.float64))        # inputs cast to float32
    assert out.shape == (2, 8, 6) and out.dtype == torch.float32
    assert next(m2.parameters()).dtype == torch.float32           # the trainers read this
    with pytest.raises(ValueError, match=r"u must have shape \(B, 8, 6\)"):
        m2(torch.randn(2, 6, 8))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="n_modes\\[1\\] = 9 exceeds the grid's 6 points"):
        FNO((8, 6), FNOArchitecture(n_modes=[4, 9]))
    with pytest.raises(ValueError, match="one count per grid dimension"):
        FNO((8, 6), FNOArchitecture(n_modes=[4]))
    with pytest.raises(ValueError, match="float32"):
        FNO((8,), FNOArchitecture(n_modes=2), dtype="float64")
    with pytest.raises(ValueError, match="1 to 3 dimensions"):
        FNO((2, 2, 2, 2), FNOArchitecture(n_modes=1))


def test_architecture_is_validated_and_recorded():
    with pytest.raises(ValueError, match="hidden_channels must be"):
        FNOArchitecture(hidden_channels=0)
    with pytest.raises(ValueError, match=r"domain_padding must be None or a fraction in \[0, 1\)"):
        FNOArchitecture(domain_padding=1.5)
    with pytest.raises(TypeError, match="n_modes must be an int or a list"):
        FNOArchitecture(n_modes="12")
    with pytest.raises(TypeError, match="positional_embedding must be True or False"):
        FNOArchitecture(positional_embedding=1)
    with pytest.raises(TypeError, match="architecture must be an FNOArchitecture"):
        FNO((8,), {"n_modes": 2})
    m = FNO((8, 6), FNOArchitecture(n_modes=4, hidden_channels=4, n_layers=1), seed=0)
    assert m.architecture == FNOArchitecture(n_modes=(4, 4), hidden_channels=4, n_layers=1)
    assert m.config == {"grid_shape": [8, 6], "n_modes": [4, 4], "hidden_channels": 4,
                        "n_layers": 1, "lifting_channel_ratio": 2,
                        "projection_channel_ratio": 2, "domain_padding": None,
                        "positional_embedding": True, "normalize": True}
    # the registry maps a TOML table / checkpoint's flat init arguments onto the architecture
    with pytest.raises(ValueError, match="unknown FNO option 'width'.*hidden_channels"):
        build_model("fno", _grid2(), width=4)


def test_seeded_initialisation_leaves_the_global_state_alone():
    state = torch.random.get_rng_state()
    a = FNO((10,), FNOArchitecture(n_modes=4, hidden_channels=4, n_layers=2), seed=5)
    b = FNO((10,), FNOArchitecture(n_modes=4, hidden_channels=4, n_layers=2), seed=5)
    c = FNO((10,), FNOArchitecture(n_modes=4, hidden_channels=4, n_layers=2), seed=6)
    assert torch.equal(torch.random.get_rng_state(), state)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_training_fits_the_normalisation_and_learns_a_linear_operator():
    """A smoothing operator (circular convolution) learned to a few percent; the statistics
    are those of the training split, one number each."""
    n = 16
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, n, generator=g).cumsum(1) * 0.3 + 2.0
    kernel = torch.tensor([0.25, 0.5, 0.25])
    y = sum(k * torch.roll(x, s, 1) for k, s in zip(kernel, (-1, 0, 1))) * 10.0
    m = FNO((n,), FNOArchitecture(n_modes=8, hidden_channels=8, n_layers=2), seed=0)
    assert m.needs_normalization
    res = train_operator(m, x, y, config=TrainConfig(steps=300, batch_size=16, lr=3e-3,
                                                     eval_every=50, patience=0,
                                                     val_fraction=0.25), seed=0)
    assert not m.needs_normalization
    assert float(m.out_mean) == pytest.approx(float(y.mean()), rel=0.2)
    assert float(m.out_std) > 1.0 and float(m.in_std) > 0.1
    assert res.best_val_loss < 0.05 < res.initial_val_loss


def test_state_dict_is_weights_only_and_the_checkpoint_round_trips(tmp_path):
    grid = _grid2()
    m = build_model("fno", grid, seed=1, n_modes=4, hidden_channels=4, n_layers=2)
    assert "_metadata" not in m.state_dict()                 # neuraloperator's init kwargs
    m.fit_normalization(torch.randn(5, 8, 8) + 1.0, torch.randn(5, 8, 8) * 3.0)
    path = save_model(m, tmp_path / "fno.pt")
    blob = torch.load(path, weights_only=True)
    assert blob["name"] == "fno"
    assert blob["init_args"] == {"n_modes": 4, "hidden_channels": 4, "n_layers": 2}
    loaded = load_saved_model(path)
    assert isinstance(loaded, FNO) and not loaded.training
    u = torch.randn(3, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(u), m.eval()(u))
    assert torch.equal(loaded.out_std, m.out_std)


def test_missing_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "neuralop.models", None)     # import fails
    with pytest.raises(MissingExtraError, match=r"wheretolearn\[fno\]") as info:
        FNO((8,), FNOArchitecture(n_modes=2))
    assert isinstance(info.value, ImportError) and isinstance(info.value, ValueError)


def test_lipschitz_estimate_matches_the_explicit_jacobian():
    """``estimate_lipschitz`` as the AMA calls it on the model (forward-mode JVP, reverse-mode
    VJP, quadrature weights) equals the largest singular value of ``W_out^1/2 J W_in^-1/2``
    with ``J`` the explicit Jacobian at each sample (an FNO with GELU is not linear: each
    sample has its own Jacobian)."""
    n = 6
    grid = _grid2(n)
    m = build_model("fno", grid, seed=2, n_modes=4, hidden_channels=4, n_layers=2)
    m.fit_normalization(torch.randn(8, n, n) * 0.5 + 1.0, torch.randn(8, n, n) * 2.0)
    m.eval()
    xs = torch.randn(3, n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    w_in = torch.rand(n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) + 0.5
    w_out = torch.rand(n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) + 0.5
    fn = lambda u: m(u).double()  # noqa: E731 -- as design.ama._constants wraps the model
    want = []
    for x in xs:
        jac = torch.autograd.functional.jacobian(lambda v: fn(v[None])[0], x)
        jac = jac.reshape(n * n, n * n).double()
        k = w_out.reshape(-1, 1).sqrt() * jac / w_in.reshape(1, -1).sqrt()
        want.append(float(torch.linalg.svdvals(k)[0]))
    est = estimate_lipschitz(fn, xs, input_weights=w_in, output_weights=w_out, generator=0,
                             options=LipschitzOptions(iterations=100, safety=1.0, jvp="forward"))
    # float32 network: the power iteration converges to the top singular value to ~1e-5
    assert est.norms == pytest.approx(want, rel=1e-4)
    assert est.value == pytest.approx(max(want), rel=1e-4)
    with torch.no_grad():
        g0 = fn(torch.zeros(1, n, n, dtype=torch.float64))
    assert g0.shape == (1, n, n) and torch.isfinite(g0).all()
