"""agent.core.cadence: the one rule for "is a checkpoint / an export due"."""

from __future__ import annotations

import pytest

from agent.commands._common import exports_in_process
from agent.core.cadence import due, scheduled
from agent.core.config import CONFIG_DIR, load_config


@pytest.mark.parametrize("step, last, expected", [
    (199, 0, False), (200, 0, True), (201, 0, True),
    (299, 150, False), (350, 150, True),  # after a resume or a shutdown export at 150: 200 steps on, not at 400
])
def test_every_steps_means_that_many_steps_since_the_last_one(step: int, last: int, expected: bool) -> None:
    assert due(step, last, 200, 0.0, None) is expected


def test_every_seconds_makes_it_due_early_but_never_without_a_new_step() -> None:
    assert due(12, 0, 200, 61.0, 60.0) and not due(12, 0, 200, 59.0, 60.0)
    assert not due(12, 12, 200, 600.0, 60.0)  # nothing new since the last one
    assert due(5, None, 200, 0.0, 60.0)  # never done: the first is due at once (export --watch's first checkpoint)
    assert due(13, 12, None, 0.0, None)  # no throttle: every new step


def test_every_shipped_config_exports_by_time_too() -> None:
    """Exports counted in steps alone never came in a 300 s run on a loaded 2-core machine."""
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        assert load_config(path).export.every_seconds is not None, path.name


def test_a_job_is_on_when_either_bound_is_set_and_export_in_process_follows_that_rule() -> None:
    assert not scheduled(None, None) and scheduled(500, None) and scheduled(None, 60.0) and scheduled(500, 60.0)
    for words, on in ((["export.every_steps=null", "export.every_seconds=null"], False),
                      (["export.every_steps=null", "export.every_seconds=60"], True),
                      (["export.every_steps=200", "export.every_seconds=null"], True)):
        assert exports_in_process(load_config(None, words)) is on, words
