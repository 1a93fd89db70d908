"""wheretolearn.report (see the package docstring of :mod:`wheretolearn`)."""

from .metrics import (mean_ci95, per_sample_relative_errors, relative_ood_error,
                      relative_ood_error_squared, tail_summary)
from .runfolder import RunFolder, StudyResult

__all__: list[str] = [
    "mean_ci95",
    "per_sample_relative_errors",
    "relative_ood_error",
    "relative_ood_error_squared",
    "tail_summary",
    "RunFolder",
    "StudyResult",
]
