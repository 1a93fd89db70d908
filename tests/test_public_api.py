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


#: Most parameters a public function or constructor may take; longer lists go into option
#: objects (dataclasses / pydantic models), which count as one parameter each.
MAX_PARAMETERS = 8


def _is_option_object(obj) -> bool:
    """Dataclasses, pydantic models and named tuples *are* the option and result objects."""
    import dataclasses

    try:
        from pydantic import BaseModel
    except ImportError:           # pragma: no cover -- pydantic is a core dependency
        BaseModel = ()
    return (dataclasses.is_dataclass(obj) or (isinstance(obj, type) and issubclass(obj, BaseModel))
            or (isinstance(obj, type) and issubclass(obj, tuple) and hasattr(obj, "_fields")))


def _public_callables():
    """``(qualified name, callable)`` for every name in a public module's ``__all__``: the
    functions, the classes' constructors and their public methods."""
    import importlib
    import inspect
    import pkgutil

    modules = ["wheretolearn"] + [m.name for m in pkgutil.walk_packages(
        wheretolearn.__path__, "wheretolearn.") if not any(
        p.startswith("_") for p in m.name.split("."))]
    seen = set()
    for modname in modules:
        module = importlib.import_module(modname)
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            if not callable(obj) or _is_option_object(obj) or id(obj) in seen:
                continue
            seen.add(id(obj))
            if not inspect.isclass(obj):
                yield f"{obj.__module__}.{name}", obj
                continue
            yield f"{obj.__module__}.{name}", obj.__init__
            for attr, member in vars(obj).items():
                if not attr.startswith("_") and inspect.isfunction(member):
                    yield f"{obj.__module__}.{name}.{attr}", member


def test_public_functions_take_at_most_eight_parameters():
    """Issue 27: every public function has at most 8 parameters outside option objects."""
    import inspect

    too_long = []
    for qualname, fn in _public_callables():
        try:
            params = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):
            continue
        named = [p for p in params if p.name not in ("self", "cls")
                 and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if len(named) > MAX_PARAMETERS:
            too_long.append(f"{qualname} ({len(named)})")
    assert not too_long, "more than 8 parameters:\n" + "\n".join(sorted(too_long))
