"""Replay's capture child runs under the one process supervisor: its end and its failure are seen."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.replay import ReplayCapture


def test_a_capture_that_fails_sets_done_and_gives_a_one_line_reason(tmp_path: Path) -> None:
    capture = ReplayCapture(tmp_path / "missing.yaml", "asap", tmp_path / "logs")
    capture.start("tcp://127.0.0.1:9")
    try:
        assert capture.done.wait(60)
    finally:
        capture.stop()
    assert capture.failure is not None and "replay-capture exited with code 2" in capture.failure
    assert "missing.yaml" in capture.failure and "\n" not in capture.failure
    assert (tmp_path / "logs" / "replay-capture.log").exists()


def test_stop_before_start_does_nothing(tmp_path: Path) -> None:
    ReplayCapture(tmp_path / "c.yaml", "realtime", tmp_path / "logs").stop()


@pytest.mark.slow
def test_replay_shows_its_plan_and_a_progress_bar_with_steps_frames_and_total(tmp_path: Path, capsys) -> None:
    import threading

    from agent.core.config import load_config
    from agent.replay import replay
    from tests.conftest import TINY_MODEL
    from tests.test_stream import write_video

    video = tmp_path / "clip.avi"
    write_video(video, 40)
    cfg = load_config(
        None,
        [
            *TINY_MODEL,
            "buffer.min_fill=16",
            "capture.height=32",
            "capture.width=32",
            "train.replay_ratio=2",
            "export.every_steps=null",
            "export.every_seconds=null",
            "train.threads=1",
        ],
    )
    assert replay(cfg, [str(video)], tmp_path / "run", pace="asap", stop=threading.Event(), progress=True) == 0
    err = capsys.readouterr().err
    assert "replay: 40 frames in 1 recording(s); train.replay_ratio 2 updates per frame = about 80 steps" in err
    assert "80/80" in err and "frames 40/40" in err  # the bar ends at the planned step count
    assert (tmp_path / "run" / "logs" / "replay-trainer.log").read_text().strip()  # the trainer's lines went here


def test_replay_trains_one_trainer_on_loopback_whatever_fleet_endpoints_the_config_lists() -> None:
    """A config made for a fleet trainer (`wire.endpoints`, one per rank) must not send replay's
    one trainer or its capture child there: replay binds one free loopback port and captures into it."""
    from agent.core.config import load_config
    from agent.replay import LOOPBACK_ANY_PORT, replay_config
    from agent.robot.capture import trainer_endpoints

    cfg = load_config(None, ["wire.endpoints=[tcp://10.0.0.1:5555, tcp://10.0.0.2:5555]"])
    replayed = replay_config(cfg, ["clip.avi"])
    assert replayed.wire.endpoints is None and replayed.wire.endpoint == LOOPBACK_ANY_PORT
    assert trainer_endpoints(replayed.wire) == [LOOPBACK_ANY_PORT]


def test_a_replay_plan_with_the_novelty_gate_on_gives_upper_bounds_and_its_time_at_a_known_rate() -> None:
    """With capture.novelty_threshold on, the plan counted frames the gate would drop as certain."""
    from agent.replay import ReplayPlan

    plan = ReplayPlan([250, 120], [0, 0], 2.0, 128, 0, gated=True)
    line = plan.describe(steps_per_s=0.5)
    assert line.startswith("at most 370 frames (capture.novelty_threshold is on")
    assert "= at most 740 steps (~24:40 at the last 0.50 steps/s)" in line
    resumed = ReplayPlan([250, 120], [250, 30], 2.0, 128, 500, frames_in=280)
    assert resumed.total_frames == 90 and resumed.steps_left == 2 * 370 - 500


def test_replay_counts_an_image_folder_after_checking_it(tmp_path: Path) -> None:
    """Replaying a folder of photos once planned "frames (count unknown)": the count was read from the
    file list, which closing the checked source had emptied."""
    import cv2
    import numpy as np

    from agent.core.config import load_config
    from agent.replay import check_recordings

    for i in range(7):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((16, 16, 3), 30 * i, np.uint8))
    assert check_recordings([str(tmp_path)], load_config(None).capture) == [7]


def test_the_planned_steps_are_where_the_trainers_replay_ratio_gate_stops() -> None:
    """The trainer steps while step < ratio x frames, so 0.3 x 248 = 74.4 ends at step 75 (the plan said 74)."""
    from agent.replay import ReplayPlan
    from trainer.lockstep import RankCounts, Turn

    plan = ReplayPlan([248], [0], 0.3, 128, 0)
    turn = Turn(stop=False, ready=True, drained=False, checkpoint_clear=True, ranks=(RankCounts(248, 0, 0, 0, 248),))
    last = max(step for step in range(200) if turn.may_step(step, 0.3)) + 1
    assert plan.total_steps == last == 75


def test_a_replay_keeps_its_buffer_in_checkpoints_unless_the_config_says_otherwise(tmp_path: Path) -> None:
    """A resumed replay skips the frames already delivered; without the saved buffer it trained only on the 22 frames
    left (of 150), each ~640 times, while its plan said ~128 (the fresh-clone reviewer's run)."""
    from agent.core.config import load_config
    from agent.replay import replay_config

    video = tmp_path / "clip.mp4"
    video.write_bytes(b"")  # replay_config only names the paths; opening them is check_recordings' job
    assert replay_config(load_config(None, []), [str(video)]).train.save_buffer is True
    assert replay_config(load_config(None, ["train.save_buffer=false"]), [str(video)]).train.save_buffer is False


def test_a_resumed_plan_uses_the_last_sessions_rate_pauses_included(tmp_path: Path) -> None:
    """The reviewer's resumed plan said "~1:32 at the last 1.19 steps/s" from the newest metrics window; the session
    had run at about half that once its export and probe pauses counted."""
    import json

    from agent.replay_progress import last_step_rate

    rows = [{"time": 0.0, "event": "start", "step": 0}, {"time": 500.0, "event": "start", "step": 100}]
    rows += [{"time": 500.0 + 10 * i, "step": 100 + 5 * i, "steps_per_s": 1.19} for i in range(11)]  # 50 in 100 s
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert last_step_rate(tmp_path) == pytest.approx(0.5)
