"""wheretolearn.design (see the package docstring of :mod:`wheretolearn`)."""

from .bilevel import AdjointGradient, BilevelResult, adjoint_gradient, bilevel_descent
from .metatest import MetaTest, make_metatest

__all__: list[str] = [
    "AdjointGradient",
    "BilevelResult",
    "MetaTest",
    "adjoint_gradient",
    "bilevel_descent",
    "make_metatest",
]
