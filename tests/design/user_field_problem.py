"""A user's field-to-field solver for AMA tests: ``y = A tanh(u)`` on a 1-D grid, where
``A = (I - c D2)^-1`` is a fixed smoothing (a resolvent of the discrete Laplacian)."""

import numpy as np
import torch

from wheretolearn.problems import Problem


class Smoother(Problem):
    name = "smoother"

    def __init__(self, n=12, c=0.01, differentiable=True):
        self.n, self.c = int(n), float(c)
        self.differentiable = bool(differentiable)
        h = 1.0 / (self.n - 1)
        d2 = (np.diag(-2.0 * np.ones(self.n)) + np.diag(np.ones(self.n - 1), 1)
              + np.diag(np.ones(self.n - 1), -1)) / h ** 2
        self.matrix = np.linalg.inv(np.eye(self.n) - self.c * d2)

    @property
    def input_shape(self):
        return (self.n,)

    @property
    def output_shape(self):
        return (self.n,)

    def options(self):
        return {"n": self.n, "c": self.c, "differentiable": self.differentiable}

    def _evaluate(self, u):
        if self.differentiable:
            a = torch.as_tensor(self.matrix, dtype=u.dtype)
            return torch.tanh(u) @ a.T
        y = np.tanh(u.detach().numpy()) @ self.matrix.T      # a black box: no gradient
        return torch.as_tensor(y, dtype=u.dtype)


class VectorMap(Smoother):
    @property
    def input_shape(self):
        return (3,)


def make_smoother(n=12, c=0.01, differentiable=True):
    return Smoother(n=n, c=c, differentiable=differentiable)


def make_vector_map():
    return VectorMap()


def make_setup():
    """A factory that returns a full AMASetup (here: the built-in Darcy one, coarse)."""
    from wheretolearn.design import ama_setup

    setup = ama_setup("darcy", n=6)
    setup.name = "my-darcy"
    return setup


def make_nothing():
    return 42
