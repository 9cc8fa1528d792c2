"""Progress bars: on for a person at a terminal, silent otherwise, and either way harmless."""

from __future__ import annotations

import pytest

from service.progress import Bars, progress_for, wanted


def test_no_bars_off_a_terminal_or_when_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stderr.isatty", lambda: False)
    assert not wanted(quiet=False)
    assert progress_for(quiet=False) is None
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    assert wanted(quiet=False)
    assert not wanted(quiet=True)


@pytest.mark.parametrize("enabled", [True, False])
def test_the_sweep_and_the_ingest_can_drive_the_same_bars(enabled: bool) -> None:
    with Bars(enabled) as bars:  # the sweep: task / done
        advance = bars.task("2026-10-01: sweep query", 3)
        advance(1)
        advance(2)
        bars.task("2026-10-01: outcomes.parquet", None)  # no size: a spinner
        bars.done()
        bars.done()  # twice is harmless
    ingest = Bars(enabled, started=True)  # the ingest: start / advance / finish
    ingest.start("reading", 100)
    ingest.advance(60)
    ingest.start("resolving")
    ingest.finish()
