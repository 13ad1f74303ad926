"""Stratified eviction keeps the stream's stretches (rooms after rooms) in equal shares, the newest included."""

from __future__ import annotations

import numpy as np
import torch

from agent.core.config import BufferConfig
from agent.core.wire import Frame
from trainer.buffer import ReplayBuffer

SHAPE = (2, 2, 3)


def stream(buf: ReplayBuffer, rooms: int, per_room: int) -> None:
    for room in range(rooms):
        for i in range(per_room):
            image = np.full(SHAPE, room, dtype=np.uint8)  # the room is written in the pixels
            buf.add(Frame(camera_id=0, seq=room * per_room + i, timestamp=float(i), image=image))


def shares(buf: ReplayBuffer, rooms: int) -> np.ndarray:
    images, _ = buf.sample(buf.capacity, torch.Generator().manual_seed(0))
    return np.bincount(images[:, 0, 0, 0].numpy(), minlength=rooms) / buf.capacity


def test_every_room_keeps_an_equal_share_and_the_newest_is_not_starved():
    rooms = 5
    stratified = ReplayBuffer(
        BufferConfig(policy="stratified", capacity_frames=100, min_fill=2), SHAPE, torch.device("cpu")
    )
    stream(stratified, rooms, 200)
    assert np.allclose(shares(stratified, rooms), 1 / rooms, atol=0.03)
    fifo = ReplayBuffer(BufferConfig(policy="fifo", capacity_frames=100, min_fill=2), SHAPE, torch.device("cpu"))
    stream(fifo, rooms, 200)
    assert shares(fifo, rooms)[-1] == 1.0  # what it improves on: FIFO keeps the last room only
