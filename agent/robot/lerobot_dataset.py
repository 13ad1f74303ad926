"""LeRobot datasets on disk as frame sources: one camera per video key, episodes in order, no `lerobot` import.

The layout (info.json, episodes, v2.x / v3.x) is read by agent/robot/lerobot_metadata.py.

Decoded with PyAV (AV1, LeRobot's default `libsvtav1` encoding, through libdav1d; H.264 and the rest through
FFmpeg). A spec is `DIR` (a dataset of one camera) or `DIR#KEY` (`lerobot_camera_specs` expands a dataset into
one spec per camera). `av` and `pyarrow` are imported when a dataset is opened, not when this module is.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional

import numpy as np

from agent.core.config import CaptureConfig
from agent.core.errors import SourceError
from agent.robot.lerobot_metadata import INFO_PATH, Episode, dataset_error, list_episodes, read_info, video_keys
from agent.robot.source_base import RecordingSource, SourceExhausted

if TYPE_CHECKING:
    import av

log = logging.getLogger(__name__)

KEY_SEPARATOR = "#"
EPISODE_GAP_S = 1.0e6
"""`media_time_s` of a frame = episode_index x EPISODE_GAP_S + its time in the episode (s).

Episodes are separate recordings (a v3.0 file plays them back to back, but the robot was reset in between):
frames of two episodes must never look adjacent, or temporal positives would pair across them. 1e6 s (11.6
days) is far beyond any episode (LeRobot records seconds to minutes) and any `buffer.temporal_delta_s`;
in float64 (the wire's and the buffer's time) a million episodes in still resolve 0.1 ms.
"""


def split_spec(spec: str) -> tuple[Path, Optional[str]]:
    """`DIR` or `DIR#KEY` -> (dataset root, camera key or None). A path that exists as given keeps its '#'."""
    if KEY_SEPARATOR in spec and not Path(spec).exists():
        root, _, key = spec.rpartition(KEY_SEPARATOR)
        return Path(root), key or None
    return Path(spec), None


def is_lerobot_dataset(path: str) -> bool:
    """True if `path` (or `DIR#KEY`) is a folder holding `meta/info.json`, the mark of a LeRobot dataset."""
    root, _ = split_spec(str(path))
    return (root / INFO_PATH).is_file()


def lerobot_camera_specs(spec: str) -> list[str]:
    """One spec per camera: `DIR` -> [`DIR#key`, ...] in the features' order; `DIR#KEY` -> [it], if KEY is a camera.

    SourceError (one line) for an unreadable info.json or a key that is not one of the dataset's cameras."""
    root, key = split_spec(spec)
    keys = video_keys(read_info(root))
    if key is None:
        return [f"{root}{KEY_SEPARATOR}{k}" for k in keys]
    if key not in keys:
        raise dataset_error(root, f"has no camera key {key!r} (its cameras: {', '.join(keys)})")
    return [f"{root}{KEY_SEPARATOR}{key}"]


def open_lerobot(spec: str, cfg: CaptureConfig) -> "LeRobotSource":
    """The source (not yet connected) for `DIR#KEY`, or `DIR` of a one-camera dataset.

    `cfg.loop_video` restarts it at its end, `cfg.max_bad_frames` bounds undecodable frames in a row.
    SourceError (one line): unreadable info.json, an unknown key, or several cameras and none chosen."""
    root, key = split_spec(spec)
    info = read_info(root)
    keys = video_keys(info)
    if key is None:
        if len(keys) > 1:
            raise dataset_error(root, f"has {len(keys)} cameras; choose one as DIR#KEY ({', '.join(keys)})")
        key = keys[0]
    elif key not in keys:
        raise dataset_error(root, f"has no camera key {key!r} (its cameras: {', '.join(keys)})")
    return LeRobotSource(root, key, info, loop=cfg.loop_video, max_bad_frames=cfg.max_bad_frames)


class LeRobotSource(RecordingSource):
    """One camera key of a LeRobot dataset: its episodes' frames in episode order; finite unless `loop`.

    `media_time_s` is episode-aware (`EPISODE_GAP_S`). `start_at(n)` skips n frames: whole episodes by their
    metadata `length`, then decoded frames within one episode. A video file that cannot be opened, or that ends or
    breaks before the frames its metadata promises (a truncated or damaged file), is counted in `errors` and
    logged with its path; the frames before the damage are delivered, then the next episode. (A v2.1 episode
    file cut short loses all its frames: LeRobot writes the mp4 index at the end, so nothing locates them; a v3.0
    file has it at the front, `faststart`, and keeps the frames before the cut.) An undecodable packet is
    skipped and counted in `skipped`; more than `max_bad_frames` in a row end that file.
    Reopening after a loss resumes at the frame it had reached.
    """

    LOG_SKIP_EVERY = 100

    def __init__(
        self, root: Path, key: str, info: dict[str, Any], loop: bool = False, max_bad_frames: int = 50
    ) -> None:
        if max_bad_frames < 0:
            raise ValueError(f"max_bad_frames must be >= 0, got {max_bad_frames}")
        super().__init__(f"LeRobot dataset '{root}' camera {key!r}")
        self.root, self.key, self.info = root, key, info
        self.fps = float(info["fps"])
        self.loop, self.max_bad_frames = loop, max_bad_frames
        self.errors = 0  # video files unreadable, truncated or damaged (each logged with its path)
        self.skipped = 0  # undecodable packets skipped
        self.first_error: Optional[str] = None
        self._episodes: Optional[list[Episode]] = None
        self._frames: Optional[Iterator[tuple[int, float, np.ndarray]]] = None
        self._position = 0  # frames delivered in this pass (plus those start_at skipped): where a reopen resumes
        self._pending: Optional[np.ndarray] = None

    @property
    def frame_count(self) -> Optional[int]:
        if not self._episodes or any(ep.length is None for ep in self._episodes):
            return None
        return sum(ep.length for ep in self._episodes)  # type: ignore[misc]

    @property
    def episodes(self) -> list[Episode]:
        """The camera's episodes (read from the metadata at the first connect)."""
        if self._episodes is None:
            self._episodes = list_episodes(self.root, self.info, self.key)
        return self._episodes

    def start_at(self, frame: int) -> None:
        self._position = max(0, int(frame))

    def connect(self) -> None:
        self.disconnect()
        episodes = self.episodes
        self._frames = self._iterate(episodes, self._position)
        if self._media_time is not None:
            return  # a reopen: resume where it was
        item = next(self._frames, None)
        if item is not None:
            self._pending = self._deliver(item)
        elif not self._position:  # (a replay resumed past the end is exhausted, not broken: read says so)
            self.disconnect()
            why = f": {self.errors} video file(s) unreadable, first: {self.first_error}" if self.errors else ""
            raise SourceError(f"{self.name} has no decodable frames{why}")

    def read(self) -> np.ndarray:
        if self._pending is not None:
            image, self._pending = self._pending, None
            return image
        if self._frames is None:
            raise SourceError(f"{self.name} is not connected")
        item = next(self._frames, None)
        if item is None and self.loop and self._position:
            self._position = 0
            self._frames = self._iterate(self.episodes, 0)
            item = next(self._frames, None)
        if item is None:
            raise SourceExhausted(f"{self.name} has no more frames")
        return self._deliver(item)

    def disconnect(self) -> None:
        if self._frames is not None:
            self._frames.close()  # type: ignore[attr-defined]  # a generator: closes its open container
            self._frames = None

    def _deliver(self, item: tuple[int, float, np.ndarray]) -> np.ndarray:
        episode, t, image = item
        self._position += 1
        self._media_time = episode * EPISODE_GAP_S + t
        return image

    def _error(self, path: Path, what: str) -> None:
        self.errors += 1
        message = f"{path} {what}"
        self.first_error = self.first_error or message
        log.warning("%s: %s (%d damaged file(s) so far)", self.name, message, self.errors)

    def _iterate(self, episodes: list[Episode], skip: int) -> Iterator[tuple[int, float, np.ndarray]]:
        """(episode index, seconds into the episode, uint8 HxWx3 RGB) of every frame from frame `skip` on."""
        i = 0
        while i < len(episodes) and episodes[i].length is not None and skip >= episodes[i].length:  # type: ignore[operator]
            skip -= episodes[i].length  # type: ignore[operator]
            i += 1
        while i < len(episodes):
            j = i + 1  # a run: the next episodes in the same file, in the file's order, decoded in one pass
            while (
                j < len(episodes)
                and episodes[j].path == episodes[i].path
                and (episodes[j].start_s >= episodes[j - 1].start_s)
            ):
                j += 1
            yield from self._decode_run(episodes[i:j], skip)
            skip, i = 0, j

    def _decode_run(self, run: list[Episode], skip: int) -> Iterator[tuple[int, float, np.ndarray]]:
        import av

        path = run[0].path
        if not path.is_file():
            self._error(path, "is missing")
            return
        try:
            container = av.open(str(path))
        except (av.error.FFmpegError, OSError) as exc:
            self._error(path, f"cannot be opened ({getattr(exc, 'strerror', None) or exc})")
            return
        try:
            if not container.streams.video:
                self._error(path, "holds no video stream")
                return
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            tol = 0.5 / self.fps  # half a frame: LeRobot's timestamps are frame_index / fps
            if run[0].start_s > tol and stream.time_base:
                container.seek(int((run[0].start_s - tol) / stream.time_base), stream=stream, backward=True)
            k, seen, broken = 0, 0, False
            for t, frame, broken in self._decode_file(container, stream, path):  # noqa: B007 (read after the loop)
                while k < len(run) and t >= run[k].end_s - tol:
                    k, skip = k + 1, 0
                if k == len(run):
                    break
                if frame is None or t < run[k].start_s - tol:
                    continue  # the end marker, or before the episode (the seek lands on an earlier keyframe)
                seen += 1
                if skip:
                    skip -= 1
                    continue
                yield run[k].index, t - run[k].start_s, frame.to_ndarray(format="rgb24")
            promised = sum(ep.length or 0 for ep in run)
            if not broken and seen < promised:
                self._error(path, f"ends after {seen} of the {promised} frames its episodes hold (truncated, damaged)")
        finally:
            container.close()

    def _decode_file(
        self, container: "av.container.InputContainer", stream: "av.VideoStream", path: Path
    ) -> Iterator[tuple[float, Optional["av.VideoFrame"], bool]]:
        """(seconds in the file, frame, False) per decoded frame; a last (inf, None, True) when the file breaks
        off (counted in `errors`), so the caller knows the shortfall is already reported."""
        import av

        packets = container.demux(stream)
        failures, last = 0, -1.0 / self.fps
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return
            except (av.error.FFmpegError, OSError) as exc:
                self._error(path, f"breaks off after {last:.3f} s ({getattr(exc, 'strerror', None) or exc})")
                yield math.inf, None, True
                return
            try:
                frames = packet.decode()
            except av.error.FFmpegError:
                failures += 1
                self.skipped += 1
                if self.skipped == 1 or self.skipped % self.LOG_SKIP_EVERY == 0:
                    log.warning("%s: skipped an undecodable packet of %s (%d so far)", self.name, path, self.skipped)
                if failures > self.max_bad_frames:
                    self._error(path, f"has over {self.max_bad_frames} undecodable packets in a row after {last:.3f} s")
                    yield math.inf, None, True
                    return
                continue
            failures = 0
            for frame in frames:
                t = frame.time if frame.time is not None else last + 1.0 / self.fps
                last = t
                yield t, frame, False
