"""The model registry (issue 26 item 3): built-in names, a user's factory named by import
path, the recorded constructor arguments, checkpoints that refuse to import user code, and
the AMA bound's model terms (Lipschitz estimate by JVP/VJP, ``||G(0)||``) on a registry model
with a known answer."""

import textwrap

import numpy as np
import pytest
import torch

from wheretolearn.design.ama_bound import LipschitzOptions, estimate_lipschitz
from wheretolearn.models import DeepONet
from wheretolearn.models.registry import (MODELS, ModelGrid, UntrustedModelError,
                                          available_models, build_model, load_saved_model,
                                          register_model, save_model)

# y = A x + b on a grid of 6 input and 5 output values: spectral norm of A known by SVD
USER_CODE = textwrap.dedent('''
    import math
    import torch

    FACTORY_CALLS = []


    class Linear(torch.nn.Module):
        def __init__(self, grid, scale):
            super().__init__()
            n_in, n_out = math.prod(grid.input_shape), math.prod(grid.output_shape)
            self.out_shape = grid.output_shape
            self.lin = torch.nn.Linear(n_in, n_out)          # global RNG: seeded by the registry
            with torch.no_grad():
                self.lin.weight.mul_(scale)

        def forward(self, u):
            x = u.reshape(u.shape[0], -1).to(self.lin.weight.dtype)
            return self.lin(x).reshape(u.shape[0], *self.out_shape)


    def make(grid, *, seed, dtype, scale=1.0):
        FACTORY_CALLS.append(seed)
        return Linear(grid, scale)


    not_callable = 3
''')


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "my_models.py"
    path.write_text(USER_CODE)
    return path


def _grid(n_in=6, n_out=5, name="toy"):
    return ModelGrid((n_in,), (n_out,), np.linspace(0, 1, n_out)[:, None], name)


def test_builtin_names_and_presets():
    assert {"deeponet", "fno"} <= set(MODELS)
    g = _grid()
    m = build_model("deeponet", g, seed=0, branch_hidden=[8], trunk_hidden=[8], width=4)
    assert isinstance(m, DeepONet)
    assert m.config["branch"] == [6, 8, 4] and m.config["trunk"] == [1, 8, 4]
    assert m.model_spec["name"] == "deeponet"
    assert m.model_spec["init_args"] == {"branch_hidden": [8], "trunk_hidden": [8], "width": 4}
    # same seed, same weights, as DeepONet(seed=...) builds them itself
    ref = DeepONet([6, 8, 4], [1, 8, 4], g.points, seed=0)
    for a, b in zip(m.parameters(), ref.parameters()):
        assert torch.equal(a, b)
    # the FNO maps a field to a field on one grid: not 6 -> 5 values
    assert available_models(g) == ["deeponet"]
    assert "fno" in available_models(_grid(6, 6))


def test_unknown_and_unfitting_models_are_named():
    with pytest.raises(ValueError, match="unknown model 'nope'.*deeponet, fno"):
        build_model("nope", _grid())
    with pytest.raises(ValueError, match="model 'fno' does not fit problem 'toy'.*input shape "
                                         r"\[6\] differs from the output shape \[5\].*models "
                                         "that fit it: deeponet"):
        build_model("fno", _grid())
    with pytest.raises(TypeError, match="plain data"):
        build_model("deeponet", _grid(), activation=torch.nn.ReLU)
    with pytest.raises(ValueError, match="points must have shape"):
        ModelGrid((3,), (4,), np.zeros((3, 1)))


def test_user_factory_by_file_path(user_file):
    g = _grid()
    spec = f"{user_file}:make"
    state = torch.random.get_rng_state()
    a = build_model(spec, g, seed=7, scale=2.0)
    b = build_model(spec, g, seed=7, scale=2.0)
    c = build_model(spec, g, seed=8, scale=2.0)
    # seeded through the forked global state: reproducible, and the caller's state untouched
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a.lin.weight, b.lin.weight) and not torch.equal(a.lin.weight, c.lin.weight)
    assert a.model_spec["name"] == spec and a.model_spec["init_args"] == {"scale": 2.0}
    assert a(torch.randn(3, 6)).shape == (3, 5)
    # float64 asked for: the registry casts what the factory built
    assert build_model(spec, g, seed=1, dtype="float64").lin.weight.dtype == torch.float64
    with pytest.raises(ValueError, match="model .*not_callable.*not a callable"):
        build_model(f"{user_file}:not_callable", g)
    with pytest.raises(ValueError, match="model .*missing.py:make.*does not exist"):
        build_model(f"{user_file.parent / 'missing.py'}:make", g)


def test_checkpoint_of_a_user_model_needs_trust(user_file, tmp_path):
    g = _grid()
    model = build_model(f"{user_file}:make", g, seed=3, scale=0.5)
    path = save_model(model, tmp_path / "model.pt")
    blob = torch.load(path, weights_only=True)
    assert blob["name"] == f"{user_file}:make" and blob["init_args"] == {"scale": 0.5}
    with pytest.raises(UntrustedModelError, match="names user code"):
        load_saved_model(path)
    loaded = load_saved_model(path, trust=True)
    u = torch.randn(4, 6)
    with torch.no_grad():
        assert torch.equal(loaded(u), model(u))
    # a checkpoint that adds a key of its own is refused by name
    blob["surprise"] = 1
    torch.save(blob, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="surprise"):
        load_saved_model(tmp_path / "bad.pt", trust=True)
    with pytest.raises(ValueError, match="without model_spec"):
        save_model(torch.nn.Linear(2, 2), tmp_path / "x.pt")


def test_register_model_and_refuse_a_second_factory_for_a_name(tmp_path):
    name = "test-scaled-identity"

    @register_model(name, fits=lambda g: None if g.input_shape == g.output_shape else "shapes")
    def factory(grid, *, seed, dtype, factor=3.0):
        return _Scale(factor)

    try:
        g = _grid(4, 4)
        assert name in available_models(g) and name not in available_models(_grid())
        assert torch.equal(build_model(name, g)(torch.ones(2, 4)), torch.full((2, 4), 3.0))
        with pytest.raises(ValueError, match="already registered"):
            register_model(name)(lambda grid, **kw: _Scale(1.0))
        # registered by a test module, not by wheretolearn: its checkpoints are not rebuilt
        path = save_model(build_model(name, g), tmp_path / "m.pt")
        with pytest.raises(ValueError, match="neither registered by wheretolearn"):
            load_saved_model(path, trust=True)
    finally:
        MODELS.pop(name)
    with pytest.raises(ValueError, match="without ':'"):
        register_model("a:b")


class _Scale(torch.nn.Module):
    def __init__(self, factor):
        super().__init__()
        self.factor = torch.nn.Parameter(torch.tensor(float(factor)))

    def forward(self, u):
        return self.factor * u


def test_lipschitz_estimate_of_a_linear_registry_model_is_its_spectral_norm(user_file):
    """The AMA bound's L' (power iteration on J^T J by JVP and VJP, as ``ama._constants``
    calls it) of a linear model is the spectral norm of its matrix in the quadrature norms:
    ``||W_out^1/2 A W_in^-1/2||_2`` (SVD); its ``||G(0)||`` is the norm of the bias."""
    g = _grid()
    model = build_model(f"{user_file}:make", g, seed=11, dtype="float64", scale=3.0)
    a = model.lin.weight.detach()
    w_in = torch.linspace(0.5, 1.5, 6, dtype=torch.float64)
    w_out = torch.linspace(2.0, 1.0, 5, dtype=torch.float64)
    want = float(torch.linalg.svdvals(w_out.sqrt()[:, None] * a / w_in.sqrt()[None, :])[0])
    samples = torch.randn(3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    est = estimate_lipschitz(lambda u: model(u).double(), samples, input_weights=w_in,
                             output_weights=w_out,
                             options=LipschitzOptions(iterations=60, safety=1.0, jvp="forward"))
    assert est.max_norm == pytest.approx(want, rel=1e-8)
    assert est.norms == pytest.approx([want] * 3, rel=1e-8)      # the same Jacobian everywhere
    with torch.no_grad():
        g0 = model(torch.zeros(1, 6, dtype=torch.float64))[0]
    torch.testing.assert_close(g0, model.lin.bias.detach())
