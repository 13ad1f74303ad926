"""`byol-agent train --nproc 2` on two GPUs: nccl on cuda:LOCAL_RANK, the ranks in lockstep, a Ctrl-C to the
launcher ending both with one final checkpoint. The same run as tests/test_fleet.py's gloo fixture.
Skipped unless two CUDA devices are visible."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

from tests.conftest import free_tcp_endpoint
from tests.cuda.gpu import DEVICES, needs_cuda
from tests.test_fleet import TINY, Feeders, finish, records, running, steps_saved, training_lines, wait_for
from trainer.checkpoint import list_checkpoints, read_checkpoint

pytestmark = [
    needs_cuda,
    pytest.mark.skipif(DEVICES < 2, reason=f"a 2-rank nccl run needs 2 CUDA devices; this machine has {DEVICES}"),
]


def test_two_ranks_on_nccl_train_in_lockstep_and_stop_with_one_checkpoint(tmp_path: Path) -> None:
    run_dir, log = tmp_path / "run", tmp_path / "train.log"
    endpoints = [free_tcp_endpoint(), free_tcp_endpoint()]
    argv = [
        sys.executable,
        "-m",
        "agent.cli",
        "train",
        "--nproc",
        "2",
        "--run-dir",
        str(run_dir),
        *TINY,
        "train.device=cuda",
        f"wire.endpoints=['{endpoints[0]}', '{endpoints[1]}']",
    ]
    with Feeders(endpoints), running(argv, log) as proc:
        wait_for(proc, log, "the checkpoint of step 10", lambda: 10 in steps_saved(run_dir))
        proc.send_signal(signal.SIGINT)
        code = finish(proc, log)
    text = log.read_text()
    assert code == 0 and "Traceback" not in text, text[-4000:]
    # each rank logs "rank R of 2 (pid P, cuda:R)": one GPU per rank, hence nccl (trainer/distributed.py)
    assert "rank 0 of 2" in text and "cuda:0)" in text and "cuda:1)" in text, text[-4000:]
    lines = training_lines(run_dir)
    assert [line["step"] for line in lines] == list(range(1, len(lines) + 1))
    assert lines[-1]["world_size"] == 2 and min(lines[-1]["frames_in_per_rank"]) > 0
    assert len([r for r in records(run_dir) if r.get("event") == "stop"]) == 1
    for _, path in list_checkpoints(run_dir):
        ckpt = read_checkpoint(path)
        assert len({part["weights_sha256"] for part in ckpt["ranks"]}) == 1, "both ranks hold the same weights"
