"""wheretolearn.models (see the package docstring of :mod:`wheretolearn`)."""

from .krr import KernelRidge, gaussian_kernel, kernel_matvec

__all__: list[str] = [
    "KernelRidge",
    "gaussian_kernel",
    "kernel_matvec",
]
