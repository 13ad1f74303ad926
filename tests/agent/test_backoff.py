"""The one back-off formula and the one 'log the first and every Nth' rule."""

from __future__ import annotations

import pytest

from agent.core.backoff import backoff_s, worth_logging


def test_backoff_doubles_from_the_first_delay_up_to_the_cap() -> None:
    assert [backoff_s(n, first_s=1.0, max_s=30.0) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    assert [backoff_s(n, first_s=0.5, max_s=5.0) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 4.0, 5.0]
    assert backoff_s(10_000, first_s=2.0, max_s=60.0) == 60.0  # no overflow for a fault that lasts all week
    with pytest.raises(ValueError):
        backoff_s(0, first_s=1.0, max_s=2.0)


def test_the_first_and_every_nth_occurrence_is_logged() -> None:
    assert [n for n in range(0, 301) if worth_logging(n)] == [1, 100, 200, 300]
    assert [n for n in range(0, 3001) if worth_logging(n, every=1000)] == [1, 1000, 2000, 3000]
