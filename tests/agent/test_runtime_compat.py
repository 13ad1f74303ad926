"""A pinned HotEncoder refuses versions it cannot map back; rollback under load drops no call (real CLI, real files)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from agent.robot.runtime import HotEncoder
from export.manifest import sha256_file
from export.map_files import map_filename
from tests.agent.test_runtime import POLL, CheckedCallers, reference, wait_until
from tests.export.test_compat import publish, transformed
from tests.export.test_compat import reference as torch_answer
from tests.export.tiny import publish_version, scene_frames, tiny_encoder

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
ROOT = Path(__file__).resolve().parents[2]


def _missing(path: Path) -> None:
    path.unlink()


def _flipped(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _garbage_with_matching_hash(path: Path) -> None:
    path.write_bytes(b"not an npz archive" * 10)
    manifest_path = path.with_name(path.name.replace(".map.npz", ".json"))
    tree = json.loads(manifest_path.read_text())
    tree["compat"]["sha256"] = sha256_file(path)
    manifest_path.write_text(json.dumps(tree))


@pytest.mark.parametrize(
    "damage, needle",
    [(_missing, "is missing"), (_flipped, "does not match the sha256"), (_garbage_with_matching_hash, "unreadable")],
    ids=["missing", "corrupt", "garbage-same-hash"],
)
def test_a_version_with_a_broken_map_is_refused_when_pinned_and_served_when_not(
    tmp_path: Path, damage: Callable[[Path], None], needle: str, caplog: pytest.LogCaptureFixture
) -> None:
    exports, staging = tmp_path / "exports", tmp_path / "staging"
    base = tiny_encoder(1)
    v2 = transformed(base, seed=3, scale=1.5)
    publish(exports, base)
    publish(exports, v2)
    frames = scene_frames(3, seed=4)
    z1 = torch_answer(base, frames)
    with (
        caplog.at_level("WARNING", logger="agent.robot.runtime"),
        HotEncoder(exports, poll_interval_s=POLL, providers="cpu", compatible_with=1) as pinned,
        HotEncoder(exports, poll_interval_s=POLL, providers="cpu") as raw,
    ):
        assert pinned.version == raw.version == 2
        # Version 3 is published elsewhere, its map damaged, then deployed: files first, LATEST last.
        shutil.copytree(exports, staging)
        v3 = transformed(v2, seed=5, scale=0.8)
        publish(staging, v3)
        damage(staging / map_filename(3))
        for name in ("encoder-000003.onnx", "encoder-000003.json", map_filename(3)):
            if (staging / name).exists():
                shutil.copy(staging / name, exports / name)
        shutil.copy(staging / "LATEST", exports / "LATEST.new")
        os.replace(exports / "LATEST.new", exports / "LATEST")
        wait_until(lambda: raw.version == 3 and pinned.failed_loads == 1)
        np.testing.assert_allclose(raw.embed(frames), torch_answer(v3, frames), atol=1e-4)  # unpinned: served
        assert pinned.version == 2  # pinned: refused, still serving version 2 mapped into version 1's space
        np.testing.assert_allclose(pinned.embed(frames), z1, atol=1e-2 * np.abs(z1).max())  # ridge: near, not exact
        assert "version 3 cannot be mapped into pinned version 1's space" in caplog.text and needle in caplog.text
        assert "still serving version 2" in caplog.text
        time.sleep(5 * POLL)
        assert pinned.failed_loads == 1  # logged once, not at every poll


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", *args], capture_output=True, text=True, env=env, timeout=120
    )


@pytest.mark.slow
def test_rollback_under_two_thread_load_drops_no_call_and_publishing_resumes(tmp_path: Path) -> None:
    seeds = {1: 31, 2: 32, 3: 33, 4: 34}
    frames = scene_frames(1, seed=8)
    expected = {version: reference(seed, frames) for version, seed in seeds.items()}
    for version in (1, 2, 3):
        publish_version(tmp_path, seed=seeds[version])

    with HotEncoder(tmp_path, poll_interval_s=POLL, providers="cpu", threads=1) as enc:
        with CheckedCallers(enc, frames, expected) as callers:
            wait_until(lambda: callers.served_at_least(3))
            done = _cli("rollback", "--export-dir", str(tmp_path))  # default: the version below LATEST
            assert done.returncode == 0, done.stderr
            assert "now names version 2 (was 3)" in done.stdout
            returned = time.monotonic()
            wait_until(lambda: enc.version == 2)
            assert time.monotonic() - returned < POLL + 2.0  # one poll, plus loading a tiny model
            wait_until(lambda: callers.served_at_least(2))
            assert _cli("rollback", "--export-dir", str(tmp_path), "--to", "1").returncode == 0
            wait_until(lambda: enc.version == 1)
            wait_until(lambda: callers.served_at_least(1))
            publish_version(tmp_path, seed=seeds[4])  # the exporter's next version is published as usual
            assert (tmp_path / "LATEST").read_text().strip() == "encoder-000004.json"
            wait_until(lambda: callers.served_at_least(4))
        assert not callers.errors, callers.errors[0]
        assert enc.swaps == 3


@pytest.mark.slow
def test_rollback_refuses_malformed_requests_in_one_line_and_changes_nothing(tmp_path: Path) -> None:
    for seed in (1, 2, 3):
        publish_version(tmp_path, seed=seed)
    (tmp_path / "encoder-000001.onnx").write_bytes(b"truncated")
    (tmp_path / "encoder-000002.onnx").unlink()
    latest = (tmp_path / "LATEST").read_text()
    for args, needle in [
        (["--to", "9"], "version 9 is not published"),
        (["--to", "1"], "does not match the sha256"),
        (["--to", "2"], "model file"),
        ([], "does not match the sha256"),  # the default target skips version 2 (no model file) for version 1
    ]:
        done = _cli("rollback", "--export-dir", str(tmp_path), *args)
        assert done.returncode == 2 and needle in done.stderr, (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
        assert (tmp_path / "LATEST").read_text() == latest
    done = _cli("rollback", "--export-dir", str(tmp_path / "nowhere"))
    assert done.returncode == 2 and "does not exist" in done.stderr
