"""Replay buffer: capacity bounds, the three policies, temporal positives, persistence, concurrency."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
import torch

from agent.core.config import BufferConfig
from agent.core.errors import ConfigError
from agent.core.wire import Frame
from trainer.buffer import ReplayBuffer

SHAPE = (8, 8, 3)
CPU = torch.device("cpu")


def frame(seq: int, camera: int = 0, timestamp: float | None = None) -> Frame:
    """A frame whose pixels encode its identity: channel 0 = seq % 256, channel 1 = camera."""
    image = np.zeros(SHAPE, dtype=np.uint8)
    image[..., 0] = seq % 256
    image[..., 1] = camera
    return Frame(camera_id=camera, seq=seq, timestamp=float(seq if timestamp is None else timestamp), image=image)


def buffer(**kw) -> ReplayBuffer:
    kw.setdefault("min_fill", 2)
    return ReplayBuffer(BufferConfig(**kw), SHAPE, CPU)


def stored_seqs(buf: ReplayBuffer) -> list[int]:
    return sorted(buf.state_dict()["seq"].tolist())


def test_capacity_is_the_tighter_of_frames_and_bytes_and_fifo_keeps_the_newest():
    frame_bytes = int(np.prod(SHAPE))
    buf = buffer(capacity_frames=100, capacity_bytes=5 * frame_bytes + 7)
    assert buf.capacity == 5
    for seq in range(12):
        assert buf.add(frame(seq, camera=seq % 2))
    assert stored_seqs(buf) == [7, 8, 9, 10, 11]
    stats = buf.stats()
    assert stats["size"] == 5 and stats["fill"] == 1.0 and stats["evictions"] == 7
    assert stats["per_camera"] == {"0": 2, "1": 3}
    assert stats["frames_seen"] == 12 and stats["age_max_s"] >= stats["age_mean_s"] >= 0
    assert buffer(capacity_frames=3).stats()["fill"] == 0.0


def test_too_small_a_byte_budget_is_a_config_error():
    with pytest.raises(ConfigError, match="capacity_bytes"):
        buffer(capacity_bytes=int(np.prod(SHAPE)))


def test_wrong_frame_shape_is_refused():
    with pytest.raises(ValueError, match="shape"):
        buffer().add(Frame(camera_id=0, seq=0, timestamp=0.0, image=np.zeros((4, 4, 3), np.uint8)))


def test_reservoir_keeps_a_sample_of_the_whole_stream():
    buf = buffer(capacity_frames=50, policy="reservoir")
    accepted = sum(buf.add(frame(seq)) for seq in range(2000))
    seqs = np.array(stored_seqs(buf))
    assert len(seqs) == 50 and accepted < 2000 and buf.stats()["rejected"] == 2000 - accepted
    # FIFO would hold only 1950..1999; a uniform sample spreads over the whole stream
    assert seqs.min() < 500 and 600 < seqs.mean() < 1400


def test_min_redundancy_evicts_a_near_duplicate_not_a_distinct_frame():
    rng = np.random.default_rng(0)
    buf = buffer(capacity_frames=4, policy="min_redundancy")
    distinct = [rng.integers(0, 256, SHAPE, dtype=np.uint8) for _ in range(3)]
    near_dup = np.clip(distinct[1].astype(int) + rng.integers(-2, 3, SHAPE), 0, 255).astype(np.uint8)
    for seq, image in enumerate([distinct[0], distinct[1], distinct[2], near_dup]):
        buf.add(Frame(camera_id=0, seq=seq, timestamp=float(seq), image=image))
    slots, tickets, images = buf.frames_to_embed(16)
    assert len(slots) == 4 and buf.frames_to_embed(16) is not None  # not embedded until set
    # the embedding: centred pixels (any encoder maps a near-copy next to its original)
    assert buf.set_embeddings(slots, tickets, images.reshape(4, -1).float() - 127.5) == 4
    assert buf.frames_to_embed(16) is None and buf.stats()["embedded"] == 4
    buf.add(Frame(camera_id=0, seq=4, timestamp=4.0, image=rng.integers(0, 256, SHAPE, dtype=np.uint8)))
    kept = stored_seqs(buf)
    assert kept in ([0, 2, 3, 4], [0, 1, 2, 4]), kept  # one of the pair (seq 1, seq 3) went
    assert buf.stats()["evictions"] == 1 and buf.stats()["embedded"] == 3


def test_embeddings_for_a_replaced_frame_are_discarded():
    buf = buffer(capacity_frames=2, policy="min_redundancy")
    buf.add(frame(0))
    buf.add(frame(1))
    slots, tickets, _ = buf.frames_to_embed(2)
    buf.add(frame(2))  # FIFO fallback replaces seq 0 before its embedding arrives
    assert buf.set_embeddings(slots, tickets, torch.eye(2)) == 1


def test_temporal_positives_come_from_the_same_camera_about_delta_apart():
    buf = buffer(capacity_frames=200, temporal_positives=True, temporal_delta_s=5.0)
    for seq in range(100):
        buf.add(frame(seq, camera=seq % 2, timestamp=float(seq)))
    gen = torch.Generator().manual_seed(0)
    images, images2 = buf.sample(64, gen)
    assert images2 is not None and images2.shape == images.shape == (64, *SHAPE)
    seq1, cam1 = images[:, 0, 0, 0].long(), images[:, 0, 0, 1]
    seq2, cam2 = images2[:, 0, 0, 0].long(), images2[:, 0, 0, 1]
    assert torch.equal(cam1, cam2)
    gap = (seq2 - seq1).abs()
    assert gap.min() >= 4 and gap.max() <= 6  # same camera every 2 s: ±5 s lands on 4 or 6
    assert (seq2 > seq1).any() and (seq2 < seq1).any()


def test_temporal_positives_never_cross_a_pause_in_the_recording():
    """Two LeRobot episodes of one camera, 1e6 s apart (agent/robot/lerobot_dataset.py, EPISODE_GAP_S): the partner of
    an episode's last frames is drawn from before them, never from the next episode."""
    buf = buffer(capacity_frames=200, temporal_positives=True, temporal_delta_s=0.5)
    for seq in range(20):
        episode, k = divmod(seq, 10)
        buf.add(frame(seq, timestamp=episode * 1e6 + 0.1 * k))
    images, images2 = buf.sample(400, torch.Generator().manual_seed(0))  # with replacement: every frame, both signs
    seq1, seq2 = images[:, 0, 0, 0].long(), images2[:, 0, 0, 0].long()
    assert torch.equal(seq1 // 10, seq2 // 10)  # same episode
    gap = (seq2 - seq1).abs()
    assert gap.min() >= 4 and gap.max() <= 6  # about 0.5 s apart, every anchor (the last ones look back)


def test_sampling_is_reproducible_from_the_generator_and_plain_sampling_has_no_partner():
    buf = buffer(capacity_frames=50)
    for seq in range(50):
        buf.add(frame(seq))
    a, none = buf.sample(10, torch.Generator().manual_seed(3))
    b, _ = buf.sample(10, torch.Generator().manual_seed(3))
    assert none is None and torch.equal(a, b)
    assert len(set(a[:, 0, 0, 0].tolist())) == 10  # without replacement


def test_state_dict_round_trips_through_a_safe_torch_load():
    buf = buffer(capacity_frames=6, policy="min_redundancy")
    for seq in range(9):
        buf.add(frame(seq, camera=seq % 3))
    slots, tickets, images = buf.frames_to_embed(3)
    buf.set_embeddings(slots, tickets, images.reshape(len(slots), -1).float())
    blob = io.BytesIO()
    torch.save(buf.state_dict(), blob)
    blob.seek(0)
    state = torch.load(blob, weights_only=True)
    again = buffer(capacity_frames=4, policy="min_redundancy")  # smaller: keeps the newest
    again.load_state_dict(state)
    assert stored_seqs(again) == [5, 6, 7, 8]
    stats = again.stats()
    assert stats["frames_seen"] == 9 and stats["per_camera"] == {"0": 1, "1": 1, "2": 2}
    embedded_seqs = set(images[:, 0, 0, 0].tolist())  # the three oldest: 3, 4, 5
    assert embedded_seqs == {3, 4, 5} and stats["embedded"] == 1  # only seq 5 survives the shrink
    again.add(frame(9))
    assert 9 in stored_seqs(again)


def test_concurrent_add_and_sample_never_return_a_torn_frame():
    buf = buffer(capacity_frames=16)
    for seq in range(16):
        buf.add(Frame(camera_id=0, seq=seq, timestamp=float(seq), image=np.full(SHAPE, seq, dtype=np.uint8)))
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            seq = 16
            while not stop.is_set():
                image = np.full(SHAPE, seq % 256, dtype=np.uint8)
                buf.add(Frame(camera_id=0, seq=seq, timestamp=float(seq), image=image))
                seq += 1
        except BaseException as exc:  # re-raised on the test thread below
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    gen = torch.Generator().manual_seed(0)
    try:
        for _ in range(300):
            images, _ = buf.sample(8, gen)
            flat = images.reshape(8, -1)
            assert torch.equal(flat.min(dim=1).values, flat.max(dim=1).values)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not errors
    assert buf.stats()["frames_seen"] > 16


def test_refreshed_embeddings_change_which_frame_is_evicted():
    # Embedded on arrival, frames 0 and 1 look alike; the encoder then learns that they differ and
    # that 1 and 2 are alike. Only re-embedding the stalest frames lets eviction see that.
    early = torch.tensor([[1.0, 0.0], [0.99, 0.14], [0.0, 1.0]])
    later = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.14, 0.99]])
    evicted = {}
    for refresh in (False, True):
        buf = buffer(capacity_frames=3, policy="min_redundancy")
        for seq in range(3):
            buf.add(frame(seq))
        slots, tickets, _ = buf.frames_to_embed(3)  # slots fill in order: slot i holds seq i
        buf.set_embeddings(slots, tickets, early[torch.from_numpy(slots)])
        assert buf.frames_to_embed(3) is None  # nothing pending
        if refresh:
            stale, stale_tickets, _ = buf.frames_to_embed(2, refresh=True)
            buf.set_embeddings(stale, stale_tickets, later[torch.from_numpy(stale)])
            last, last_tickets, _ = buf.frames_to_embed(2, refresh=True)
            assert last[0] not in stale  # the one left stale comes first next time
            buf.set_embeddings(last[:1], last_tickets[:1], later[torch.from_numpy(last[:1])])
        buf.add(frame(3))
        evicted[refresh] = ({0, 1, 2} - set(stored_seqs(buf))).pop()
    assert evicted == {False: 0, True: 1}  # ties go to the first slot (argmax)


def test_a_fast_feeder_never_empties_the_embedded_set():
    # Embedding lags ingestion: the backlog of unembedded frames is what gets dropped, not the
    # frames already embedded (which made `embedded` fall to 0 in a loaded trainer).
    buf = buffer(capacity_frames=4, policy="min_redundancy")
    for seq in range(4):
        buf.add(frame(seq))
    slots, tickets, _ = buf.frames_to_embed(2)
    buf.set_embeddings(slots, tickets, torch.eye(2))
    for seq in range(4, 40):
        buf.add(frame(seq))
    assert buf.stats()["embedded"] == 2 and stored_seqs(buf)[:2] == [0, 1]
