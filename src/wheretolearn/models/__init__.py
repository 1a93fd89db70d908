"""wheretolearn.models (see the package docstring of :mod:`wheretolearn`)."""

from .krr import KernelRidge, gaussian_kernel, kernel_matvec
from .mlp import MLP

__all__: list[str] = [
    "KernelRidge",
    "MLP",
    "gaussian_kernel",
    "kernel_matvec",
]
