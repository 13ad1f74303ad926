"""`byol-agent replay` of a robot log end to end: one MCAP with two image topics is two cameras with
their own ids and names (resuming after the delivered messages: tests/agent/test_robot_logs.py, `start_at`)."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.agent.robot_log_writers import smooth_image, write_mcap_ros2
from tests.conftest import REPO
from tests.test_stream import CLI, TINY
from trainer.checkpoint import list_checkpoints, read_checkpoint

pytestmark = pytest.mark.slow


def test_replay_of_an_mcap_with_two_topics_trains_on_both_cameras_under_their_ids_and_names(tmp_path):
    log, run = tmp_path / "drive.mcap", tmp_path / "run"
    write_mcap_ros2(
        log,
        {
            "/front/image_raw": ("bayer_rggb8", [smooth_image(48, 64, s) for s in range(12)]),
            "/rear/image_raw/compressed": ("jpeg", [smooth_image(40, 40, s + 50) for s in range(12)]),
        },
        strings="/chatter",
    )
    argv = [
        *CLI,
        "replay",
        "--run-dir",
        str(run),
        "--pace",
        "asap",
        str(log),
        *TINY,
        "train.replay_ratio=1",
        "train.checkpoint_every=1000",
        "capture.camera_id_base=3",
    ]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "24 frames in 2 recording(s)" in done.stderr  # one per image topic; the String topic is no camera
    final = read_checkpoint(list_checkpoints(run)[0][1])["counters"]
    assert final["frames_per_camera"] == {3: 12, 4: 12}
    names = [s["name"] for s in json.loads((run / "status-capture.json").read_text())["sources"]]
    assert names == [f"robot log '{log}' topic /front/image_raw", f"robot log '{log}' topic /rear/image_raw/compressed"]
    history = [json.loads(line) for line in (run / "capture.jsonl").read_text().splitlines()]
    assert history[-1]["source_names"] == names


def test_replay_says_on_the_console_which_log_was_damaged_and_which_frames_were_skipped(tmp_path):
    """A log cut short and frames in an unsupported encoding are named where the user looks."""
    import numpy as np

    rng = np.random.default_rng(0)
    cut, mixed, run = tmp_path / "cut.mcap", tmp_path / "mixed.mcap", tmp_path / "run"
    write_mcap_ros2(
        cut,
        {"/cam": ("rgb8", [rng.integers(0, 256, (96, 96, 3), dtype=np.uint8) for _ in range(20)])},
        chunk_size=16 * 1024,
    )
    data = cut.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.6)])
    write_mcap_ros2(mixed, {"/cam": (["rgb8", "32FC1"] * 4, [smooth_image(32, 32, s) for s in range(8)])})
    argv = [
        *CLI,
        "replay",
        "--run-dir",
        str(run),
        "--pace",
        "asap",
        str(cut),
        str(mixed),
        *TINY,
        "train.replay_ratio=1",
        "train.checkpoint_every=1000",
    ]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    status = json.loads((run / "status-capture.json").read_text())["sources"]
    kept = status[0]["frames_read"]
    assert 0 < kept < 20 and status[0]["errors"] == 1 and status[1]["skipped"] == 4
    lines = [line for line in done.stderr.splitlines() if line.startswith("replay: robot log")]
    assert lines == [
        (
            f"replay: robot log '{cut}' topic /cam: damaged after {kept} frames "
            f"(see {run / 'logs' / 'replay-capture.log'})"
        ),
        f"replay: robot log '{mixed}' topic /cam: 4 frames skipped (encoding 32FC1)",
    ], done.stderr[-3000:]
