"""`byol-agent replay` of a robot log end to end: one MCAP with two image topics is two cameras with
their own ids and names (resuming after the delivered messages: tests/agent/test_robot_logs.py, `start_at`)."""

from __future__ import annotations

import json
import subprocess

from tests.agent.robot_log_writers import smooth_image, write_mcap_ros2
from tests.conftest import REPO
from tests.test_stream import CLI, TINY
from trainer.checkpoint import list_checkpoints, read_checkpoint


def test_replay_of_an_mcap_with_two_topics_trains_on_both_cameras_under_their_ids_and_names(tmp_path):
    log, run = tmp_path / "drive.mcap", tmp_path / "run"
    write_mcap_ros2(log, {"/front/image_raw": ("bayer_rggb8", [smooth_image(48, 64, s) for s in range(12)]),
                          "/rear/image_raw/compressed": ("jpeg", [smooth_image(40, 40, s + 50) for s in range(12)])},
                    strings="/chatter")
    argv = [*CLI, "replay", "--run-dir", str(run), "--pace", "asap", str(log), *TINY, "train.replay_ratio=1",
            "train.checkpoint_every=1000", "capture.camera_id_base=3"]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "24 frames in 2 recording(s)" in done.stderr  # one per image topic; the String topic is no camera
    final = read_checkpoint(list_checkpoints(run)[0][1])["counters"]
    assert final["frames_per_camera"] == {3: 12, 4: 12}
    names = [s["name"] for s in json.loads((run / "status-capture.json").read_text())["sources"]]
    assert names == [f"robot log '{log}' topic /front/image_raw", f"robot log '{log}' topic /rear/image_raw/compressed"]
    history = [json.loads(line) for line in (run / "capture.jsonl").read_text().splitlines()]
    assert history[-1]["source_names"] == names
