"""docs/api.md is generated from the packages' ``__all__`` and must be up to date."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "api_docs.py"


def _module():
    spec = importlib.util.spec_from_file_location("api_docs", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_api_page_is_generated_from_the_code():
    api = _module()
    assert api.PAGE.read_text() == api.render(), (
        "docs/api.md is stale: run `python scripts/api_docs.py`")


def test_api_page_lists_every_public_name():
    import wheretolearn

    text = _module().PAGE.read_text()
    for name in wheretolearn.__all__:
        if not name.startswith("__"):
            assert f"`{name}" in text, name
