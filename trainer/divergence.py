"""After a non-finite loss: the step is skipped and counted; after `train.nan_tolerance` in a row the last
good state (`TrainStep.mark_good`, taken at each checkpoint) is restored; when restores keep coming
without a checkpoint between them the run diverges and stops with a one-line error.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from agent.core.config import TrainConfig
from agent.core.errors import ByolAgentError
from trainer.run_state import RunState
from trainer.train_step import TrainStep

log = logging.getLogger(__name__)

MAX_RESTORES_WITHOUT_PROGRESS = 3  # restores with no checkpoint between them: the run diverges, stop


class TrainingDiverged(ByolAgentError):
    """The loss stays non-finite even from the last good state."""


class DivergenceGuard:
    """Counts non-finite steps in `state.counters` (nan_skips, restores), restores `train_step`'s last good
    state and reports each restore to `on_event` as a {"event": "restore"} record."""

    def __init__(
        self, train_step: TrainStep, train_cfg: TrainConfig, state: RunState, on_event: Callable[[dict[str, Any]], None]
    ) -> None:
        self._train_step, self._cfg, self._state, self._on_event = train_step, train_cfg, state, on_event
        self.restores_in_a_row = 0

    def progressed(self) -> None:
        """A checkpoint was written: it is the new good state, and the restores in a row start again."""
        self._train_step.mark_good()
        self.restores_in_a_row = 0

    def nonfinite(self) -> None:
        """The last step's loss was not finite; TrainingDiverged after MAX_RESTORES_WITHOUT_PROGRESS restores."""
        counters = self._state.counters
        counters.nan_skips += 1
        streak = self._train_step.nan_streak
        log.warning("non-finite loss at step %d: step skipped (%d in a row)", self._train_step.step, streak)
        if streak < self._cfg.nan_tolerance:
            return
        bad_step = self._train_step.step
        self._train_step.restore_good()
        counters.restores += 1
        self.restores_in_a_row += 1
        step = self._train_step.step
        log.warning(
            "%d non-finite losses in a row: restored the last good state (step %d)", self._cfg.nan_tolerance, step
        )
        self._on_event(
            {
                "event": "restore",
                "from_step": bad_step,
                "step": step,
                "restores": counters.restores,
                "nan_skips": counters.nan_skips,
            }
        )
        if self.restores_in_a_row >= MAX_RESTORES_WITHOUT_PROGRESS:
            raise TrainingDiverged(
                f"loss stays non-finite after {self.restores_in_a_row} restores of the step-{step} state; "
                f"lower train.lr (now {self._cfg.lr:g}) and restart"
            )
