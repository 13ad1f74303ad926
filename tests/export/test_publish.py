"""Publishing: atomic files, version numbers that survive restarts, retention, LATEST."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pytest

from agent.core.errors import ModelFileError, StorageError
from export.manifest import read_latest, read_manifest
from export.publish import Publisher


def _publish_bytes(pub: Publisher, payload: bytes, step: int = 0) -> int:
    """Publishing does not look inside the model, so any bytes exercise the file protocol."""
    tmp = pub.temp_path()
    tmp.write_bytes(payload)
    fields = {
        "step": step,
        "input": {
            "name": "frames",
            "dtype": "uint8",
            "layout": "NHWC",
            "height": 8,
            "width": 8,
            "channel_order": "RGB",
            "normalisation": {"mean": [0.5] * 3, "std": [0.5] * 3},
        },
        "output": {"name": "embedding", "dim": 4},
    }
    return pub.publish(tmp, fields)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_publish_writes_model_manifest_and_latest(tmp_path: Path) -> None:
    pub = Publisher(tmp_path, keep=3)
    assert _publish_bytes(pub, b"model-one", step=10) == 1
    assert _names(tmp_path) == ["LATEST", "encoder-000001.json", "encoder-000001.onnx"]
    assert (tmp_path / "LATEST").read_text() == "encoder-000001.json\n"
    manifest = read_manifest(tmp_path / "encoder-000001.json")
    assert manifest.sha256 == sha256_bytes(b"model-one") and manifest.step == 10
    assert json.loads((tmp_path / "encoder-000001.json").read_text())["size_bytes"] == len(b"model-one")


def test_versions_continue_after_a_restart_counting_orphans(tmp_path: Path) -> None:
    pub = Publisher(tmp_path, keep=10)
    for i in range(3):
        _publish_bytes(pub, b"m%d" % i)
    (tmp_path / "encoder-000003.onnx").unlink()  # a manifest alone still holds its number
    (tmp_path / "encoder-000005.onnx").write_bytes(b"orphan from a crash")  # and so does a lone model
    restarted = Publisher(tmp_path, keep=10)
    assert restarted.next_version() == 6
    assert _publish_bytes(restarted, b"after restart") == 6
    assert read_latest(tmp_path) == "encoder-000006.json"


def test_retention_keeps_newest_k_and_what_latest_names(tmp_path: Path) -> None:
    pub = Publisher(tmp_path, keep=2)
    for i in range(5):
        _publish_bytes(pub, b"m%d" % i)
    assert _names(tmp_path) == ["LATEST"] + [f"encoder-00000{v}.{ext}" for v in (4, 5) for ext in ("json", "onnx")]
    # A LATEST that a concurrent publisher left pointing at an older version is never pruned away.
    (tmp_path / "LATEST").write_text("encoder-000004.json\n")
    pub2 = Publisher(tmp_path, keep=1)
    pub2.prune()
    assert {"encoder-000004.onnx", "encoder-000005.onnx"} <= set(_names(tmp_path))


def test_retention_removes_lower_orphans_and_stale_temps_but_not_newer_work(tmp_path: Path) -> None:
    pub = Publisher(tmp_path, keep=1)
    _publish_bytes(pub, b"a")
    _publish_bytes(pub, b"b")
    (tmp_path / "encoder-000001.onnx").write_bytes(b"orphan below the kept version")
    (tmp_path / "encoder-000009.onnx").write_bytes(b"another publisher's work in progress")
    pub.prune()
    assert "encoder-000001.onnx" not in _names(tmp_path)
    assert "encoder-000009.onnx" in _names(tmp_path)


def test_two_publishers_never_share_a_version(tmp_path: Path) -> None:
    results: list[int] = []
    lock = threading.Lock()

    def worker(tag: int) -> None:
        pub = Publisher(tmp_path, keep=100)
        for i in range(8):
            version = _publish_bytes(pub, b"%d-%d" % (tag, i))
            with lock:
                results.append(version)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == list(range(1, 17))
    for version in results:  # each manifest describes exactly its own model file
        manifest = read_manifest(tmp_path / f"encoder-{version:06d}.json")
        assert sha256_bytes((tmp_path / manifest.model_file).read_bytes()) == manifest.sha256
    assert read_latest(tmp_path) == "encoder-000016.json"


def test_failed_publish_leaves_no_files_and_says_why(tmp_path: Path) -> None:
    pub = Publisher(tmp_path, keep=3)
    _publish_bytes(pub, b"good")
    with pytest.raises(
        StorageError, match="cannot publish"
    ):  # an I/O failure, not a bad model: retried, never a refusal
        pub.publish(tmp_path / ".tmp-never-written.onnx", {"step": 1})
    assert _names(tmp_path) == ["LATEST", "encoder-000001.json", "encoder-000001.onnx"]


def test_latest_pointer_cannot_escape_the_directory(tmp_path: Path) -> None:
    (tmp_path / "LATEST").write_text("../../etc/passwd\n")
    with pytest.raises(ModelFileError, match="does not name a manifest"):
        read_latest(tmp_path)


def test_a_restart_removes_what_a_killed_publisher_left(tmp_path: Path) -> None:
    """A kill between the model's rename and its manifest leaves an orphan model; a kill mid-write a temp."""
    import os
    import subprocess
    import sys

    pub = Publisher(tmp_path, keep=3)
    _publish_bytes(pub, b"good")
    orphan = tmp_path / "encoder-000002.onnx"
    orphan.write_bytes(b"no manifest was ever written for me")
    os.utime(orphan, (1, 1))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    temp = tmp_path / f".tmp-{dead.pid}-0123abcd-model.onnx"
    temp.write_bytes(b"half")
    fresh = tmp_path / "encoder-000003.onnx"  # another publisher's work in progress: kept
    fresh.write_bytes(b"in flight")
    Publisher(tmp_path, keep=3)
    assert _names(tmp_path) == ["LATEST", "encoder-000001.json", "encoder-000001.onnx", "encoder-000003.onnx"]


def test_read_manifest_takes_a_string_path(tmp_path) -> None:
    # the README's torch-weights recipe passes a plain string
    with pytest.raises(ModelFileError, match="does not exist"):
        read_manifest(str(tmp_path / "encoder-000001.json"))
