"""Frames received by a continual run: this session's ingest added to the counters it resumed with, and,
in a multi-rank run, the whole fleet's figures from each turn's agreement (trainer/lockstep.py).

The ingest thread counts what it received since this process started; the run's counters
(`RunState.counters`, saved in every checkpoint) are what earlier processes counted plus that.
Rank 0 of a multi-rank run reports the run, not itself: the frames every rank received as of the
last turn (per camera as of the last gather, at each metrics record and checkpoint) and per-rank
fields for the metrics record.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any, Callable, Optional

from trainer.buffer import ReplayBuffer
from trainer.distributed import Ranks
from trainer.ingest import FrameInbox, Ingestor
from trainer.lockstep import RankCounts, RankFacts, Turn, agree
from trainer.run_state import RECEIVED, Counters, RunState


class ReceivedFrames:
    """The run's frame counters kept in step with the ingest thread and the other ranks.

    `step`: the learner's step now; `replay_ratio`: `train.replay_ratio` (updates per frame received).
    """

    def __init__(
        self, state: RunState, buffer: ReplayBuffer, ranks: Ranks, step: Callable[[], int], replay_ratio: float
    ) -> None:
        self._state, self._buffer, self._ranks, self._step = state, buffer, ranks, step
        self._replay_ratio = replay_ratio
        self._prior = Counters()
        self._ingest: Optional[Ingestor] = None
        self.turn: Optional[Turn] = None  # the last agreed turn

    def open_ingest(self, inbox: FrameInbox, lossless: bool = False) -> Ingestor:
        """This session's ingest thread (not started) from `inbox` into the buffer; what the run had counted
        before it is kept apart from what it counts. `lossless`: hold ingestion back (`may_take`)."""
        self._prior = copy.deepcopy(self._state.counters)
        self._ingest = Ingestor(inbox, self._buffer, self.may_take if lossless else None)
        return self._ingest

    def may_take(self, frames_in_now: int) -> bool:
        """Lossless ingest: take a frame while filling, or once training has used all but one frame's updates."""
        if len(self._buffer) < self._buffer.min_fill:
            return True
        return self._step() >= self._replay_ratio * (self._prior.frames_in + frames_in_now - 1)

    def sync(self) -> None:
        """The run's counters := the resumed ones + what this session's ingest thread has counted."""
        c, p, ing = self._state.counters, self._prior, self._ingest
        if ing is None:
            return
        c.frames_in = p.frames_in + ing.frames_in
        c.frames_malformed = p.frames_malformed + ing.frames_malformed
        c.frames_rejected = p.frames_rejected + ing.frames_rejected
        c.connections_refused = p.connections_refused + ing.connections_refused
        received = dict(ing.per_camera)  # a copy: the ingest thread adds cameras
        c.frames_per_camera = {
            cam: p.frames_per_camera.get(cam, 0) + received.get(cam, 0)
            for cam in set(p.frames_per_camera) | set(received)
        }

    def agree(self, stop: bool, drained: bool) -> Turn:
        """This turn's decisions, from every rank's facts (its own alone in a single process).

        A failed ingest thread votes to stop, so that every rank leaves the loop together; its error
        is raised after the final checkpoint (`ContinualTrainer.run`)."""
        stored = len(self._buffer)
        c = self._state.counters
        facts = RankFacts(
            stop=stop or (self._ingest is not None and self._ingest.error is not None),
            ready=stored >= self._buffer.min_fill or (drained and stored >= 2),
            drained=drained,
            checkpoint_clear=self._state.retry_passed(),
            counts=RankCounts(c.frames_in, c.frames_malformed, c.frames_rejected, c.connections_refused, stored),
        )
        turn = self.turn = agree(self._ranks, facts)
        if not self._ranks.solo:
            totals: dict[str, Any] = {name: turn.total(name) for name in RECEIVED}
            self._state.fleet = replace(self._state.fleet, **totals)
        return turn

    def reporting(self) -> dict[str, Any]:
        """RunMonitor's options that make rank 0 of a multi-rank run report the whole run, not itself."""
        if self._ranks.solo:
            return {}
        return {"counters": self._reported_counters, "extra": self._per_rank_fields}

    def _reported_counters(self) -> Counters:
        fleet = self._state.fleet
        received = {name: getattr(fleet, name) for name in RECEIVED}
        return replace(self._state.counters, **received, frames_per_camera=dict(fleet.frames_per_camera))

    def _per_rank_fields(self) -> dict[str, Any]:
        turn = self.turn
        if turn is None:
            return {"world_size": self._ranks.world_size}
        return {
            "world_size": turn.world_size,
            "frames_in_per_rank": [counts.frames_in for counts in turn.ranks],
            "buffer_fill_per_rank": [counts.stored / self._buffer.capacity for counts in turn.ranks],
        }
