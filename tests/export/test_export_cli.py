"""`byol-agent export` from real checkpoints: once (in-process) and `--watch` (a real subprocess, SIGINT)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from agent.cli import main as cli_main
from agent.core.config import Config, load_config
from agent.core.frames import resize_frames
from agent.supervisor import format_pipeline_status
from export.manifest import read_latest, read_manifest
from export.onnx_export import input_spec
from export.verify import torch_reference
from tests.agent.test_runtime import wait_until
from tests.conftest import REPO, free_tcp_endpoint
from tests.export.tiny import scene_frames
from trainer.checkpoint import list_checkpoints, read_checkpoint, save_checkpoint
from trainer.learner_factory import build_learner
from trainer.run_records import read_metrics

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]
OVERRIDES = [
    "model.encoder=tiny_cnn",
    "model.encoder_kwargs={width: 4}",
    "model.image_size=32",
    "model.projection_size=16",
    "model.projection_hidden_size=32",
    "train.channels_last=false",
]


def _config() -> Config:
    return load_config(overrides=OVERRIDES)


def _write_checkpoint(
    run_dir: Path, step: int, seed: int, with_buffer: bool = False, export_frames: int = 0
) -> torch.nn.Module:
    """A checkpoint as the trainer writes it; returns the target encoder it holds."""
    cfg = _config()
    learner = build_learner(cfg.model, cfg.train.model_copy(update={"seed": seed}), "cpu")
    state = {
        "format": 1,
        "step": step,
        "learner": learner.state_dict(),
        "optimizer": {},
        "rng": {},
        "config": cfg.model_dump(mode="json"),
        "counters": {},
    }
    if with_buffer:
        state["buffer"] = {"images": torch.from_numpy(scene_frames(20, size=48, seed=seed))}
    if export_frames:
        state["export_frames"] = torch.from_numpy(scene_frames(export_frames, size=48, seed=seed))
    save_checkpoint(run_dir, state, keep=5)
    return learner.encoder_module("target")


def test_export_once_from_the_newest_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run_dir, out = tmp_path / "run", tmp_path / "exports"
    _write_checkpoint(run_dir, step=10, seed=1)
    encoder = _write_checkpoint(run_dir, step=20, seed=2, with_buffer=True)
    assert cli_main(["export", "--run-dir", str(run_dir), "--out", str(out)]) == 0
    assert "published version 1 (step 20)" in capsys.readouterr().out
    manifest = read_manifest(out / read_latest(out))
    assert manifest.step == 20 and manifest.raw["model"]["encoder"] == "tiny_cnn"
    assert manifest.raw["model"]["encoder_kwargs"] == {"width": 4} and manifest.input.height == 32
    frames = scene_frames(6, size=48, seed=7)
    session = ort.InferenceSession(str(out / manifest.model_file), providers=["CPUExecutionProvider"])
    got = session.run(None, {manifest.input.name: manifest.input.prepare(frames)})[0]
    spec = input_spec("uint8_nhwc", 32, manifest.input.mean, manifest.input.std)
    np.testing.assert_allclose(got, torch_reference(encoder, resize_frames(frames, 32, 32), spec), atol=1e-4)


def test_export_without_a_checkpoint_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["export", "--run-dir", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no readable checkpoint" in err and "\n" not in err


def test_refused_export_exits_2_and_publishes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _write_checkpoint(tmp_path / "run", step=5, seed=1)
    argv = ["export", "--run-dir", str(tmp_path / "run"), "--out", str(tmp_path / "out"), "export.collapse_std_min=0.9"]
    assert cli_main(argv) == 2
    assert "collapsed encoder" in capsys.readouterr().err
    assert read_latest(tmp_path / "out") is None


def test_watch_follows_checkpoints_and_exports_the_final_one_on_sigint(tmp_path: Path) -> None:
    run_dir, out = tmp_path / "run", tmp_path / "exports"
    _write_checkpoint(run_dir, step=100, seed=1, export_frames=40)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent.cli",
            "export",
            "--run-dir",
            str(run_dir),
            "--out",
            str(out),
            "--watch",
            "--poll",
            "0.1",
            *OVERRIDES,
            "export.every_steps=1000",
            "export.min_compatibility=null",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: read_latest(out) is not None or proc.poll() is not None, 120)
        _write_checkpoint(
            run_dir, step=150, seed=2, export_frames=40
        )  # under every_steps: not exported while running...
        proc.send_signal(signal.SIGINT)  # ...but the final pass on stop exports it
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert [read_manifest(out / f"encoder-00000{v}.json").step for v in (1, 2)] == [100, 150]
    assert "published version 2 (step 150)" in stdout
    status = json.loads((run_dir / "status-exporter.json").read_text())
    assert status["last_export_version"] == 2 and status["exports"] == 2 and status["refusals"] == 0
    assert 0 <= status["cka_prev"] <= 1 and status["cka_pinned"] == {}  # version 2's drift, in `run`'s status line
    assert f"(refused 0, CKA {status['cka_prev']:.3f} prev)" in format_pipeline_status({"exporter": status}, 1.0, {})
    # the export events reach the run's metrics sinks: metrics.jsonl and TensorBoard (its own reader)
    exports = [e for e in read_metrics(run_dir).events if e["event"] == "export"]
    assert [(e["step"], e["version"]) for e in exports] == [(100, 1), (150, 2)]
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("export/version")] == [(100, 1.0), (150, 2.0)]
    assert [e.step for e in events.Scalars("export/cka_prev")] == [150]


def _with_model(run_dir: Path, **model: object) -> None:
    """Rewrite the newest checkpoint's stored config as an attacker with write access to the run dir would."""
    from trainer.checkpoint import list_checkpoints, read_checkpoint

    step, path = list_checkpoints(run_dir)[0]
    state = read_checkpoint(path)
    state["config"]["model"].update(model)
    path.unlink()
    save_checkpoint(run_dir, state, keep=5)


def test_a_checkpoint_naming_an_import_string_runs_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A stored config with `subprocess:getoutput` once ran its `cmd` on `export`; now a one-line refusal."""
    run_dir, out, marker = tmp_path / "run", tmp_path / "exports", tmp_path / "pwned"
    _write_checkpoint(run_dir, step=10, seed=1)
    _with_model(run_dir, encoder="subprocess:getoutput", encoder_kwargs={"cmd": f"touch {marker}"})
    assert cli_main(["export", "--run-dir", str(run_dir), "--out", str(out), *OVERRIDES]) == 2
    err = capsys.readouterr().err.strip()
    assert not marker.exists()
    assert len(err.splitlines()) == 1 and "import string 'subprocess:getoutput'" in err and "--config" in err
    assert not (out / "LATEST").exists()


def test_an_import_string_the_operator_names_too_is_honoured(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run_dir, out = tmp_path / "run", tmp_path / "exports"
    _write_checkpoint(run_dir, step=10, seed=1)
    _with_model(run_dir, encoder="trainer.encoders:TinyCNN")
    assert cli_main(["export", "--run-dir", str(run_dir), "--out", str(out), *OVERRIDES]) == 2  # not in our config
    capsys.readouterr()
    ours = [*OVERRIDES, "model.encoder=trainer.encoders:TinyCNN"]
    assert cli_main(["export", "--run-dir", str(run_dir), "--out", str(out), *ours]) == 0
    assert "published version 1 (step 10)" in capsys.readouterr().out


def test_checkpoints_carry_real_frames_so_exports_from_them_get_compatibility_maps(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """`byol-agent run` publishes from checkpoints; without a saved buffer it used to verify on the demo scene
    and never draw a calibration set, so no version there had a compatibility map."""
    from tests.trainer.test_continual import run_trainer, tiny_config

    run_dir, out = tmp_path / "run", tmp_path / "exports"
    settings = [
        "train.checkpoint_every=2",
        "buffer.min_fill=40",
        "export.calibration_frames=40",
        "export.min_compatibility=null",
    ]
    for steps in (2, 4):
        run_trainer(tiny_config(free_tcp_endpoint(), f"train.max_steps={steps}", *settings), run_dir)
        saved = read_checkpoint(list_checkpoints(run_dir)[0][1])
        assert saved["buffer"] is None and saved["export_frames"].dtype == torch.uint8
        assert saved["export_frames"].shape[1:] == (32, 32, 3) and len(saved["export_frames"]) == 40
        assert cli_main(["export", "--run-dir", str(run_dir), "--out", str(out), *settings]) == 0
    assert "published version 2 (step 4)" in capsys.readouterr().out
    calibration = np.load(out / "calibration.npy")
    assert calibration.shape == (40, 32, 32, 3)
    compat = read_manifest(out / "encoder-000002.json").raw["compat"]
    assert compat["maps_to"] == 1 and compat["r2"] > 0.5
