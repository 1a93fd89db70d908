"""wheretolearn.models (see the package docstring of :mod:`wheretolearn`)."""

from .deeponet import DeepONet
from .krr import KERNELS, KernelRidge, gaussian_kernel, kernel_matvec, laplace_kernel
from .mlp import MLP
from .operator_training import TrainConfig, TrainResult, relative_l2_loss, train_operator

__all__: list[str] = [
    "DeepONet",
    "KernelRidge",
    "MLP",
    "KERNELS",
    "gaussian_kernel",
    "laplace_kernel",
    "kernel_matvec",
    "TrainConfig",
    "TrainResult",
    "relative_l2_loss",
    "train_operator",
]
