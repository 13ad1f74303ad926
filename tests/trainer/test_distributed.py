"""Rank detection and the world-size-1 contract of trainer/distributed.py and trainer/lockstep.py.

The multi-rank behaviour itself runs in real torchrun processes: tests/trainer/test_ddp.py (DDP, the
loss mean and the shared NaN skip) and tests/test_fleet.py (the continual trainer on 2 ranks).
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from agent.core.errors import ConfigError
from trainer.distributed import SOLO, RankInfo, is_collective_failure, rank_from_env
from trainer.lockstep import RankCounts, RankFacts, agree


def test_outside_torchrun_a_process_is_rank_0_of_1() -> None:
    assert rank_from_env({}) == RankInfo(rank=0, world_size=1, local_rank=0)
    assert rank_from_env({"PATH": "/bin", "RANK": ""}) == RankInfo()


def test_torchrun_variables_give_the_rank() -> None:
    assert rank_from_env({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}) == RankInfo(5, 8, 1)
    assert rank_from_env({"RANK": "1", "WORLD_SIZE": "2"}) == RankInfo(1, 2, 1)  # no LOCAL_RANK: one machine


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"RANK": "one", "WORLD_SIZE": "2"}, "RANK='one' is not an integer"),
        ({"RANK": "0"}, "WORLD_SIZE is not set while RANK is"),
        ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK=2, WORLD_SIZE=2"),
        ({"RANK": "0", "WORLD_SIZE": "0"}, "do not describe a rank"),
        ({"LOCAL_RANK": "-1", "RANK": "0", "WORLD_SIZE": "1"}, "LOCAL_RANK=-1"),
    ],
)
def test_garbled_torchrun_variables_are_one_line_errors(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle) as caught:
        rank_from_env(env)
    assert "\n" not in str(caught.value)


def test_a_single_process_runs_no_collective() -> None:
    """World size 1 answers every collective locally: nothing may touch torch.distributed."""
    assert not dist.is_initialized()
    assert SOLO.solo and SOLO.sum([1, 2.5]) == [1.0, 2.5]
    assert SOLO.mean(torch.tensor(3.25)) == 3.25
    assert SOLO.gather({"a": 1}) == [{"a": 1}]
    assert SOLO.broadcast("x") == "x" and SOLO.scatter(["mine"]) == "mine"
    module = torch.nn.Linear(2, 2)
    assert SOLO.wrap(module) is module
    with SOLO.guard("a step"):
        pass
    SOLO.close()
    assert not dist.is_initialized()


def test_one_rank_agrees_with_itself_and_gates_like_a_single_trainer() -> None:
    facts = RankFacts(
        stop=False, ready=True, drained=False, checkpoint_clear=True, counts=RankCounts(frames_in=10, stored=10)
    )
    turn = agree(SOLO, facts)
    assert (turn.stop, turn.ready, turn.drained, turn.checkpoint_clear, turn.world_size) == (
        False,
        True,
        False,
        True,
        1,
    )
    assert turn.frames_in == 10
    ratio = 8.0  # step < replay_ratio * frames_in, the rule of a single process
    assert turn.may_step(79, ratio) and not turn.may_step(80, ratio)
    assert not agree(SOLO, RankFacts(False, False, False, True, RankCounts(frames_in=10))).may_step(0, ratio)


def test_only_failed_collectives_count_as_a_lost_peer() -> None:
    gloo = RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error: Connection reset by peer")
    assert is_collective_failure(gloo) and is_collective_failure(dist.DistNetworkError("store down"))
    assert not is_collective_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x8 and 9x2)"))


def test_a_waiting_turn_names_the_shards_below_min_fill() -> None:
    from trainer.lockstep import RankCounts, Turn

    def turn(*stored: int) -> Turn:
        return Turn(False, False, False, True, tuple(RankCounts(frames_in=n, stored=n) for n in stored))

    assert turn(48, 0).waiting(16) == "waiting for frames (rank 1: 0/16 stored)"
    assert turn(3, 40, 5).waiting(16) == "waiting for frames (rank 0: 3/16, rank 2: 5/16 stored)"
    assert turn(5).waiting(16) == "waiting for frames"  # one process: RunMonitor adds its own fill
    assert turn(48, 20).waiting(16) == "waiting for frames"  # every shard is ready: the replay ratio holds it back
