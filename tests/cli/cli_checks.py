"""Shared checks of the CLI tests."""

from __future__ import annotations


def refused(res, *needles: str) -> str:
    """Assert a ``CliRunner`` result is one ``error:`` line, exit 2, no traceback, holding
    every needle; return the line."""
    err = res.stderr.strip()
    assert res.exit_code == 2, res.output
    assert err.startswith("error: ") and "\n" not in err, err
    assert "Traceback" not in res.output
    for needle in needles:
        assert needle in err, err
    return err
