"""One progress abstraction (wheretolearn._progress) for every study, generate and the CLI."""

from __future__ import annotations

import io

from rich.console import Console

from wheretolearn._progress import ProgressBars


def test_enabled_bars_show_label_count_and_status():
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=120)
    with ProgressBars(console=console) as bars:
        task = bars.task("AMA repeat 1/2", 4)
        task.advance(info="J 0.5")
        task.advance(2, info="J 0.25")
        assert task.completed == 3
        other = bars.task("baselines", None)
        other.update(description="baselines (3)", info="mixture")
    text = out.getvalue()
    assert "AMA repeat 1/2" in text and "3/4" in text and "J 0.25" in text
    assert "baselines (3)" in text and "mixture" in text


def test_disabled_bars_do_nothing_and_draw_nothing(capsys):
    with ProgressBars(enabled=False) as bars:
        task = bars.task("x", 3)
        task.advance(info="a")
        task.update(completed=2, total=5, description="y", info="b")
        assert task.completed is None
    assert capsys.readouterr() == ("", "")
