"""wheretolearn.design (see the package docstring of :mod:`wheretolearn`)."""

__all__: list[str] = []
