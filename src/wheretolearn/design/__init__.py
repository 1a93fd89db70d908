"""wheretolearn.design (see the package docstring of :mod:`wheretolearn`)."""

from .metatest import MetaTest, make_metatest

__all__: list[str] = [
    "MetaTest",
    "make_metatest",
]
