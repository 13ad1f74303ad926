"""Target-network embeddings of replay-buffer frames, for an eviction policy that compares frames by them.

Minimum-redundancy eviction (trainer/eviction/min_redundancy.py) drops the frame most similar to its
nearest neighbour in the target network's embedding space, so each newly stored frame gets its
embedding before the next step, and every `buffer.refresh_every_steps` steps the stalest ones are
embedded again (the encoder has moved since). Policies that need none cost nothing here.
"""

from __future__ import annotations

from typing import Union

from agent.core.config import BufferConfig
from trainer.buffer import ReplayBuffer
from trainer.train_step import TrainStep


class BufferEmbeddings:
    """Embeds `buffer` frames with `train_step`'s target encoder at `image_size` (`model.image_size`)."""

    def __init__(
        self, buffer: ReplayBuffer, train_step: TrainStep, cfg: BufferConfig, image_size: Union[int, tuple[int, int]]
    ) -> None:
        self._buffer, self._train_step, self._cfg, self._image_size = buffer, train_step, cfg, image_size

    def embed_new(self) -> None:
        """Give newly stored frames (up to `buffer.embed_batch`) their embedding."""
        if self._buffer.wants_embeddings:
            self._embed(refresh=False)

    def refresh(self, step: int) -> None:
        """Every `buffer.refresh_every_steps` steps, re-embed the stalest `buffer.embed_batch` frames."""
        every = self._cfg.refresh_every_steps
        if self._buffer.wants_embeddings and every is not None and step % every == 0:
            self._embed(refresh=True)

    def _embed(self, refresh: bool) -> None:
        batch = self._buffer.frames_to_embed(self._cfg.embed_batch, refresh=refresh)
        if batch is not None:
            slots, tickets, images = batch
            self._buffer.set_embeddings(slots, tickets, self._train_step.embed(images, self._image_size))
