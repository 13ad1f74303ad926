"""Checkpoints: atomic files, pruning, exact RNG restore, and a corrupt newest file skipped with a warning."""

from __future__ import annotations

import logging
import random

import numpy as np
import pytest
import torch

from trainer.checkpoint import (
    capture_rng,
    list_checkpoints,
    load_latest_checkpoint,
    read_checkpoint,
    restore_rng,
    save_checkpoint,
)


def state(step: int) -> dict:
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters())
    net(torch.ones(1, 3)).sum().backward()
    opt.step()
    return {
        "format": 1,
        "step": step,
        "learner": net.state_dict(),
        "optimizer": opt.state_dict(),
        "scaler": None,
        "rng": capture_rng(),
        "config": {"train": {"lr": 0.001}},
        "counters": {"frames_in": 7, "nan_skips": 0},
    }


def draws() -> tuple:
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]


def test_round_trip_restores_every_rng_and_prunes_to_keep(tmp_path):
    for step in (10, 20):
        save_checkpoint(tmp_path, state(step), keep=2)
    save_checkpoint(tmp_path, state(30), keep=2)
    after_save = draws()  # what the run drew right after its RNG state was captured
    assert [s for s, _ in list_checkpoints(tmp_path)] == [30, 20]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]  # no temp files left
    ckpt = load_latest_checkpoint(tmp_path)
    assert ckpt["step"] == 30 and ckpt["counters"]["frames_in"] == 7 and ckpt["path"].endswith("ckpt-000000030.pt")
    assert set(ckpt["learner"]) == {"weight", "bias"} and ckpt["optimizer"]["state"]
    draws()  # move every generator on
    restore_rng(ckpt["rng"])
    assert draws() == after_save


def test_corrupt_newest_checkpoint_is_skipped_with_a_warning(tmp_path, caplog):
    save_checkpoint(tmp_path, state(100), keep=3)
    newest = save_checkpoint(tmp_path, state(200), keep=3)
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # truncated, as by a power cut
    with caplog.at_level(logging.WARNING, logger="trainer.checkpoint"):
        ckpt = load_latest_checkpoint(tmp_path)
    assert ckpt["step"] == 100
    assert "ckpt-000000200.pt" in caplog.text
    with pytest.raises(ValueError, match="unreadable"):
        read_checkpoint(newest)


def test_no_readable_checkpoint_gives_none(tmp_path):
    assert load_latest_checkpoint(tmp_path) is None
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "ckpt-000000005.pt").write_bytes(b"garbage")
    assert load_latest_checkpoint(tmp_path) is None


def test_state_missing_keys_is_refused(tmp_path):
    with pytest.raises(ValueError, match="lacks"):
        save_checkpoint(tmp_path, {"step": 1}, keep=1)


def test_short_garbage_named_like_the_newest_checkpoint_is_skipped(tmp_path, caplog):
    """`printf junk > ckpt-000009999.pt` once escaped as struct.error at every restart of train and export."""
    save_checkpoint(tmp_path, state(5), keep=3)
    rng = np.random.default_rng(0)
    for i, size in enumerate([4, 5, 22, 64, 100, 300, 1000]):
        path = tmp_path / "checkpoints" / f"ckpt-{9999 + i:09d}.pt"
        path.write_bytes(b"junk" if size == 4 else rng.integers(0, 256, size, dtype=np.uint8).tobytes())
        with pytest.raises(ValueError):
            read_checkpoint(path)
    for prefix in (b"PK\x03\x04", b"PK\x05\x06", b"\x80\x02"):  # zip and pickle openings followed by garbage
        path = tmp_path / "checkpoints" / "ckpt-000020000.pt"
        for _ in range(30):
            path.write_bytes(prefix + rng.integers(0, 256, int(rng.integers(0, 200)), dtype=np.uint8).tobytes())
            with pytest.raises(ValueError):
                read_checkpoint(path)
    with caplog.at_level(logging.WARNING):
        assert load_latest_checkpoint(tmp_path)["step"] == 5


def test_every_damaged_byte_is_caught_or_changes_nothing(tmp_path):
    """Random 1-64-byte overwrites inside a real checkpoint once loaded silently with changed tensors."""
    path = save_checkpoint(tmp_path, state(7), keep=3)
    original = path.read_bytes()
    reference = read_checkpoint(path)
    rng = np.random.default_rng(1)
    caught = 0
    for _ in range(120):
        data = bytearray(original)
        size = int(rng.integers(1, 65))
        at = int(rng.integers(0, len(data) - size))
        data[at : at + size] = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        path.write_bytes(bytes(data))
        try:
            loaded = read_checkpoint(path)
        except ValueError:
            caught += 1
            continue
        # what loads must be exactly what was saved (the bytes hit padding or metadata the content does not use)
        assert torch.equal(loaded["learner"]["weight"], reference["learner"]["weight"])
        assert loaded["checksum"] == reference["checksum"]
    assert caught > 0


def test_non_finite_weights_are_refused(tmp_path):
    bad = state(3)
    bad["learner"]["weight"][0, 0] = float("nan")
    path = save_checkpoint(tmp_path, bad, keep=3)
    with pytest.raises(ValueError, match="non-finite"):
        read_checkpoint(path)
    save_checkpoint(tmp_path, state(2), keep=3)
    assert load_latest_checkpoint(tmp_path)["step"] == 2


def test_checksum_mismatch_is_named(tmp_path):
    good = state(4)
    path = save_checkpoint(tmp_path, good, keep=3)
    tampered = read_checkpoint(path)
    tampered["learner"]["weight"] += 1.0  # written without going through save_checkpoint's checksum
    torch.save(tampered, path)
    with pytest.raises(ValueError, match="checksum"):
        read_checkpoint(path)


def test_a_checksummed_file_with_a_bad_step_or_deep_nesting_is_refused(tmp_path):
    """Review find: `step` was trusted after the checksum (ValueError/TypeError escaped)."""
    from trainer.checkpoint import content_checksum

    for step in ("x", None, -1):
        bad = state(1)
        bad["step"] = step
        bad["format"] = 2
        bad["checksum"] = content_checksum(bad)
        path = tmp_path / "checkpoints" / "ckpt-000000001.pt"
        path.parent.mkdir(exist_ok=True)
        torch.save(bad, path)
        with pytest.raises(ValueError, match="not a step count"):
            read_checkpoint(path)
