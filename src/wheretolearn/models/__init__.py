"""wheretolearn.models (see the package docstring of :mod:`wheretolearn`)."""

from .deeponet import DeepONet
from .fno import FNO, FNOArchitecture
from .krr import KERNELS, KernelRidge, gaussian_kernel, kernel_matvec, laplace_kernel
from .mlp import MLP
from .operator_training import TrainConfig, TrainResult, relative_l2_loss, train_operator
from .registry import (MODELS, ModelGrid, available_models, build_model, load_saved_model,
                       register_model, save_model)

__all__: list[str] = [
    "DeepONet",
    "FNO",
    "FNOArchitecture",
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
    "MODELS",
    "ModelGrid",
    "available_models",
    "build_model",
    "load_saved_model",
    "register_model",
    "save_model",
]
