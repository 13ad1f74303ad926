"""The one agreement per loop turn that keeps the ranks of a multi-rank run in lockstep.

At the top of every turn of the continual loop each rank states its `RankFacts`; `agree` sums them
over the ranks in one small float64 all_reduce and returns the same `Turn` on every rank, which then
decides everything collective identically everywhere:

- any rank's stop (SIGINT/SIGTERM, a failed ingest thread) stops all of them;
- training waits until every rank's shard is `ready` (past `buffer.min_fill`, or holding two frames
  once its input has drained) and each step consumes one batch per rank, so the replay-ratio gate
  is `step * world_size < replay_ratio * frames_in of all ranks` (today's rule at world size 1);
- the input counts as drained only when every rank's has drained;
- a due checkpoint is taken only when rank 0, which alone writes it, is out of a full-disk back-off.

Per-rank counts (frames received, malformed, rejected, refused connections, frames stored) travel in
their own slots of the same vector, so rank 0 reports the whole fleet's figures without another
collective. At world size 1 the turn is the process's own facts and nothing is communicated.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from trainer.distributed import Ranks

FLAGS = 4  # stop, ready, drained, checkpoint_clear


@dataclass(frozen=True)
class RankCounts:
    """One rank's running totals (frames counted since the run's first start, across resumes)."""

    frames_in: int = 0
    frames_malformed: int = 0
    frames_rejected: int = 0
    connections_refused: int = 0
    stored: int = 0  # frames in its replay buffer now


COUNT_NAMES = tuple(f.name for f in fields(RankCounts))


@dataclass(frozen=True)
class RankFacts:
    """What one rank knows at the top of a loop turn."""

    stop: bool  # a stop signal arrived, or its ingest thread failed
    ready: bool  # its shard may be trained on
    drained: bool  # its input has ended and nothing has arrived for a while
    checkpoint_clear: bool  # not in a full-disk back-off (only rank 0's counts: it writes the checkpoints)
    counts: RankCounts


@dataclass(frozen=True)
class Turn:
    """What every rank agreed on for this turn; see the module docstring."""

    stop: bool  # any rank
    ready: bool  # every rank
    drained: bool  # every rank
    checkpoint_clear: bool  # rank 0's
    ranks: tuple[RankCounts, ...]  # in rank order

    @property
    def world_size(self) -> int:
        return len(self.ranks)

    def total(self, name: str) -> int:
        """The sum over the ranks of one `RankCounts` field."""
        return sum(getattr(counts, name) for counts in self.ranks)

    @property
    def frames_in(self) -> int:
        return self.total("frames_in")

    def waiting(self, min_fill: int) -> str:
        """The status of a turn that may not step: "waiting for frames", naming the shards still below
        `min_fill` in a multi-rank run ("waiting for frames (rank 1: 0/16 stored)"), so that a rank no
        capture feeds is visible rather than hidden behind rank 0's own fill."""
        short = [f"rank {r}: {c.stored}/{min_fill}" for r, c in enumerate(self.ranks) if c.stored < min_fill]
        if self.world_size == 1 or not short:
            return "waiting for frames"
        return f"waiting for frames ({', '.join(short)} stored)"

    def may_step(self, step: int, replay_ratio: float) -> bool:
        """Every shard is ready and one more step (a batch per rank) stays within the replay ratio."""
        return self.ready and step * self.world_size < replay_ratio * self.frames_in


def agree(ranks: Ranks, facts: RankFacts) -> Turn:
    """The turn all ranks act on: one all_reduce in a multi-rank run, none at world size 1."""
    if ranks.solo:
        return Turn(facts.stop, facts.ready, facts.drained, facts.checkpoint_clear, (facts.counts,))
    world, width = ranks.world_size, len(COUNT_NAMES)
    vector = [0.0] * (FLAGS + width * world)
    vector[:FLAGS] = [
        float(facts.stop),
        float(facts.ready),
        float(facts.drained),
        float(facts.checkpoint_clear and ranks.rank == 0),
    ]
    start = FLAGS + width * ranks.rank
    vector[start : start + width] = [float(getattr(facts.counts, name)) for name in COUNT_NAMES]
    summed = ranks.sum(vector)
    per_rank = tuple(
        RankCounts(*(int(round(value)) for value in summed[FLAGS + width * r : FLAGS + width * (r + 1)]))
        for r in range(world)
    )
    return Turn(
        stop=summed[0] > 0,
        ready=round(summed[1]) == world,
        drained=round(summed[2]) == world,
        checkpoint_clear=summed[3] > 0,
        ranks=per_rank,
    )
