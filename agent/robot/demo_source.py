"""The demo kind of source: the procedural demo scene (agent/core/demo_scene.py), "demo" or "demo:SEED"."""

from __future__ import annotations

import re
from typing import Optional

import numpy as np

from agent.core.demo_scene import DemoScene
from agent.core.errors import SourceError
from agent.robot.source_base import FrameSource

DEMO_SPEC = re.compile(r"demo(?::(\d+))?")


def is_demo(spec: str) -> bool:
    """ "demo" or "demo:SEED"."""
    return DEMO_SPEC.fullmatch(spec) is not None


def demo_seed(spec: str) -> int:
    match = DEMO_SPEC.fullmatch(spec)
    return int(match.group(1) or 0) if match else 0


class DemoSource(FrameSource):
    """The procedural demo scene (agent/core/demo_scene.py), rendered at the stored size: never ends."""

    def __init__(self, height: int, width: int, fps: float, seed: int = 0) -> None:
        super().__init__(f"demo scene (seed {seed})")
        self.height, self.width, self.fps, self.seed = height, width, fps, seed
        self._scene: Optional[DemoScene] = None
        self._index = 0

    def connect(self) -> None:
        self._scene = DemoScene(self.height, self.width, seed=self.seed)

    def read(self) -> np.ndarray:
        if self._scene is None:
            raise SourceError(f"{self.name} is not connected")
        image = self._scene.render(self._index / self.fps)
        self._index += 1
        return image

    def disconnect(self) -> None:
        self._scene = None
