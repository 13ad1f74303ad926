"""BYOL under DDP: two real processes (torchrun, gloo on CPU) agree on the online net and the EMA target."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("ddp_worker.py")


def test_two_ranks_keep_identical_online_and_target_weights(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(WORKER),
        str(tmp_path),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    assert not torch.equal(ranks[0]["fc"], ranks[1]["fc"]), (
        "ranks must start from different seeds for this test to mean anything"
    )
    trained = [
        name for name in ranks[0]["online"] if not name.startswith("backbone.net.fc.")
    ]  # fc: after the hidden layer
    assert len(trained) == len(ranks[0]["online"]) - 2
    for side in ("online", "target"):
        differ = [name for name in trained if not torch.equal(ranks[0][side][name], ranks[1][side][name])]
        assert not differ, f"{side} weights differ across ranks: {differ}"
    assert any(not torch.equal(ranks[0]["online"][n], ranks[0]["target"][n]) for n in trained), (
        "the EMA lags the online net"
    )
    for rank in ranks:
        assert rank["step"] == 3 and rank["synced_heads"]
        assert all(torch.isfinite(torch.tensor(rank["losses"])))
        assert rank["synced_bn_error"] < 1e-4
    assert ranks[0]["losses"] != ranks[1]["losses"], "each rank trains on its own images"

    # The continual loop's TrainStep: one mean loss for all ranks, and one rank's NaN skips the step everywhere.
    nan = [rank["nan"] for rank in ranks]
    assert nan[0]["first"] == nan[1]["first"] and math.isfinite(nan[0]["first"]), "the reported loss is the ranks' mean"
    for rank in nan:
        assert rank["second"] is None and rank["streak"] == 1 and rank["step"] == 1, rank
    assert nan[0]["weights_finite"] and not nan[1]["weights_finite"]  # rank 0 did not step on rank 1's NaN
