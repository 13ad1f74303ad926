"""Replay's capture child runs under the one process supervisor: its end and its failure are seen."""

from __future__ import annotations

from pathlib import Path

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


def test_replay_shows_its_plan_and_a_progress_bar_with_steps_frames_and_total(tmp_path: Path, capsys) -> None:
    import threading

    from agent.core.config import load_config
    from agent.replay import replay
    from tests.conftest import TINY_MODEL
    from tests.test_stream import write_video

    video = tmp_path / "clip.avi"
    write_video(video, 40)
    cfg = load_config(None, [*TINY_MODEL, "buffer.min_fill=16", "capture.height=32", "capture.width=32",
                             "train.replay_ratio=2", "export.every_steps=null", "train.threads=1"])
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
