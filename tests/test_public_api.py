"""The public API is listed in one place (``wheretolearn.__all__``) and importable lazily."""

from __future__ import annotations

import subprocess
import sys

import wheretolearn


def test_every_public_name_resolves_to_the_object_of_its_module():
    import importlib

    for name in wheretolearn.__all__:
        value = getattr(wheretolearn, name)
        if name != "__version__":
            module = importlib.import_module(wheretolearn._PUBLIC[name])
            assert value is getattr(module, name), name
    assert set(dir(wheretolearn)) >= set(wheretolearn.__all__)


def test_unknown_name_is_an_attribute_error_naming_it():
    try:
        wheretolearn.no_such_thing  # noqa: B018
    except AttributeError as exc:
        assert "no_such_thing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_import_stays_light():
    code = ("import sys, wheretolearn; "
            "print(sorted(m for m in ('torch', 'dask', 'scipy', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
