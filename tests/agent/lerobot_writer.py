"""Writes LeRobot datasets (videos + metadata) the way LeRobot does, for tests and benchmarks/bench_sources.py.

Follows huggingface/lerobot (src/lerobot/datasets/video_utils.py `encode_video_frames` and
`concatenate_video_files`, configs/video.py `VideoEncoderConfig`: libsvtav1 at preset 12, yuv420p, g=2, crf=30,
the same g and crf for its "h264" option):
frames encoded with PyAV at the dataset's fps; v2.1 one mp4 per episode and camera (moov at the end, as
`encode_video_frames` leaves it), v3.0 one mp4 per camera with the episodes back to back and `faststart`
(as `concatenate_video_files` writes it), their stretches in `meta/episodes/chunk-000/file-000.parquet`.
Only what a reader of the videos needs is written (no data/ parquet, no stats).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from tests.scheduling import keep_scheduling

V21_VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
V30_VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
CODEC_OPTIONS = {"libsvtav1": {"g": "2", "crf": "30", "preset": "12"}, "libx264": {"g": "2", "crf": "30"}}

os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its whole config per file otherwise (1 = errors only)


def encode(path: Path, frames: Sequence[np.ndarray], fps: int, codec: str, faststart: bool = False) -> None:
    """uint8 HxWx3 RGB `frames` -> an mp4 at `fps` (LeRobot's yuv420p and GOP 2)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames[0].shape[:2]
    # SVT-AV1 puts the calling thread at SCHED_FIFO 99 when run as root: put it back (tests/scheduling.py).
    with keep_scheduling(), av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {}) as out:
        stream = out.add_stream(codec, fps, options=CODEC_OPTIONS.get(codec, {}))
        stream.pix_fmt, stream.width, stream.height = "yuv420p", w, h
        for image in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")))
        out.mux(stream.encode())


def _info(version: str, fps: int, codecs: dict[str, str], shape: tuple[int, int], episodes: int, frames: int) -> dict:
    h, w = shape
    features = {"action": {"dtype": "float32", "shape": [2], "names": None}}
    for key, codec in codecs.items():
        features[key] = {
            "dtype": "video",
            "shape": [h, w, 3],
            "names": ["height", "width", "channels"],
            "info": {"video.codec": "av1" if "av1" in codec else "h264", "video.fps": fps},
        }
    return {
        "codebase_version": version,
        "robot_type": "test",
        "total_episodes": episodes,
        "total_frames": frames,
        "chunks_size": 1000,
        "fps": fps,
        "splits": {"train": f"0:{episodes}"},
        "video_path": V21_VIDEO_PATH if version == "v2.1" else V30_VIDEO_PATH,
        "features": features,
    }


def write_dataset(
    root: Path,
    version: str,
    episodes: dict[str, list[list[np.ndarray]]],
    codecs: dict[str, str],
    fps: int = 10,
    file_per_episode: bool = False,
) -> Path:
    """A LeRobot dataset at `root` in layout `version` ("v2.1" or "v3.0"): `episodes[key][e]` = episode e's RGB
    frames of camera `key`, encoded with `codecs[key]` ("libsvtav1", "libx264"). v3.0 with `file_per_episode`:
    each episode in a file of its own (file-000, file-001, ...), as LeRobot starts a new file past its size limit."""
    keys = list(codecs)
    lengths = [len(ep) for ep in episodes[keys[0]]]
    shape = episodes[keys[0]][0][0].shape[:2]
    (root / "meta").mkdir(parents=True, exist_ok=True)
    info = _info(version, fps, codecs, shape, len(lengths), sum(lengths))
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    if version == "v2.1":
        for key in keys:
            for e, frames in enumerate(episodes[key]):
                path = root / V21_VIDEO_PATH.format(episode_chunk=0, video_key=key, episode_index=e)
                encode(path, frames, fps, codecs[key])
        rows = [{"episode_index": e, "tasks": ["pick"], "length": n} for e, n in enumerate(lengths)]
        (root / "meta" / "episodes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return root
    import pyarrow as pa
    import pyarrow.parquet as pq

    table: dict[str, list] = {
        "episode_index": list(range(len(lengths))),
        "length": lengths,
        "tasks": [["pick"]] * len(lengths),
        "data/chunk_index": [0] * len(lengths),
        "data/file_index": [0] * len(lengths),
    }
    starts = np.concatenate([[0], np.cumsum(lengths)]) / fps
    for key in keys:
        table[f"videos/{key}/chunk_index"] = [0] * len(lengths)
        if file_per_episode:
            for e, frames in enumerate(episodes[key]):
                path = root / V30_VIDEO_PATH.format(video_key=key, chunk_index=0, file_index=e)
                encode(path, frames, fps, codecs[key], faststart=True)
            table[f"videos/{key}/file_index"] = list(range(len(lengths)))
            table[f"videos/{key}/from_timestamp"] = [0.0] * len(lengths)
            table[f"videos/{key}/to_timestamp"] = [n / fps for n in lengths]
            continue
        encode(
            root / V30_VIDEO_PATH.format(video_key=key, chunk_index=0, file_index=0),
            [f for ep in episodes[key] for f in ep],
            fps,
            codecs[key],
            faststart=True,
        )
        table[f"videos/{key}/file_index"] = [0] * len(lengths)
        table[f"videos/{key}/from_timestamp"] = [float(s) for s in starts[:-1]]
        table[f"videos/{key}/to_timestamp"] = [float(s) for s in starts[1:]]
    path = root / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(table), path)
    return root
