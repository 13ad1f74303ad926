"""agent.core.cadence: the one rule for "is a checkpoint / an export due"."""

from __future__ import annotations

import pytest

from agent.commands._common import exports_in_process
from agent.core.cadence import due, scheduled
from agent.core.config import CONFIG_DIR, load_config


@pytest.mark.parametrize(
    "step, last, expected",
    [
        (199, 0, False),
        (200, 0, True),
        (201, 0, True),
        (299, 150, False),
        (350, 150, True),  # after a resume or a shutdown export at 150: 200 steps on, not at 400
    ],
)
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
    for words, on in (
        (["export.every_steps=null", "export.every_seconds=null"], False),
        (["export.every_steps=null", "export.every_seconds=60"], True),
        (["export.every_steps=200", "export.every_seconds=null"], True),
    ):
        assert exports_in_process(load_config(None, words)) is on, words


def test_under_run_the_trainer_checkpoints_at_least_as_often_as_the_exporter_is_to_publish(tmp_path) -> None:
    """`export --watch` publishes from checkpoints, so under `run` export.every_steps / every_seconds mean what
    they mean in `train` only when the trainer checkpoints at least that often."""
    from agent.commands.run import child_specs

    def trainer_words(*words: str) -> list[str]:
        cfg = load_config(None, list(words))
        specs = child_specs(cfg, tmp_path, tmp_path / "config.yaml")
        return next(spec for spec in specs if spec.name == "trainer").argv

    words = trainer_words("train.checkpoint_every=200", "export.every_steps=50", "export.every_seconds=30")
    assert "train.checkpoint_every=50" in words and "train.checkpoint_every_seconds=30" in words
    assert "export.every_steps=null" in words  # the exporter process publishes, not the trainer
    words = trainer_words("train.checkpoint_every=100", "export.every_steps=500", "export.every_seconds=null")
    assert not any(w.startswith("train.checkpoint_every") for w in words)
