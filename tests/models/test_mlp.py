"""Tests of the MLP surrogate (SPEC §5)."""

import json

import numpy as np
import pytest
import torch

from wheretolearn.models import MLP


def test_default_architecture_is_melissas_heat_surrogate():
    m = MLP(6, 100)
    linears = [l for l in m.net if isinstance(l, torch.nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(6, 256), (256, 256),
                                                                  (256, 100)]
    assert [type(l).__name__ for l in m.net] == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]
    assert m(torch.zeros(3, 6)).shape == (3, 100)
    assert next(m.parameters()).dtype == torch.float32


def test_forward_matches_hand_computation_in_float64():
    m = MLP(3, 2, hidden=(5, 4), activation="tanh", dtype="float64", seed=0)
    x = torch.randn(7, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    w = [l for l in m.net if isinstance(l, torch.nn.Linear)]
    h = x.numpy()
    for i, l in enumerate(w):
        h = h @ l.weight.detach().numpy().T + l.bias.detach().numpy()
        if i < len(w) - 1:
            h = np.tanh(h)
    np.testing.assert_allclose(m(x).detach().numpy(), h, rtol=1e-12, atol=1e-14)


def test_config_round_trip_rebuilds_the_same_model():
    m = MLP(4, 9, hidden=[8, 8, 8], activation="gelu", seed=3)
    cfg = json.loads(json.dumps(m.config))  # JSON-serialisable
    assert cfg == {"in_features": 4, "out_features": 9, "hidden": [8, 8, 8],
                   "activation": "gelu", "dtype": "float32"}
    clone = MLP.from_config(cfg)
    clone.load_state_dict(m.state_dict())
    x = torch.rand(5, 4)
    torch.testing.assert_close(clone(x), m(x), rtol=0, atol=0)
    cfg["hidden"].append(1)
    assert m.config["hidden"] == [8, 8, 8]  # config is a copy


def test_seed_reproduces_weights_without_touching_global_rng():
    state = torch.random.get_rng_state()
    a, b, c = MLP(2, 2, seed=5), MLP(2, 2, seed=5), MLP(2, 2, seed=6)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a.net[0].weight, b.net[0].weight)
    assert not torch.equal(a.net[0].weight, c.net[0].weight)


def test_no_hidden_layer_is_a_linear_map():
    m = MLP(3, 2, hidden=())
    assert len(m.net) == 1 and isinstance(m.net[0], torch.nn.Linear)


@pytest.mark.parametrize("kwargs, err, match", [
    ({"in_features": 0, "out_features": 2}, ValueError, "in_features"),
    ({"in_features": 2, "out_features": 2, "hidden": (4, 0)}, ValueError, r"hidden\[1\]"),
    ({"in_features": 2, "out_features": 2, "hidden": "256"}, TypeError, "hidden"),
    ({"in_features": 2, "out_features": 2, "activation": "sigmoidish"}, ValueError,
     "activation must be one of"),
    ({"in_features": 2, "out_features": 2, "dtype": "float16"}, ValueError, "dtype"),
])
def test_bad_arguments(kwargs, err, match):
    with pytest.raises(err, match=match):
        MLP(**kwargs)


def test_wrong_input_shape_is_named():
    with pytest.raises(ValueError, match=r"x must have shape \(B, 6\), got \(2, 5\)"):
        MLP(6, 3)(torch.zeros(2, 5))
