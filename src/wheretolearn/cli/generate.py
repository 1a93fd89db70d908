"""CLI commands for generate (registered on :data:`wheretolearn.cli.app`)."""

from __future__ import annotations

from . import app  # noqa: F401
