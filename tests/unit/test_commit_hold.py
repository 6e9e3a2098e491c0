"""CommitHold (meshd/commit_hold.py) driven with a manual clock."""

from __future__ import annotations

import pytest

from meshd.commit_hold import CommitHold


def _cycle(hold: CommitHold, callers: int, now: float) -> None:
    """``callers`` sends wait at once, then their pass commits and releases them."""
    for _ in range(callers):
        hold.send_waiting(now)
    hold.committing()
    for _ in range(callers):
        hold.send_done()


def test_a_lone_caller_is_never_held() -> None:
    hold = CommitHold()
    for i in range(20):
        t = i * 0.01
        hold.send_waiting(t)
        assert hold.deadline(1, t) is None
        hold.committing()
        hold.send_done()
    assert hold.expect == 1


def test_the_previous_cycles_peak_is_held_for() -> None:
    hold = CommitHold(hold_s=0.006, gap_s=0.002)
    _cycle(hold, 16, 0.0)
    _cycle(hold, 16, 0.010)  # the first cycle's peak becomes the expectation
    assert hold.expect == 16
    hold.send_waiting(0.020)  # the first one back
    assert hold.deadline(1, 0.020) == pytest.approx(0.022)  # a gap after it
    hold.send_waiting(0.021)
    assert hold.deadline(2, 0.021) == pytest.approx(0.023)  # each arrival extends it...
    for k in range(3, 16):
        hold.send_waiting(0.021 + k * 0.001)
    assert hold.deadline(15, 0.0259) == pytest.approx(0.026)  # ...never past hold_s from the start
    assert hold.deadline(15, 0.0261) is None  # the 16th never came: commit now
    assert hold.deadline(16, 0.0201) is None  # all back: no hold at all


def test_a_caller_not_coming_back_costs_one_gap() -> None:
    hold = CommitHold(hold_s=0.006, gap_s=0.002)
    _cycle(hold, 8, 0.0)
    _cycle(hold, 8, 0.010)
    hold.send_waiting(0.020)
    assert hold.deadline(1, 0.0215) == pytest.approx(0.022)
    assert hold.deadline(1, 0.0221) is None  # 2 ms, not 6


def test_a_burst_that_ends_stops_holding_after_one_cycle() -> None:
    hold = CommitHold()
    _cycle(hold, 16, 0.0)
    _cycle(hold, 16, 0.010)
    hold.send_waiting(1.0)  # alone, much later: held one gap at most
    assert hold.deadline(1, 1.0) == pytest.approx(1.0 + hold.gap_s)
    hold.committing()
    hold.send_done()
    hold.send_waiting(2.0)
    assert hold.deadline(1, 2.0) is None  # its cycle's peak was 1
